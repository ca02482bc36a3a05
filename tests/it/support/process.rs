//! The real `media-api` binary as a child process: for what an in-process app cannot show — its
//! log output, `kill -9`, a restart on the same database and bucket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use media_api::auth::dev_issuer::{DevIssuer, TokenRequest};

use super::app::{base_vars, random_hex, Stack};

pub const BIN: &str = env!("CARGO_BIN_EXE_media-api");

/// The environment of a binary run on `stack` with its files under `dir`: the test defaults, a
/// master key, and a storage prefix of its own (so its objects can be counted).
pub async fn binary_vars(stack: Stack, dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let master = media_api::crypto::keyring::Keyring::generate_key();
    let mut vars: HashMap<String, String> = base_vars(stack, dir).await;
    vars.remove("MEDIA_API_PORT");
    vars.insert("MEDIA_MASTER_KEYS".into(), format!("k1:{master}"));
    vars.insert("MEDIA_STORAGE_PREFIX".into(), format!("t{}", random_hex(6)));
    vars.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    for (name, value) in extra {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    vars.into_iter().collect()
}

/// The value of `name` in `vars`.
pub fn var<'a>(vars: &'a [(String, String)], name: &str) -> &'a str {
    vars.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// A dev-issuer token for `tenant`/`subject`, valid for the service run with `vars` (the issuer key
/// lives in `MEDIA_KEYS_DIR`, created on first use by whichever side comes first).
pub fn token(vars: &[(String, String)], tenant: &str, subject: &str) -> String {
    let config = media_api::config::Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let issuer = DevIssuer::load_or_create(Path::new(var(vars, "MEDIA_KEYS_DIR"))).unwrap();
    let request = TokenRequest { subject, tenant, roles: &[], scopes: &[], ttl: Duration::from_secs(3600) };
    issuer.mint(&config.auth, &request).unwrap()
}

/// `media-api serve` on a free port, its output appended to a log file.
pub struct Service {
    child: Child,
    pub base: String,
    log: PathBuf,
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Service {
    /// Starts the binary on a free port.
    pub fn start(vars: &[(String, String)]) -> Self {
        let port = free_port();
        let log = PathBuf::from(var(vars, "MEDIA_KEYS_DIR")).with_file_name(format!("service-{port}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("MEDIA_API_PORT", port.to_string())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    /// Waits until `/healthz` answers (panics with the log after 20 s).
    pub async fn wait_up(&mut self, http: &reqwest::Client) {
        for _ in 0..200 {
            if http.get(format!("{}/healthz", self.base)).send().await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the service exited with {status}: {}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not start: {}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether the process has ended (a port taken between `free_port` and its bind, a crash).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process with SIGTERM (a graceful stop) and returns its log.
    pub fn stop(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let _ = self.child.wait();
        self.logs()
    }

    /// `kill -9`: no shutdown, no cleanup.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-shot subcommand (`sweep`, `rotate-keys`, …) and returns its output.
pub fn run(vars: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_clear().envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().unwrap()
}
