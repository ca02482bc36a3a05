//! `media-api serve`: build the application and serve until a stop signal.

use anyhow::Context;

use crate::app::Application;
use crate::config::Config;

/// Runs the service.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await.context("cannot start")?;
    app.run_until_stopped().await.context("server error")
}
