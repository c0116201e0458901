//! Client authentication, pgpool-style (pool_hba.conf + pool_passwd) but
//! safer: SCRAM-SHA-256 with constant-time checks, md5 and cleartext only
//! where the hba rule says so, and failures that look the same whether or
//! not the user exists. Over TLS, `hostssl`/`hostnossl` rules see the
//! encryption and client certificates are checked as PostgreSQL does
//! (`cert`, `clientcert=verify-ca|verify-full`, `clientname=CN|DN`).

use std::net::SocketAddr;

use bytes::BytesMut;
use pghalo_protocol::backend as be;
use pghalo_protocol::frontend::{PasswordMessage, SaslInitialResponse, SaslResponse};
use pghalo_protocol::md5::Md5Secret;
use pghalo_protocol::scram::{self, Nonce, ScramServer, ScramVerifier};
use pghalo_protocol::{Decoder, SqlState, StartupMessage};
use tokio::io::AsyncWriteExt;

use super::error::ClientError;
use crate::backend::BackendCredentials;
use crate::config::hba::{
    AuthMethod, ClientCert, ClientName, Connection, HbaRequest, HbaRule, HbaRules,
};
use crate::config::passwd::{PasswordEntry, PasswordFile};
use crate::net::tls::{PeerIdentity, ServerTls};
use crate::net::{Stream, read_message};

/// Password-phase messages are small; anything bigger is an attack.
const MAX_AUTH_MESSAGE: u32 = 16 * 1024;

/// Where a client connected from.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Unix,
    Tcp(SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix => f.write_str("[local]"),
            Peer::Tcp(addr) => write!(f, "{}", addr.ip()),
        }
    }
}

/// What the TLS layer established about a client connection.
#[derive(Debug, Clone, Default)]
pub struct TlsState {
    /// The TLS handshake completed.
    pub encrypted: bool,
    /// A CA bundle was in force for the handshake, so the client could
    /// have presented a certificate.
    pub verifies_clients: bool,
    /// The names in the certificate the client presented, which the
    /// handshake verified against the CA bundle.
    pub certificate: Option<PeerIdentity>,
}

impl TlsState {
    /// `tls` is the configuration the handshake (if any) used.
    pub fn of(stream: &Stream, tls: Option<&ServerTls>) -> TlsState {
        if !stream.is_encrypted() {
            return TlsState::default();
        }
        TlsState {
            encrypted: true,
            verifies_clients: tls.is_some_and(ServerTls::verifies_clients),
            certificate: stream
                .peer_certificate()
                .map(|der| PeerIdentity::from_der(der)),
        }
    }
}

/// The authentication files in force; replaced whole on reload.
#[derive(Debug)]
pub struct AuthFiles {
    pub hba: HbaRules,
    pub passwd: PasswordFile,
    /// Salts mock SCRAM exchanges for unknown users, so that a prober sees
    /// stable, plausible salts.
    pub mock_secret: [u8; 32],
    /// SCRAM verifiers made from plain-text entries, as PostgreSQL would
    /// store them.
    pub plain_verifiers: PlainVerifiers,
}

/// One SCRAM verifier per user with a plain-text pool_passwd entry, made at
/// its first SCRAM login and kept for the life of the files (a reload
/// starts afresh). Making one costs 4096 rounds of PBKDF2, which any client
/// could otherwise make pghalo pay, and the other sessions of its worker
/// wait for, at every connection attempt. The salt stays the same between
/// logins, as with a verifier PostgreSQL stores.
#[derive(Debug, Default)]
pub struct PlainVerifiers(std::sync::Mutex<std::collections::HashMap<String, ScramVerifier>>);

