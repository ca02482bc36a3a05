//! Online key rotation (what `media-api rotate-keys` runs).
//!
//! 1. Re-wraps every tenant key (DEKs and index keys) not under the primary KEK — cost ~ tenants.
//! 2. Unless `--rewrap-only`: gives each selected tenant a new DEK version and re-encrypts its rows
//!    in batches (keyset pagination by id, compare-and-set updates, every new ciphertext verified
//!    before commit). The service keeps running: its writers switch to the new version within the
//!    key cache's "current" TTL, and rows they write meanwhile are caught by later passes.
//! 3. With `--objects` ([`rotate_with_objects`]): moves the tenant's objects sealed under older
//!    versions to the new one ([`super::objects`]: copied through the service's cipher, rows moved by
//!    compare-and-set, a dedup group's rows together). Without it objects stay sealed under their
//!    recorded versions, which stay readable.
//! 4. A final pass re-counts rows per version and retires old versions that no row uses, neither
//!    for its columns nor for its object (the check and the update are one statement); KEK ids no
//!    longer referenced are reported as safe to remove.
//!
//! Killed at any point, a re-run finishes the job: rows are only ever updated from one complete,
//! verified state to another. `--dry-run` prints the plan and changes nothing. Progress goes to a
//! bar on a terminal and to log lines otherwise; a JSON summary ends the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::objects::{move_tenant, ObjectWork, ObjectsSummary, OldObjects};
use super::progress::Progress;
use crate::crypto::envelope::KeyPurpose;
use crate::db::audit::{AuditLog, SYSTEM_CHAIN};
use crate::db::media::{MediaRepo, ObjectsToMove};
use crate::db::tenant_keys::TenantKeys;
use crate::db::{locks, DbError};

/// Passes over a tenant's rows before giving up on rows written concurrently with old keys.
const MAX_PASSES: u32 = 6;
/// Pause between passes, longer than the writers' "current version" cache.
const PASS_PAUSE: Duration = Duration::from_secs(2);

/// What to rotate (the options of `rotate-keys`).
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Only this tenant (repeatable; default: every tenant).
    pub tenants: Vec<String>,
    /// Rows re-encrypted per transaction.
    pub batch_size: u32,
    /// Only re-wrap keys under the primary KEK; do not re-encrypt rows.
    pub rewrap_only: bool,
    /// Print the plan and change nothing.
    pub dry_run: bool,
}

/// One tenant in a dry-run plan.
#[derive(Debug, Serialize)]
pub struct TenantPlan {
    /// Tenant.
    pub tenant: String,
    /// Media rows per DEK version.
    pub rows_per_version: BTreeMap<u32, i64>,
    /// Media rows per DEK version of their object (objects in the clear not counted).
    pub object_rows_per_version: BTreeMap<u32, i64>,
    /// Key rows (DEKs and index keys) not under the primary KEK.
    pub keys_to_rewrap: usize,
}

/// A retired version.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Retired {
    /// Tenant.
    pub tenant: String,
    /// DEK version.
    pub version: u32,
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The primary KEK everything is wrapped under afterwards.
    pub primary_kek: String,
    /// Tenants covered.
    pub tenants: usize,
    /// Key rows re-wrapped under the primary KEK.
    pub keys_rewrapped: u64,
    /// Rows moved to a new DEK version.
    pub rows_reencrypted: u64,
    /// Rows still on an old version (written concurrently after the last pass); a re-run moves them.
    pub rows_pending: i64,
    /// DEK versions retired.
    pub versions_retired: Vec<Retired>,
    /// What the object pass did (`--objects` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectsSummary>,
    /// Key rows per KEK id still referenced.
    pub keks_in_use: BTreeMap<String, i64>,
    /// Keyring ids no key row references: safe to remove from the keyring.
    pub keks_safe_to_remove: Vec<String>,
    /// The plan, with `--dry-run`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<TenantPlan>,
    /// Wall time.
    pub seconds: f64,
}

