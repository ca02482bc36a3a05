//! `rotate-keys` on both databases: DEK rotation of 10k rows, KEK rotation and removal of the old
//! master key, dry runs, concurrent writers, and crash safety (the real binary killed mid-run).

use std::sync::Arc;
use std::time::Duration;

use media_api::crypto::envelope::KeyPurpose;
use media_api::crypto::keyring::Keyring;
use media_api::db::media::{InsertOutcome, MediaRecord, MediaRepo, MediaStatus};
use media_api::db::tenant_keys::KeySettings;
use media_api::jobs::rotate::{rotate, RotateOptions};
use media_api::with_pool;

use crate::support::repository::{fixtures, new_media, Fixture};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

fn opts() -> RotateOptions {
    RotateOptions { tenants: Vec::new(), batch_size: 500, rewrap_only: false, dry_run: false }
}

/// Inserts `per_tenant` rows in each tenant; returns (tenant, id) of each.
async fn populate(repo: &MediaRepo, per_tenant: usize) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for tenant in TENANTS {
        for i in 0..per_tenant {
            let media = new_media(tenant, format!("{tenant}-{i}").as_bytes());
            repo.insert(&media).await.unwrap();
            ids.push((tenant.to_owned(), media.id));
        }
    }
    ids
}

async fn versions_in_use(fx: &Fixture) -> Vec<(String, i32, i64)> {
    let sql =
        "SELECT tenant_id, dek_version, COUNT(*) FROM media_objects GROUP BY tenant_id, dek_version ORDER BY 1, 2";
    with_pool!(&fx.db, |pool| sqlx::query_as(sql).fetch_all(pool).await).unwrap()
}

async fn key_states(fx: &Fixture) -> Vec<(String, String, i32, String, String)> {
    let sql = "SELECT tenant_id, purpose, version, kek_id, state FROM tenant_keys ORDER BY 1, 2, 3";
    with_pool!(&fx.db, |pool| sqlx::query_as(sql).fetch_all(pool).await).unwrap()
}

async fn assert_all_readable(repo: &MediaRepo, ids: &[(String, String)], version: Option<u32>) {
    for (tenant, id) in ids {
        let media = repo.get(tenant, id).await.unwrap().unwrap_or_else(|| panic!("{tenant}/{id} lost"));
        if let Some(version) = version {
            assert_eq!(media.dek_version, version, "{tenant}/{id}");
        }
    }
}

#[tokio::test]
async fn ten_thousand_rows_over_three_tenants_move_to_a_new_dek_and_the_old_one_is_retired() {
    for fx in fixtures(KeySettings::default()).await {
        let ids = populate(&fx.repo, 3334).await;
        let (keys, repo) = fx.reopen(KeySettings::default());
        let summary = rotate(&keys, &repo, &opts()).await.unwrap();
        assert_eq!(summary.rows_reencrypted, ids.len() as u64, "{}", fx.db.backend());
        assert_eq!(summary.rows_pending, 0);
        assert_eq!(summary.versions_retired.len(), 3);
        assert_eq!(summary.keks_safe_to_remove, Vec::<String>::new());
        let (_, cold) = fx.reopen(KeySettings::default());
        assert_all_readable(&cold, &ids, Some(2)).await;
        let status = media_api::admin::keys::status(&repo, Some("acme")).await.unwrap();
        let deks: Vec<(u32, &str, Option<i64>)> = status
            .keys
            .iter()
            .filter(|k| k.key.purpose == "dek")
            .map(|k| (k.key.version, k.key.state.as_str(), k.rows))
            .collect();
        assert_eq!(deks, vec![(1, "retired", Some(0)), (2, "active", Some(3334))], "{}", fx.db.backend());
        assert_eq!(
            status.keks_in_use.get("k1"),
            Some(&10),
            "two DEK versions and an index key per tenant, the audit key"
        );
        let kinds: Vec<String> = with_pool!(&fx.db, |pool| sqlx::query_scalar(
            "SELECT kind FROM audit_events WHERE tenant_id = 'acme' ORDER BY chain_seq"
        )
        .fetch_all(pool)
        .await)
        .unwrap();
        assert_eq!(
            kinds,
            ["key.created", "key.created", "key.created", "key.rotated", "key.retired"],
            "{}",
            fx.db.backend()
        );
        let audit = media_api::db::audit::AuditLog::new(fx.repo.keys().clone());
        assert!(audit.verify(None).await.unwrap().broken.is_empty());
        let states = key_states(&fx).await;
        for tenant in TENANTS {
            let dek: Vec<_> =
                states.iter().filter(|s| s.0 == tenant && s.1 == "dek").map(|s| (s.2, s.4.as_str())).collect();
            assert_eq!(dek, vec![(1, "retired"), (2, "active")], "{}: {tenant}", fx.db.backend());
        }
    }
}