impl PlainVerifiers {
    fn get_or_make(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<ScramVerifier, pghalo_protocol::scram::ScramError> {
        if let Some(verifier) = self.0.lock().ok().and_then(|m| m.get(user).cloned()) {
            return Ok(verifier);
        }
        // Made outside the lock: two first logins at once may both pay.
        let verifier = ScramVerifier::generate(password)?;
        if let Ok(mut made) = self.0.lock() {
            return Ok(made.entry(user.to_string()).or_insert(verifier).clone());
        }
        Ok(verifier)
    }
}

/// Proof that a client authenticated: a session cannot ask for a server
/// connection without one.
#[derive(Debug)]
pub struct Authenticated {
    pub user: String,
    pub database: String,
    /// What pghalo can present to the backends on this user's behalf.
    pub credentials: BackendCredentials,
}

pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    peer: Peer,
    tls: &TlsState,
    files: &AuthFiles,
) -> Result<Authenticated, ClientError> {
    let user = startup
        .user()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ClientError::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = startup
        .database()
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if startup
        .param("replication")
        .is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0"))
    {
        return Err(ClientError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "pghalo does not proxy replication connections",
        ));
    }
    let conn = match peer {
        Peer::Unix => Connection::Local,
        Peer::Tcp(addr) => Connection::Host {
            addr: addr.ip(),
            tls: tls.encrypted,
        },
    };
    // Only refusals quote it: formatted then, not for every client.
    let host = || describe_host(peer, &user, &database, tls.encrypted);
    let Some(rule) = files.hba.find(&HbaRequest {
        conn,
        database: &database,
        user: &user,
    }) else {
        tracing::warn!(%user, %database, %peer, "rejected: no pool_hba.conf entry");
        return Err(ClientError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("no pool_hba.conf entry for {}", host()),
        ));
    };
    if rule.method != AuthMethod::Reject {
        require_certificate(rule, tls, &user, peer)?;
    }
    let stored = files.passwd.lookup(&user);
    let method = effective_method(rule.method, stored);
    let mut exchange = Exchange {
        stream,
        buf,
        decoder: Decoder::new(MAX_AUTH_MESSAGE),
        outcome: BytesMut::new(),
    };
    let credentials = match method {
        AuthMethod::Trust => credentials_from(stored),
        AuthMethod::Reject => {
            tracing::warn!(%user, %database, %peer, line = rule.line, "rejected by pool_hba.conf");
            return Err(ClientError::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("pool_hba.conf rejects connection for {}", host()),
            ));
        }
        AuthMethod::Password => exchange.cleartext(&user, stored, peer).await?,
        AuthMethod::Md5 => exchange.md5(&user, stored, peer).await?,
        AuthMethod::ScramSha256 => exchange.scram(&user, stored, peer, files).await?,
        // The certificate was required above; its name is checked below.
        AuthMethod::Cert => credentials_from(stored),
    };
    let mut ok = std::mem::take(&mut exchange.outcome);
    if rule.clientcert == Some(ClientCert::VerifyFull)
        && let Err(refused) = check_certificate_name(rule, tls, &user, peer)
    {
        // As PostgreSQL: the SCRAM exchange completes, then the refusal.
        exchange.send(&ok).await?;
        return Err(refused);
    }
    // SCRAM's last message and AuthenticationOk leave in one write.
    be::write_authentication_ok(&mut ok);
    exchange.send(&ok).await?;
    Ok(Authenticated {
        user,
        database,
        credentials,
    })
}

/// PostgreSQL's wording for the connection in hba errors.
fn describe_host(peer: Peer, user: &str, database: &str, encrypted: bool) -> String {
    match peer {
        Peer::Unix => {
            format!("host \"[local]\", user \"{user}\", database \"{database}\", no encryption")
        }
        Peer::Tcp(addr) => format!(
            "host \"{}\", user \"{user}\", database \"{database}\", {}",
            addr.ip(),
            if encrypted {
                "SSL encryption"
            } else {
                "no encryption"
            }
        ),
    }
}

/// `cert` rules and `clientcert=` need a certificate, checked before any
/// password is asked for, as PostgreSQL does.
fn require_certificate(
    rule: &HbaRule,
    tls: &TlsState,
    user: &str,
    peer: Peer,
) -> Result<(), ClientError> {
    if rule.clientcert.is_none() {
        return Ok(());
    }
    if !tls.verifies_clients {
        tracing::warn!(%user, %peer, line = rule.line, "pool_hba.conf asks for a client certificate but tls.ca_file is not set");
        return Err(ClientError::fatal(
            SqlState::CONFIG_FILE_ERROR,
            "client certificates can only be checked if a root certificate store is available",
        ));
    }
    if tls.certificate.is_none() {
        tracing::warn!(%user, %peer, line = rule.line, "rejected: no client certificate");
        return Err(ClientError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        ));
    }
    Ok(())
}

