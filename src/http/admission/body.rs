//! Time limits of an upload's body: the whole body within `MEDIA_UPLOAD_TIMEOUT`, no gap longer
//! than `MEDIA_UPLOAD_IDLE_TIMEOUT`, and at least `MEDIA_UPLOAD_MIN_RATE` bytes per second.
//!
//! The rate is counted over windows of twice the idle timeout. Only time the service spends
//! waiting for the client's next bytes counts. While the pipeline is busy storing earlier bytes
//! (S3 slow, a part retried), the body is not read, so that time is not held against the client.
//! A client that trickles a byte now and then never trips the idle timeout. The rate stops it
//! after one window, and frees its upload slots.
//!
//! Every limit fails the body with an `io::Error` of kind `TimedOut` carrying a sentence that
//! names the setting. The upload pipeline answers it as 408 `upload_timeout` and cleans up like
//! any interrupted upload.
//!
//! The limits are checked while the body is polled:
//! - Waiting is timed from the poll that began it. A consumer that dropped a pending `next()` and
//!   polled again later would restart that wait; none does (the part filler, the sniffed prefix and
//!   hyper's client all poll to completion).
//! - `tokio::time::timeout` polls the body before its timer. A body whose chunks are always ready
//!   when the pipeline asks (the pipeline being the slow side) is not cut by `MEDIA_UPLOAD_TIMEOUT`; the
//!   blob store's own timeouts bound that case.
//! - When `MEDIA_UPLOAD_TIMEOUT` is no longer than one window, the total limit comes first and the
//!   rate is never checked.

use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use tokio::time::Instant;

use crate::config::Config;

/// The time limits of an upload's body (`MEDIA_UPLOAD_TIMEOUT`, `MEDIA_UPLOAD_IDLE_TIMEOUT`,
/// `MEDIA_UPLOAD_MIN_RATE`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// The whole body must have arrived this long after the request began.
    pub total: Duration,
    /// The longest wait for the next chunk.
    pub idle: Duration,
    /// The fewest bytes per second of waiting, counted over windows of `2 × idle` (0: no minimum).
    pub min_rate: u64,
}

impl BodyTimeouts {
    /// The upload timeouts of the configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            total: config.ops.upload_timeout,
            idle: config.ops.upload_idle_timeout,
            min_rate: config.ops.upload_min_rate,
        }
    }

    /// How much waiting one rate window holds.
    fn window(&self) -> Duration {
        self.idle * 2
    }

    /// The bytes one window must bring.
    fn window_bytes(&self) -> u64 {
        u64::try_from(u128::from(self.min_rate) * self.window().as_millis() / 1000).unwrap_or(u64::MAX)
    }
}

/// The current rate window: how long the body has been waited for in it, and what came.
struct Window {
    waited: Duration,
    bytes: u64,
}

impl Window {
    const EMPTY: Window = Window { waited: Duration::ZERO, bytes: 0 };
}

/// The state of the body between chunks.
struct Pacing<S> {
    stream: S,
    window: Window,
}

