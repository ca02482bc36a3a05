//! Reads by id coalesced on the read lane (`db::media::coalesce`) against a real PostgreSQL: reads
//! that wait for a busy lane share one statement and each caller gets its own row (its tenant's,
//! or nothing); a caller that gave up leaves the queue; a leader whose client goes still answers
//! the others; a statement that runs out of time is counted and its reads are read again alone.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use media_api::db::media::{MediaRecord, MediaRepo, ReadCounts};
use media_api::db::read_lane::{Lease, ReadLane};
use media_api::db::tenant_keys::KeySettings;
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;
use tokio::task::JoinHandle;

use crate::support::repository::{fixtures, new_media, Fixture};

/// A PostgreSQL fixture, its repository reading through a lane of one connection, and that lane.
async fn one_connection_lane(timeout: Duration) -> (Fixture, MediaRepo, Arc<ReadLane>, PgConnectOptions) {
    lane_of(1, timeout).await
}

/// The same with a lane of `size` connections.
async fn lane_of(size: u32, timeout: Duration) -> (Fixture, MediaRepo, Arc<ReadLane>, PgConnectOptions) {
    let fx = fixtures(KeySettings::default()).await.into_iter().next().expect("the PostgreSQL fixture");
    let options = PgConnectOptions::from_str(&fx.db_url).unwrap();
    let lane = Arc::new(ReadLane::new(options.clone(), size, timeout));
    let repo = fx.repo.clone().with_read_lane(Some(lane.clone()));
    (fx, repo, lane, options)
}

async fn stored(repo: &MediaRepo, tenant: &str, seed: u8) -> MediaRecord {
    let media = new_media(tenant, &[seed; 64]);
    repo.insert(&media).await.unwrap();
    media
}

/// `repo.get` in a task of its own.
fn read(repo: &MediaRepo, tenant: &str, id: &str) -> JoinHandle<Option<MediaRecord>> {
    let (repo, tenant, id) = (repo.clone(), tenant.to_owned(), id.to_owned());
    tokio::spawn(async move { repo.get(&tenant, &id).await.unwrap().map(|m| m.record) })
}

/// Waits until `until` holds (an event of another task), at most 30 s.
async fn wait_for(what: &str, mut until: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !until() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("waited 30 s for {what}"));
}

/// Waits until `n` reads are queued (each task queues itself on its first poll).
async fn queued(repo: &MediaRepo, n: usize) {
    wait_for(&format!("{n} queued reads"), || repo.queued_reads() == n).await;
}

/// Locks `media_objects` in a transaction of another session: statements on it wait.
async fn lock_table(options: &PgConnectOptions) -> sqlx::PgConnection {
    let mut locker = sqlx::PgConnection::connect_with(options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE media_objects IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    locker
}

/// Waits until one statement whose text has `query` in it waits on the lock of [`lock_table`], at
/// most 30 s.
async fn waits_on_lock(locker: &mut sqlx::PgConnection, query: &str) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
        AND strpos(query, $1) > 0 AND datname = current_database()";
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // The locker is inside its transaction, where PostgreSQL keeps the first view of
            // pg_stat_activity to the transaction's end: without this, a first look taken before
            // the statement began waiting was all the loop ever saw (a busy machine's failure).
            sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *locker).await.unwrap();
            if sqlx::query_scalar::<_, i64>(sql).bind(query).fetch_one(&mut *locker).await.unwrap() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("no statement with {query:?} waited on the lock within 30 s"));
}

/// The batch statement's text (rows by ids and tenants).
const BATCH: &str = "FROM media_objects WHERE id = ANY";

#[tokio::test]
async fn reads_that_wait_for_a_busy_lane_share_one_statement_and_each_caller_gets_its_own_row() {
    let (_fx, repo, lane, _) = one_connection_lane(Duration::from_secs(30)).await;
    let (a1, a2, b1) =
        (stored(&repo, "tenant-a", 1).await, stored(&repo, "tenant-a", 2).await, stored(&repo, "tenant-b", 3).await);
    let counts = |statements, reads, failed| Some(ReadCounts { statements, reads, failed });
    assert_eq!(repo.coalesced_reads(), counts(0, 0, 0), "inserts do not read through the lane");

    // Idle lane: a read runs at once, alone.
    assert_eq!(read(&repo, "tenant-a", &a1.id).await.unwrap().as_ref(), Some(&a1));
    assert_eq!(repo.coalesced_reads(), counts(1, 1, 0));

    let mut held = lane.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(held.conn()).await.unwrap();
    let gave_up = read(&repo, "tenant-a", &a2.id);
    queued(&repo, 1).await;
    gave_up.abort();
    assert!(gave_up.await.unwrap_err().is_cancelled());
    assert_eq!(repo.queued_reads(), 0, "a caller that gave up left the queue");
    let asks = [
        ("tenant-a", a1.id.as_str(), Some(&a1)),
        ("tenant-a", a2.id.as_str(), Some(&a2)),
        ("tenant-b", b1.id.as_str(), Some(&b1)),
        ("tenant-a", b1.id.as_str(), None), // another tenant's id: nothing
        ("tenant-b", "jan_0000000000000000000000000", None),
        ("tenant-a", a1.id.as_str(), Some(&a1)), // the same row twice
    ];
    let mut tasks = Vec::new();
    for (n, (tenant, id, _)) in asks.iter().enumerate() {
        tasks.push(read(&repo, tenant, id));
        queued(&repo, n + 1).await;
    }
    held.done();
    for (task, (tenant, id, want)) in tasks.into_iter().zip(asks) {
        assert_eq!(task.await.unwrap().as_ref(), want, "{tenant} {id}");
    }
    assert_eq!(repo.coalesced_reads(), counts(2, 7, 0), "the six waiting reads in one statement");
    assert_eq!(repo.queued_reads(), 0);
}