/// The certificate must name the user it logs in as (`cert`,
/// `clientcert=verify-full`). PostgreSQL answers a failure after a correct
/// password with "password authentication failed"; pghalo names the
/// certificate, which is what the client has to fix.
fn check_certificate_name(
    rule: &HbaRule,
    tls: &TlsState,
    user: &str,
    peer: Peer,
) -> Result<(), ClientError> {
    let identity = tls.certificate.as_ref();
    let (field, name) = match rule.clientname {
        ClientName::Cn => ("CN", identity.and_then(|i| i.cn.as_deref())),
        ClientName::Dn => ("DN", identity.and_then(|i| i.dn.as_deref())),
    };
    match name {
        Some(name) if name == user => Ok(()),
        Some(name) => {
            tracing::warn!(%user, %peer, line = rule.line, certificate = %name,
                "certificate validation (clientcert=verify-full) failed: {field} mismatch");
            Err(cert_failed(user))
        }
        None => {
            tracing::warn!(%user, %peer, line = rule.line,
                "certificate authentication failed: client certificate contains no user name");
            Err(cert_failed(user))
        }
    }
}

fn cert_failed(user: &str) -> ClientError {
    ClientError::fatal(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        format!("certificate authentication failed for user \"{user}\""),
    )
}

/// md5 rules do SCRAM when the stored secret is a SCRAM verifier, as
/// PostgreSQL does.
/// An unknown user on an md5 rule gets a (mock) SCRAM exchange, as
/// PostgreSQL gives one when password_encryption is scram-sha-256: an md5
/// challenge would tell a prober the name does not exist.
fn effective_method(method: AuthMethod, stored: Option<&PasswordEntry>) -> AuthMethod {
    match (method, stored) {
        (AuthMethod::Md5, Some(PasswordEntry::Scram(_)) | None) => AuthMethod::ScramSha256,
        (method, _) => method,
    }
}

fn credentials_from(stored: Option<&PasswordEntry>) -> BackendCredentials {
    match stored {
        Some(PasswordEntry::Plain(secret)) => {
            BackendCredentials::Password(secret.expose().as_bytes().to_vec())
        }
        Some(PasswordEntry::Md5(hash)) => BackendCredentials::Md5Hash(hash.clone()),
        Some(PasswordEntry::Scram(_)) | None => BackendCredentials::None,
    }
}

fn auth_failed(user: &str) -> ClientError {
    ClientError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

struct Exchange<'a> {
    stream: &'a mut Stream,
    buf: &'a mut BytesMut,
    decoder: Decoder,
    /// The method's last word after a proof checked out (SCRAM's
    /// server-final message), held back to go out with AuthenticationOk.
    outcome: BytesMut,
}

