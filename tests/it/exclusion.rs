//! Work that runs once at a time across processes: rotation and shredding of one tenant exclude
//! each other (a second one is refused with a sentence saying why), one sweeper pass and one
//! reconcile pass at a time — in-process on both stacks, and against the real binary on Postgres.

use std::time::Duration;

use media_api::config::Config;
use media_api::db::{locks, Database};
use media_api::jobs::reconcile::{reconcile, ReconcileError};
use media_api::jobs::rotate::{rotate, RotateOptions};
use media_api::jobs::shred::shred;
use media_api::jobs::sweep::{sweep_once, SweepAges};

use crate::support::app::{chunked, payload, random_hex, spawn_app, Stack, STACKS};
use crate::support::process::{binary_vars, run};
use crate::support::repository::new_media;

fn only(tenant: &str) -> RotateOptions {
    RotateOptions { tenants: vec![tenant.to_owned()], batch_size: 100, rewrap_only: false, dry_run: false }
}

#[tokio::test]
async fn a_held_tenant_lock_refuses_rotation_and_shred_and_held_job_locks_skip_the_sweeper_and_reconcile() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let state = &app.state;
        let tenant = format!("acme-{}", random_hex(3));
        let media = new_media(&tenant, &payload(64, 1));
        state.blobs.put(&media.storage_key, "image/png", chunked(payload(64, 1))).await.unwrap();
        state.media.insert(&media).await.unwrap();

        let held = locks::lock_tenant(&state.db, &tenant).await.unwrap();
        let err = rotate(&state.keys, &state.media, &only(&tenant)).await.unwrap_err();
        assert!(err.to_string().contains("is being rotated or shredded by another process"), "{stack:?}: {err}");
        let err = match shred(&state.keys, state.pipeline.removal(), &tenant).await {
            Ok(report) => panic!("{stack:?}: shredded while locked: {report:?}"),
            Err(err) => err,
        };
        assert!(err.to_string().contains("is being rotated or shredded by another process"), "{stack:?}: {err}");
        assert!(state.media.get(&tenant, &media.id).await.unwrap().is_some(), "{stack:?}: the refused shred deleted");
        assert!(locks::lock_tenant(&state.db, &tenant).await.is_err(), "{stack:?}: the lock is not re-entrant");
        held.release().await;
        let summary = rotate(&state.keys, &state.media, &only(&tenant)).await.unwrap();
        assert_eq!((summary.rows_reencrypted, summary.rows_pending), (1, 0), "{stack:?}");

        let ages = SweepAges { presign_ttl: Duration::ZERO, abandoned_after: Duration::ZERO };
        let sweeping = locks::try_lock(&state.db, locks::SWEEP).await.unwrap().expect("free");
        let skipped = sweep_once(state.pipeline.removal(), ages).await.unwrap();
        assert!(skipped.skipped, "{stack:?}: {skipped:?}");
        sweeping.release().await;
        assert!(!sweep_once(state.pipeline.removal(), ages).await.unwrap().skipped, "{stack:?}");

        let reconciling = locks::try_lock(&state.db, locks::RECONCILE).await.unwrap().expect("free");
        let busy = reconcile(state.pipeline.removal(), Duration::ZERO, true).await.unwrap_err();
        assert!(matches!(busy, ReconcileError::Busy), "{stack:?}: {busy}");
        reconciling.release().await;
        assert!(reconcile(state.pipeline.removal(), Duration::ZERO, true).await.is_ok(), "{stack:?}");
    }
}

#[tokio::test]
async fn another_process_holding_the_tenant_refuses_the_binary_s_rotate_keys_and_shred() {
    let dir = tempfile::tempdir().unwrap();
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &[]).await;
    let migrate = run(&vars, &["migrate"]);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let db = Database::connect(&config.database).await.unwrap();
    let held = locks::lock_tenant(&db, "acme").await.unwrap();
    for args in [&["rotate-keys", "--tenant", "acme"][..], &["tenant", "shred", "acme", "--yes"][..]] {
        let output = run(&vars, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("tenant \"acme\" is being rotated or shredded by another process"),
            "{args:?}: {stderr}"
        );
    }
    held.release().await;
    let output = run(&vars, &["rotate-keys", "--tenant", "acme"]);
    assert!(output.status.success(), "once released: {}", String::from_utf8_lossy(&output.stderr));
    db.close().await;
}
