use super::*;

fn signer_with(endpoint: Option<&str>, path_style: bool, credentials: Credentials) -> GetSigner {
    let endpoint = endpoint.map(|e| Url::parse(e).expect("url"));
    GetSigner::new(endpoint.as_ref(), "media", "eu-west-1", path_style, SharedCredentialsProvider::new(credentials))
        .expect("signer")
}

fn plain_credentials() -> Credentials {
    Credentials::new("AKIDEXAMPLE", "secret", None, None, "test")
}

/// The URL's path and its query parameters, decoded and sorted (the order in the URL is free).
fn parts(url: &str) -> (String, Vec<(String, String)>) {
    let url = Url::parse(url).expect("a URL");
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    pairs.sort();
    (format!("{}://{}{}", url.scheme(), url.authority(), url.path()), pairs)
}

#[tokio::test]
async fn urls_are_the_ones_aws_sigv4_signs_for_the_same_inputs_and_time() {
    let session = Credentials::new("ASIAEXAMPLE", "s3cr3t/+=", Some("token/with+odd=chars".into()), None, "test");
    let endpoints = [
        (None, false),
        (Some("http://127.0.0.1:3900/"), true),
        (Some("https://s3.example.com:443/base/"), true),
        (Some("http://objects.example.com:8080/prefix"), false),
    ];
    let keys = ["m/2026/a b/ü+x.png", "plain", "dir/~tilde*star'quote(1).jpg"];
    let headers = [
        ("image/png", "inline; filename=\"x.png\""),
        ("text/plain; charset=utf-8", "attachment; filename*=UTF-8''%C3%BC.txt"),
    ];
    // Two days, so a cached signing key is re-derived when the day changes.
    let times = ["2026-11-26T23:59:59Z", "2026-11-27T00:00:01Z", "2027-01-01T12:00:00Z"];
    let mut compared = 0;
    for (endpoint, path_style) in endpoints {
        for credentials in [plain_credentials(), session.clone()] {
            let signer = signer_with(endpoint, path_style, credentials.clone());
            for time in times {
                let now: DateTime<Utc> = time.parse().expect("time");
                for key in keys {
                    for (ty, disposition) in headers {
                        let ttl = Duration::from_secs(17 + compared);
                        let ours = signer.get_url_at(key, ty, disposition, ttl, now).await.expect("signed").url;
                        let theirs = oracle::signed_url(
                            &signer.base,
                            "eu-west-1",
                            credentials.clone(),
                            key,
                            (ty, disposition),
                            ttl,
                            now.into(),
                        );
                        assert_eq!(parts(&ours), parts(&theirs), "{endpoint:?} {key} at {time}");
                        let again = signer.get_url_at(key, ty, disposition, ttl, now).await.expect("signed").url;
                        assert_eq!(again, ours, "asked again in the same second: the same URL");
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, 4 * 2 * 3 * 3 * 2);
}

/// Hands out new credentials on every call, each expiring within the refresh margin.
#[derive(Debug, Default)]
struct Rotating(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ProvideCredentials for Rotating {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let expiry = SystemTime::now() + Duration::from_secs(60);
        let credentials = Credentials::new(format!("AKID{n}"), format!("secret{n}"), None, Some(expiry), "t");
        aws_credential_types::provider::future::ProvideCredentials::ready(Ok(credentials))
    }
}

#[tokio::test(start_paused = true)]
async fn refreshed_credentials_sign_with_their_own_key_and_short_lived_ones_are_not_asked_for_on_every_url() {
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().expect("time");
    let provider = Rotating::default();
    let calls = provider.0.clone();
    let signer =
        GetSigner::new(None, "media", "eu-west-1", false, SharedCredentialsProvider::new(provider)).expect("signer");
    let ttl = Duration::from_secs(30);
    let signs_with = |url: &str, n: usize| {
        let credentials = Credentials::new(format!("AKID{n}"), format!("secret{n}"), None, None, "t");
        let theirs =
            oracle::signed_url(&signer.base, "eu-west-1", credentials, "k", ("image/png", "inline"), ttl, now.into());
        parts(url) == parts(&theirs)
    };
    for n in 0..3 {
        // Each refresh gives credentials inside the refresh margin (60 s left): until the retry
        // delay has passed, URLs are signed with them and the provider is not asked again.
        for _ in 0..5 {
            let url = signer.get_url_at("k", "image/png", "inline", ttl, now).await.expect("signed").url;
            assert!(signs_with(&url, n), "signed with the credentials of refresh {n}");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), n + 1, "one refresh per retry delay");
        tokio::time::advance(RETRY_REFRESH_AFTER).await;
    }
}

#[tokio::test]
async fn urls_name_the_bucket_like_the_sdk_and_carry_the_forced_headers_and_signature() {
    let ttl = Duration::from_secs(300);
    let aws_signer = signer_with(None, false, plain_credentials());
    let aws = aws_signer.get_url("m/a b", "image/png", "inline; filename=\"x.png\"", ttl).await.expect("signed").url;
    assert!(aws.starts_with("https://media.s3.eu-west-1.amazonaws.com/m/a%20b?"), "{aws}");
    let signer = signer_with(Some("http://127.0.0.1:3900/base/"), true, plain_credentials());
    let path = signer.get_url("m/k", "image/png", "inline", ttl).await.expect("signed").url;
    assert!(path.starts_with("http://127.0.0.1:3900/base/media/m/k?"), "{path}");
    for part in [
        "response-content-type=image%2Fpng",
        "response-content-disposition=inline",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=AKIDEXAMPLE%2F",
        "X-Amz-Expires=300",
        "X-Amz-Signature=",
    ] {
        assert!(path.contains(part), "{part} missing in {path}");
    }
}

/// Hands out credentials expiring in two minutes (inside the refresh margin) once, then fails.
#[derive(Debug, Default)]
struct FailsAfterFirst(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ProvideCredentials for FailsAfterFirst {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        use aws_credential_types::provider::error::CredentialsError;
        let answer = if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let expiry = SystemTime::now() + Duration::from_secs(120);
            Ok(Credentials::new("AKID0", "secret0", None, Some(expiry), "t"))
        } else {
            Err(CredentialsError::provider_error("the metadata service is down"))
        };
        aws_credential_types::provider::future::ProvideCredentials::ready(answer)
    }
}

#[tokio::test(start_paused = true)]
async fn credentials_not_yet_expired_keep_signing_when_a_refresh_fails() {
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().expect("time");
    let provider = FailsAfterFirst::default();
    let calls = provider.0.clone();
    let shared = SharedCredentialsProvider::new(provider);
    let signer = GetSigner::new(None, "media", "eu-west-1", false, shared).expect("signer");
    let ttl = Duration::from_secs(60);
    let first = signer.get_url_at("k", "image/png", "inline", ttl, now).await.expect("signed");
    tokio::time::advance(RETRY_REFRESH_AFTER).await;
    let second = signer.get_url_at("k", "image/png", "inline", ttl, now).await;
    assert_eq!(second.expect("the current credentials still sign"), first);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "a refresh was tried (and failed)");
}

/// Hands out credentials that expire at a fixed time.
#[derive(Debug)]
struct ExpiringAt(SystemTime);

impl ProvideCredentials for ExpiringAt {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let credentials = Credentials::new("ASIAEXAMPLE", "secret", Some("token".into()), Some(self.0), "t");
        aws_credential_types::provider::future::ProvideCredentials::ready(Ok(credentials))
    }
}

