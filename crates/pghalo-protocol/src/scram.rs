//! SCRAM-SHA-256 (RFC 5802 and RFC 7677) as PostgreSQL speaks it: both the
//! server side (the proxy authenticating its clients) and the client side
//! (the proxy authenticating to a PostgreSQL server).
//!
//! Owns the stored verifier format, the key derivations, and the two
//! exchanges as state machines: every step consumes the state and returns
//! the next one, so a message out of order has no method to call and a
//! failed step leaves nothing to retry with. No I/O: the caller moves the
//! bytes in SASL messages (see [`crate::frontend`] and [`crate::backend`]).
//!
//! # Reusing the client's key towards the server
//!
//! A stored verifier holds `StoredKey = H(ClientKey)`, not `ClientKey`, so it
//! cannot produce a client proof by itself. But a successful exchange
//! reveals `ClientKey = ClientProof XOR ClientSignature` to the server side.
//! [`ScramAuthenticated::client_key`] exposes it, and
//! [`ScramAuthenticated::backend_credentials`] packages it with the
//! verifier's `ServerKey`, salt and iteration count for [`ScramClient`]:
//! when the proxy's verifier for a user is the very one PostgreSQL stores
//! (same salt and iterations), the proxy can then log in to PostgreSQL as
//! that user without ever knowing the password, as PgBouncer does. The
//! client refuses to use such keys if the server presents another salt or
//! iteration count ([`ScramError::KeysMismatch`]). The key is a password
//! equivalent for that verifier: keep it in memory only, never log it.
//!
//! # Channel binding
//!
//! The server side supports `tls-server-end-point` when given the hash of
//! the proxy's TLS certificate ([`ScramServer::with_channel_binding`]); it
//! then offers `SCRAM-SHA-256-PLUS` too. Without it, a client asking for
//! binding (`p=`) is refused, and a client saying `y` (it could bind but
//! thinks the server cannot) is accepted. The client side only sends `n`.
//!
//! # SASLprep
//!
//! PostgreSQL normalises passwords with SASLprep (RFC 4013) when it can and
//! uses the raw bytes when it cannot; [`prepare_password`] follows it: an
//! ASCII or non-UTF-8 password is used as is, a UTF-8 one goes through
//! the `stringprep` crate's SASLprep, and if that fails (prohibited or
//! unassigned characters, bad bidi) or maps the password to nothing, the raw
//! bytes are used. PostgreSQL checks prohibited characters before NFKC
//! normalisation and `stringprep` after it; the two can differ only for
//! passwords with characters that normalise into prohibited ones.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::SqlState;

/// The mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The mechanism name with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length for new verifiers.
pub const DEFAULT_SALT_LEN: usize = 16;
/// The most iterations the client side will compute unless told otherwise:
/// a server (or something posing as one) asking for billions would stall
/// the proxy. PostgreSQL's own default is 4096.
pub const DEFAULT_MAX_ITERATIONS: u32 = 10_000_000;
/// Random bytes in a nonce (PostgreSQL uses 18, base64-encoded to 24).
const NONCE_RAW_LEN: usize = 18;
/// The only channel binding type PostgreSQL implements.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// A SHA-256 output: keys, signatures and proofs.
type Key = [u8; 32];

/// A fault in a SCRAM exchange. Messages never include proofs or keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client chose a mechanism that was not offered.
    #[error("unsupported SASL mechanism {0:?}")]
    UnsupportedMechanism(String),
    /// The client asked for channel binding, which this server side was not
    /// configured for.
    #[error("channel binding is not supported by this server")]
    ChannelBindingUnsupported,
    /// The client asked for a channel binding type other than
    /// `tls-server-end-point`.
    #[error("unsupported SCRAM channel-binding type {0:?}")]
    UnsupportedChannelBindingType(String),
    /// The mechanism and the gs2 flag disagree (PLUS without `p=`, or `p=`
    /// without PLUS).
    #[error("SCRAM channel binding does not match the selected mechanism")]
    MechanismBindingMismatch,
    /// The client said `y` although the server offered channel binding: a
    /// sign that someone removed PLUS from the offer on the way.
    #[error(
        "SCRAM channel binding negotiation error: client did not use binding the server offered"
    )]
    ChannelBindingDowngrade,
    /// The channel binding data in client-final does not match.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client sent an authorization identity (PostgreSQL refuses them).
    #[error("client uses authorization identity, but it is not supported")]
    AuthzidUnsupported,
    /// A mandatory extension (`m=`) was sent.
    #[error("client requires an unsupported SCRAM extension")]
    ExtensionUnsupported,
    /// A nonce is empty or has characters outside printable ASCII.
    #[error("invalid SCRAM nonce")]
    InvalidNonce,
    /// The nonce in the next message does not continue the exchange's.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: wrong password, or unknown user.
    #[error("password authentication failed")]
    InvalidProof,
    /// The server's final signature is wrong: it does not know the
    /// verifier, so it is not the server it claims to be.
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server ended the exchange with an error attribute (`e=`).
    #[error("SCRAM server error: {0}")]
    ServerError(String),
    /// Keys derived with one salt or iteration count cannot answer a
    /// server that uses others.
    #[error("SCRAM keys were derived with another salt or iteration count than the server's")]
    KeysMismatch,
    /// The server asks for more iterations than the client allows.
    #[error("SCRAM iteration count {iterations} exceeds the limit {max}")]
    TooManyIterations {
        /// Iterations requested.
        iterations: u32,
        /// The client's limit.
        max: u32,
    },
    /// A stored verifier does not have the `SCRAM-SHA-256$...` form.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    /// The system random source failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

