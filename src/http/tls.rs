//! HTTPS for the main listener: a rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN)
//! whose certificate can be replaced while the service runs.
//!
//! [`ReloadingCert`] holds the current certificate chain and key; [`spawn_reloader`] re-reads the
//! PEM files on SIGHUP and whenever their modification time or size changes (polled every
//! `MEDIA_TLS_RELOAD_INTERVAL`, which also follows Kubernetes' symlink swaps of mounted secrets).
//! A pair that does not load (bad PEM, key not matching the certificate) is logged and counted, and
//! the previous one keeps serving. New handshakes use the new certificate; open connections keep
//! theirs.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::telemetry::metrics::names;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("MEDIA_TLS_CERT_FILE {path}: {why}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The key file is missing, unreadable, holds no key, or the key does not match.
    #[error("MEDIA_TLS_KEY_FILE {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The crypto provider of the server side (ring, which the rest of the tree already uses).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its private key.
pub fn load_pair(config: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_path = config.cert_file.display().to_string();
    let key_path = config.key_file.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificate { path: cert_path.clone(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate { path: cert_path, why: "no PEM certificate in the file".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| TlsError::Key { path: key_path.clone(), why: e.to_string() })?;
    let pair = CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| TlsError::Key { path: key_path, why: format!("unusable with the certificate: {e}") })?;
    Ok(Arc::new(pair))
}

/// The certificate the server presents, replaceable at run time.
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    config: TlsConfig,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("cert_file", &self.config.cert_file).finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once (a failure here stops the start).
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(load_pair(config)?), config: config.clone() }))
    }

    /// Re-reads the files; keeps the current pair when the new one does not load.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load_pair(&self.config);
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::TLS_RELOADS, "result" => label).increment(1);
        let pair = result?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
        Ok(())
    }

    /// The rustls server configuration presenting this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// Modification time and size of a file, to notice replacements.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads on SIGHUP and when either file changes; ends when `cert` is dropped.
pub fn spawn_reloader(cert: &Arc<ReloadingCert>) {
    let weak: Weak<ReloadingCert> = Arc::downgrade(cert);
    let interval = cert.config.reload_interval;
    let (cert_file, key_file) = (cert.config.cert_file.clone(), cert.config.key_file.clone());
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = (stamp(&cert_file), stamp(&key_file));
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<bool>();
            let by_signal = tokio::select! {
                got = signalled => got,
                () = tokio::time::sleep(interval) => false,
            };
            let now = (stamp(&cert_file), stamp(&key_file));
            if !by_signal && now == seen {
                continue;
            }
            let Some(cert) = weak.upgrade() else { return };
            match cert.reload() {
                Ok(()) => {
                    // Only a pair that loaded counts as seen: a half-written renewal is retried.
                    seen = now;
                    tracing::info!(by_signal, "TLS certificate reloaded");
                }
                Err(err) => {
                    tracing::error!(error = %err, "TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    });
}
