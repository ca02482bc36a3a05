//! Dependencies a test owns, so it can stop and start them without touching the shared ones that
//! `scripts/test` runs: a PostgreSQL cluster (`initdb` + `pg_ctl`) and a single-node Garage, and
//! [`S3Target`], the bucket a test's objects live in (the shared Garage's or its own).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::app::{random_hex, s3_client, s3_env};
use super::process::free_port;

/// Where the objects are: the shared test Garage, or one a test started.
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Target {
    pub fn shared() -> Self {
        let env = s3_env();
        Self { endpoint: env.endpoint, bucket: env.bucket, access_key: env.access_key, secret_key: env.secret_key }
    }

    pub async fn client(&self) -> aws_sdk_s3::Client {
        if self.endpoint == s3_env().endpoint {
            return s3_client().await;
        }
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("garage"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// Runs `program` as the `postgres` user when the tests run as root (initdb refuses root).
pub fn as_pg_owner(program: &str) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL cluster of this test's own (initdb + pg_ctl), removed at drop.
pub struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("media-api-faults-pg-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").args(["postgres", &dir.display().to_string()]).status();
        let status = as_pg_owner("initdb")
            .args(["-D", &dir.join("data").display().to_string(), "-U", "postgres", "-A", "trust"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb (PostgreSQL server binaries) is on PATH");
        assert!(status.success(), "initdb failed");
        let cluster = Self { dir, port: free_port() };
        cluster.start();
        cluster
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data").display().to_string();
        let status = as_pg_owner("pg_ctl").args(["-D", &data, "-w"]).args(args).stdout(Stdio::null()).status();
        assert!(status.unwrap().success(), "pg_ctl {args:?} failed");
    }

    pub fn start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("server.log").display().to_string();
        self.pg_ctl(&["-o", &options, "-l", &log, "start"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = as_pg_owner("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single-node Garage of this test's own (same binary as `scripts/test`'s), stoppable.
pub struct OwnGarage {
    bin: String,
    config: PathBuf,
    child: Option<Child>,
    pub s3: S3Target,
}

impl OwnGarage {
    pub fn create(root: &Path) -> Self {
        let bin = std::env::var("GARAGE_BIN").unwrap_or_else(|_| "garage".into());
        let dir = root.join("garage");
        std::fs::create_dir_all(&dir).unwrap();
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
                d = dir.display(),
                secret = random_hex(32),
            ),
        )
        .unwrap();
        let (access_key, secret_key) = (format!("GK{}", random_hex(12)), random_hex(32));
        let s3 = S3Target {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            bucket: "faults".into(),
            access_key,
            secret_key,
        };
        let mut garage = Self { bin, config, child: None, s3 };
        garage.start();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.split('@').next().unwrap().trim().to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        let (key, secret) = (garage.s3.access_key.clone(), garage.s3.secret_key.clone());
        garage.cli(&["key", "import", "--yes", "-n", "faults", &key, &secret]);
        garage.cli(&["bucket", "create", "faults"]);
        garage.cli(&["bucket", "allow", "--read", "--write", "--owner", "faults", "--key", &key]);
        garage
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.bin).arg("-c").arg(&self.config).args(args).output().unwrap();
        assert!(output.status.success(), "garage {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.config.with_file_name("garage.log"));
        let log = log.unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("garage runs (scripts/test exports GARAGE_BIN)");
        self.child = Some(child);
        for _ in 0..100 {
            let status = Command::new(&self.bin).arg("-c").arg(&self.config).arg("status").output().unwrap();
            if status.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("garage did not start");
    }

    /// What the node logged so far (for a failure message).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("garage.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnGarage {
    fn drop(&mut self) {
        self.stop();
    }
}