impl ScramError {
    /// The SQLSTATE to report to a client when its exchange fails.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ScramError::InvalidProof | ScramError::InvalidVerifier(_) => SqlState::INVALID_PASSWORD,
            ScramError::KeysMismatch => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            ScramError::Random(_) => SqlState::INTERNAL_ERROR,
            ScramError::TooManyIterations { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}

fn random_bytes(buf: &mut [u8]) -> Result<(), ScramError> {
    getrandom::fill(buf).map_err(|e| ScramError::Random(e.to_string()))
}

// ---- primitives ----

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = new_mac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC is defined for keys of any length (long keys are hashed, short
    // ones padded), so this constructor cannot fail.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; 32];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block. The keyed
/// HMAC state is cloned per round instead of re-keyed, which halves the
/// work.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let prf = new_mac(password);
    let mut u: Key = prf
        .clone()
        .chain_update(salt)
        .chain_update(1u32.to_be_bytes())
        .finalize()
        .into_bytes()
        .into();
    let mut out = u;
    for _ in 1..iterations {
        u = prf.clone().chain_update(u).finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

/// Applies SASLprep the way PostgreSQL does; see the module docs.
pub fn prepare_password(password: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(password) else {
        return Cow::Borrowed(password);
    };
    if text.is_ascii() {
        return Cow::Borrowed(password);
    }
    match stringprep::saslprep(text) {
        Ok(Cow::Owned(prepared)) if !prepared.is_empty() => Cow::Owned(prepared.into_bytes()),
        _ => Cow::Borrowed(password),
    }
}

/// `ClientKey` and `ServerKey` from a password, salt and iteration count.
fn derive_keys(password: &[u8], salt: &[u8], iterations: u32) -> (Key, Key) {
    let salted = hi(&prepare_password(password), salt, iterations);
    (
        hmac(&salted, &[b"Client Key"]),
        hmac(&salted, &[b"Server Key"]),
    )
}

// ---- stored verifier ----

/// A stored SCRAM-SHA-256 secret, as in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl ScramVerifier {
    /// Parses the stored text form.
    pub fn parse(text: &str) -> Result<Self, ScramError> {
        let bad = ScramError::InvalidVerifier;
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(bad("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(bad("missing '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(bad("missing ':' between iterations and salt"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(bad("missing ':' between the keys"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or(bad("iteration count is not a positive integer"))?;
        let salt = B64.decode(salt).map_err(|_| bad("salt is not base64"))?;
        if salt.is_empty() {
            return Err(bad("salt is empty"));
        }
        let key = |s: &str| -> Result<Key, ScramError> {
            B64.decode(s)
                .ok()
                .and_then(|k| Key::try_from(k).ok())
                .ok_or(bad("key is not 32 bytes of base64"))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }

    /// The verifier for `password` with the given salt and iteration count.
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let (client_key, server_key) = derive_keys(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// A new verifier for `password` with a random 16-byte salt and 4096
    /// iterations, as PostgreSQL makes them by default.
    pub fn generate(password: &[u8]) -> Result<Self, ScramError> {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        random_bytes(&mut salt)?;
        Ok(Self::from_password(password, &salt, DEFAULT_ITERATIONS))
    }

    /// True if `password` matches, compared in constant time: what a
    /// server does for cleartext `password` authentication against a SCRAM
    /// secret.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let (client_key, server_key) = derive_keys(password, &self.salt, self.iterations);
        let stored_ok = sha256(&client_key).ct_eq(&self.stored_key);
        let server_ok = server_key.ct_eq(&self.server_key);
        bool::from(stored_ok & server_ok)
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// `StoredKey = H(ClientKey)`.
    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    /// `ServerKey`, which lets whoever holds it pose as the server.
    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }
}

impl std::str::FromStr for ScramVerifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &B64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

// ---- nonces and keys ----

/// A nonce: printable ASCII without commas.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce(String);

impl Nonce {
    /// A fresh nonce of 18 random bytes, base64-encoded as PostgreSQL does.
    pub fn random() -> Result<Nonce, ScramError> {
        let mut raw = [0u8; NONCE_RAW_LEN];
        random_bytes(&mut raw)?;
        Ok(Nonce(B64.encode(raw)))
    }

    /// A nonce from text (tests, or a caller with its own source).
    pub fn new(text: impl Into<String>) -> Result<Nonce, ScramError> {
        let text = text.into();
        if is_printable(&text) {
            Ok(Nonce(text))
        } else {
            Err(ScramError::InvalidNonce)
        }
    }

    /// The nonce text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.0)
    }
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E, at least one character.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A `ClientKey`: the password equivalent a SCRAM exchange reveals to the
/// server side. `Debug` hides it and comparison is constant-time.
#[derive(Clone, Eq)]
pub struct ClientKey([u8; 32]);

impl ClientKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClientKey(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

// ---- message grammar helpers ----

/// A cursor over the comma-separated `x=value` attributes of a SCRAM
/// message. `rest` is `None` once the last attribute was taken, which is
/// different from `Some("")` (a trailing comma: an attribute is missing).
struct Attrs<'a> {
    rest: Option<&'a str>,
}

impl<'a> Attrs<'a> {
    fn new(text: &'a str) -> Self {
        Attrs { rest: Some(text) }
    }

    fn at_end(&self) -> bool {
        self.rest.is_none()
    }

    /// The attribute letter of the next field, if it has the `x=` form.
    fn peek(&self) -> Option<char> {
        let mut chars = self.rest?.chars();
        match (chars.next(), chars.next()) {
            (Some(attr), Some('=')) if attr.is_ascii_alphabetic() => Some(attr),
            _ => None,
        }
    }

    /// Takes the next field, which must be attribute `attr`.
    fn take(&mut self, attr: char, what: &'static str) -> Result<&'a str, ScramError> {
        if self.peek() != Some(attr) {
            return Err(ScramError::Malformed(what));
        }
        let text = self.rest.unwrap_or_default();
        let (field, rest) = match text.split_once(',') {
            Some((field, rest)) => (field, Some(rest)),
            None => (text, None),
        };
        self.rest = rest;
        Ok(field.get(2..).unwrap_or_default())
    }

    /// Skips optional extensions until the message ends or `stop` is the
    /// next attribute.
    fn skip_extensions(&mut self, stop: Option<char>) -> Result<(), ScramError> {
        while !self.at_end() {
            let attr = self
                .peek()
                .ok_or(ScramError::Malformed("expected an attribute"))?;
            if Some(attr) == stop {
                return Ok(());
            }
            self.take(attr, "expected an attribute")?;
        }
        Ok(())
    }

    /// Fails unless every attribute was taken.
    fn finish(&self, what: &'static str) -> Result<(), ScramError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(ScramError::Malformed(what))
        }
    }
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    let text = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not valid UTF-8"))?;
    if text.contains('\0') {
        return Err(ScramError::Malformed("contains a NUL byte"));
    }
    Ok(text)
}

// ---- server side ----

/// The server side before the client's first message.
pub struct ScramServer {
    verifier: ScramVerifier,
    nonce: Nonce,
    /// The TLS certificate hash for `tls-server-end-point`, if offered.
    channel_binding: Option<Vec<u8>>,
    /// A stand-in exchange for an unknown user: it runs to the end and
    /// fails there, like a wrong password, so that a client cannot tell the
    /// user does not exist.
    mock: bool,
}

impl ScramServer {
    /// Starts an exchange against `verifier`, with `nonce` as the server's
    /// part of the nonce ([`Nonce::random`] in production).
    pub fn new(verifier: ScramVerifier, nonce: Nonce) -> Self {
        ScramServer {
            verifier,
            nonce,
            channel_binding: None,
            mock: false,
        }
    }

    /// Starts an exchange for a user that does not exist (or has no SCRAM
    /// secret): the salt is derived from the name and `secret` (a value the
    /// caller keeps for its lifetime), so repeated attempts see a stable
    /// salt as for a real user, and the exchange always ends with
    /// [`ScramError::InvalidProof`].
    pub fn mock(user: &str, secret: &[u8], nonce: Nonce) -> Self {
        let salt = hmac(secret, &[b"salt", user.as_bytes()]);
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..DEFAULT_SALT_LEN).unwrap_or(&salt).to_vec(),
            stored_key: hmac(secret, &[b"stored", user.as_bytes()]),
            server_key: hmac(secret, &[b"server", user.as_bytes()]),
        };
        ScramServer {
            verifier,
            nonce,
            channel_binding: None,
            mock: true,
        }
    }

    /// Offers `SCRAM-SHA-256-PLUS` with `tls-server-end-point` binding;
    /// `cert_hash` is the hash of the proxy's TLS certificate as RFC 5929
    /// defines it (SHA-256 for SHA-1 or MD5 signed certificates, else the
    /// certificate's own signature hash).
    pub fn with_channel_binding(mut self, cert_hash: Vec<u8>) -> Self {
        self.channel_binding = Some(cert_hash);
        self
    }

    /// The mechanisms to list in AuthenticationSASL, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Handles the SASLInitialResponse: the mechanism chosen and the
    /// client-first message. Returns the server-first message to send in
    /// AuthenticationSASLContinue.
    pub fn handle_client_first(
        self,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<(ServerFirstSent, Vec<u8>), ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(ScramError::UnsupportedMechanism(shown));
            }
        };
        let text = utf8(client_first)?;

        // gs2-header: cbind flag, optional authzid.
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let binds = match flag {
            "n" => false,
            "y" => {
                if self.channel_binding.is_some() {
                    return Err(ScramError::ChannelBindingDowngrade);
                }
                false
            }
            _ => match flag.strip_prefix("p=") {
                Some(_) if self.channel_binding.is_none() => {
                    return Err(ScramError::ChannelBindingUnsupported);
                }
                Some(TLS_SERVER_END_POINT) => true,
                Some(name) => {
                    let shown: String = name.chars().take(64).collect();
                    return Err(ScramError::UnsupportedChannelBindingType(shown));
                }
                None => return Err(ScramError::Malformed("unexpected channel-binding flag")),
            },
        };
        if binds != plus {
            return Err(ScramError::MechanismBindingMismatch);
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::AuthzidUnsupported);
        }
        let gs2_header = text.get(..text.len() - bare.len()).unwrap_or_default();

        // client-first-message-bare: [m=...,] n=user, r=nonce [,ext...]
        if bare.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let mut attrs = Attrs::new(bare);
        // The user name is ignored, as PostgreSQL does: the one from the
        // startup packet is authoritative.
        attrs.take('n', "expected user name attribute 'n'")?;
        let client_nonce = attrs.take('r', "expected nonce attribute 'r'")?;
        if !is_printable(client_nonce) {
            return Err(ScramError::InvalidNonce);
        }
        attrs.skip_extensions(None)?;

        let combined_nonce = format!("{client_nonce}{}", self.nonce.as_str());
        let server_first = format!(
            "r={combined_nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let mut cbind_input = gs2_header.as_bytes().to_vec();
        if let (true, Some(hash)) = (binds, &self.channel_binding) {
            cbind_input.extend_from_slice(hash);
        }
        let next = ServerFirstSent {
            verifier: self.verifier,
            mock: self.mock,
            cbind_input,
            combined_nonce,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok((next, server_first.into_bytes()))
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("channel_binding", &self.channel_binding.is_some())
            .finish_non_exhaustive()
    }
}

/// The server side after sending server-first, waiting for client-final.
pub struct ServerFirstSent {
    verifier: ScramVerifier,
    mock: bool,
    /// What the client must send back base64-encoded in `c=`.
    cbind_input: Vec<u8>,
    combined_nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ServerFirstSent {
    /// Handles the SASLResponse carrying client-final. On success returns
    /// the proof token and the server-final message to send in
    /// AuthenticationSASLFinal; a wrong password is
    /// [`ScramError::InvalidProof`], to be answered with 28P01.
    pub fn handle_client_final(
        self,
        client_final: &[u8],
    ) -> Result<(ScramAuthenticated, Vec<u8>), ScramError> {
        let text = utf8(client_final)?;
        let mut attrs = Attrs::new(text);
        let cbind = attrs.take('c', "expected channel binding attribute 'c'")?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding data is not base64"))?;
        if !bool::from(cbind.as_slice().ct_eq(&self.cbind_input)) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = attrs.take('r', "expected nonce attribute 'r'")?;
        if nonce != self.combined_nonce {
            return Err(ScramError::NonceMismatch);
        }
        attrs.skip_extensions(Some('p'))?;
        // The cursor now stands at "p=": everything before its comma is
        // signed.
        let rest = attrs
            .rest
            .ok_or(ScramError::Malformed("expected proof attribute 'p'"))?;
        let without_proof = text
            .get(..text.len() - rest.len())
            .and_then(|t| t.strip_suffix(','))
            .ok_or(ScramError::Malformed("expected proof attribute 'p'"))?;
        let proof = attrs.take('p', "expected proof attribute 'p'")?;
        attrs.finish("proof must be the last attribute")?;
        let proof: Key = B64
            .decode(proof)
            .ok()
            .and_then(|p| Key::try_from(p).ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;

        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            self.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac(&self.verifier.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        let matches = sha256(&client_key).ct_eq(&self.verifier.stored_key);
        if !bool::from(matches) || self.mock {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &auth_message);
        let server_final = format!("v={}", B64.encode(server_signature)).into_bytes();
        Ok((
            ScramAuthenticated {
                client_key: ClientKey(client_key),
                verifier: self.verifier,
            },
            server_final,
        ))
    }
}

impl fmt::Debug for ServerFirstSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFirstSent").finish_non_exhaustive()
    }
}

/// Proof that a client completed a SCRAM exchange with a valid proof. Only
/// [`ServerFirstSent::handle_client_final`] creates one.
pub struct ScramAuthenticated {
    client_key: ClientKey,
    verifier: ScramVerifier,
}

impl ScramAuthenticated {
    /// The `ClientKey` the client proved it holds; see the module docs.
    pub fn client_key(&self) -> &ClientKey {
        &self.client_key
    }

    /// The verifier the client was checked against.
    pub fn verifier(&self) -> &ScramVerifier {
        &self.verifier
    }

    /// Credentials for [`ScramClient`] to log in to a server that stores
    /// the same verifier.
    pub fn backend_credentials(&self) -> ScramCredentials {
        ScramCredentials::Keys {
            client_key: self.client_key.clone(),
            server_key: self.verifier.server_key,
            salt: self.verifier.salt.clone(),
            iterations: self.verifier.iterations,
        }
    }
}

impl fmt::Debug for ScramAuthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramAuthenticated").finish_non_exhaustive()
    }
}

// ---- client side ----

/// What the client side authenticates with.
#[derive(Clone)]
pub enum ScramCredentials {
    /// The password (SASLprep is applied as PostgreSQL does).
    Password(Vec<u8>),
    /// Keys recovered from a client's exchange, valid only for the salt and
    /// iteration count they were derived with.
    Keys {
        /// `ClientKey`.
        client_key: ClientKey,
        /// `ServerKey`, to check the server's signature.
        server_key: [u8; 32],
        /// The salt the keys were derived with.
        salt: Vec<u8>,
        /// The iteration count the keys were derived with.
        iterations: u32,
    },
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredentials::Password(_) => f.write_str("ScramCredentials::Password(..)"),
            ScramCredentials::Keys { iterations, .. } => f
                .debug_struct("ScramCredentials::Keys")
                .field("iterations", iterations)
                .finish_non_exhaustive(),
        }
    }
}

