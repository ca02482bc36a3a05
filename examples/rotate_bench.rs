//! rotate-keys throughput against the same Postgres doing the same writes without crypto, and the
//! time to re-wrap 10k tenants' keys under a new master key.
//!
//! 1. Inserts `ROWS` media rows (one tenant) through the encrypted repository.
//! 2. `rotate()` with batch size 500 re-encrypts them under a new DEK.
//! 3. Raw baseline on the same rows: the same compare-and-set `UPDATE … FROM UNNEST` rotation writes
//!    with, one per batch of 500, with the stored bytes as values — no reading, decrypting or
//!    encrypting.
//! 4. Inserts wrapped keys for `TENANTS` tenants (a DEK and an index key each) and times
//!    `rewrap_to_primary` after a new primary KEK is added.
//!
//! `scripts/bench-rotate` runs it against a fresh database on the local server:
//! `cargo run --release --example rotate_bench -- <postgres admin url> [rows] [tenants]`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use media_api::config::DatabaseConfig;
use media_api::crypto::envelope::{self, DataKey, KeyPurpose, KeySlot};
use media_api::crypto::keyring::Keyring;
use media_api::db::media::{MediaRecord, MediaRepo, MediaStatus};
use media_api::db::tenant_keys::{KeySettings, TenantKeys};
use media_api::db::Database;
use media_api::jobs::rotate::{rotate, RotateOptions};
use rand::RngCore;
use secrecy::SecretString;
use sqlx::Connection;

const BATCH: usize = 500;

