//! The reference the hand-written signer is checked against: the same URL signed by `aws-sigv4`
//! (the SDK's own SigV4 implementation) with the settings the SDK's S3 presigner uses.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_http::label::{fmt_string, EncodingStrategy};
use aws_smithy_http::query_writer::QueryWriter;

/// `base` + `key` GET URL with the forced headers, signed by `aws-sigv4` at `time`.
pub(super) fn signed_url(
    base: &str,
    region: &str,
    credentials: Credentials,
    key: &str,
    (content_type, content_disposition): (&str, &str),
    ttl: Duration,
    time: SystemTime,
) -> String {
    let path = format!("{base}{}", fmt_string(key, EncodingStrategy::Greedy));
    let mut query = QueryWriter::new_from_string(&path).expect("url");
    query.insert("response-content-disposition", content_disposition);
    query.insert("response-content-type", content_type);
    query.insert("x-id", "GetObject");
    let unsigned = format!("{path}?{}", query.build_query());

    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(ttl);
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .expect("signing params");
    let signable =
        SignableRequest::new("GET", &unsigned, std::iter::empty(), SignableBody::UnsignedPayload).expect("signable");
    let (instructions, _) = sign(signable, &params.into()).expect("signed").into_parts();
    let mut signed = QueryWriter::new_from_string(&path).expect("url");
    for (name, value) in instructions.into_parts().1 {
        signed.insert(name, &value);
    }
    format!("{unsigned}&{}", signed.build_query())
}
