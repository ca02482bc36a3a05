//! `media-api encrypt-objects`: seals the objects stored before `MEDIA_OBJECT_ENCRYPTION` was turned
//! on under their tenants' current DEK versions ([`crate::jobs::objects::encrypt_objects`]), beside
//! the running service; a JSON summary ends the run, and a re-run resumes a killed one.

use std::time::Duration;

use anyhow::Context;

use super::rotate_keys::{check_tenants, object_work, parse_grace};
use crate::config::Config;
use crate::jobs::objects::encrypt_objects;
use crate::media::rekey::ObjectMover;

/// Options of `encrypt-objects`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Only this tenant (repeatable; default: every tenant with media).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Rows read per page.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long a plain object is kept after its rows moved to the sealed copy ("0s", "10m"; at most
    /// 7d; default MEDIA_PRESIGN_MAX_TTL, so every presigned URL handed out before the move keeps
    /// working). The run does not wait: the sweeper deletes what is still kept when it ends.
    #[arg(long, value_parser = parse_grace)]
    pub old_object_grace: Option<Duration>,
    /// Count the plain objects per tenant and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the command against the configured database and prints the JSON summary.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    check_tenants(&opts.tenants)?;
    if !config.object_encryption && !opts.dry_run {
        anyhow::bail!(
            "MEDIA_OBJECT_ENCRYPTION is off: turn it on for the service (and this command) first, or new uploads \
             keep being stored in the clear"
        );
    }
    let services = super::open_services(config).await?;
    let mover = ObjectMover::new(services.pipeline.clone());
    let grace = opts.old_object_grace.unwrap_or(config.presign_max_ttl);
    let work = object_work(&services, &mover, opts.batch_size, grace);
    let summary = encrypt_objects(&services.keys, work, &opts.tenants, opts.dry_run).await;
    services.db.close().await;
    let summary = summary.context("encrypt-objects failed (a re-run resumes it)")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
