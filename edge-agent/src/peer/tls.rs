//! Mutual TLS between agents with pinned certificates: each agent accepts from a peer exactly
//! the certificate its `node.toml` names for that peer (compared byte for byte, DER), and
//! nothing else. There is no certificate authority to run, expire or leak: a fleet operator
//! copies one public certificate per peer, as with SSH host keys. The handshake's signatures
//! are still verified (the peer must hold the key), and only TLS 1.3 is offered.
//!
//! `weir cert NAME` makes a self-signed pair with rcgen (ECDSA P-256).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};

use crate::config::node::NodeConfig;

/// A problem with a certificate or key file, or with making the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that could not be read or holds no usable PEM item.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("TLS: {0}")]
    Config(#[from] rustls::Error),
    /// rcgen could not make a certificate.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The peers' certificates, by name.
#[derive(Clone, Debug)]
pub struct Pins {
    peers: Vec<(String, CertificateDer<'static>)>,
}

impl Pins {
    /// Which peer presented `cert`, if any.
    pub fn name_of(&self, cert: &CertificateDer<'_>) -> Option<&str> {
        self.peers.iter().find(|(_, pinned)| pinned.as_ref() == cert.as_ref()).map(|(name, _)| name.as_str())
    }

    fn cert_of(&self, name: &str) -> Option<&CertificateDer<'static>> {
        self.peers.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// An agent's TLS setup: its own certificate and key and its peers' pins.
#[derive(Clone)]
pub struct Tls {
    /// Whom it accepts.
    pub pins: Pins,
    server: Arc<rustls::ServerConfig>,
    identity: (Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>),
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("pins", &self.pins).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the node's certificate, key and peer certificates.
    pub fn load(node: &NodeConfig) -> Result<Tls, TlsError> {
        let certs = read_certs(&node.cert)?;
        let key = PrivateKeyDer::from_pem_file(&node.key)
            .map_err(|e| TlsError::File { path: node.key.clone(), message: pem_reason(&e, "private key") })?;
        let mut peers = Vec::new();
        for peer in &node.peers {
            let cert = read_certs(&peer.cert)?.swap_remove(0);
            peers.push((peer.name.clone(), cert));
        }
        Tls::new(certs, key, Pins { peers })
    }

    fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        pins: Pins,
    ) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PinnedClients { pins: pins.clone(), algorithms }))
            .with_single_cert(certs.clone(), key.clone_key())?;
        Ok(Tls { pins, server: Arc::new(server), identity: (certs, Arc::new(key)), provider })
    }

    /// The acceptor side's configuration (any pinned peer may connect).
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The configuration for connecting to `peer`: only its pinned certificate is accepted.
    pub fn client(&self, peer: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let pinned = self.pins.cert_of(peer).cloned().ok_or_else(|| TlsError::File {
            path: PathBuf::from(peer),
            message: "not a peer in node.toml".to_owned(),
        })?;
        let algorithms = self.provider.signature_verification_algorithms;
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                peer: peer.to_owned(),
                pinned,
                algorithms,
            }))
            .with_client_auth_cert(self.identity.0.clone(), self.identity.1.clone_key())?;
        Ok(Arc::new(config))
    }

    /// The name a client presents (the pin, not the name, is what is checked).
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("weir-peer").expect("a valid DNS name")
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |message: String| TlsError::File { path: path.to_owned(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(pem_reason(&e, "certificate")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(pem_reason(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(file(
            "no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block; make one with `weir cert`)"
                .to_owned(),
        ));
    }
    Ok(certs)
}

fn pem_reason(error: &rustls::pki_types::pem::Error, what: &str) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read it: {e}"),
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no {what} in it (expected PEM; make one with `weir cert`)")
        }
        other => format!("not a PEM {what}: {other:?}"),
    }
}

/// The client's check of the agent it connected to.
#[derive(Debug)]
struct PinnedServer {
    peer: String,
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the agent at {}'s address presented a certificate other than the one node.toml pins for it",
                self.peer
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The acceptor's check of a connecting agent: one of the pinned peers.
#[derive(Debug)]
struct PinnedClients {
    pins: Pins,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.pins.name_of(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::General("a certificate that node.toml pins for no peer".to_owned())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `weir cert NAME`: a self-signed certificate and its key for agent `name`, as PEM.
pub fn generate(name: &str) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// Writes `NAME.crt` and `NAME.key` into `dir` (the key readable by its owner only); refuses
/// to overwrite either, since a replaced key locks this agent out of every peer that pinned
/// the old certificate.
pub fn write_pair(name: &str, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (cert, key) = generate(name).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(format!(
                "{} exists; remove it first (peers that pinned the old certificate will refuse the new one until their node.toml is updated)",
                path.display()
            ));
        }
    }
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&key_path, &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    Ok((cert_path, key_path))
}