#[tokio::test]
async fn a_new_primary_kek_then_removing_the_old_one_keeps_every_row_readable() {
    for fx in fixtures(KeySettings::default()).await {
        let ids = populate(&fx.repo, 20).await;
        // The fixture's keyring is "k1"; put a new primary in front of it.
        let fixture_ring_id = fx.keyring.primary_id().to_owned();
        let new_key = Keyring::generate_key();
        let both = format!("k2:{new_key},{fixture_ring_id}:{}", fx.key_text);
        let (keys, repo) = fx.with_keyring(Arc::new(Keyring::parse_env(&both).unwrap()), KeySettings::default());
        let summary = rotate(&keys, &repo, &RotateOptions { rewrap_only: true, ..opts() }).await.unwrap();
        assert_eq!(summary.keys_rewrapped, 7, "{}: a DEK and an index key per tenant, the audit key", fx.db.backend());
        assert_eq!(summary.rows_reencrypted, 0);
        assert_eq!(summary.keks_safe_to_remove, vec![fixture_ring_id.clone()]);
        let only_new = Arc::new(Keyring::parse_env(&format!("k2:{new_key}")).unwrap());
        let (after_keys, after) = fx.with_keyring(only_new, KeySettings::default());
        assert_all_readable(&after, &ids, Some(1)).await;
        // The audit chain is checked with the audit key, now unwrapped by the new KEK alone.
        let report = media_api::db::audit::AuditLog::new(after_keys).verify(None).await.unwrap();
        assert!(report.events > 0 && report.broken.is_empty(), "{report:?}");
    }
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    for fx in fixtures(KeySettings::default()).await {
        populate(&fx.repo, 5).await;
        let before = (key_states(&fx).await, versions_in_use(&fx).await);
        let (keys, repo) = fx.reopen(KeySettings::default());
        let summary = rotate(&keys, &repo, &RotateOptions { dry_run: true, ..opts() }).await.unwrap();
        assert!(summary.dry_run);
        assert_eq!(summary.plan.len(), 3);
        assert_eq!(summary.plan[0].rows_per_version.get(&1), Some(&5));
        assert_eq!((key_states(&fx).await, versions_in_use(&fx).await), before, "{}", fx.db.backend());
    }
}

#[tokio::test]
async fn rows_written_during_a_rotation_all_survive() {
    for fx in fixtures(KeySettings::default()).await {
        let mut ids = populate(&fx.repo, 300).await;
        let (keys, repo) = fx.reopen(KeySettings { current_ttl: Duration::from_millis(200), ..KeySettings::default() });
        let writer = {
            let (_, writer_repo) =
                fx.reopen(KeySettings { current_ttl: Duration::from_millis(200), ..KeySettings::default() });
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..150 {
                    let media = new_media("acme", format!("during-{i}").as_bytes());
                    writer_repo.insert(&media).await.unwrap();
                    written.push(("acme".to_owned(), media.id));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                written
            })
        };
        let summary = rotate(&keys, &repo, &RotateOptions { batch_size: 50, ..opts() }).await.unwrap();
        ids.extend(writer.await.unwrap());
        let (_, cold) = fx.reopen(KeySettings::default());
        assert_all_readable(&cold, &ids, None).await;
        let total: i64 = versions_in_use(&fx).await.iter().map(|v| v.2).sum();
        assert_eq!(total, ids.len() as i64, "{}: row count changed", fx.db.backend());
        assert!(summary.rows_reencrypted >= 900, "{summary:?}");
    }
}

