//! Cost of signing and verifying a filesystem presigned link (the embedded backend's presign path).
//!
//! `cargo bench --bench links`

use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use media_api::storage::links::{LinkKey, LinkQuery, LinkSigner};

fn bench_links(c: &mut Criterion) {
    let signer = LinkSigner::new(LinkKey::generate(), url::Url::parse("http://127.0.0.1:8285/").expect("url"));
    let key = "tenant/0123456789abcdef";
    c.bench_function("link_sign_get", |b| {
        b.iter(|| signer.sign_get(key, Duration::from_secs(300), "image/png", "inline; filename=\"a.png\""))
    });
    let link = signer.sign_get(key, Duration::from_secs(300), "image/png", "inline; filename=\"a.png\"");
    let query = url::Url::parse(&link.url).expect("url");
    let query: LinkQuery = serde_urlencoded::from_str(query.query().expect("query")).expect("query");
    c.bench_function("link_verify", |b| b.iter(|| signer.verify("GET", key, &query, Utc::now())));
}

criterion_group!(benches, bench_links);
criterion_main!(benches);