/// `body`, failing with a `TimedOut` error once `limits.total` has passed since the call, when no
/// chunk came for `limits.idle`, or when a rate window brought fewer than `limits.min_rate` bytes
/// per second (see the module docs).
pub fn body_with_deadline(body: Body, limits: BodyTimeouts) -> Body {
    let deadline = Instant::now() + limits.total;
    let start = Pacing { stream: body.into_data_stream(), window: Window::EMPTY };
    let stream = futures::stream::unfold(Some(start), move |state| async move {
        let mut pacing = state?;
        let idle_until = Instant::now() + limits.idle;
        loop {
            let began = Instant::now();
            let window_until = began + limits.window().saturating_sub(pacing.window.waited);
            let wake = if limits.min_rate == 0 {
                deadline.min(idle_until)
            } else {
                deadline.min(idle_until).min(window_until)
            };
            match tokio::time::timeout_at(wake, pacing.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    pacing.window.waited += Instant::now() - began;
                    pacing.window.bytes += chunk.len() as u64;
                    if let Err(why) = end_window(&mut pacing.window, &limits) {
                        return Some((Err(timed_out(why)), None));
                    }
                    return Some((Ok(chunk), Some(pacing)));
                }
                Ok(Some(Err(err))) => return Some((Err(std::io::Error::other(err)), None)),
                Ok(None) => return None,
                Err(_) if wake == deadline => {
                    let why =
                        format!("the upload took longer than MEDIA_UPLOAD_TIMEOUT ({} s)", limits.total.as_secs());
                    return Some((Err(timed_out(why)), None));
                }
                Err(_) if wake == idle_until => {
                    let why = format!(
                        "no byte of the upload arrived for {} s (MEDIA_UPLOAD_IDLE_TIMEOUT)",
                        limits.idle.as_secs()
                    );
                    return Some((Err(timed_out(why)), None));
                }
                Err(_) => {
                    pacing.window.waited += Instant::now() - began;
                    if let Err(why) = end_window(&mut pacing.window, &limits) {
                        return Some((Err(timed_out(why)), None));
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// Closes `window` if it has been waited for in full: an error sentence if it brought too few
/// bytes, else a fresh window.
fn end_window(window: &mut Window, limits: &BodyTimeouts) -> Result<(), String> {
    if limits.min_rate == 0 || window.waited < limits.window() {
        return Ok(());
    }
    if window.bytes < limits.window_bytes() {
        return Err(format!(
            "the upload arrived slower than MEDIA_UPLOAD_MIN_RATE ({} bytes/s): {} bytes in the last {:.0} s",
            limits.min_rate,
            window.bytes,
            window.waited.as_secs_f64()
        ));
    }
    *window = Window::EMPTY;
    Ok(())
}

fn timed_out(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::channel::mpsc;
    use futures::SinkExt;

    type Sender = mpsc::Sender<Result<Bytes, std::io::Error>>;

    const LIMITS: BodyTimeouts =
        BodyTimeouts { total: Duration::from_secs(600), idle: Duration::from_secs(10), min_rate: 100 };

    /// A body fed by the returned sender, read through `body_with_deadline(LIMITS…)`.
    fn paced(limits: BodyTimeouts) -> (Sender, axum::body::BodyDataStream) {
        let (tx, rx) = mpsc::channel(16);
        (tx, body_with_deadline(Body::from_stream(rx), limits).into_data_stream())
    }

    /// The error of the next item of `body`, as its sentence.
    async fn failure(body: &mut axum::body::BodyDataStream) -> String {
        body.next().await.expect("an item").expect_err("a failure").to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_trickling_bytes_is_stopped_after_one_window() {
        let (mut tx, mut body) = paced(LIMITS);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => got += chunk.len(),
                    Some(Err(err)) => return (got, Instant::now(), err.to_string()),
                    None => panic!("the body ended"),
                }
            }
        });
        let started = Instant::now();
        // Ten bytes every 9 s: never idle for 10 s, but 20-odd bytes per 20 s window of waiting,
        // against the 2,000 a window must bring.
        for _ in 0..10 {
            if tx.send(Ok(Bytes::from_static(b"0123456789"))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(9)).await;
        }
        let (got, at, why) = reader.await.unwrap();
        assert!(got < 40, "{got} bytes passed");
        assert_eq!(at - started, Duration::from_secs(20), "cut at the end of the first window");
        assert!(why.contains("MEDIA_UPLOAD_MIN_RATE (100 bytes/s)"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_counts_for_its_own_window_only() {
        let (mut tx, mut body) = paced(LIMITS);
        let reader = tokio::spawn(async move {
            let started = Instant::now();
            while let Some(item) = body.next().await {
                if let Err(err) = item {
                    return (Instant::now() - started, err.to_string());
                }
            }
            panic!("the body ended");
        });
        // One window's worth at once (2,000 bytes), then 10 bytes every 9 s: the first window
        // passes, the second brings 20 bytes.
        tx.send(Ok(Bytes::from(vec![1u8; 2000]))).await.unwrap();
        while tx.send(Ok(Bytes::from_static(b"0123456789"))).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(9)).await;
        }
        let (at, why) = reader.await.unwrap();
        assert_eq!(at, Duration::from_secs(40), "cut at the end of the second window: {why}");
        assert!(why.contains("20 bytes in the last 20 s"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_at_the_minimum_rate_is_never_stopped() {
        let (mut tx, mut body) = paced(LIMITS);
        let sender = tokio::spawn(async move {
            // 100 bytes every second for 200 s: ten windows, each just enough.
            for _ in 0..200 {
                tx.send(Ok(Bytes::from(vec![7u8; 100]))).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut got = 0;
        while got < 20_000 {
            got += body.next().await.expect("more").expect("no failure").len();
        }
        sender.await.unwrap();
        assert!(body.next().await.is_none(), "the body ends when the client is done");
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_storing_is_not_held_against_the_client() {
        let (mut tx, mut body) = paced(LIMITS);
        // The client sends everything at once; the pipeline then reads one chunk a minute (S3
        // slow): no time is spent waiting for the client, so no window ever ends.
        for _ in 0..5 {
            tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        }
        drop(tx);
        for _ in 0..5 {
            assert_eq!(body.next().await.expect("a chunk").expect("no failure").len(), 1);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_silent_is_told_so_not_that_it_was_slow() {
        let (mut tx, mut body) = paced(LIMITS);
        tx.send(Ok(Bytes::from_static(b"{\"source\":"))).await.unwrap();
        body.next().await.expect("a chunk").expect("no failure");
        let started = Instant::now();
        let why = failure(&mut body).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(10));
        assert!(why.contains("MEDIA_UPLOAD_IDLE_TIMEOUT"), "{why}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_minimum_only_the_idle_and_total_limits_apply() {
        let limits = BodyTimeouts { min_rate: 0, total: Duration::from_secs(30), ..LIMITS };
        let (mut tx, mut body) = paced(limits);
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            while tx.send(Ok(Bytes::from_static(b"."))).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(9)).await;
            }
        });
        let mut why = String::new();
        while let Some(item) = body.next().await {
            if let Err(err) = item {
                why = err.to_string();
                break;
            }
        }
        assert_eq!(Instant::now() - started, Duration::from_secs(30));
        assert!(why.contains("MEDIA_UPLOAD_TIMEOUT"), "{why}");
        drop(body);
        sender.await.unwrap();
    }
}
