//! TLS on the gRPC listener: rustls with the ring provider, optional client
//! certificates (mTLS), and certificates re-read when their files change.
//!
//! tonic's own `ServerTlsConfig` is fixed at start, so Baton accepts TLS itself and hands
//! tonic finished streams. Each new connection uses the configuration current at its
//! accept; a rotation never touches established connections.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::task::TaskGuard;

/// The PEM files behind the listener's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The files' contents: a rotation is seen as a change of bytes, whatever the mtimes
/// (Kubernetes swaps secret volumes through symlinks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl TlsFiles {
    fn read(&self) -> Result<Contents, TlsError> {
        let read = |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
        Ok(Contents {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: self.client_ca.as_ref().map(read).transpose()?,
        })
    }

    fn server_config(&self, contents: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
        let pem_error = |path: &PathBuf| {
            let path = path.clone();
            move |err: rustls::pki_types::pem::Error| TlsError::Pem { path, message: err.to_string() }
        };
        let certs = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error(&self.cert))?;
        if certs.is_empty() {
            return Err(TlsError::Pem { path: self.cert.clone(), message: "no certificate found".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(pem_error(&self.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?;
        let builder = match (&self.client_ca, &contents.client_ca) {
            (Some(path), Some(pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(ca.map_err(pem_error(path))?)
                        .map_err(|err| TlsError::Pem { path: path.clone(), message: err.to_string() })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|err| TlsError::Pem { path: path.clone(), message: err.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|err| TlsError::Config(err.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The listener's current TLS configuration, swapped when the files change.
#[derive(Clone)]
pub struct ReloadingTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    _watcher: Arc<TaskGuard>,
}

impl ReloadingTls {
    /// Loads the files (failing start-up if they are unusable) and re-reads them every
    /// `interval`; a changed set that fails to load is logged and the previous one kept.
    pub fn start(files: TlsFiles, interval: Duration) -> Result<Self, TlsError> {
        let mut loaded = files.read()?;
        let current = Arc::new(RwLock::new(files.server_config(&loaded)?));
        let watched = current.clone();
        let watcher = TaskGuard::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let contents = match files.read() {
                    Ok(contents) if contents != loaded => contents,
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot re-read TLS files; keeping the current certificate");
                        continue;
                    }
                };
                match files.server_config(&contents) {
                    Ok(config) => {
                        *watched.write().expect("tls config lock") = config;
                        loaded = contents;
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "new TLS files are not usable; keeping the current certificate");
                    }
                }
            }
        });
        Ok(Self { current, _watcher: Arc::new(watcher) })
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("tls config lock").clone())
    }

    /// The TLS handshake of one accepted connection, with the configuration current now.
    pub fn handshake(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<TlsStream<TcpStream>>> + use<> {
        self.acceptor().accept(stream)
    }
}
