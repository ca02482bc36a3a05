//! Pieces the benchmark examples share: generated bodies and a closed-loop request driver.
//! Included with `#[path = "common/load.rs"] mod load;` (not an example of its own).

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

/// Chunk size of generated bodies.
pub const CHUNK: usize = 64 * 1024;

/// `len` pseudo-random bytes (xorshift, so not trivially compressible), made lazily in 64 KiB
/// chunks; the first bytes are replaced by `head`.
pub fn generated(len: u64, seed: u64, head: &'static [u8]) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let chunks = len.div_ceil(CHUNK as u64);
    futures::stream::iter(0..chunks)
        .map(move |i| {
            let size = CHUNK.min((len - i * CHUNK as u64) as usize);
            let mut chunk = Vec::with_capacity(size + 8);
            while chunk.len() < size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.extend_from_slice(&state.to_le_bytes());
            }
            chunk.truncate(size);
            if i == 0 {
                let n = head.len().min(size);
                chunk[..n].copy_from_slice(&head[..n]);
            }
            Ok(Bytes::from(chunk))
        })
        .boxed()
}

/// Runs `request` over `connections` concurrent loops for `seconds`; returns requests per second.
/// Each call gets a running request number; an error stops the run.
pub async fn closed_loop<F, Fut>(connections: usize, seconds: u64, request: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (request, done, stop) = (request.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    request(done.fetch_add(1, Ordering::Relaxed)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

/// Fails unless the response is a success; reads its body.
pub async fn expect_success(response: reqwest::Response, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(response.status().is_success(), "{what} answered {}", response.status());
    response.bytes().await?;
    Ok(())
}

/// CPU time (user + system) of chosen processes over a timed section: this process (`client`) and
/// those `MEDIA_LOAD_CPU_PIDS` names (`garage=123,service=456`), read from `/proc/<pid>/stat` (all
/// threads; 10 ms ticks). What each side spent per byte shows where a throughput ratio comes from.
pub struct CpuClocks {
    started: Vec<(String, String, f64)>,
}

impl CpuClocks {
    pub fn start() -> Self {
        let mut watched = vec![("client".to_owned(), "self".to_owned())];
        let pids = std::env::var("MEDIA_LOAD_CPU_PIDS").unwrap_or_default();
        for named in pids.split(',').filter(|s| !s.is_empty()) {
            if let Some((name, pid)) = named.split_once('=') {
                watched.push((name.to_owned(), pid.to_owned()));
            }
        }
        let started =
            watched.into_iter().filter_map(|(name, pid)| Some((name, pid.clone(), cpu_seconds(&pid)?))).collect();
        Self { started }
    }

    /// Seconds of CPU each process spent since `start`, as a JSON object.
    pub fn spent(&self) -> serde_json::Value {
        let spent =
            self.started.iter().filter_map(|(name, pid, at)| Some((name.clone(), (cpu_seconds(pid)? - at).into())));
        serde_json::Value::Object(spent.collect())
    }
}

/// User + system CPU seconds of process `pid` so far (fields 14 and 15 of its stat line).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI this runs on.
    Some(ticks as f64 / 100.0)
}
