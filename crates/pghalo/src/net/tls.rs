//! TLS on both sides of the proxy, with rustls and the `ring` provider.
//!
//! - [`ServerTls`]: pghalo as the server, for clients that send an
//!   SSLRequest. Built from a certificate chain and key, optionally a CA
//!   bundle; with a CA, a client may present a certificate, which must then
//!   chain to that CA (an invalid one fails the handshake, as in
//!   PostgreSQL), and a client without one still connects: whether a
//!   certificate is required is the hba rule's business, not the TLS
//!   layer's.
//! - [`ClientTls`]: pghalo as the client of a backend. With a CA bundle the
//!   server's certificate must chain to it and name the host pghalo dialled
//!   (libpq's `verify-full`); without one any certificate is accepted, which
//!   encrypts but does not authenticate (libpq's `require`).
//! - [`PeerIdentity`]: the names in a client certificate that hba's `cert`
//!   method and `clientcert=verify-full` compare with the user name.
//!
//! Both configurations are immutable once built; a reload builds new ones,
//! so a bad file is found before anything changes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

/// PostgreSQL 17 negotiates this ALPN protocol; older clients and servers
/// send none, which rustls accepts.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// TLS 1.2 and 1.3: nothing older is offered or accepted.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {detail}", .path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: {detail}", .path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error("certificate {} with key {}: {source}", .cert.display(), .key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// What pghalo needs to answer an SSLRequest with 'S' and a handshake.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// True when a CA bundle was loaded: only then can a client present a
    /// certificate, so only then can hba rules ask for one.
    verifies_clients: bool,
}

impl ServerTls {
    /// Reads the certificate chain, its key and the optional CA bundle for
    /// client certificates.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        ca_file: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let chain = read_certificates(cert_file)?;
        let key = read_key(key_file)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match ca_file {
            Some(ca) => {
                let roots = read_roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::BadCa {
                            path: ca.to_path_buf(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::CertKey {
                    cert: cert_file.to_path_buf(),
                    key: key_file.to_path_buf(),
                    source,
                })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            verifies_clients: ca_file.is_some(),
        })
    }

    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }

    pub(super) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(tcp)
            .await
    }
}

/// What pghalo needs to start TLS with a backend.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// False: any certificate is accepted (encryption without
    /// authentication).
    verifies_server: bool,
}

impl ClientTls {
    /// With `ca_file`, backends must prove who they are; without, the
    /// connection is encrypted but anyone in the path could terminate it.
    pub fn load(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = match ca_file {
            Some(ca) => builder
                .with_root_certificates(read_roots(ca)?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            verifies_server: ca_file.is_some(),
        })
    }

    pub fn verifies_server(&self) -> bool {
        self.verifies_server
    }

    /// True when both come from the same loading of the files.
    pub fn same_config(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }

    /// Handshakes as the client of `host`, whose name (or IP address) the
    /// certificate must carry when the server is verified.
    pub(super) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{host}\" is not a valid TLS server name: {e}"),
            )
        })?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// One provider object, passed explicitly: rustls's process-wide default
/// would be a singleton, and two providers in one build make it panic.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// `tls.backend` without `backend_ca_file`: the server's certificate is
/// taken on trust, as libpq's sslmode=require does. The handshake
/// signatures are still checked, so the peer must hold the key of the
/// certificate it sent; it just need not be anyone in particular.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// The names in a client certificate that hba rules compare with the user
/// name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's first Common Name, as PostgreSQL takes it; `None` when
    /// there is none or it is not a plain string.
    pub cn: Option<String>,
    /// The subject in RFC 2253 form (last RDN first, `,` between RDNs),
    /// as PostgreSQL prints it for `clientname=DN`; `None` when the subject
    /// holds an attribute type pghalo cannot name.
    pub dn: Option<String>,
}

impl PeerIdentity {
    /// A certificate that cannot be parsed names nobody; it has already
    /// passed the CA check, so this only happens with exotic encodings.
    pub fn from_der(der: &[u8]) -> PeerIdentity {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return PeerIdentity::default();
        };
        let subject = cert.subject();
        let cn = subject
            .iter_common_name()
            .next()
            .and_then(|attr| attr.as_str().ok())
            // PostgreSQL refuses a CN with an embedded NUL: it could hide a
            // different name from a C string comparison.
            .filter(|cn| !cn.contains('\0'))
            .map(str::to_string);
        PeerIdentity {
            cn,
            dn: rfc2253(subject),
        }
    }
}