/// id and the five sealed columns the baseline writes back.
type StoredRow = (String, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

async fn fresh_database(admin_url: &str) -> anyhow::Result<(Database, sqlx::PgPool)> {
    let name = format!("mediabench_{}", hex(6));
    let mut conn = sqlx::PgConnection::connect(admin_url).await.context("connect")?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let mut url = url::Url::parse(admin_url)?;
    url.set_path(&name);
    let config = DatabaseConfig {
        url: SecretString::from(url.to_string()),
        max_connections: 8,
        acquire_timeout: std::time::Duration::from_secs(10),
        migrate_on_start: true,
        ca: None,
    };
    let db = Database::connect(&config).await?;
    db.migrate().await?;
    let Database::Postgres(pool) = db.clone() else { anyhow::bail!("a postgres:// URL is needed") };
    Ok((db, pool))
}

fn bench_row(i: usize) -> MediaRecord {
    MediaRecord {
        id: format!("jan_{}", hex(13)),
        tenant_id: "bench".into(),
        status: MediaStatus::Ready,
        mime: "image/png".into(),
        size: 1000,
        filename: Some(format!("holiday-photo-{i}.png")),
        uploader: "5f1c2a9e-uploader-subject".into(),
        user_hint: Some("user-123".into()),
        storage_key: format!("bench/{}", hex(16)),
        object_dek_version: None,
        sha256: Some(rand::random()),
        metadata: None,
        retention_until: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let admin_url = args.next().context("usage: rotate_bench <postgres admin url> [rows] [tenants]")?;
    let rows: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let tenants: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let (db, pool) = fresh_database(&admin_url).await?;
    let (k1, k2) = (Keyring::generate_key(), Keyring::generate_key());
    let keyring = Arc::new(Keyring::parse_env(&format!("k1:{k1}"))?);
    let keys = Arc::new(TenantKeys::new(db.clone(), keyring.clone(), KeySettings::default()));
    let repo = MediaRepo::new(db.clone(), keys.clone());

    let started = Instant::now();
    for i in 0..rows {
        repo.insert(&bench_row(i)).await?;
    }
    println!("inserted {rows} rows in {:.1} s", started.elapsed().as_secs_f64());

    // rotate-keys on the rows as they are.
    let opts = RotateOptions { tenants: Vec::new(), batch_size: BATCH as u32, rewrap_only: false, dry_run: false };
    let started = Instant::now();
    let summary = rotate(&keys, &repo, &opts).await?;
    let rotate_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.rows_reencrypted as usize == rows, "rotation moved {} rows", summary.rows_reencrypted);

    // Raw baseline on the same rows: the statement rotation writes with (one compare-and-set
    // `UPDATE … FROM UNNEST` per batch of 500, the version moving 2 → 3 so indexes change as in a
    // rotation), with the stored bytes as values: no reading of rows, no crypto.
    let stored: Vec<StoredRow> = sqlx::query_as(
        "SELECT id, filename_enc, uploader_enc, user_hint_enc, storage_key_enc, sha256_enc FROM media_objects ORDER BY id",
    )
    .fetch_all(&pool)
    .await?;
    let started = Instant::now();
    for chunk in stored.chunks(BATCH) {
        let column = |f: fn(&StoredRow) -> Vec<u8>| chunk.iter().map(|r| Some(f(r))).collect::<Vec<Option<Vec<u8>>>>();
        sqlx::query(
            "UPDATE media_objects AS m SET dek_version = $2, filename_enc = u.filename, uploader_enc = u.uploader, \
             user_hint_enc = u.user_hint, storage_key_enc = u.storage_key, sha256_enc = u.sha256, \
             metadata_enc = u.metadata, updated_at = now() \
             FROM UNNEST($3::text[], $4::int4[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], \
             $10::bytea[]) AS u(id, old_version, filename, uploader, user_hint, storage_key, sha256, metadata) \
             WHERE m.tenant_id = $1 AND m.id = u.id AND m.dek_version = u.old_version",
        )
        .bind("bench")
        .bind(3i32)
        .bind(chunk.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(vec![2i32; chunk.len()])
        .bind(column(|r| r.1.clone()))
        .bind(column(|r| r.2.clone()))
        .bind(column(|r| r.3.clone()))
        .bind(column(|r| r.4.clone()))
        .bind(column(|r| r.5.clone()))
        .bind(vec![None::<Vec<u8>>; chunk.len()])
        .execute(&pool)
        .await?;
    }
    let raw_seconds = started.elapsed().as_secs_f64();
    let raw_rate = rows as f64 / raw_seconds;
    let rotate_rate = rows as f64 / rotate_seconds;
    println!("raw batched UPDATE    : {rows} rows in {raw_seconds:.2} s = {raw_rate:.0} rows/s");
    println!("rotate-keys re-encrypt: {rows} rows in {rotate_seconds:.2} s = {rotate_rate:.0} rows/s");
    println!("ratio (rotate/raw)    : {:.2}  (target >= 0.80)", rotate_rate / raw_rate);

    // KEK rewrap of many tenants.
    let started = Instant::now();
    for chunk in (0..tenants).collect::<Vec<_>>().chunks(1000) {
        let mut tx = pool.begin().await?;
        for t in chunk {
            let tenant = format!("tenant-{t:05}");
            for purpose in [KeyPurpose::Dek, KeyPurpose::Index] {
                let wrapped =
                    envelope::wrap(&keyring, KeySlot { tenant: &tenant, purpose, version: 1 }, &DataKey::generate(1));
                sqlx::query(
                    "INSERT INTO tenant_keys (tenant_id, purpose, version, kek_id, wrapped_key, state) \
                     VALUES ($1, $2, 1, $3, $4, 'active')",
                )
                .bind(&tenant)
                .bind(purpose.as_str())
                .bind(&wrapped.kek_id)
                .bind(wrapped.token.as_bytes())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
    }
    println!("created keys of {tenants} tenants in {:.1} s", started.elapsed().as_secs_f64());
    let both = Arc::new(Keyring::parse_env(&format!("k2:{k2},k1:{k1}"))?);
    let keys = TenantKeys::new(db.clone(), both, KeySettings::default());
    let started = Instant::now();
    let rewrapped = keys.rewrap_to_primary(None).await?;
    println!(
        "KEK rewrap            : {rewrapped} keys of {} tenants in {:.2} s  (target <= 2 s for 10k tenants)",
        tenants + 1,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
