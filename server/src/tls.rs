//! TLS termination for a request listener, with rustls (ring): certificates chosen by the
//! client's SNI from a store that sources (PEM files, Kubernetes Secrets) replace while the
//! listener runs, so a renewed certificate reaches new connections without a restart and
//! without touching open ones. TLS 1.2 and 1.3 only; ALPN `h2` then `http/1.1`.
//!
//! The handshake runs inside the connection bounds ([`crate::connections::Guarded`]): a TLS
//! connection counts against `max-connections` from its first byte, and a client that does not
//! finish its handshake within the deadline is disconnected (Pingora's own TLS listener gives
//! every handshake 60 s outside any cap).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::Stream;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use tracing::{debug, info, warn};
use wavelink_core::tls::NameTable;

/// Why a certificate could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
}

fn invalid(origin: &str, problem: impl fmt::Display) -> CertificateError {
    CertificateError::Invalid { origin: origin.to_owned(), problem: problem.to_string() }
}

/// One certificate chain with its key, and the names it serves.
pub struct ServedCertificate {
    /// Where it came from (a file, a Secret), for logs.
    pub origin: String,
    /// The DNS names of its leaf certificate (subject alternative names).
    pub names: Vec<String>,
    /// When the leaf certificate expires (Unix seconds).
    pub not_after: i64,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("origin", &self.origin)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl ServedCertificate {
    /// Reads a PEM chain (leaf first) and its PEM key (PKCS#8, PKCS#1 or SEC1); the key must
    /// belong to the leaf, and the leaf must name at least one host.
    pub fn from_pem(origin: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(origin, format!("certificate PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(invalid(origin, "no certificate in the PEM"));
        };
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(origin, format!("private key PEM: {e}")))?;
        let (names, not_after) = leaf_names(leaf).map_err(|e| invalid(origin, e))?;
        if names.is_empty() {
            return Err(invalid(origin, "the certificate names no DNS host (subject alternative names)"));
        }
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                invalid(origin, "the private key does not belong to the certificate")
            }
            e => invalid(origin, format!("certificate and key: {e}")),
        })?;
        Ok(ServedCertificate { origin: origin.to_owned(), names, not_after, key: Arc::new(key) })
    }

    /// Reads a chain and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertificateError> {
        Self::from_pem(&cert.display().to_string(), &read_pem(cert)?, &read_pem(key)?)
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read { path: path.into(), source })
}

/// The DNS subject alternative names of a certificate, and its expiry.
fn leaf_names(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("certificate: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("subject alternative names: {e}")),
    };
    Ok((names, cert.validity().not_after.timestamp()))
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// What the listener serves: every source's certificates by name, the first listed serving
/// clients that name no known host (or none: nginx's default server).
#[derive(Default)]
struct Served {
    names: NameTable<Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

/// The certificates of a TLS listener, replaced one source at a time while it runs.
#[derive(Default)]
pub struct CertificateStore {
    /// Sources in the order they were first set: the earlier one keeps a name both serve.
    sources: Mutex<Vec<(String, Vec<Arc<ServedCertificate>>)>>,
    served: ArcSwap<Served>,
}

impl fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateStore").field("sources", &*self.sources.lock()).finish()
    }
}

impl CertificateStore {
    /// Replaces what `source` serves (empty: it serves nothing now); new handshakes see it at once.
    pub fn set(&self, source: &str, certificates: Vec<Arc<ServedCertificate>>) {
        let mut sources = self.sources.lock();
        match sources.iter_mut().find(|(name, _)| name == source) {
            Some((_, served)) => *served = certificates,
            None => sources.push((source.to_owned(), certificates)),
        }
        let mut served = Served::default();
        for certificate in sources.iter().flat_map(|(_, certs)| certs) {
            served.fallback.get_or_insert_with(|| certificate.key.clone());
            for name in &certificate.names {
                if !served.names.insert(name, certificate.key.clone()) {
                    debug!(name, origin = %certificate.origin, "name already served by an earlier certificate");
                }
            }
        }
        self.served.store(Arc::new(served));
    }

    /// Every certificate served, in source order.
    pub fn certificates(&self) -> Vec<Arc<ServedCertificate>> {
        self.sources.lock().iter().flat_map(|(_, certs)| certs.iter().cloned()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.served.load().fallback.is_none()
    }
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served").field("names", &self.names.len()).finish()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = self.served.load();
        hello.server_name().and_then(|name| served.names.lookup(name)).or(served.fallback.as_ref()).cloned()
    }
}