/// The rotation itself (also what tests call): rows only, objects stay where they are.
pub async fn rotate(keys: &TenantKeys, repo: &MediaRepo, opts: &RotateOptions) -> Result<Summary, DbError> {
    run(keys, repo, opts, None).await
}

/// [`rotate`], then each tenant's objects moved to its new version before old versions retire
/// (`rotate-keys --objects`).
pub async fn rotate_with_objects(
    keys: &TenantKeys,
    repo: &MediaRepo,
    opts: &RotateOptions,
    objects: ObjectWork<'_>,
) -> Result<Summary, DbError> {
    run(keys, repo, opts, Some(objects)).await
}

/// The objects' side of a run: the work, its progress and its old objects.
struct ObjectRun<'a> {
    work: ObjectWork<'a>,
    progress: Progress,
    old: OldObjects,
    summary: ObjectsSummary,
}

async fn run(
    keys: &TenantKeys,
    repo: &MediaRepo,
    opts: &RotateOptions,
    objects: Option<ObjectWork<'_>>,
) -> Result<Summary, DbError> {
    let started = Instant::now();
    let tenants = if opts.tenants.is_empty() { keys.tenants().await? } else { opts.tenants.clone() };
    let mut summary = Summary {
        dry_run: opts.dry_run,
        primary_kek: keys.keyring().primary_id().to_owned(),
        tenants: tenants.len(),
        ..Summary::default()
    };
    if opts.dry_run {
        summary.plan = plan(keys, repo, &tenants).await?;
    } else {
        summary.keys_rewrapped = rewrap(keys, opts).await?;
        if summary.keys_rewrapped > 0 {
            let details = serde_json::json!({ "keys": summary.keys_rewrapped, "to_kek": summary.primary_kek });
            AuditLog::new(repo.keys().clone()).admin(SYSTEM_CHAIN, "keys.rewrapped", details).await?;
        }
        if !opts.rewrap_only {
            let bars = indicatif::MultiProgress::new();
            let total: i64 = count_rows(keys, &tenants).await?;
            let mut progress = Progress::new(&bars, total.max(0) as u64, "rows", "re-encrypting");
            let mut objects = match objects {
                Some(work) => {
                    let total = count_sealed_objects(repo, &tenants).await?.max(0) as u64;
                    let progress = Progress::new(&bars, total, "object rows", "moving objects");
                    let old = OldObjects::new(work.grace);
                    Some(ObjectRun { work, progress, old, summary: ObjectsSummary::default() })
                }
                None => None,
            };
            for tenant in &tenants {
                reencrypt_tenant(keys, repo, tenant, opts.batch_size, &mut progress, objects.as_mut(), &mut summary)
                    .await?;
            }
            progress.finish();
            if let Some(ObjectRun { work, progress, old, summary: mut moved }) = objects {
                progress.finish();
                old.finish(work.removal, &mut moved).await;
                summary.objects = Some(moved);
            }
        }
    }
    summary.keks_in_use = keys.keks_in_use().await?.into_iter().collect();
    summary.keks_safe_to_remove =
        keys.keyring().ids().filter(|id| !summary.keks_in_use.contains_key(*id)).map(str::to_owned).collect();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn rewrap(keys: &TenantKeys, opts: &RotateOptions) -> Result<u64, DbError> {
    if opts.tenants.is_empty() {
        return keys.rewrap_to_primary(None).await;
    }
    let mut total = 0;
    for tenant in &opts.tenants {
        total += keys.rewrap_to_primary(Some(tenant)).await?;
    }
    Ok(total)
}

async fn count_rows(keys: &TenantKeys, tenants: &[String]) -> Result<i64, DbError> {
    let mut total = 0;
    for tenant in tenants {
        total += keys.rows_per_version(tenant).await?.iter().map(|(_, n)| n).sum::<i64>();
    }
    Ok(total)
}

/// Rows whose object is sealed (under any version: after the roll every one is older).
async fn count_sealed_objects(repo: &MediaRepo, tenants: &[String]) -> Result<i64, DbError> {
    let mut total = 0;
    for tenant in tenants {
        total += repo.object_rows_per_version(tenant).await?.0.iter().map(|(_, n)| n).sum::<i64>();
    }
    Ok(total)
}

async fn plan(keys: &TenantKeys, repo: &MediaRepo, tenants: &[String]) -> Result<Vec<TenantPlan>, DbError> {
    let primary = keys.keyring().primary_id().to_owned();
    let mut plans = Vec::new();
    for tenant in tenants {
        let key_rows = keys.key_rows(Some(tenant)).await?;
        plans.push(TenantPlan {
            tenant: tenant.clone(),
            rows_per_version: keys.rows_per_version(tenant).await?.into_iter().collect(),
            object_rows_per_version: repo.object_rows_per_version(tenant).await?.0.into_iter().collect(),
            keys_to_rewrap: key_rows.iter().filter(|k| k.kek_id != primary && k.state != "destroyed").count(),
        });
    }
    Ok(plans)
}

async fn reencrypt_tenant(
    keys: &TenantKeys,
    repo: &MediaRepo,
    tenant: &str,
    batch_size: u32,
    progress: &mut Progress,
    objects: Option<&mut ObjectRun<'_>>,
    summary: &mut Summary,
) -> Result<(), DbError> {
    // Rotation and shredding of one tenant exclude each other, in every process.
    let lock = locks::lock_tenant(keys.db(), tenant).await?;
    let result = reencrypt_locked(keys, repo, tenant, batch_size, progress, objects, summary).await;
    lock.release().await;
    result
}

async fn reencrypt_locked(
    keys: &TenantKeys,
    repo: &MediaRepo,
    tenant: &str,
    batch_size: u32,
    progress: &mut Progress,
    objects: Option<&mut ObjectRun<'_>>,
    summary: &mut Summary,
) -> Result<(), DbError> {
    let target = keys.roll(tenant, KeyPurpose::Dek).await?;
    let mut pending = 0;
    for pass in 0..MAX_PASSES {
        if pass > 0 {
            tokio::time::sleep(PASS_PAUSE).await;
        }
        // Pipelined: batch k is written while batch k+1 is read and re-sealed (different rows).
        let mut prepared = repo.prepare_reencrypt(tenant, target, None, batch_size).await?;
        while !prepared.is_empty() {
            let after = prepared.last_id().map(str::to_owned);
            let (written, next) = tokio::join!(
                repo.write_reencrypted(tenant, target, prepared),
                repo.prepare_reencrypt(tenant, target, after.as_deref(), batch_size)
            );
            let written = written?;
            summary.rows_reencrypted += written.reencrypted;
            progress.advance(tenant, written.reencrypted);
            prepared = next?;
        }
        pending = keys.rows_per_version(tenant).await?.iter().filter(|(v, _)| *v != target).map(|(_, n)| n).sum();
        if pending == 0 {
            break;
        }
    }
    summary.rows_pending += pending;
    let which = ObjectsToMove::SealedNotUnder(target);
    let mut objects_moved = None;
    let objects = match objects {
        Some(run) => {
            let before = run.summary.objects_moved;
            move_tenant(run.work, tenant, which, target, &mut run.progress, &mut run.old, &mut run.summary).await?;
            objects_moved = Some(run.summary.objects_moved - before);
            Some(&mut run.summary)
        }
        None => None,
    };
    tracing::info!(tenant, version = target, rows_pending = pending, "retiring unused DEK versions");
    let retired = keys.retire_unused(tenant, target).await?;
    if let Some(moved) = objects {
        // Counted after retiring: an upload sealed before the roll may have landed after the last pass.
        moved.object_rows_pending += repo.objects_left(tenant, which).await?;
    }
    let details = serde_json::json!({
        "to_version": target, "rows_pending": pending, "objects_moved": objects_moved, "retired_versions": retired
    });
    let audit = AuditLog::new(repo.keys().clone());
    audit.admin(tenant, "key.rotated", details).await?;
    for version in retired {
        let details = serde_json::json!({ "purpose": "dek", "version": version });
        audit.admin(tenant, "key.retired", details).await?;
        summary.versions_retired.push(Retired { tenant: tenant.to_owned(), version });
    }
    Ok(())
}