/// The client side before sending client-first.
pub struct ScramClient {
    credentials: ScramCredentials,
    nonce: Nonce,
    max_iterations: u32,
}

impl ScramClient {
    /// An exchange with `credentials`, `nonce` being the client's nonce
    /// ([`Nonce::random`] in production).
    pub fn new(credentials: ScramCredentials, nonce: Nonce) -> Self {
        ScramClient {
            credentials,
            nonce,
            max_iterations: DEFAULT_MAX_ITERATIONS,
        }
    }

    /// Changes the most iterations a server may ask for.
    pub fn with_max_iterations(mut self, max: u32) -> Self {
        self.max_iterations = max;
        self
    }

    /// The client-first message, to send in a SASLInitialResponse for
    /// [`SCRAM_SHA_256`]. The user name is left empty, as libpq does: the
    /// server uses the one from the startup packet.
    pub fn client_first(self) -> (ClientFirstSent, Vec<u8>) {
        let bare = format!("n=,r={}", self.nonce.as_str());
        let message = format!("n,,{bare}").into_bytes();
        (
            ClientFirstSent {
                credentials: self.credentials,
                nonce: self.nonce,
                max_iterations: self.max_iterations,
                client_first_bare: bare,
            },
            message,
        )
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

/// The client side after sending client-first.
pub struct ClientFirstSent {
    credentials: ScramCredentials,
    nonce: Nonce,
    max_iterations: u32,
    client_first_bare: String,
}

impl ClientFirstSent {
    /// Handles the server-first message (AuthenticationSASLContinue) and
    /// returns client-final, to send in a SASLResponse.
    pub fn handle_server_first(
        self,
        server_first: &[u8],
    ) -> Result<(ClientFinalSent, Vec<u8>), ScramError> {
        let text = utf8(server_first)?;
        if text.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let mut attrs = Attrs::new(text);
        let nonce = attrs.take('r', "expected nonce attribute 'r'")?;
        if !is_printable(nonce) {
            return Err(ScramError::InvalidNonce);
        }
        if nonce.len() <= self.nonce.as_str().len() || !nonce.starts_with(self.nonce.as_str()) {
            return Err(ScramError::NonceMismatch);
        }
        let salt = attrs.take('s', "expected salt attribute 's'")?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(ScramError::Malformed("salt is not base64"))?;
        let iterations = attrs.take('i', "expected iteration count attribute 'i'")?;
        let iterations: u32 =
            iterations
                .parse()
                .ok()
                .filter(|&i| i > 0)
                .ok_or(ScramError::Malformed(
                    "iteration count is not a positive integer",
                ))?;
        attrs.skip_extensions(None)?;

        let (client_key, server_key) = match &self.credentials {
            ScramCredentials::Password(password) => {
                if iterations > self.max_iterations {
                    return Err(ScramError::TooManyIterations {
                        iterations,
                        max: self.max_iterations,
                    });
                }
                derive_keys(password, &salt, iterations)
            }
            ScramCredentials::Keys {
                client_key,
                server_key,
                salt: key_salt,
                iterations: key_iterations,
            } => {
                if *key_salt != salt || *key_iterations != iterations {
                    return Err(ScramError::KeysMismatch);
                }
                (client_key.0, *server_key)
            }
        };

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            text.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac(&sha256(&client_key), &auth_message);
        let proof = xor(&client_key, &client_signature);
        let expected_server_signature = hmac(&server_key, &auth_message);
        let message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((
            ClientFinalSent {
                expected_server_signature,
            },
            message,
        ))
    }
}

impl fmt::Debug for ClientFirstSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFirstSent").finish_non_exhaustive()
    }
}