impl Exchange<'_> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await.map_err(|_| gone())
    }

    /// The client's next password-phase message ('p'); anything else ends
    /// the attempt.
    async fn receive(&mut self) -> Result<bytes::Bytes, ClientError> {
        let msg = read_message(self.stream, self.buf, &self.decoder)
            .await
            .map_err(|e| {
                ClientError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    format!("invalid authentication message: {e}"),
                )
            })?;
        if msg.tag != b'p' {
            return Err(ClientError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("expected password response, got message type {}", msg.tag),
            ));
        }
        Ok(msg.body)
    }

    async fn cleartext(
        &mut self,
        user: &str,
        stored: Option<&PasswordEntry>,
        peer: Peer,
    ) -> Result<BackendCredentials, ClientError> {
        let mut out = BytesMut::new();
        be::write_authentication_cleartext_password(&mut out);
        self.send(&out).await?;
        let body = self.receive().await?;
        let password = PasswordMessage::parse(&body)
            .map_err(|e| ClientError::fatal(e.sqlstate(), e.to_string()))?
            .password;
        let matches = match stored {
            Some(PasswordEntry::Plain(secret)) => constant_eq(secret.expose().as_bytes(), password),
            Some(PasswordEntry::Md5(hash)) => constant_eq(
                pghalo_protocol::md5::hash_password(user, password).as_bytes(),
                hash.to_ascii_lowercase().as_bytes(),
            ),
            Some(PasswordEntry::Scram(verifier)) => verifier.verify_password(password),
            None => false,
        };
        if !matches {
            tracing::warn!(%user, %peer, method = "password", "authentication failed");
            return Err(auth_failed(user));
        }
        Ok(BackendCredentials::Password(password.to_vec()))
    }

    async fn md5(
        &mut self,
        user: &str,
        stored: Option<&PasswordEntry>,
        peer: Peer,
    ) -> Result<BackendCredentials, ClientError> {
        let salt: [u8; 4] = rand::random();
        let mut out = BytesMut::new();
        be::write_authentication_md5_password(&mut out, salt);
        self.send(&out).await?;
        let body = self.receive().await?;
        let response = PasswordMessage::parse(&body)
            .map_err(|e| ClientError::fatal(e.sqlstate(), e.to_string()))?
            .password;
        let (secret, credentials) = match stored {
            Some(PasswordEntry::Plain(secret)) => {
                let bytes = secret.expose().as_bytes().to_vec();
                (
                    Some(Md5Secret::Plain(bytes.clone())),
                    BackendCredentials::Password(bytes),
                )
            }
            Some(PasswordEntry::Md5(hash)) => (
                Md5Secret::parse_stored(hash).ok(),
                BackendCredentials::Md5Hash(hash.clone()),
            ),
            _ => (None, BackendCredentials::None),
        };
        if !secret.is_some_and(|s| s.verify(user, salt, response)) {
            tracing::warn!(%user, %peer, method = "md5", "authentication failed");
            return Err(auth_failed(user));
        }
        Ok(credentials)
    }

    async fn scram(
        &mut self,
        user: &str,
        stored: Option<&PasswordEntry>,
        peer: Peer,
        files: &AuthFiles,
    ) -> Result<BackendCredentials, ClientError> {
        let nonce = Nonce::random()
            .map_err(|e| ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()))?;
        let (server, plain) = match stored {
            Some(PasswordEntry::Scram(verifier)) => {
                (ScramServer::new(verifier.clone(), nonce), None)
            }
            Some(PasswordEntry::Plain(secret)) => {
                let bytes = secret.expose().as_bytes().to_vec();
                match files.plain_verifiers.get_or_make(user, &bytes) {
                    Ok(verifier) => (ScramServer::new(verifier, nonce), Some(bytes)),
                    Err(e) => {
                        return Err(ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()));
                    }
                }
            }
            // An md5 hash cannot answer SCRAM, and an unknown user must not
            // be told apart from a wrong password: both run a mock exchange.
            _ => (ScramServer::mock(user, &files.mock_secret, nonce), None),
        };
        let mut out = BytesMut::new();
        be::write_authentication_sasl(&mut out, server.mechanisms())
            .map_err(|e| ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()))?;
        self.send(&out).await?;

        let body = self.receive().await?;
        let initial = SaslInitialResponse::parse(&body)
            .map_err(|e| ClientError::fatal(e.sqlstate(), e.to_string()))?;
        let mechanism = initial.mechanism.to_str().unwrap_or("");
        let (server, server_first) = server
            .handle_client_first(mechanism, initial.data.unwrap_or_default())
            .map_err(|e| scram_failure(user, peer, &e))?;
        out.clear();
        be::write_authentication_sasl_continue(&mut out, &server_first)
            .map_err(|e| ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()))?;
        self.send(&out).await?;

        let body = self.receive().await?;
        let response = SaslResponse::parse(&body)
            .map_err(|e| ClientError::fatal(e.sqlstate(), e.to_string()))?;
        let (authenticated, server_final) = server
            .handle_client_final(response.data)
            .map_err(|e| scram_failure(user, peer, &e))?;
        be::write_authentication_sasl_final(&mut self.outcome, &server_final)
            .map_err(|e| ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()))?;
        Ok(match plain {
            Some(password) => BackendCredentials::Password(password),
            None => BackendCredentials::Scram(authenticated.backend_credentials()),
        })
    }
}

fn scram_failure(user: &str, peer: Peer, e: &scram::ScramError) -> ClientError {
    tracing::warn!(%user, %peer, method = "scram-sha-256", "authentication failed: {e}");
    if e.sqlstate() == SqlState::INVALID_PASSWORD {
        auth_failed(user)
    } else {
        ClientError::fatal(e.sqlstate(), e.to_string())
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn gone() -> ClientError {
    ClientError::fatal(
        SqlState::CONNECTION_FAILURE,
        "client went away during authentication",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_entry_is_turned_into_a_verifier_once_per_user() {
        let made = PlainVerifiers::default();
        let first = made.get_or_make("alice", b"secret").unwrap();
        let again = made.get_or_make("alice", b"secret").unwrap();
        assert!(first == again, "the second login paid for a new verifier");
        let other = made.get_or_make("bob", b"secret").unwrap();
        assert_ne!(
            first.salt(),
            other.salt(),
            "each user gets a salt of their own"
        );
    }
}
