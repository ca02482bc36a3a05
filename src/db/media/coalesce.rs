//! Reads of one row by id — presign, download, delete: the hot reads — coalesced on the server's
//! read lane ([`crate::db::read_lane`]): a read that finds every lane connection busy joins one
//! queue and waits for one; whichever waiting read gets a connection first reads its own row and
//! the other queued ones (up to 64) in one statement, and each caller gets its own. Under load one
//! statement and one round trip carry many rows instead of one each, for the service and for PostgreSQL alike
//! (docs/performance.md, session 13).
//!
//! - Nothing waits for company, and the lane's connections are all used: a read that finds a
//!   connection free runs on it at once, alone (a plain primary-key lookup, in the caller's task);
//!   only reads that find every connection busy queue, and the next connection to come free takes
//!   them (up to 64). (Taking the queue on any free connection would gather every read into one
//!   statement at a time and leave the others idle: slower than no coalescing, measured.)
//! - Each caller gets only the row of its own tenant and id: the statement filters on both lists
//!   and every row is matched to its callers on both. The same id asked for twice is read once.
//! - A statement that carries other callers' reads runs in a task of its own, so a leader whose
//!   client goes away cancels nobody else's read. It is bounded by the lane's acquire timeout (a
//!   read alone is not: it waits as any statement of the pool, within the request's deadline); when
//!   it fails or runs out of time its connection is closed, the failure logged and counted, and
//!   each of its callers reads again alone (each then sees its own error, as without coalescing).
//! - A caller that gives up takes its entry off the queue ([`Queued`]): the queue holds only the
//!   reads still waiting, whatever the database does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::model::MediaRow;
use super::sql::COLUMNS;
use crate::db::read_lane::{Lease, ReadLane};
use crate::db::DbError;

/// At most this many rows in one statement (the rest wait for the next).
const MAX_BATCH: usize = 64;

/// One row by its tenant and id.
pub(super) static SINGLE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id = $2"));
/// Rows by ids (unique across tenants) and tenants: both lists filter, and each row is matched to
/// its callers on both.
static BATCH: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM media_objects WHERE id = ANY($1) AND tenant_id = ANY($2)"));

/// What the read lane's statements for single rows did, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Statements that answered.
    pub statements: u64,
    /// Reads they answered (over `statements`: the coalescing).
    pub reads: u64,
    /// Statements carrying several reads that failed or ran out of time (their reads were each
    /// read again alone).
    pub failed: u64,
}

/// The read lane with its queue of waiting reads.
pub(crate) struct LaneReads {
    lane: Arc<ReadLane>,
    queue: Mutex<Queue>,
    statements: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct Queue {
    next: u64,
    /// By ticket: the oldest first.
    waiting: BTreeMap<u64, Waiting>,
}

struct Waiting {
    tenant: String,
    id: String,
    reply: oneshot::Sender<Reply>,
}

/// The caller's row, or `None` when it is to read alone (its statement failed).
type Reply = Option<Option<MediaRow>>;

/// A caller's place in the queue, given up when the caller's read ends however it ends.
struct Queued<'a> {
    reads: &'a LaneReads,
    ticket: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.reads.queue().waiting.remove(&self.ticket);
    }
}

impl std::fmt::Debug for LaneReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneReads").field("lane", &self.lane).field("queued", &self.queued()).finish()
    }
}

impl LaneReads {
    pub(crate) fn new(lane: Arc<ReadLane>) -> Self {
        let counter = || AtomicU64::new(0);
        Self { lane, queue: Mutex::default(), statements: counter(), reads: counter(), failed: counter() }
    }

    pub(crate) fn lane(&self) -> &Arc<ReadLane> {
        &self.lane
    }

    pub(crate) fn counts(&self) -> ReadCounts {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ReadCounts { statements: load(&self.statements), reads: load(&self.reads), failed: load(&self.failed) }
    }

    /// Reads queued and not yet taken into a statement.
    pub(crate) fn queued(&self) -> usize {
        self.queue().waiting.len()
    }

    /// The row of `tenant`'s `id`, still sealed: read in the next statement on the lane, whoever
    /// runs it.
    pub(crate) async fn row(self: &Arc<Self>, tenant: &str, id: &str) -> Result<Option<MediaRow>, DbError> {
        if let Some(lease) = self.lane.try_acquire().await {
            return self.read_one(lease?, tenant, id).await;
        }
        let (reply, mut answer) = oneshot::channel();
        let ticket = {
            let mut queue = self.queue();
            let ticket = queue.next;
            queue.next += 1;
            queue.waiting.insert(ticket, Waiting { tenant: tenant.to_owned(), id: id.to_owned(), reply });
            ticket
        };
        let _queued = Queued { reads: self, ticket };
        tokio::select! {
            biased;
            answer = &mut answer => return self.answered(answer.ok().flatten(), tenant, id).await,
            lease = self.lane.acquire() => match lease {
                Ok(lease) => if let Some(own) = self.lead(lease, ticket, tenant, id).await {
                    return own;
                },
                // Still queued: nobody is reading it, so the caller gets the lane's error.
                Err(err) if self.queue().waiting.remove(&ticket).is_some() => return Err(err.into()),
                Err(_) => {} // taken into a running statement: its answer comes
            },
        }
        // Our read is in a statement: ours, or another caller's that is running.
        let answer = answer.await.ok().flatten();
        self.answered(answer, tenant, id).await
    }