#[tokio::test]
async fn a_url_never_outlives_the_credentials_that_sign_it() {
    // Temporary credentials with 20 minutes left (outside the refresh margin, so they are used).
    let expiry = SystemTime::now() + Duration::from_secs(20 * 60);
    let signer = GetSigner::new(None, "media", "eu-west-1", false, SharedCredentialsProvider::new(ExpiringAt(expiry)))
        .expect("signer");
    let expires = |url: &str| parts(url).1.into_iter().find(|(name, _)| name == "X-Amz-Expires").map(|(_, v)| v);
    // An hour asked: cut to what the credentials have left, in the URL and in what the caller is told.
    let long = signer.get_url("k", "image/png", "inline", Duration::from_secs(3600)).await.expect("signed");
    assert!(long.ttl <= Duration::from_secs(20 * 60) && long.ttl > Duration::from_secs(19 * 60), "{:?}", long.ttl);
    assert_eq!(expires(&long.url), Some(long.ttl.as_secs().to_string()), "the URL carries the cut lifetime");
    let told = long.expires_at - Utc::now();
    assert!(told <= chrono::Duration::seconds(20 * 60) && told > chrono::Duration::seconds(19 * 60), "{told}");
    let (credentials, left) = signer.credentials_for(Duration::from_secs(3600)).await.expect("lifetime");
    assert_eq!((credentials.access_key_id(), credentials.expiry()), ("ASIAEXAMPLE", Some(expiry)));
    assert!(left <= Duration::from_secs(20 * 60) && left > Duration::from_secs(19 * 60), "{left:?}");
    // Five minutes asked: well inside the credentials' life, unchanged.
    let short = signer.get_url("k", "image/png", "inline", Duration::from_secs(300)).await.expect("signed");
    assert_eq!((short.ttl, expires(&short.url).as_deref()), (Duration::from_secs(300), Some("300")));
    assert_eq!(signer.credentials_for(Duration::from_secs(300)).await.expect("lifetime").1, Duration::from_secs(300));
    // Credentials without an expiry (static keys) never cut.
    let fixed = signer_with(None, false, plain_credentials());
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(fixed.get_url("k", "image/png", "inline", week).await.expect("signed").ttl, week);
}