/// The client side after sending client-final.
pub struct ClientFinalSent {
    expected_server_signature: Key,
}

impl ClientFinalSent {
    /// Handles server-final (AuthenticationSASLFinal): succeeds only if the
    /// server proved it knows the verifier. AuthenticationOk must follow
    /// before the session counts as authenticated.
    pub fn handle_server_final(self, server_final: &[u8]) -> Result<ServerVerified, ScramError> {
        let text = utf8(server_final)?;
        if let Some(error) = text.strip_prefix("e=") {
            let error = error.split(',').next().unwrap_or_default();
            return Err(ScramError::ServerError(error.chars().take(128).collect()));
        }
        let mut attrs = Attrs::new(text);
        let verifier = attrs.take('v', "expected verifier attribute 'v'")?;
        attrs.skip_extensions(None)?;
        let signature = B64
            .decode(verifier)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        if bool::from(signature.as_slice().ct_eq(&self.expected_server_signature)) {
            Ok(ServerVerified(()))
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

impl fmt::Debug for ClientFinalSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFinalSent").finish_non_exhaustive()
    }
}

/// Proof that the server's final signature was checked.
#[derive(Debug)]
pub struct ServerVerified(());

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3.
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> ScramVerifier {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramVerifier::from_password(b"pencil", &salt, 4096)
    }

