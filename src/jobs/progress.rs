//! Progress of a long admin run: a bar on a terminal (one line per kind of work, under one
//! [`indicatif::MultiProgress`]), and log lines otherwise — which the fault tests wait for.

use std::io::IsTerminal;
use std::time::Instant;

/// Progress of one kind of work (rows re-encrypted, objects moved).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// The log message of each step (without a terminal).
    what: &'static str,
    done: u64,
    started: Instant,
}

impl Progress {
    /// A bar of `total` `unit`s in `bars` on a terminal; else each step logs `what`.
    pub(crate) fn new(bars: &indicatif::MultiProgress, total: u64, unit: &str, what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = bars.add(indicatif::ProgressBar::new(total));
            let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, what, done: 0, started: Instant::now() }
    }

    /// `count` more done in `tenant`.
    pub(crate) fn advance(&mut self, tenant: &str, count: u64) {
        self.done += count;
        match &self.bar {
            Some(bar) => {
                bar.set_message(tenant.to_owned());
                bar.inc(count);
            }
            None => {
                let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(tenant, done = self.done, per_second = rate as u64, "{}", self.what);
            }
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