    async fn answered(&self, answer: Reply, tenant: &str, id: &str) -> Result<Option<MediaRow>, DbError> {
        match answer {
            Some(row) => Ok(row),
            None => self.alone(tenant, id).await,
        }
    }

    /// One read by itself, after its statement failed: its own answer or error.
    async fn alone(&self, tenant: &str, id: &str) -> Result<Option<MediaRow>, DbError> {
        self.read_one(self.lane.acquire().await?, tenant, id).await
    }

    /// One read on `lease`, in the caller's task, with no time limit of its own (the request's
    /// deadline bounds it, as any statement of the pool): its own answer or error.
    async fn read_one(&self, mut lease: Lease, tenant: &str, id: &str) -> Result<Option<MediaRow>, DbError> {
        let row = sqlx::query_as(SINGLE.as_str()).bind(tenant).bind(id).fetch_optional(lease.conn()).await?;
        lease.done();
        self.count(1);
        Ok(row)
    }

    /// Takes the caller's own read (`ticket`, of `tenant`'s `id`) and the oldest others, up to
    /// [`MAX_BATCH`], and reads them on `lease`: when the caller's is the only one, in its task as
    /// [`Self::read_one`] (its answer returned); else in a task of its own (answers by reply).
    async fn lead(
        self: &Arc<Self>,
        lease: Lease,
        ticket: u64,
        tenant: &str,
        id: &str,
    ) -> Option<Result<Option<MediaRow>, DbError>> {
        let (batch, own) = {
            let mut queue = self.queue();
            let own = queue.waiting.remove(&ticket);
            let mut batch: Vec<Waiting> = own.into_iter().collect();
            let own = !batch.is_empty();
            while batch.len() < MAX_BATCH {
                let Some((_, next)) = queue.waiting.pop_first() else { break };
                if !next.reply.is_closed() {
                    batch.push(next);
                }
            }
            (batch, own)
        };
        match batch.len() {
            0 => lease.done(),
            1 if own => return Some(self.read_one(lease, tenant, id).await),
            _ => {
                let reads = self.clone();
                tokio::spawn(async move { reads.run(lease, batch).await });
            }
        }
        None
    }

    /// Reads `batch` (other callers' reads among them) on `lease` within the acquire timeout and
    /// answers each caller.
    async fn run(&self, mut lease: Lease, batch: Vec<Waiting>) {
        let rows = tokio::time::timeout(self.lane.acquire_timeout(), fetch(&mut lease, &batch)).await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            failed => {
                drop(lease); // closed, not reused
                self.failed.fetch_add(1, Ordering::Relaxed);
                let error = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {:?}", self.lane.acquire_timeout()),
                };
                tracing::warn!(reads = batch.len(), %error, "read lane statement failed; its reads are retried one by one");
                for waiting in batch {
                    let _ = waiting.reply.send(None);
                }
                return;
            }
        };
        self.count(batch.len() as u64);
        for waiting in batch {
            let row = rows.iter().find(|r| r.tenant_id == waiting.tenant && r.id == waiting.id).cloned();
            let _ = waiting.reply.send(Some(row));
        }
        lease.done(); // after the answers: a caller woken by the free connection finds its own
    }

    fn count(&self, reads: u64) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(reads, Ordering::Relaxed);
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rows of `batch` (one statement; a single read as a plain primary-key lookup).
async fn fetch(lease: &mut Lease, batch: &[Waiting]) -> Result<Vec<MediaRow>, sqlx::Error> {
    if let [one] = batch {
        let query = sqlx::query_as(SINGLE.as_str()).bind(&one.tenant).bind(&one.id);
        return Ok(query.fetch_optional(lease.conn()).await?.into_iter().collect());
    }
    let (mut ids, mut tenants) = (Vec::with_capacity(batch.len()), Vec::new());
    for waiting in batch {
        if !ids.contains(&waiting.id.as_str()) {
            ids.push(waiting.id.as_str());
        }
        if !tenants.contains(&waiting.tenant.as_str()) {
            tenants.push(waiting.tenant.as_str());
        }
    }
    sqlx::query_as(BATCH.as_str()).bind(ids).bind(tenants).fetch_all(lease.conn()).await
}
