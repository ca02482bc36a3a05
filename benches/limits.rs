//! Cost of one admission check with the limits in the process and in Redis (`MEDIA_REDIS_URL`):
//! a per-principal rate check and an upload slot, each timed one by one, `ROUNDS` rounds of
//! `CHECKS` checks; prints each round's median and the median of the rounds.
//!
//! `scripts/bench-shared-limits` (starts a throwaway redis-server), or
//! `MEDIA_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench limits`. Under `cargo test`
//! (no `--bench` argument) it runs one short round as a smoke test.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_api::auth::Principal;
use media_api::config::Config;
use media_api::http::admission::{Limits, LimitsState};

const ROUNDS: usize = 7;
const CHECKS: usize = 2000;

fn main() {
    let redis = std::env::var("MEDIA_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("MEDIA_TEST_REDIS_URL"))
        .expect("MEDIA_BENCH_REDIS_URL is not set: run scripts/bench-shared-limits, which starts a redis-server");
    let (rounds_count, checks) = if std::env::args().any(|arg| arg == "--bench") { (ROUNDS, CHECKS) } else { (1, 20) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let local = limits(None).await;
        let shared = limits(Some(&redis)).await;
        assert_eq!(shared.state(), LimitsState::Shared, "Redis at {redis} does not answer");
        println!("{checks} checks per round, {rounds_count} rounds; median latency of one check (µs)");
        println!("{:<16} {:>10} {:>10} {:>10}", "check", "local", "redis", "overhead");
        let principal = principal();
        let (l, r) = (
            rounds(rounds_count, checks, || async { local.check_principal(&principal, None).await.expect("allowed") })
                .await,
            rounds(rounds_count, checks, || async { shared.check_principal(&principal, None).await.expect("allowed") })
                .await,
        );
        report("rate limit", l, r);
        let (l, r) = (
            rounds(rounds_count, checks, || async { drop(local.upload_slot("bench-caller").await.expect("slot")) })
                .await,
            rounds(rounds_count, checks, || async { drop(shared.upload_slot("bench-caller").await.expect("slot")) })
                .await,
        );
        report("upload slot", l, r);
    });
}

async fn limits(redis: Option<&str>) -> Arc<Limits> {
    let mut vars: HashMap<String, String> = [
        ("MEDIA_RATE_LIMIT_RPS", "1000000"),
        ("MEDIA_RATE_LIMIT_BURST", "1000000"),
        ("MEDIA_MAX_UPLOADS_PER_CALLER", "1000"),
        ("MEDIA_MAX_CONCURRENT_UPLOADS", "1000"),
        ("LOG_LEVEL", "error"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(url) = redis {
        vars.insert("MEDIA_REDIS_URL".into(), url.to_owned());
        vars.insert("MEDIA_REDIS_TIMEOUT".into(), "1s".into());
    }
    let config = Config::from_vars(&vars).expect("configuration");
    Limits::new(&config).await.expect("limits")
}

fn principal() -> Principal {
    Principal {
        subject: format!("bench-{}", std::process::id()),
        tenant: "bench".into(),
        issuer: Some("media-api-dev".into()),
        roles: BTreeSet::new(),
        scopes: BTreeSet::new(),
        permissions: BTreeSet::new(),
        anonymous: false,
    }
}

/// The median of each round's median, in microseconds.
async fn rounds<F, Fut>(count: usize, checks: usize, check: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..checks / 10 {
        check().await; // warm up (connections, script cache)
    }
    let mut medians = Vec::with_capacity(count);
    for _ in 0..count {
        let mut times: Vec<Duration> = Vec::with_capacity(checks);
        for _ in 0..checks {
            let started = Instant::now();
            check().await;
            times.push(started.elapsed());
        }
        medians.push(median(&mut times).as_secs_f64() * 1e6);
    }
    medians.sort_by(f64::total_cmp);
    medians[count / 2]
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn report(name: &str, local: f64, redis: f64) {
    println!("{name:<16} {local:>10.1} {redis:>10.1} {:>+10.1}", redis - local);
}
