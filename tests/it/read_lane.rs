//! The server's read lane (`db::read_lane`) against a real PostgreSQL: a connection whose read ran
//! to its end is reused as it is (no test round trip); one whose read was cut off half-way, or
//! failed, is closed and never handed out again; one cut while idle is replaced; at most its size
//! are out at once, and a caller waits no longer than the acquire timeout; its use as `/metrics`
//! reports it; a service with few connections still has a pool for its writes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use media_api::db::read_lane::{Lease, ReadLane};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

use crate::support::app::fresh_postgres_url;

async fn lane(size: u32, timeout: Duration) -> (Arc<ReadLane>, PgConnectOptions) {
    let options = PgConnectOptions::from_str(&fresh_postgres_url().await).unwrap();
    (Arc::new(ReadLane::new(options.clone(), size, timeout)), options)
}

/// The server process behind a leased connection.
async fn backend(lease: &mut Lease) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(lease.conn()).await.unwrap()
}

#[tokio::test]
async fn a_finished_read_keeps_its_connection_and_a_cut_off_or_failed_one_is_never_handed_out_again() {
    let (lane, _) = lane(2, Duration::from_secs(5)).await;
    assert_eq!(lane.stats(), (0, 0, 2), "in use, idle, size: nothing opened yet");
    let mut lease = lane.acquire().await.unwrap();
    let first = backend(&mut lease).await;
    assert_eq!(lane.stats(), (1, 0, 2));
    lease.done();
    assert_eq!(lane.stats(), (0, 1, 2), "what /metrics reports");
    let mut lease = lane.acquire().await.unwrap();
    assert_eq!(backend(&mut lease).await, first, "a finished read gives its connection back as it is");

    // Cut off half-way, as when the client goes: the statement is still running on the server.
    let sleep = sqlx::query("SELECT pg_sleep(2)").execute(lease.conn());
    assert!(tokio::time::timeout(Duration::from_millis(200), sleep).await.is_err());
    drop(lease);
    assert_eq!(lane.idle(), 0, "a cut-off connection does not go back");
    let mut lease = lane.acquire().await.unwrap();
    let second = backend(&mut lease).await;
    assert_ne!(second, first, "a new connection, not the one in the middle of pg_sleep");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(lease.conn()).await.unwrap();
    assert_eq!(one, 1);

    // A failed statement: its connection is not reused either.
    let failed = sqlx::query("SELECT 1 / 0").execute(lease.conn()).await;
    assert!(failed.is_err());
    drop(lease);
    let mut lease = lane.acquire().await.unwrap();
    let third = backend(&mut lease).await;
    assert!(third != first && third != second, "{first} {second} {third}");
    lease.done();
    assert_eq!(lane.idle(), 1);
    lane.close().await;
    assert_eq!(lane.stats(), (0, 0, 2), "closed at shutdown");
}

#[tokio::test]
async fn a_connection_cut_while_idle_is_replaced_before_it_is_used() {
    let (lane, options) = lane(1, Duration::from_secs(5)).await;
    let mut lease = lane.acquire().await.unwrap();
    let first = backend(&mut lease).await;
    lease.done();
    // The server ends it (a restart, a failover, a proxy's idle timeout).
    let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&mut admin).await.unwrap();
    assert!(ended);
    // Idle for longer than the lane trusts a connection without a ping.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut lease = lane.acquire().await.unwrap();
    let second = backend(&mut lease).await;
    assert_ne!(second, first);
    lease.done();
}

#[tokio::test]
async fn no_more_than_its_size_are_out_at_once_and_a_caller_waits_only_the_acquire_timeout() {
    let (lane, _) = lane(1, Duration::from_millis(300)).await;
    let mut held = lane.acquire().await.unwrap();
    backend(&mut held).await;
    let waited = lane.acquire().await;
    assert!(matches!(waited, Err(sqlx::Error::PoolTimedOut)), "{:?}", waited.err());
    held.done();
    let mut lease = lane.acquire().await.unwrap();
    backend(&mut lease).await;
    lease.done();
}

#[tokio::test]
async fn a_service_with_few_connections_keeps_a_pool_for_its_writes_beside_the_lane_and_the_listener() {
    use crate::support::app::Stack;
    use crate::support::media::{json_of, media_app, png};
    // 2 and 3: no lane (the pool keeps them all, one the listener's); 4: a lane of 1, a pool of 3.
    for connections in ["2", "3", "4"] {
        let m = media_app(Stack::PostgresS3, &[("MEDIA_DATABASE_MAX_CONNECTIONS", connections)]).await;
        let alice = m.alice();
        for seed in 0..3 {
            let (status, stored) = json_of(m.upload_raw(&alice, "image/png", png(3_000, seed)).await).await;
            assert_eq!(status, 200, "{connections}: {stored}");
            let id = stored["id"].as_str().unwrap();
            let presigned = m.get(&alice, &format!("/v1/media/{id}/presign")).send().await.unwrap();
            assert_eq!(presigned.status(), 200, "{connections}");
            let ready = m.http().get(m.url("/readyz")).send().await.unwrap();
            assert_eq!(ready.status(), 200, "{connections}");
            assert_eq!(m.delete(&alice, id).await.0, 204, "{connections}");
        }
    }
}
