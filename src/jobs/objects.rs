//! Moving stored objects to a tenant's current DEK version, beside the running service: the object
//! pass of `rotate-keys --objects` ([`super::rotate`]) and all of `media-api encrypt-objects`
//! ([`encrypt_objects`]).
//!
//! Per tenant (holding the tenant's lock: rotation, encryption and shredding of one tenant exclude
//! each other), in passes over its ready rows in id order: each object still sealed under another
//! version (or, for `encrypt-objects`, stored in the clear) is copied through the service's own
//! cipher into a fresh key ([`Reseal`], implemented by `media::rekey`) and its rows are pointed at
//! the copy by a compare-and-set (`db::media::objects`): all rows of a dedup group in one
//! transaction. A move lost to a concurrent writer (a delete, a join, a completion) deletes its copy
//! and the next pass sees the object again. Old objects are kept `grace` after their rows moved
//! (links signed before the move name them), journaled as kept until then: the run deletes those
//! whose grace ends while it goes, and leaves the rest to the sweeper instead of waiting.
//!
//! Killed at any point, a re-run finishes the work: rows only ever point at a complete object. The
//! copies and old objects a kill leaves behind are journaled (`db::journal`: a copy from before its
//! first byte, an old object from the commit that moved its rows, kept until the end of its grace),
//! so the sweeper deletes them (a copy once older than its abandoned-upload age, an old object once
//! its grace has ended); `reconcile` remains the net under that.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::progress::Progress;
use super::removal::Removal;
use crate::crypto::envelope::KeyPurpose;
use crate::db::audit::AuditLog;
use crate::db::media::{MoveOutcome, ObjectToMove, ObjectsToMove};
use crate::db::tenant_keys::TenantKeys;
use crate::db::{locks, DbError};

/// Passes over a tenant's objects before giving up on those that concurrent writers kept changing.
const MAX_PASSES: u32 = 6;
/// Pause between passes.
const PASS_PAUSE: Duration = Duration::from_secs(2);
/// Objects copied at once.
const IN_FLIGHT: usize = 4;

/// Copies an object through the service's cipher into a fresh key sealed under a DEK version, and
/// points its rows at the copy (`media::rekey` implements it; the object cipher lives with the
/// media use cases, above the jobs).
#[async_trait::async_trait]
pub trait Reseal: Send + Sync {
    /// Moves `object` to `target` (see `db::media::objects` for what [`MoveOutcome::Lost`] means);
    /// the old object stays journaled as kept until `grace` after the move.
    async fn reseal(&self, object: &ObjectToMove, target: u32, grace: Duration) -> anyhow::Result<MoveOutcome>;
}

/// What the object work needs.
#[derive(Clone, Copy)]
pub struct ObjectWork<'a> {
    /// The copier.
    pub mover: &'a dyn Reseal,
    /// Rows and objects (old objects are deleted through it).
    pub removal: &'a Removal,
    /// Rows read per page.
    pub batch_size: u32,
    /// How long an old object stays after its rows moved.
    pub grace: Duration,
}

/// What the object work did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ObjectsSummary {
    /// Objects copied and their rows moved.
    pub objects_moved: u64,
    /// Rows moved with them (a dedup group's rows move together).
    pub object_rows_moved: u64,
    /// Moves lost to a concurrent writer (seen again by a later pass).
    pub objects_retried: u64,
    /// Objects that could not be copied (logged: missing, failing their integrity check, the store down).
    pub objects_failed: u64,
    /// Rows whose object is still to move after the last pass; a re-run moves them.
    pub object_rows_pending: i64,
    /// Old objects deleted by the run (their grace ended before it did).
    pub old_objects_deleted: u64,
    /// Old objects still kept when the run ended: the sweeper deletes them once their grace ends
    /// (a shred of their tenant at once).
    pub old_objects_kept: u64,
    /// When the last kept old object's grace ends.
    pub old_objects_kept_until: Option<DateTime<Utc>>,
}

/// Old objects kept for their grace: journaled as kept until then (`db::journal`), deleted by the
/// run when their time comes while it is still going, by the sweeper otherwise.
pub(crate) struct OldObjects {
    queue: VecDeque<(String, DateTime<Utc>)>,
    grace: Duration,
}

impl OldObjects {
    /// An empty queue whose objects are kept `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        Self { queue: VecDeque::new(), grace }
    }

    /// Queues an object whose rows have moved: kept until `grace` from now, which is no earlier
    /// than its journal entry says (dated in the move's transaction).
    fn push(&mut self, key: String) {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or_else(|_| chrono::Duration::days(7));
        self.queue.push_back((key, Utc::now() + grace));
    }

    /// Deletes the old objects whose grace has passed.
    async fn delete_due(&mut self, removal: &Removal, summary: &mut ObjectsSummary) {
        while self.queue.front().is_some_and(|(_, until)| *until <= Utc::now()) {
            if let Some((key, _)) = self.queue.pop_front() {
                removal.discard(&key).await;
                summary.old_objects_deleted += 1;
            }
        }
    }

    /// Deletes the old objects whose grace has passed and leaves the others to the sweeper (they
    /// are journaled as kept until their grace ends): the run does not wait for them.
    pub(crate) async fn finish(mut self, removal: &Removal, summary: &mut ObjectsSummary) {
        self.delete_due(removal, summary).await;
        summary.old_objects_kept = self.queue.len() as u64;
        summary.old_objects_kept_until = self.queue.back().map(|(_, until)| *until);
        if let Some(until) = summary.old_objects_kept_until {
            tracing::info!(
                old_objects = self.queue.len(),
                until = %until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "old objects left to the sweeper"
            );
        }
    }
}

