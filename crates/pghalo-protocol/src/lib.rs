//! PostgreSQL v3 wire protocol for pghalo: bytes in, bytes out, no I/O.
//!
//! This crate plays the part `postgres-protocol` plays for rust-postgres:
//! the proxy's network code reads into a `BytesMut`, asks this crate to cut
//! and parse messages, and writes what this crate encodes. Nothing here
//! blocks, spawns or touches a socket, so every function can be tested
//! byte for byte and fuzzed.
//!
//! # Layout
//!
//! - [`frame`]: the 5-byte header and the [`Decoder`] that splits complete
//!   messages off a read buffer, checking the length before buffering.
//! - [`startup`]: the untagged packets before the first message
//!   (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), protocol
//!   version negotiation, [`CancelKey`].
//! - [`frontend`]: what clients send: tags, lazy parsers (Query, Parse,
//!   Bind, Execute, Describe, Close, password and SASL responses) and the
//!   client-side writers.
//! - [`backend`]: what servers send: tags, lazy parsers (ReadyForQuery,
//!   ErrorResponse, ParameterStatus, BackendKeyData, CommandComplete,
//!   Authentication...) and the writers a proxy needs to answer clients.
//! - [`codec`]: the bounded reader and rollback-safe writer those are built
//!   on, [`Text`], [`ParseError`] and [`EncodeError`].
//! - [`scram`]: SCRAM-SHA-256, server and client state machines, verifiers.
//! - [`md5`]: md5 password hashing and checking.
//! - [`sqlstate`]: [`SqlState`] and its named constants.
//!
//! # Example: read one client message, answer it
//!
//! ```
//! use bytes::BytesMut;
//! use pghalo_protocol::backend::{self, ErrorMessage, Severity, TransactionStatus};
//! use pghalo_protocol::frontend::{self, FrontendMessage};
//! use pghalo_protocol::{Decoder, SqlState};
//!
//! # fn main() -> Result<(), pghalo_protocol::Error> {
//! let decoder = Decoder::default().with_frontend_limits();
//! let mut read_buf = BytesMut::new();
//! frontend::write_query(&mut read_buf, "SHOW pool_nodes")?; // as if read
//!
//! let mut out = BytesMut::new();
//! while let Some(msg) = decoder.decode(&mut read_buf)? {
//!     if let FrontendMessage::Query(q) = FrontendMessage::parse(msg.tag, &msg.body)? {
//!         assert_eq!(q.sql, "SHOW pool_nodes");
//!         backend::write_row_description(&mut out, &["node_id", "status"])?;
//!         backend::write_data_row(&mut out, &[Some("0"), Some("up")])?;
//!         backend::write_command_complete(&mut out, "SHOW")?;
//!     } else {
//!         let e = ErrorMessage::new(Severity::Error, SqlState::FEATURE_NOT_SUPPORTED, "not here");
//!         backend::write_error_response(&mut out, &e)?;
//!     }
//!     backend::write_ready_for_query(&mut out, TransactionStatus::Idle);
//! }
//! # Ok(()) }
//! ```
//!
//! # Example: SCRAM, both sides
//!
//! ```
//! use pghalo_protocol::scram::{self, Nonce, ScramClient, ScramCredentials, ScramServer, ScramVerifier};
//!
//! # fn main() -> Result<(), scram::ScramError> {
//! let stored = ScramVerifier::generate(b"pencil")?.to_string(); // what pg_authid holds
//! let server = ScramServer::new(ScramVerifier::parse(&stored)?, Nonce::random()?);
//! let client = ScramClient::new(ScramCredentials::Password(b"pencil".to_vec()), Nonce::random()?);
//!
//! let (client, client_first) = client.client_first();
//! let (server, server_first) = server.handle_client_first(scram::SCRAM_SHA_256, &client_first)?;
//! let (client, client_final) = client.handle_server_first(&server_first)?;
//! let (authenticated, server_final) = server.handle_client_final(&client_final)?;
//! client.handle_server_final(&server_final)?;
//!
//! // The proxy may now log in to a server storing the same verifier.
//! let _backend_login = ScramClient::new(authenticated.backend_credentials(), Nonce::random()?);
//! # Ok(()) }
//! ```
//!
//! # Rules the modules keep
//!
//! - Input from the network never panics: every length, count and
//!   terminator is checked, and a fault is a typed error naming what was
//!   wrong. Every error type has `sqlstate()` giving the code to answer with.
//! - Parsers validate the whole body, including that nothing trails the
//!   last field, and then hand out borrowed slices; nothing is copied unless
//!   the caller asks.
//! - Secrets (passwords, proofs, keys, cancel keys) are compared in constant
//!   time and hidden from `Debug`.

pub mod backend;
pub mod codec;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod sqlstate;
pub mod startup;

pub use codec::{EncodeError, ParseError, Text};
pub use frame::{Decoder, Frame, FrameError, Header, Message};
pub use sqlstate::SqlState;
pub use startup::{CancelKey, ProtocolVersion, StartupError, StartupMessage, StartupPacket};

/// Any error this crate returns, for callers that funnel them into one
/// place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A framing fault.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A startup-phase packet fault.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// A malformed message body.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A message that could not be written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A failed SCRAM exchange.
    #[error(transparent)]
    Scram(#[from] scram::ScramError),
    /// An invalid stored md5 hash.
    #[error(transparent)]
    Md5(#[from] md5::Md5Error),
}

impl Error {
    /// The SQLSTATE to report to a client for this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::Frame(e) => e.sqlstate(),
            Error::Startup(e) => e.sqlstate(),
            Error::Parse(e) => e.sqlstate(),
            Error::Encode(_) => SqlState::INTERNAL_ERROR,
            Error::Scram(e) => e.sqlstate(),
            Error::Md5(_) => SqlState::INVALID_PASSWORD,
        }
    }
}
