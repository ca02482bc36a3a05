//! `media-api audit`: check the audit log, take a checkpoint of it, look a pseudonym up.
//!
//! - `audit verify [--checkpoint FILE]` walks every chain and prints a JSON report; exits non-zero
//!   when a link does not hold or, with a checkpoint, when a checkpointed head is gone (a cut tail).
//! - `audit checkpoint` prints the head of every chain as JSON: keep it where the database's
//!   administrators cannot write (a ticket, an object-locked bucket, a second system).
//! - `audit pseudonym --tenant T (--caller SUB | --media ID)` prints the pseudonym a caller or media
//!   ID is recorded under in T's chain (callers and IDs are never stored in the clear).
//! - `audit reseal-legacy`: the upgrade step `migrate` runs, by hand, for a first migrate run cut
//!   short before it resealed; refused once a reseal is on record.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::Config;
use crate::crypto::audit_mac::PseudonymKind;
use crate::db::audit::{AuditLog, Checkpoint, CHECKPOINT_FORMAT};
use crate::domain::tenant::{is_valid_tenant, TENANT_RULE};
use crate::services::{KeyServices, Role};

/// Options of `audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Subcommands of `audit`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every chain's links and MACs (and, with a checkpoint, that no tail was cut).
    Verify {
        /// A checkpoint printed earlier by `audit checkpoint`.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Print the head of every chain (JSON), to keep out of the database's reach.
    Checkpoint,
    /// Print the pseudonym a caller or a media ID is recorded under in a tenant's chain.
    Pseudonym {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// A caller's subject (`sub` claim).
        #[arg(long, conflicts_with = "media", required_unless_present = "media")]
        caller: Option<String>,
        /// A media ID (`jan_…`).
        #[arg(long)]
        media: Option<String>,
    },
    /// Reseal events of before the keyed format (only if the upgrading `migrate` was cut short).
    ResealLegacy,
}

/// Runs an `audit` subcommand.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let services = KeyServices::open(config, &Role::Admin).await.context("cannot open the keys and the database")?;
    let audit = AuditLog::new(services.keys.clone());
    let outcome = match &opts.command {
        AuditCommand::Verify { checkpoint } => verify(&audit, checkpoint.as_deref()).await,
        AuditCommand::Checkpoint => match audit.checkpoint().await.context("cannot read the audit log")? {
            Ok(checkpoint) => {
                println!("{}", serde_json::to_string_pretty(&checkpoint)?);
                Ok(())
            }
            Err(report) => {
                println!("{}", serde_json::to_string_pretty(&report)?);
                Err(anyhow::anyhow!("no checkpoint taken: a chain does not hold (see the report)"))
            }
        },
        AuditCommand::ResealLegacy => match audit.reseal_by_hand().await? {
            Some(report) => {
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
            None => Err(anyhow::anyhow!(
                "the audit log was resealed already: events in the old format found since were written or altered \
                 without the audit key (`media-api audit verify` names them)"
            )),
        },
        AuditCommand::Pseudonym { tenant, caller, media } => {
            if !is_valid_tenant(tenant) {
                anyhow::bail!("{tenant:?} is not a tenant id: {TENANT_RULE}");
            }
            let (kind, value) = match (caller, media) {
                (Some(caller), _) => (PseudonymKind::Caller, caller.as_str()),
                (None, Some(media)) => (PseudonymKind::Media, media.as_str()),
                (None, None) => anyhow::bail!("name a --caller or a --media"),
            };
            match audit.pseudonym(tenant, kind, value).await? {
                Some(pseudonym) => {
                    println!("{pseudonym}");
                    Ok(())
                }
                None => Err(anyhow::anyhow!(
                    "tenant {tenant:?} has no keys (never used, or shredded): its events link to no one"
                )),
            }
        }
    };
    services.db.close().await;
    outcome
}

/// `audit verify`: the report on stdout; an error naming the first broken link.
async fn verify(audit: &AuditLog, checkpoint: Option<&std::path::Path>) -> anyhow::Result<()> {
    let checkpoint: Option<Checkpoint> = match checkpoint {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
            let checkpoint: Checkpoint = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an audit checkpoint", path.display()))?;
            if checkpoint.format != CHECKPOINT_FORMAT {
                anyhow::bail!("{} is a {:?}, not a {CHECKPOINT_FORMAT:?}", path.display(), checkpoint.format);
            }
            Some(checkpoint)
        }
    };
    let report = audit.verify(checkpoint.as_ref()).await.context("cannot read the audit log")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    match report.broken.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!(
            "audit chain of tenant {:?} is broken at event {}: {}",
            first.tenant,
            first.chain_seq,
            first.reason
        ),
    }
}