    fn server_first_sent() -> ServerFirstSent {
        let server = ScramServer::new(rfc_verifier(), Nonce::new(RFC_SERVER_NONCE).unwrap());
        server
            .handle_client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap()
            .0
    }

    #[test]
    fn rfc7677_server_side() {
        let server = ScramServer::new(rfc_verifier(), Nonce::new(RFC_SERVER_NONCE).unwrap());
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256]);
        let (state, server_first) = server
            .handle_client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(server_first, RFC_SERVER_FIRST.as_bytes());
        let (auth, server_final) = state
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(server_final, RFC_SERVER_FINAL.as_bytes());
        // The recovered ClientKey is the one derived from the password.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (client_key, _) = derive_keys(b"pencil", &salt, 4096);
        assert_eq!(auth.client_key(), &ClientKey::from_bytes(client_key));
        assert_eq!(auth.verifier(), &rfc_verifier());
    }

    #[test]
    fn rfc7677_client_side() {
        let client = ScramClient::new(
            ScramCredentials::Password(b"pencil".to_vec()),
            Nonce::new("rOprNGfwEbeRWgbNEkqO").unwrap(),
        );
        let (state, client_first) = client.client_first();
        // We send an empty user name, as libpq does; the RFC's "n=user" is
        // only in the signed message, so rebuild it the RFC's way.
        assert_eq!(client_first, b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        let state = ClientFirstSent {
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            ..state
        };
        let (state, client_final) = state
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .unwrap();
        assert_eq!(client_final, RFC_CLIENT_FINAL.as_bytes());
        state
            .handle_server_final(RFC_SERVER_FINAL.as_bytes())
            .unwrap();
    }

    #[test]
    fn wrong_password_is_invalid_proof() {
        let verifier = ScramVerifier::from_password(b"other", b"salt", 4096);
        let server = ScramServer::new(verifier, Nonce::new(RFC_SERVER_NONCE).unwrap());
        let (state, _) = server
            .handle_client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        // The RFC proof was made for another salt: it cannot verify.
        let err = state
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
        assert_eq!(err.sqlstate(), SqlState::INVALID_PASSWORD);
    }

    fn round_trip(
        server: ScramServer,
        credentials: ScramCredentials,
    ) -> Result<ScramAuthenticated, ScramError> {
        let (client, client_first) = ScramClient::new(credentials, Nonce::random()?).client_first();
        let (server, server_first) = server.handle_client_first(SCRAM_SHA_256, &client_first)?;
        let (client, client_final) = client.handle_server_first(&server_first)?;
        let (auth, server_final) = server.handle_client_final(&client_final)?;
        client.handle_server_final(&server_final)?;
        Ok(auth)
    }

    #[test]
    fn round_trip_with_password_then_with_recovered_keys() {
        let verifier = ScramVerifier::generate(b"s3cret").unwrap();
        assert_eq!(verifier.iterations(), 4096);
        assert_eq!(verifier.salt().len(), 16);
        let server = ScramServer::new(verifier.clone(), Nonce::random().unwrap());
        let auth = round_trip(server, ScramCredentials::Password(b"s3cret".to_vec())).unwrap();

        // The proxy logs in to "the backend" (same verifier) with the keys.
        let backend = ScramServer::new(verifier.clone(), Nonce::random().unwrap());
        let again = round_trip(backend, auth.backend_credentials()).unwrap();
        assert_eq!(again.client_key(), auth.client_key());

        // A backend with another salt: the keys are refused before sending
        // a proof.
        let other = ScramVerifier::generate(b"s3cret").unwrap();
        let backend = ScramServer::new(other, Nonce::random().unwrap());
        assert_eq!(
            round_trip(backend, auth.backend_credentials()).unwrap_err(),
            ScramError::KeysMismatch
        );

        // A wrong password fails at the server.
        let server = ScramServer::new(verifier, Nonce::random().unwrap());
        assert_eq!(
            round_trip(server, ScramCredentials::Password(b"wrong".to_vec())).unwrap_err(),
            ScramError::InvalidProof
        );
    }

    #[test]
    fn client_detects_a_server_that_does_not_know_the_verifier() {
        let (client, _) = ScramClient::new(
            ScramCredentials::Password(b"pencil".to_vec()),
            Nonce::new("rOprNGfwEbeRWgbNEkqO").unwrap(),
        )
        .client_first();
        let (client, _) = client
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .unwrap();
        assert_eq!(
            client
                .handle_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
                .unwrap_err(),
            ScramError::InvalidServerSignature
        );
    }

    #[test]
    fn client_rejects_bad_server_messages() {
        let start = || {
            ScramClient::new(
                ScramCredentials::Password(b"pencil".to_vec()),
                Nonce::new("abc").unwrap(),
            )
            .with_max_iterations(5000)
            .client_first()
            .0
        };
        let cases: &[(&[u8], ScramError)] = &[
            (b"r=abc,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            (b"r=xyzdef,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            (
                b"r=abcdef,s=c2FsdA==,i=0",
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                b"r=abcdef,s=c2FsdA==,i=-1",
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                b"r=abcdef,s=c2FsdA==,i=5001",
                ScramError::TooManyIterations {
                    iterations: 5001,
                    max: 5000,
                },
            ),
            (
                b"r=abcdef,s=!!,i=4096",
                ScramError::Malformed("salt is not base64"),
            ),
            (
                b"r=abcdef,s=,i=4096",
                ScramError::Malformed("salt is not base64"),
            ),
            (
                b"r=abcdef,s=c2FsdA==",
                ScramError::Malformed("expected iteration count attribute 'i'"),
            ),
            (
                b"r=abcdef",
                ScramError::Malformed("expected salt attribute 's'"),
            ),
            (
                b"m=x,r=abcdef,s=c2FsdA==,i=1",
                ScramError::ExtensionUnsupported,
            ),
            (
                b"s=c2FsdA==,r=abcdef,i=1",
                ScramError::Malformed("expected nonce attribute 'r'"),
            ),
            (b"r=abc def,s=c2FsdA==,i=1", ScramError::InvalidNonce),
            (
                b"r=abcdef,s=c2FsdA==,i=1,",
                ScramError::Malformed("expected an attribute"),
            ),
            (b"\xff", ScramError::Malformed("not valid UTF-8")),
        ];
        for (msg, want) in cases {
            assert_eq!(
                &start().handle_server_first(msg).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        let (client, _) = start()
            .handle_server_first(b"r=abcdef,s=c2FsdA==,i=1")
            .unwrap();
        assert_eq!(
            client.handle_server_final(b"e=invalid-proof").unwrap_err(),
            ScramError::ServerError("invalid-proof".into())
        );
    }

    #[test]
    fn server_rejects_bad_client_first() {
        let run = |mechanism: &str, msg: &[u8]| {
            ScramServer::new(rfc_verifier(), Nonce::new("srv").unwrap())
                .handle_client_first(mechanism, msg)
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(
            run("SCRAM-SHA-1", b"n,,n=,r=abc"),
            ScramError::UnsupportedMechanism("SCRAM-SHA-1".into())
        );
        assert_eq!(
            run(SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=abc"),
            ScramError::UnsupportedMechanism(SCRAM_SHA_256_PLUS.into())
        );
        assert_eq!(
            run(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
            ScramError::ChannelBindingUnsupported
        );
        assert_eq!(
            run(SCRAM_SHA_256, b"n,a=admin,n=,r=abc"),
            ScramError::AuthzidUnsupported
        );
        assert_eq!(
            run(SCRAM_SHA_256, b"n,,m=ext,n=,r=abc"),
            ScramError::ExtensionUnsupported
        );
        assert_eq!(run(SCRAM_SHA_256, b"n,,n=,r="), ScramError::InvalidNonce);
        assert_eq!(
            run(SCRAM_SHA_256, b"n,,n=,r=a\x7fb"),
            ScramError::InvalidNonce
        );
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"x,,n=,r=a",
            b"n,,",
            b"n,,n=",
            b"n,,r=abc",
            b"n,,n=,x=abc",
            b"n,,n=,r=a,",
            b"n,,n=,r=a\0",
        ] {
            assert!(
                matches!(run(SCRAM_SHA_256, bad), ScramError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // 'y' is fine without channel binding; extensions are skipped.
        let server = ScramServer::new(rfc_verifier(), Nonce::new("srv").unwrap());
        let (state, _) = server
            .handle_client_first(SCRAM_SHA_256, b"y,,n=user,r=abc,x=ext")
            .unwrap();
        // ...and client-final must then carry "y,," in c= ("eSws").
        assert_eq!(
            state
                .handle_client_final(b"c=biws,r=abcsrv,p=AAAA")
                .map(|_| ())
                .unwrap_err(),
            ScramError::ChannelBindingMismatch
        );
    }

    #[test]
    fn server_rejects_bad_client_final() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<(String, ScramError)> = vec![
            (
                format!("c=eSws,r={nonce},p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                format!("c=biws,r={nonce}x,p={proof}"),
                ScramError::NonceMismatch,
            ),
            (
                format!("c=biws,r={nonce}"),
                ScramError::Malformed("expected proof attribute 'p'"),
            ),
            (
                format!("c=biws,r={nonce},p={proof},x=1"),
                ScramError::Malformed("proof must be the last attribute"),
            ),
            (
                format!("c=biws,r={nonce},p=AAAA"),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                format!("c=biws,r={nonce},p=!"),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                format!("r={nonce},c=biws,p={proof}"),
                ScramError::Malformed("expected channel binding attribute 'c'"),
            ),
            (
                "c=biws".to_string(),
                ScramError::Malformed("expected nonce attribute 'r'"),
            ),
            (
                "c=!!!!,r=x".to_string(),
                ScramError::Malformed("channel binding data is not base64"),
            ),
            (
                format!("c=biws,r={nonce},p={proof},"),
                ScramError::Malformed("proof must be the last attribute"),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(
                server_first_sent()
                    .handle_client_final(msg.as_bytes())
                    .map(|_| ())
                    .unwrap_err(),
                want,
                "{msg}"
            );
        }
        // An extension before the proof is signed along with the rest, so
        // the RFC proof no longer verifies.
        let msg = format!("c=biws,r={nonce},x=ext,p={proof}");
        assert_eq!(
            server_first_sent()
                .handle_client_final(msg.as_bytes())
                .map(|_| ())
                .unwrap_err(),
            ScramError::InvalidProof
        );
    }

    #[test]
    fn channel_binding_round_trip() {
        let cert_hash = vec![0xab; 32];
        let verifier = rfc_verifier();
        let server = ScramServer::new(verifier.clone(), Nonce::new("srv").unwrap())
            .with_channel_binding(cert_hash.clone());
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);

        // Build a binding client by hand (ScramClient only sends 'n').
        let header = "p=tls-server-end-point,,";
        let bare = "n=,r=cli";
        let client_first = format!("{header}{bare}");
        let (state, server_first) = server
            .handle_client_first(SCRAM_SHA_256_PLUS, client_first.as_bytes())
            .unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        let mut cbind = header.as_bytes().to_vec();
        cbind.extend_from_slice(&cert_hash);
        let without_proof = format!("c={},r=clisrv", B64.encode(&cbind));
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (client_key, server_key) = derive_keys(b"pencil", &salt, 4096);
        let auth = [
            bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let proof = xor(&client_key, &hmac(&sha256(&client_key), &auth));
        let client_final = format!("{without_proof},p={}", B64.encode(proof));
        let (_, server_final) = state.handle_client_final(client_final.as_bytes()).unwrap();
        assert_eq!(
            server_final,
            format!("v={}", B64.encode(hmac(&server_key, &auth))).into_bytes()
        );

        // The same exchange with another certificate hash fails.
        let server = ScramServer::new(verifier.clone(), Nonce::new("srv").unwrap())
            .with_channel_binding(vec![0; 32]);
        let (state, _) = server
            .handle_client_first(SCRAM_SHA_256_PLUS, client_first.as_bytes())
            .unwrap();
        assert_eq!(
            state
                .handle_client_final(client_final.as_bytes())
                .map(|_| ())
                .unwrap_err(),
            ScramError::ChannelBindingMismatch
        );

        let bound = || {
            ScramServer::new(verifier.clone(), Nonce::new("srv").unwrap())
                .with_channel_binding(vec![1])
        };
        let err =
            |m: &str, msg: &[u8]| bound().handle_client_first(m, msg).map(|_| ()).unwrap_err();
        assert_eq!(
            err(SCRAM_SHA_256, b"y,,n=,r=a"),
            ScramError::ChannelBindingDowngrade
        );
        assert_eq!(
            err(SCRAM_SHA_256_PLUS, b"n,,n=,r=a"),
            ScramError::MechanismBindingMismatch
        );
        assert_eq!(
            err(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=a"),
            ScramError::MechanismBindingMismatch
        );
        assert_eq!(
            err(SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=a"),
            ScramError::UnsupportedChannelBindingType("tls-unique".into())
        );
        assert!(
            bound()
                .handle_client_first(SCRAM_SHA_256, b"n,,n=,r=a")
                .is_ok()
        );
    }

    #[test]
    fn mock_exchange_always_fails_with_a_stable_salt() {
        let first = |user: &str| {
            let (_, msg) = ScramServer::mock(user, b"process secret", Nonce::new("srv").unwrap())
                .handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
                .unwrap();
            String::from_utf8(msg).unwrap()
        };
        assert_eq!(first("ghost"), first("ghost"));
        assert_ne!(first("ghost"), first("other"));
        let server = ScramServer::mock("ghost", b"process secret", Nonce::random().unwrap());
        assert_eq!(
            round_trip(server, ScramCredentials::Password(b"anything".to_vec())).unwrap_err(),
            ScramError::InvalidProof
        );
    }

    #[test]
    fn verifier_text_form() {
        let v = rfc_verifier();
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
        assert_eq!(text.parse::<ScramVerifier>().unwrap(), v);
        assert!(v.verify_password(b"pencil"));
        assert!(!v.verify_password(b"pencil "));
        assert!(!format!("{v:?}").contains(&B64.encode(v.stored_key())));
        let k = B64.encode([7u8; 32]);
        for bad in [
            String::new(),
            "SCRAM-SHA-256$".into(),
            "md5abc".into(),
            format!("SCRAM-SHA-256$0:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$x:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$4096:${k}:{k}"),
            format!("SCRAM-SHA-256$4096:!!${k}:{k}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${k}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${k}:c2FsdA=="),
            format!("SCRAM-SHA-256$4096c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$4096:c2FsdA=={k}:{k}"),
        ] {
            assert!(
                matches!(
                    ScramVerifier::parse(&bad),
                    Err(ScramError::InvalidVerifier(_))
                ),
                "{bad}"
            );
        }
        assert!(ScramVerifier::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${k}:{k}")).is_ok());
    }

    #[test]
    fn saslprep_follows_postgres() {
        // ASCII and non-UTF-8 passwords are used as they are.
        assert_eq!(prepare_password(b"pencil"), &b"pencil"[..]);
        assert_eq!(prepare_password(b"a\x01b"), &b"a\x01b"[..]);
        assert_eq!(prepare_password(b"caf\xe9"), &b"caf\xe9"[..]);
        // Non-ASCII space maps to space; soft hyphen maps to nothing; NFKC.
        assert_eq!(prepare_password("a\u{00a0}b".as_bytes()), &b"a b"[..]);
        assert_eq!(prepare_password("a\u{00ad}b".as_bytes()), &b"ab"[..]);
        assert_eq!(prepare_password("\u{2168}".as_bytes()), &b"IX"[..]);
        // Mapped to nothing entirely, or prohibited: raw bytes.
        assert_eq!(
            prepare_password("\u{00ad}".as_bytes()),
            "\u{00ad}".as_bytes()
        );
        assert_eq!(
            prepare_password("a\u{0007}\u{00e9}".as_bytes()),
            "a\u{0007}\u{00e9}".as_bytes()
        );
        // And the exchange uses it: a verifier made from the NFKC form
        // accepts the compatibility form.
        let v = ScramVerifier::from_password(b"IX", b"salt", 1);
        assert!(v.verify_password("\u{2168}".as_bytes()));
    }

    #[test]
    fn nonces_and_keys() {
        assert!(Nonce::new("").is_err());
        assert!(Nonce::new("a,b").is_err());
        assert!(Nonce::new("a b").is_err());
        assert!(Nonce::new("é").is_err());
        let n = Nonce::random().unwrap();
        assert_eq!(n.as_str().len(), 24);
        assert!(is_printable(n.as_str()));
        assert_ne!(Nonce::random().unwrap(), n);
        assert_eq!(
            format!("{:?}", ClientKey::from_bytes([1; 32])),
            "ClientKey(..)"
        );
        assert_eq!(
            format!("{:?}", ScramCredentials::Password(b"x".to_vec())),
            "ScramCredentials::Password(..)"
        );
    }

    #[test]
    fn hi_matches_pbkdf2_test_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1).
        let out = hi(b"passwd", b"salt", 1);
        assert_eq!(
            out[..16],
            [
                0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44,
                0xb6, 0x05
            ]
        );
    }
}