/// Moves `tenant`'s objects that are `which` to `target` (its current DEK version), in passes
/// (see the module docs), and returns how many rows' objects are still `which` after the last
/// one. The caller holds the tenant's lock.
pub(crate) async fn move_tenant(
    work: ObjectWork<'_>,
    tenant: &str,
    which: ObjectsToMove,
    target: u32,
    progress: &mut Progress,
    old: &mut OldObjects,
    summary: &mut ObjectsSummary,
) -> Result<i64, DbError> {
    let repo = work.removal.media();
    let mut left = 0;
    for pass in 0..MAX_PASSES {
        if pass > 0 {
            tokio::time::sleep(PASS_PAUSE).await;
        }
        let mut after: Option<String> = None;
        loop {
            let batch = repo.objects_to_move(tenant, which, after.as_deref(), work.batch_size).await?;
            if batch.rows == 0 {
                break;
            }
            after = batch.last_id;
            let grace = old.grace;
            let outcomes: Vec<_> = futures::stream::iter(&batch.objects)
                .map(|object| async move { (object, work.mover.reseal(object, target, grace).await) })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            let mut rows = 0;
            for (object, outcome) in outcomes {
                match outcome {
                    Ok(MoveOutcome::Moved { rows: moved }) => {
                        summary.objects_moved += 1;
                        summary.object_rows_moved += moved;
                        rows += moved;
                        old.push(object.storage_key.clone());
                    }
                    Ok(MoveOutcome::Lost(why)) => {
                        tracing::debug!(tenant, id = object.id, why, "object move lost to a concurrent writer");
                        summary.objects_retried += 1;
                    }
                    Err(err) => {
                        tracing::warn!(tenant, id = object.id, error = %format!("{err:#}"), "cannot move an object");
                        summary.objects_failed += 1;
                    }
                }
            }
            progress.advance(tenant, rows);
            old.delete_due(work.removal, summary).await;
        }
        left = repo.objects_left(tenant, which).await?;
        if left == 0 {
            break;
        }
    }
    Ok(left)
}

/// What `encrypt-objects` did (or, with `dry_run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct EncryptSummary {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Tenants covered.
    pub tenants: usize,
    /// Rows whose object is stored in the clear, per tenant (before the run).
    pub plain_rows: std::collections::BTreeMap<String, i64>,
    /// What was moved.
    #[serde(flatten)]
    pub objects: ObjectsSummary,
    /// Wall time.
    pub seconds: f64,
}

/// Seals every object of `tenants` (every tenant with rows when empty) that is stored in the clear
/// under its tenant's current DEK version (`media-api encrypt-objects`); each tenant's run is an
/// `objects.encrypted` event in its audit chain.
pub async fn encrypt_objects(
    keys: &TenantKeys,
    work: ObjectWork<'_>,
    tenants: &[String],
    dry_run: bool,
) -> Result<EncryptSummary, DbError> {
    let started = Instant::now();
    let repo = work.removal.media();
    let tenants = if tenants.is_empty() { repo.tenants().await? } else { tenants.to_vec() };
    let mut summary = EncryptSummary { dry_run, tenants: tenants.len(), ..EncryptSummary::default() };
    for tenant in &tenants {
        summary.plain_rows.insert(tenant.clone(), repo.objects_left(tenant, ObjectsToMove::Plain).await?);
    }
    if !dry_run {
        let bars = indicatif::MultiProgress::new();
        let total = summary.plain_rows.values().sum::<i64>().max(0) as u64;
        let mut progress = Progress::new(&bars, total, "rows", "encrypting objects");
        let mut old = OldObjects::new(work.grace);
        for tenant in &tenants {
            let lock = locks::lock_tenant(keys.db(), tenant).await?;
            let target = keys.current(tenant, KeyPurpose::Dek).await?.version;
            let before = summary.objects.objects_moved;
            let moved =
                move_tenant(work, tenant, ObjectsToMove::Plain, target, &mut progress, &mut old, &mut summary.objects)
                    .await;
            lock.release().await;
            summary.objects.object_rows_pending += moved?;
            let details = json!({ "version": target, "objects_moved": summary.objects.objects_moved - before });
            AuditLog::new(repo.keys().clone()).admin(tenant, "objects.encrypted", details).await?;
        }
        progress.finish();
        old.finish(work.removal, &mut summary.objects).await;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
