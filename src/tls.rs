//! Transport security: TLS on the client and peer listeners, mutual TLS between peers, and
//! certificates that reload without a restart (a change to their files, or SIGHUP).
//!
//! One rustls crypto provider, `ring` (see Cargo.toml for why not aws-lc-rs). Each listener's
//! certificate and key sit behind a [`ReloadableCert`], which rustls asks for the current pair
//! on every handshake, so a renewed certificate is used by the next connection without
//! rebuilding any configuration. The trusted CAs are read once at start-up: changing a CA takes
//! a restart (README, "Security"), as with rqlite.

use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::ResolvesServerCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

use crate::config::ServeConfig;
use crate::limits;

/// The one crypto provider of every TLS configuration here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, read from PEM files and read again when either
/// file's contents change. A new pair that does not load (half-written, or a key that does not
/// match) is refused and the previous pair stays in use; it is tried again once the files
/// change again (a write in progress finishes, and the contents differ once more).
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' contents when they were last read (whether or not they loaded). Contents,
    /// not modification times: a copy that keeps times, or a coarse clock, hides a change.
    last_read: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert").field("cert_file", &self.cert_file).finish_non_exhaustive()
    }
}

impl ReloadableCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let contents = read_pair(cert_file, key_file)?;
        let pair = certified_key(&contents, cert_file, key_file)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(pair),
            last_read: Mutex::new(contents),
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again and loads them if their contents changed since the last read (or
    /// always, with `force`). `Ok(true)` when a new pair is in use.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let contents = read_pair(&self.cert_file, &self.key_file)?;
        {
            let mut last_read = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *last_read == contents {
                return Ok(false);
            }
            // Recorded first: a pair that fails to load is not retried until the files change.
            *last_read = contents.clone();
        }
        let pair = certified_key(&contents, &self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadableCert {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Both files' contents, each at most [`limits::MAX_PEM_FILE_BYTES`].
fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    Ok((read_pem_file(cert_file)?, read_pem_file(key_file)?))
}

fn read_pem_file(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut contents = Vec::new();
    std::fs::File::open(file)
        .and_then(|opened| opened.take(limits::MAX_PEM_FILE_BYTES + 1).read_to_end(&mut contents))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if contents.len() as u64 > limits::MAX_PEM_FILE_BYTES {
        return Err(format!("{} is larger than a certificate file can be", file.display()));
    }
    Ok(contents)
}

fn certified_key(
    contents: &(Vec<u8>, Vec<u8>),
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = parse_certs(&contents.0, cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.1)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key in {}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|e| {
        format!("the key in {} does not belong to the certificate in {}: {e}", key_file.display(), cert_file.display())
    })?;
    Ok(Arc::new(pair))
}

fn parse_certs(pem: &[u8], file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", file.display()));
    }
    Ok(certs)
}

/// The CA certificates in a PEM file, as trust roots.
pub fn load_roots(ca_file: &Path) -> Result<Arc<RootCertStore>, String> {
    load_roots_of(&[&ca_file.to_path_buf()])
}

/// The CA certificates in all these PEM files, as trust roots.
fn load_roots_of(ca_files: &[&PathBuf]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for ca_file in ca_files {
        for cert in parse_certs(&read_pem_file(ca_file)?, ca_file)? {
            roots.add(cert).map_err(|e| format!("unusable CA certificate in {}: {e}", ca_file.display()))?;
        }
    }
    Ok(Arc::new(roots))
}

/// A listener's TLS: its acceptor and the certificate it presents.
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    cert: Arc<ReloadableCert>,
    /// On a client port that requires client certificates: who a certificate names.
    pub identify: Option<Arc<Identify>>,
}

/// Who a client certificate says the caller is: a member (signed by the peer CA), and the
/// subject's common name, which names a user once auth is enabled (as in etcd).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub member: bool,
    pub common_name: Option<String>,
}

/// Reads a connection's [`ClientIdentity`] off the certificate chain its handshake verified.
pub struct Identify {
    /// Verifies against the peer CA alone: the client port trusts the client CA too.
    members: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl Identify {
    pub fn of(&self, chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = rustls::pki_types::UnixTime::now();
        let member = self
            .members
            .as_ref()
            .is_some_and(|verifier| verifier.verify_client_cert(end_entity, intermediates, now).is_ok());
        Some(ClientIdentity { member, common_name: common_name(end_entity) })
    }
}

/// The first common name of a certificate's subject, when it is UTF-8.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(name)
}

/// The TLS of one node, built from its configuration: what each listener accepts, and what it
/// presents when it calls a peer (or, joining, another node's client port).
pub struct NodeTls {
    /// `None`: the client port speaks plain HTTP.
    pub client: Option<ListenerTls>,
    /// `None`: the peer port speaks plain HTTP and a peer token is required instead.
    pub peer: Option<ListenerTls>,
    /// How this node calls its peers: their CA, and its certificate as client identity.
    pub peer_client: Option<rustls::ClientConfig>,
    /// How this node calls other nodes' client ports (to join): trusting the client and the
    /// peer CA, presenting its peer certificate (its client-port one without peer TLS).
    pub client_port_client: Option<rustls::ClientConfig>,
}