#[tokio::test]
async fn credentials_about_to_expire_sign_no_url_and_the_end_told_is_the_urls_own() {
    // A refresh that gives back credentials with 5 seconds left: no URL rather than a dead one.
    let dying = SystemTime::now() + Duration::from_secs(5);
    let signer = GetSigner::new(None, "media", "eu-west-1", false, SharedCredentialsProvider::new(ExpiringAt(dying)))
        .expect("signer");
    let refused = signer.get_url("k", "image/png", "inline", Duration::from_secs(300)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(signer.credentials_for(Duration::from_secs(300)).await.is_err());
    // The end told is the signing second plus X-Amz-Expires, whatever the sub-second clock said.
    let now: DateTime<Utc> = "2026-11-26T10:00:00.900Z".parse().expect("time");
    let fixed = signer_with(None, false, plain_credentials());
    let signed = fixed.get_url_at("k", "image/png", "inline", Duration::from_secs(300), now).await.expect("signed");
    let expected: DateTime<Utc> = "2026-11-26T10:05:00Z".parse().expect("time");
    assert_eq!(signed.expires_at, expected);
    assert!(signed.url.contains("X-Amz-Date=20261126T100000Z&X-Amz-Expires=300"), "{}", signed.url);
}

#[tokio::test]
async fn a_url_asked_again_within_its_second_is_the_one_signed_and_the_next_second_signs_anew() {
    let (ttl, signer) = (Duration::from_secs(300), signer_with(None, false, plain_credentials()));
    let at = |time: &str| time.parse::<DateTime<Utc>>().expect("time");
    let first =
        signer.get_url_at("k", "image/png", "inline", ttl, at("2026-11-26T10:00:00.100Z")).await.expect("signed");
    let again =
        signer.get_url_at("k", "image/png", "inline", ttl, at("2026-11-26T10:00:00.900Z")).await.expect("signed");
    assert_eq!(again, first);
    // What a signer that never saw the first URL signs at that moment: the same.
    let fresh = signer_with(None, false, plain_credentials());
    let theirs =
        fresh.get_url_at("k", "image/png", "inline", ttl, at("2026-11-26T10:00:00.900Z")).await.expect("signed");
    assert_eq!(theirs, first);
    let next = signer.get_url_at("k", "image/png", "inline", ttl, at("2026-11-26T10:00:01Z")).await.expect("signed");
    assert!(next.url.contains("X-Amz-Date=20261126T100001Z&X-Amz-Expires=300"), "{}", next.url);
    assert_eq!(next.expires_at, first.expires_at + chrono::Duration::seconds(1));
    // Another lifetime or forced header in the same second: its own URL.
    let shorter = signer.get_url_at("k", "image/png", "inline", Duration::from_secs(60), at("2026-11-26T10:00:01Z"));
    assert!(shorter.await.expect("signed").url.contains("X-Amz-Expires=60&"));
    let gif = signer.get_url_at("k", "image/gif", "inline", ttl, at("2026-11-26T10:00:01Z")).await.expect("signed");
    assert!(gif.url.contains("response-content-type=image%2Fgif"), "{}", gif.url);
}

#[tokio::test]
async fn a_memoised_url_is_not_handed_out_once_its_credentials_are_too_close_to_their_end() {
    // Credentials ending half a second past a whole second, 20 minutes away (not refreshed).
    let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(Utc::now().timestamp() as u64 + 1200);
    let expiry = whole + Duration::from_millis(500);
    let signer = GetSigner::new(None, "media", "eu-west-1", false, SharedCredentialsProvider::new(ExpiringAt(expiry)))
        .expect("signer");
    let ttl = Duration::from_secs(300);
    // 10.5 s before the end: 10 whole seconds left, just enough; a URL of 10 s.
    let second: DateTime<Utc> = (whole - Duration::from_secs(10)).into();
    let first = signer.get_url_at("k", "image/png", "inline", ttl, second).await.expect("signed");
    assert_eq!(first.ttl, Duration::from_secs(10));
    // The same second, 0.9 s later: 9.6 s left, so no URL, although one of this second is kept.
    let later = second + chrono::Duration::milliseconds(900);
    assert!(signer.get_url_at("k", "image/png", "inline", ttl, later).await.is_err());
}

#[test]
fn the_sigv4_day_is_the_formatted_date() {
    let at = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0).expect("in range");
    // Every 610th day from year 1 to 9999 (Feb 29ths among them), and the edges.
    let days = (0..6000i64).map(|d| d * 86_400 * 610 - 62_135_596_800).chain([
        0,
        1_764_288_000,
        951_782_400,
        253_402_300_799,
        253_402_300_800,
    ]);
    for secs in days {
        let now = at(secs);
        assert_eq!(sigv4_day(&now), format!("{:04}{:02}{:02}", now.year(), now.month(), now.day()), "{now}");
    }
}