/// Short names OpenSSL prints for the attribute types in RFC 2253 output.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.42", "GN"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let short = SHORT_NAMES.iter().find(|(id, _)| *id == oid)?.1;
            let value = attr.as_str().ok()?;
            parts.push(format!("{short}={}", escape_rfc2253(value)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// RFC 2253 escaping as OpenSSL does it for PostgreSQL (ESC_2253, ESC_CTRL,
/// ESC_MSB): specials get a backslash, control and non-ASCII bytes become
/// `\XX`.
fn escape_rfc2253(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if first => out.push_str("\\#"),
            b' ' if first || last => out.push_str("\\ "),
            0..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn escapes_like_openssl_rfc2253() {
        assert_eq!(escape_rfc2253("postgres"), "postgres");
        assert_eq!(escape_rfc2253("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc2253(" lead"), "\\ lead");
        assert_eq!(escape_rfc2253("trail "), "trail\\ ");
        assert_eq!(escape_rfc2253("#x#"), "\\#x#");
        assert_eq!(escape_rfc2253("é"), "\\C3\\A9");
    }

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "unit CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        subject: &[(rcgen::DnType, &str)],
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer).unwrap(), key)
    }

    #[test]
    fn peer_identity_reads_cn_and_dn_as_postgresql_prints_them() {
        use rcgen::DnType;
        let (issuer, _) = ca();
        let (cert, _) = leaf(
            &issuer,
            &[
                (DnType::CountryName, "FR"),
                (DnType::OrganizationName, "Acme, Inc."),
                (DnType::CommonName, "postgres"),
            ],
        );
        assert_eq!(
            PeerIdentity::from_der(cert.der()),
            PeerIdentity {
                cn: Some("postgres".into()),
                dn: Some("CN=postgres,O=Acme\\, Inc.,C=FR".into()),
            }
        );
        let (nameless, _) = leaf(&issuer, &[(DnType::OrganizationName, "Acme")]);
        assert_eq!(PeerIdentity::from_der(nameless.der()).cn, None);
        assert_eq!(PeerIdentity::from_der(b"junk"), PeerIdentity::default());
    }

    #[test]
    fn server_configuration_checks_the_key_and_the_ca() {
        let dir = std::env::temp_dir().join(format!("pghalo-tls-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (issuer, ca_pem) = ca();
        let (cert, key) = leaf(&issuer, &[(rcgen::DnType::CommonName, "pghalo")]);
        let (_, other_key) = leaf(&issuer, &[(rcgen::DnType::CommonName, "x")]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert_file = write("server.crt", &cert.pem());
        let key_file = write("server.key", &key.serialize_pem());
        let ca_file = write("ca.crt", &ca_pem);
        let tls = ServerTls::load(&cert_file, &key_file, Some(&ca_file)).unwrap();
        assert!(tls.verifies_clients());
        assert!(
            !ServerTls::load(&cert_file, &key_file, None)
                .unwrap()
                .verifies_clients()
        );

        let wrong_key = write("other.key", &other_key.serialize_pem());
        let err = ServerTls::load(&cert_file, &wrong_key, None).unwrap_err();
        assert!(
            matches!(err, TlsError::CertKey { .. }),
            "a key that is not the certificate's: {err}"
        );
        let err = ServerTls::load(&cert_file, &cert_file, None).unwrap_err();
        assert!(err.to_string().contains("no private key in it"), "{err}");
        assert!(ClientTls::load(Some(&ca_file)).unwrap().verifies_server());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("pghalo-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = ServerTls::load(&missing, &missing, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{err}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let err = ServerTls::load(&empty, &empty, None).unwrap_err();
        assert!(err.to_string().contains("no certificate in it"), "{err}");
        let err = ClientTls::load(Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no certificate in it"), "{err}");
        assert!(!ClientTls::load(None).unwrap().verifies_server());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