impl NodeTls {
    pub fn from_config(config: &ServeConfig) -> Result<Self, String> {
        let mut tls = NodeTls { client: None, peer: None, peer_client: None, client_port_client: None };
        if let (Some(cert_file), Some(key_file), Some(ca_file)) =
            (&config.peer_cert_file, &config.peer_key_file, &config.peer_trusted_ca_file)
        {
            let cert = ReloadableCert::load(cert_file, key_file)?;
            let roots = load_roots(ca_file)?;
            // Mutual TLS: a peer without a certificate signed by the peer CA fails the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("--peer-trusted-ca-file: {e}"))?;
            let server = server_config(verifier, cert.clone())?;
            tls.peer_client = Some(client_config(roots, cert.clone())?);
            tls.peer = Some(ListenerTls { acceptor: TlsAcceptor::from(Arc::new(server)), cert, identify: None });
        }
        if let (Some(cert_file), Some(key_file)) = (&config.client_cert_file, &config.client_key_file) {
            let cert = ReloadableCert::load(cert_file, key_file)?;
            // The CAs whose certificates a client port accepts (when it requires client
            // certificates) and trusts as the other members' client-port certificates (when this
            // node joins): the client CA and the peer CA. Members call each other's client
            // ports to join, presenting their peer certificate.
            let ca_files: Vec<&PathBuf> =
                [&config.client_trusted_ca_file, &config.peer_trusted_ca_file].into_iter().flatten().collect();
            let verifier = match (&config.client_trusted_ca_file, &config.peer_trusted_ca_file) {
                // With a client CA, every client must present a certificate it (or the peer CA,
                // for members) signed.
                (Some(_), _) => WebPkiClientVerifier::builder_with_provider(load_roots_of(&ca_files)?, provider())
                    .build()
                    .map_err(|e| format!("--client-trusted-ca-file: {e}"))?,
                // Without one, clients need no certificate, but members may present their peer
                // certificate: a node joining a cluster with auth enabled proves it is a member.
                (None, Some(peer_ca)) => WebPkiClientVerifier::builder_with_provider(load_roots(peer_ca)?, provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("--peer-trusted-ca-file: {e}"))?,
                (None, None) => WebPkiClientVerifier::no_client_auth(),
            };
            let server = server_config(verifier, cert.clone())?;
            if !ca_files.is_empty() {
                let identity = tls.peer.as_ref().map_or(cert.clone(), |peer| peer.cert.clone());
                tls.client_port_client = Some(client_config(load_roots_of(&ca_files)?, identity)?);
            }
            let identify = match (&config.client_trusted_ca_file, &config.peer_trusted_ca_file) {
                (None, None) => None,
                (Some(_), None) => Some(Arc::new(Identify { members: None })),
                (_, Some(peer_ca)) => Some(Arc::new(Identify {
                    members: Some(
                        WebPkiClientVerifier::builder_with_provider(load_roots(peer_ca)?, provider())
                            .build()
                            .map_err(|e| format!("--peer-trusted-ca-file: {e}"))?,
                    ),
                })),
            };
            tls.client = Some(ListenerTls { acceptor: TlsAcceptor::from(Arc::new(server)), cert, identify });
        }
        Ok(tls)
    }

    fn certs(&self) -> impl Iterator<Item = (&'static str, &Arc<ReloadableCert>)> {
        let client = self.client.as_ref().map(|tls| ("client", &tls.cert));
        let peer = self.peer.as_ref().map(|tls| ("peer", &tls.cert));
        client.into_iter().chain(peer)
    }

    /// Reloads the certificates whose files changed (all of them, with `force`), logging what
    /// happened; a pair that fails to load leaves the previous one in use.
    pub fn reload(&self, force: bool) {
        for (port, cert) in self.certs() {
            match cert.reload(force) {
                Ok(true) => tracing::info!(port, file = %cert.cert_file.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(error) => tracing::error!(port, "TLS certificate not reloaded, the previous one stays: {error}"),
            }
        }
    }

    /// Reloads certificates on SIGHUP, and whenever their files change (checked every
    /// [`limits::CERT_RELOAD_POLL_MS`]). Runs until cancelled.
    /// `hangup` is the SIGHUP stream, made as the node starts (before its storage opens), so the
    /// signal never finds the process without a handler: its default action is to exit. Without
    /// certificates a SIGHUP is logged and ignored.
    pub async fn reload_on_change(self: Arc<Self>, mut hangup: Option<tokio::signal::unix::Signal>) {
        let mut poll = tokio::time::interval(Duration::from_millis(limits::CERT_RELOAD_POLL_MS));
        let has_certs = self.certs().next().is_some();
        loop {
            let forced = tokio::select! {
                _ = poll.tick(), if has_certs => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            if forced && !has_certs {
                tracing::info!("SIGHUP: no TLS certificates to reload");
            }
            self.reload(forced);
        }
    }
}

fn server_config(
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    cert: Arc<ReloadableCert>,
) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    // The listeners speak HTTP/1.1 only (`listener.rs`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn client_config(roots: Arc<RootCertStore>, cert: Arc<ReloadableCert>) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert))
}
