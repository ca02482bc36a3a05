//! Peak resident memory while streaming a large upload through the S3 blob store.
//!
//! Generates N MiB (default 1024) of pseudo-random bytes lazily in 64 KiB chunks, streams them into
//! the configured S3 bucket through `S3BlobStore::put` (multipart, the configured part size and part buffers), reads
//! the process's peak RSS (`VmHWM`) and deletes the object. Run by `scripts/bench-upload-memory`,
//! which starts Garage and sets the `MEDIA_S3_*` variables.
//!
//! `cargo run --release --example upload_rss -- 1024`

use std::time::Instant;

use media_api::config::{Config, StorageConfig, MIB};
use media_api::storage::s3::S3BlobStore;
use media_api::storage::BlobStore;

#[path = "common/load.rs"]
mod load;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let config = Config::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let StorageConfig::S3(s3) = &config.storage else {
        anyhow::bail!("set MEDIA_S3_BUCKET (and endpoint/keys): this measures the S3 backend");
    };
    let store = S3BlobStore::new(s3).await?;
    let total = mib * MIB;
    let body = load::generated(total, 1, b"");
    let baseline = rss_kib("VmRSS:");
    let key = format!("bench/upload-rss-{}", std::process::id());
    let started = Instant::now();
    let written = store.put(&key, "application/octet-stream", body).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = rss_kib("VmHWM:");
    store.delete(&key).await?;
    println!(
        "uploaded {} MiB in {seconds:.1} s ({:.0} MiB/s), part size {} MiB x {} in flight",
        written / MIB,
        (written / MIB) as f64 / seconds,
        s3.part_size / MIB,
        s3.upload_concurrency
    );
    println!("rss before upload: {:.1} MiB; peak rss: {:.1} MiB", baseline as f64 / 1024.0, peak as f64 / 1024.0);
    Ok(())
}