#[tokio::test]
async fn killing_the_binary_mid_rotation_and_running_it_again_finishes_with_nothing_lost() {
    for fx in fixtures(KeySettings::default()).await {
        let ids = populate(&fx.repo, 700).await;
        let bin = env!("CARGO_BIN_EXE_media-api");
        let env = [
            ("MEDIA_DATABASE_URL", fx.db_url.clone()),
            ("MEDIA_MASTER_KEYS", format!("{}:{}", fx.keyring.primary_id(), fx.key_text)),
            ("MEDIA_MIGRATE_ON_START", "false".into()),
            ("LOG_LEVEL", "warn".into()),
        ];
        let mut interrupted_mid_tenant = 0;
        // Kill points from 50 ms to 3 s (start-up and rotation speed vary with the machine's load),
        // until two kills have landed in the middle of a tenant.
        for delay_ms in [150u64, 400, 700, 1000, 1500, 50, 100, 250, 550, 850, 1250, 2000, 3000] {
            if interrupted_mid_tenant >= 2 {
                break;
            }
            let mut child = std::process::Command::new(bin)
                .args(["rotate-keys", "--batch-size", "20"])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let _ = child.kill();
            let _ = child.wait();
            let in_use = versions_in_use(&fx).await;
            if TENANTS.iter().any(|t| in_use.iter().filter(|v| v.0 == *t).count() > 1) {
                interrupted_mid_tenant += 1;
            }
        }
        assert!(interrupted_mid_tenant >= 1, "{}: no kill landed in the middle of a tenant", fx.db.backend());
        let output = std::process::Command::new(bin)
            .args(["rotate-keys", "--batch-size", "50"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["rows_pending"], 0, "{summary}");
        let (_, cold) = fx.reopen(KeySettings::default());
        assert_all_readable(&cold, &ids, None).await;
        let in_use = versions_in_use(&fx).await;
        assert_eq!(in_use.iter().map(|v| v.2).sum::<i64>(), ids.len() as i64, "{}", fx.db.backend());
        for tenant in TENANTS {
            let versions: Vec<i32> = in_use.iter().filter(|v| v.0 == tenant).map(|v| v.1).collect();
            assert_eq!(versions.len(), 1, "{}: {tenant} left on several versions: {in_use:?}", fx.db.backend());
        }
    }
}

#[tokio::test]
async fn a_completion_between_a_rotation_batch_read_and_its_write_is_not_overwritten() {
    for fx in fixtures(KeySettings::default()).await {
        // The completing process still takes version 1 for the current DEK (its cache has not seen
        // the rotation yet), as a replica would for a few seconds.
        let stale = KeySettings { current_ttl: Duration::from_secs(3600), ..KeySettings::default() };
        let (_, completer) = fx.reopen(stale);
        let pending = MediaRecord {
            status: MediaStatus::Pending,
            storage_key: "staging/direct-upload".into(),
            sha256: None,
            ..new_media("acme", b"direct upload")
        };
        completer.insert(&pending).await.unwrap();
        // The rotation reads the pending row and re-seals it under a new version...
        let (keys, rotator) = fx.reopen(KeySettings::default());
        let target = keys.roll("acme", KeyPurpose::Dek).await.unwrap();
        let batch = rotator.prepare_reencrypt("acme", target, None, 10).await.unwrap();
        assert_eq!(batch.len(), 1);
        // ...while the upload is verified and completed, sealed under the version the completer knows.
        let ready = MediaRecord {
            status: MediaStatus::Ready,
            storage_key: "objects/verified-copy".into(),
            sha256: new_media("acme", b"direct upload").sha256,
            ..pending.clone()
        };
        let completed = completer.mark_ready(&ready, &pending.storage_key, false).await.unwrap();
        assert_eq!(completed, InsertOutcome::Inserted, "{}", fx.db.backend());
        // The batch read before the completion must not write the pending columns over it.
        let written = rotator.write_reencrypted("acme", target, batch).await.unwrap();
        assert_eq!((written.reencrypted, written.skipped), (0, 1), "{}", fx.db.backend());
        let row = rotator.get("acme", &pending.id).await.unwrap().expect("row");
        assert_eq!((row.record.status, row.record.storage_key.as_str()), (MediaStatus::Ready, "objects/verified-copy"));
        // The completion itself was sealed under the new version (the database refused the stale
        // one; see `db::tenants`), or the next pass moves it: either way it ends as completed.
        let batch = rotator.prepare_reencrypt("acme", target, None, 10).await.unwrap();
        rotator.write_reencrypted("acme", target, batch).await.unwrap();
        let row = rotator.get("acme", &pending.id).await.unwrap().expect("row");
        assert_eq!(row.record, ready, "{}", fx.db.backend());
        assert_eq!(row.dek_version, target);
    }
}

#[tokio::test]
async fn a_rewrap_that_read_a_key_before_a_shred_destroyed_it_does_not_give_the_key_back() {
    for fx in fixtures(KeySettings::default()).await {
        let media = new_media("acme", b"before the shred");
        fx.repo.insert(&media).await.unwrap();
        let new_key = Keyring::generate_key();
        let both = format!("k2:{new_key},{}:{}", fx.keyring.primary_id(), fx.key_text);
        let (keys, _) = fx.with_keyring(Arc::new(Keyring::parse_env(&both).unwrap()), KeySettings::default());
        // The rewrap reads acme's keys under the old KEK; before it writes them back, a shred
        // destroys them.
        let read = keys.not_under_primary(Some("acme")).await.unwrap();
        assert_eq!(read.len(), 2, "{}: acme's DEK and index key", fx.db.backend());
        let (shredder, _) = fx.reopen(KeySettings::default());
        assert_eq!(shredder.destroy_tenant("acme").await.unwrap(), 2);
        assert_eq!(keys.rewrap(&read).await.unwrap(), 0, "{}: nothing written back", fx.db.backend());
        let rows = keys.key_rows(Some("acme")).await.unwrap();
        assert!(rows.iter().all(|k| k.state == "destroyed"), "{}: {rows:?}", fx.db.backend());
        let (cold, cold_repo) = fx.reopen(KeySettings::default());
        let gone = cold.version("acme", KeyPurpose::Dek, 1).await;
        assert!(matches!(gone, Err(media_api::db::DbError::MissingKey { version: 1 })), "{gone:?}");
        assert!(!cold.held("acme", KeyPurpose::Dek, 1).await.unwrap());
        let read_back = cold_repo.get("acme", &media.id).await.map(|row| row.is_some());
        assert!(matches!(read_back, Err(media_api::db::DbError::MissingKey { .. })), "{read_back:?}");
    }
}