/// Two reads (tenant a's row, then tenant b's) in one statement that waits on a lock of
/// `media_objects`, on a lane of `size` connections with `timeout`, the other connections held
/// (`spare`); the caller commits the lock holder's transaction to let it run.
struct LockedBatch {
    _fx: Fixture,
    repo: MediaRepo,
    rows: (MediaRecord, MediaRecord),
    reads: (JoinHandle<Option<MediaRecord>>, JoinHandle<Option<MediaRecord>>),
    locker: sqlx::PgConnection,
    spare: Vec<Lease>,
}

async fn locked_batch(size: u32, timeout: Duration) -> LockedBatch {
    let (fx, repo, lane, options) = lane_of(size, timeout).await;
    let (a1, b1) = (stored(&repo, "tenant-a", 1).await, stored(&repo, "tenant-b", 2).await);
    let mut held = lane.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(held.conn()).await.unwrap();
    let mut spare = Vec::new();
    for _ in 1..size {
        spare.push(lane.acquire().await.unwrap());
    }
    // Locked before the reads queue: nothing slow runs while their waits for a connection run.
    let mut locker = lock_table(&options).await;
    let first = read(&repo, "tenant-a", &a1.id);
    queued(&repo, 1).await;
    let second = read(&repo, "tenant-b", &b1.id);
    queued(&repo, 2).await;
    held.done(); // the first waiter (the leader) takes the connection and both reads
    waits_on_lock(&mut locker, BATCH).await;
    assert_eq!(repo.queued_reads(), 0, "both reads are in the waiting statement");
    LockedBatch { _fx: fx, repo, rows: (a1, b1), reads: (first, second), locker, spare }
}

#[tokio::test]
async fn a_leader_whose_client_goes_still_answers_the_reads_it_took() {
    let LockedBatch { _fx, repo, rows: (_, b1), reads: (leader, follower), mut locker, .. } =
        locked_batch(1, Duration::from_secs(30)).await;
    leader.abort(); // its client went
    assert!(leader.await.unwrap_err().is_cancelled());
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    assert_eq!(follower.await.unwrap().as_ref(), Some(&b1));
    let counts = repo.coalesced_reads().unwrap();
    assert_eq!(
        counts,
        ReadCounts { statements: 1, reads: 2, failed: 0 },
        "the follower's answer came from that statement"
    );
}

#[tokio::test]
async fn a_statement_without_an_answer_in_time_is_counted_and_its_reads_are_read_again_alone() {
    // Two connections, one held: the statement's, and one for the reads read again alone, which
    // then wait for no connection (a lane of one had them wait up to its 4 s for the first to get
    // its answer, a bound a stalled machine could pass).
    let LockedBatch { _fx, repo, rows: (a1, b1), reads: (first, second), mut locker, spare } =
        locked_batch(2, Duration::from_secs(4)).await;
    // The second caller's own wait for a connection runs out first: its read is in the statement,
    // so it waits for that answer instead of failing.
    wait_for("the statement to run out of time", || repo.coalesced_reads().unwrap().failed == 1).await;
    drop(spare); // its connection closes and its slot is free
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    assert_eq!(first.await.unwrap().as_ref(), Some(&a1));
    assert_eq!(second.await.unwrap().as_ref(), Some(&b1));
    let counts = repo.coalesced_reads().unwrap();
    assert_eq!(counts, ReadCounts { statements: 2, reads: 2, failed: 1 }, "each read again alone");
}

#[tokio::test]
async fn a_queued_read_that_runs_alone_has_no_time_limit_of_its_own() {
    let (_fx, repo, lane, options) = one_connection_lane(Duration::from_secs(2)).await;
    let a1 = stored(&repo, "tenant-a", 1).await;
    let mut held = lane.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(held.conn()).await.unwrap();
    // Locked before the read queues: nothing slow runs while its wait for a connection runs.
    let mut locker = lock_table(&options).await;
    let only = read(&repo, "tenant-a", &a1.id);
    queued(&repo, 1).await;
    held.done(); // the queued read takes the connection: its own read alone, waiting on the lock
    waits_on_lock(&mut locker, "FROM media_objects WHERE tenant_id = $1 AND id = $2").await;
    // Longer than the lane's acquire timeout, which bounds only statements of several reads.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    assert_eq!(only.await.unwrap().as_ref(), Some(&a1));
    let counts = repo.coalesced_reads().unwrap();
    assert_eq!(counts, ReadCounts { statements: 1, reads: 1, failed: 0 }, "one read, not cut off and read again");
}
