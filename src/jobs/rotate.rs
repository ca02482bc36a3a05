//! Online key rotation (what `media-api rotate-keys` runs).
//!
//! 1. Re-wraps every tenant key (DEKs and index keys) not under the primary KEK — cost ~ tenants.
//! 2. Unless `--rewrap-only`: gives each selected tenant a new DEK version and re-encrypts its rows
//!    in batches (keyset pagination by id, compare-and-set updates, every new ciphertext verified
//!    before commit). The service keeps running: its writers switch to the new version within the
//!    key cache's "current" TTL, and rows they write meanwhile are caught by later passes.
//! 3. A final pass re-counts rows per version and retires old versions no row uses (the check and
//!    the update are one statement); KEK ids no longer referenced are reported as safe to remove.
//!
//! Killed at any point, a re-run finishes the job: rows are only ever updated from one complete,
//! verified state to another. `--dry-run` prints the plan and changes nothing. Progress goes to a
//! bar on a terminal and to log lines otherwise; a JSON summary ends the run.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::crypto::envelope::KeyPurpose;
use crate::db::audit::{AuditLog, SYSTEM_CHAIN};
use crate::db::media::MediaRepo;
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

/// Progress output: a bar on a terminal, log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    done: u64,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}")
            {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, done: 0, started: Instant::now() }
    }

    fn advance(&mut self, tenant: &str, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(bar) => {
                bar.set_message(tenant.to_owned());
                bar.inc(rows);
            }
            None => {
                let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(tenant, rows_done = self.done, rows_per_second = rate as u64, "re-encrypting");
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The rotation itself (also what tests call).
pub async fn rotate(keys: &TenantKeys, repo: &MediaRepo, opts: &RotateOptions) -> Result<Summary, DbError> {
    let started = Instant::now();
    let tenants = if opts.tenants.is_empty() { keys.tenants().await? } else { opts.tenants.clone() };
    let mut summary = Summary {
        dry_run: opts.dry_run,
        primary_kek: keys.keyring().primary_id().to_owned(),
        tenants: tenants.len(),
        ..Summary::default()
    };
    if opts.dry_run {
        summary.plan = plan(keys, &tenants).await?;
    } else {
        summary.keys_rewrapped = rewrap(keys, opts).await?;
        if summary.keys_rewrapped > 0 {
            let details = serde_json::json!({ "keys": summary.keys_rewrapped, "to_kek": summary.primary_kek });
            AuditLog::new(repo.keys().clone()).admin(SYSTEM_CHAIN, "keys.rewrapped", details).await?;
        }
        if !opts.rewrap_only {
            let total: i64 = count_rows(keys, &tenants).await?;
            let mut progress = Progress::new(total.max(0) as u64);
            for tenant in &tenants {
                reencrypt_tenant(keys, repo, tenant, opts.batch_size, &mut progress, &mut summary).await?;
            }
            progress.finish();
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

async fn plan(keys: &TenantKeys, tenants: &[String]) -> Result<Vec<TenantPlan>, DbError> {
    let primary = keys.keyring().primary_id().to_owned();
    let mut plans = Vec::new();
    for tenant in tenants {
        let key_rows = keys.key_rows(Some(tenant)).await?;
        plans.push(TenantPlan {
            tenant: tenant.clone(),
            rows_per_version: keys.rows_per_version(tenant).await?.into_iter().collect(),
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
    summary: &mut Summary,
) -> Result<(), DbError> {
    // Rotation and shredding of one tenant exclude each other, in every process.
    let lock = locks::lock_tenant(keys.db(), tenant).await?;
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
    tracing::info!(tenant, version = target, rows_pending = pending, "retiring unused DEK versions");
    let retired = keys.retire_unused(tenant, target).await?;
    let details = serde_json::json!({ "to_version": target, "rows_pending": pending, "retired_versions": retired });
    let audit = AuditLog::new(repo.keys().clone());
    audit.admin(tenant, "key.rotated", details).await?;
    for version in retired {
        let details = serde_json::json!({ "purpose": "dek", "version": version });
        audit.admin(tenant, "key.retired", details).await?;
        summary.versions_retired.push(Retired { tenant: tenant.to_owned(), version });
    }
    lock.release().await;
    Ok(())
}
