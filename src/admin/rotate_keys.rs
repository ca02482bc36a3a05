//! `media-api rotate-keys`: online key rotation ([`crate::jobs::rotate`]); with `--objects` each
//! tenant's objects move to its new DEK version too ([`crate::jobs::objects`]). A JSON summary ends
//! the run.

use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::jobs::objects::ObjectWork;
use crate::jobs::rotate::{rotate, rotate_with_objects, RotateOptions};
use crate::media::rekey::ObjectMover;
use crate::services::Services;

/// The longest `--old-object-grace` (the longest a signed link can live, `MEDIA_PRESIGN_MAX_TTL`'s cap).
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Options of `rotate-keys`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Only this tenant (repeatable; default: every tenant).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Rows re-encrypted per transaction (and rows read per page of objects).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Only re-wrap keys under the primary KEK; do not re-encrypt rows.
    #[arg(long, conflicts_with = "objects")]
    pub rewrap_only: bool,
    /// Also re-encrypt objects: copy each object sealed under an older DEK version into a fresh
    /// object under the new one, then retire the old versions nothing uses.
    #[arg(long)]
    pub objects: bool,
    /// With --objects: how long an old object is kept after its rows moved ("0s", "10m"; at most 7d;
    /// default MEDIA_PRESIGN_MAX_TTL, so every link signed before the move keeps working). The run
    /// does not wait: the sweeper deletes what is still kept when it ends.
    #[arg(long, value_parser = parse_grace, requires = "objects")]
    pub old_object_grace: Option<Duration>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A grace argument: a duration of at most [`MAX_GRACE`].
pub fn parse_grace(value: &str) -> Result<Duration, String> {
    let grace = super::sweep::parse_age(value)?;
    match grace <= MAX_GRACE {
        true => Ok(grace),
        false => Err(format!("{value:?} is longer than 7d (the longest a signed link lives)")),
    }
}

impl Opts {
    /// The job's options.
    pub fn options(&self) -> RotateOptions {
        RotateOptions {
            tenants: self.tenants.clone(),
            batch_size: self.batch_size,
            rewrap_only: self.rewrap_only,
            dry_run: self.dry_run,
        }
    }
}

/// Refuses a `--tenant` that is not a tenant id.
pub fn check_tenants(tenants: &[String]) -> anyhow::Result<()> {
    if let Some(bad) = tenants.iter().find(|tenant| !crate::domain::tenant::is_valid_tenant(tenant)) {
        anyhow::bail!("{bad:?} is not a tenant id: {}", crate::domain::tenant::TENANT_RULE);
    }
    Ok(())
}

/// The object work of a run over `services`.
pub fn object_work<'a>(
    services: &'a Services,
    mover: &'a ObjectMover,
    batch_size: u32,
    grace: Duration,
) -> ObjectWork<'a> {
    ObjectWork { mover, removal: services.pipeline.removal(), batch_size, grace }
}

/// Runs the command against the configured database and prints the JSON summary.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    check_tenants(&opts.tenants)?;
    let summary = if opts.objects {
        let services = super::open_services(config).await?;
        let mover = ObjectMover::new(services.pipeline.clone());
        let grace = opts.old_object_grace.unwrap_or(config.presign_max_ttl);
        let work = object_work(&services, &mover, opts.batch_size, grace);
        let summary = rotate_with_objects(&services.keys, &services.media, &opts.options(), work).await;
        services.db.close().await;
        summary.context("rotation failed (a re-run resumes it)")?
    } else {
        let services = super::open_key_services(config).await?;
        let summary = rotate(&services.keys, &services.media, &opts.options()).await;
        services.db.close().await;
        summary.context("rotation failed (a re-run resumes it)")?
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