/// Handshakes, for metrics.
#[derive(Debug, Default)]
pub struct TlsCounters {
    completed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

impl TlsCounters {
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// The TLS side of a listener: its acceptor, handshake deadline and counters.
pub struct TlsTermination {
    acceptor: Acceptor,
    handshake_timeout: Duration,
    counters: Arc<TlsCounters>,
}

impl TlsTermination {
    /// TLS 1.2 and 1.3 with the store's certificates; ALPN `h2`, `http/1.1` with `http2`, else
    /// `http/1.1` alone. Session tickets (stateless resumption) are on, as in nginx.
    pub fn new(
        store: Arc<CertificateStore>,
        http2: bool,
        handshake_timeout: Duration,
        counters: Arc<TlsCounters>,
    ) -> Result<Self, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(store);
        config.alpn_protocols =
            if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(TlsTermination { acceptor: Acceptor::from_server_config(Arc::new(config)), handshake_timeout, counters })
    }

    /// The client's TLS handshake, within the deadline; `None` (counted, the connection to be
    /// closed) if it fails or is too slow.
    pub async fn handshake(&self, stream: Stream) -> Option<TlsStream<L4Stream>> {
        // A listener's connection is a plain socket stream (rustls needs the concrete type).
        let Ok(socket) = stream.into_any().downcast::<L4Stream>() else {
            warn!("TLS listener got a connection that is not a socket; closing it");
            return None;
        };
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.tls_handshake(*socket)).await {
            Ok(Ok(tls)) => {
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                Some(tls)
            }
            Ok(Err(e)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                // A client's failed handshake is the client's business: debug, not error.
                debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                debug!(timeout = ?self.handshake_timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Certificates from PEM files, read again when they change: each pair keeps serving what it
/// last read well if its files turn bad (a renewal caught half-written, a typo).
pub struct CertificateFiles {
    pairs: Vec<FilePair>,
}

struct FilePair {
    cert: PathBuf,
    key: PathBuf,
    /// The bytes last read (both files), to notice a change.
    read: Option<(Vec<u8>, Vec<u8>)>,
    served: Option<Arc<ServedCertificate>>,
}

/// The store's source name of certificate files.
pub const FILES_SOURCE: &str = "files";

impl CertificateFiles {
    /// Reads every pair; any unusable one is an error (a proxy must not start without a
    /// certificate it was told to serve).
    pub fn load(
        pairs: impl IntoIterator<Item = (PathBuf, PathBuf)>,
        store: &CertificateStore,
    ) -> Result<Self, CertificateError> {
        let mut files = CertificateFiles {
            pairs: pairs.into_iter().map(|(cert, key)| FilePair { cert, key, read: None, served: None }).collect(),
        };
        for pair in &mut files.pairs {
            pair.reload()?;
        }
        files.publish(store);
        Ok(files)
    }

    /// Reads the files again; a changed pair replaces its certificate in `store`. Returns how
    /// many changed.
    pub fn refresh(&mut self, store: &CertificateStore) -> usize {
        let mut changed = 0;
        for pair in &mut self.pairs {
            match pair.reload() {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "certificate files unusable; still serving the last good certificate"),
            }
        }
        if changed > 0 {
            self.publish(store);
        }
        changed
    }

    fn publish(&self, store: &CertificateStore) {
        store.set(FILES_SOURCE, self.pairs.iter().filter_map(|p| p.served.clone()).collect());
    }
}

impl FilePair {
    /// Whether the files changed (and now serve their new certificate).
    fn reload(&mut self) -> Result<bool, CertificateError> {
        let (cert, key) = (read_pem(&self.cert)?, read_pem(&self.key)?);
        if self.read.as_ref().is_some_and(|(c, k)| *c == cert && *k == key) {
            return Ok(false);
        }
        let served = ServedCertificate::from_pem(&self.cert.display().to_string(), &cert, &key)?;
        log_loaded(&served);
        self.served = Some(Arc::new(served));
        self.read = Some((cert, key));
        Ok(true)
    }
}

/// One line per certificate loaded, with a warning if it is already expired.
pub fn log_loaded(certificate: &ServedCertificate) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if certificate.not_after <= now {
        warn!(origin = %certificate.origin, names = ?certificate.names, "certificate loaded but already expired");
    } else {
        info!(origin = %certificate.origin, names = ?certificate.names,
              days_left = (certificate.not_after - now) / 86_400, "certificate loaded");
    }
}

/// Re-reads certificate files every `interval` while the server runs.
pub struct CertificateReloader {
    pub files: Mutex<CertificateFiles>,
    pub store: Arc<CertificateStore>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for CertificateReloader {
    async fn start(&self, shutdown: pingora_core::server::ShutdownWatch) {
        crate::assembly::every(self.interval, shutdown, |_| {
            self.files.lock().refresh(&self.store);
        })
        .await;
    }
}
