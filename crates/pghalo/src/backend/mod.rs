//! One server connection: dialling a PostgreSQL backend, TLS with it when
//! `tls.backend` asks (SSLRequest first, as libpq does), the startup and
//! authentication exchange, and the bookkeeping a pool needs to know whether
//! the connection is reusable (the transaction status of its last
//! ReadyForQuery, the parameters the server reported).
//!
//! Owns: a server socket and its read buffer. Must not: know about clients.

mod auth;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pghalo_protocol::backend::{self as be, BackendMessage, ErrorFields, TransactionStatus};
use pghalo_protocol::frontend;
use pghalo_protocol::{CancelKey, Decoder, SqlState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::net::tls::ClientTls;
use crate::net::{ReadError, Stream, read_message};

pub use auth::BackendCredentials;

/// Where a backend listens: a host name or IP with a port, or a Unix socket
/// directory (a host starting with '/', as libpq does), and whether to
/// speak TLS there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
    pub tls: BackendTls,
}

/// TLS to a backend, with libpq's sslmode meanings. Unix sockets never
/// use TLS, as with libpq: the kernel is the only one in the path.
#[derive(Debug, Clone, Default)]
pub enum BackendTls {
    /// Plain connections, no SSLRequest.
    #[default]
    Disable,
    /// TLS when the server accepts it, plain when it answers 'N'.
    Prefer(ClientTls),
    /// TLS or no connection.
    Require(ClientTls),
}

impl BackendTls {
    fn client(&self) -> Option<&ClientTls> {
        match self {
            BackendTls::Disable => None,
            BackendTls::Prefer(tls) | BackendTls::Require(tls) => Some(tls),
        }
    }
}

// Two settings are the same when they share one loaded configuration: a
// reload that reads the files again makes a different one.
impl PartialEq for BackendTls {
    fn eq(&self, other: &BackendTls) -> bool {
        match (self, other) {
            (BackendTls::Disable, BackendTls::Disable) => true,
            (BackendTls::Prefer(a), BackendTls::Prefer(b))
            | (BackendTls::Require(a), BackendTls::Require(b)) => a.same_config(b),
            _ => false,
        }
    }
}

impl Eq for BackendTls {}

impl std::hash::Hash for BackendTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.starts_with('/') {
            write!(f, "{}/.s.PGSQL.{}", self.host, self.port)
        } else if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ServerAddr {
    pub async fn dial(&self) -> std::io::Result<Stream> {
        if self.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            Ok(Stream::Unix(UnixStream::connect(path).await?))
        } else {
            Ok(Stream::tcp(
                TcpStream::connect((self.host.as_str(), self.port)).await?,
            ))
        }
    }
}

/// What the server sent to identify this session for cancellation.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerKey {
    pub pid: i32,
    pub key: CancelKey,
}

/// An error the server itself reported, kept whole so it can be passed on
/// to a client unchanged.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// The raw ErrorResponse body.
    pub body: bytes::Bytes,
    pub code: String,
    pub message: String,
}

impl ServerError {
    fn from_fields(body: bytes::Bytes) -> ServerError {
        let (code, message) = match ErrorFields::parse_error(&body) {
            Ok(fields) => (
                fields
                    .code()
                    .and_then(|c| c.to_str().ok().map(str::to_string))
                    .unwrap_or_default(),
                fields
                    .message()
                    .and_then(|m| m.to_str().ok().map(str::to_string))
                    .unwrap_or_default(),
            ),
            Err(_) => (
                SqlState::INTERNAL_ERROR.code().to_string(),
                "malformed error from server".to_string(),
            ),
        };
        ServerError {
            body,
            code,
            message,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: ServerAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not complete the connection within {} ms", .limit.as_millis())]
    Timeout { addr: ServerAddr, limit: Duration },
    #[error("{addr} refused the login: {} (SQLSTATE {})", .error.message, .error.code)]
    Refused {
        addr: ServerAddr,
        error: ServerError,
    },
    #[error("{addr} asks for an authentication method pghalo cannot answer: {method}")]
    UnsupportedAuth { addr: ServerAddr, method: String },
    #[error("no usable credentials to log in to {addr} as this user: {why}")]
    NoCredentials { addr: ServerAddr, why: String },
    #[error("{addr} broke the protocol: {detail}")]
    Protocol { addr: ServerAddr, detail: String },
    #[error("connection to {addr} lost: {source}")]
    Lost { addr: ServerAddr, source: ReadError },
    #[error("{addr}: {} (SQLSTATE {})", .0.message, .0.code, addr = .1)]
    Query(ServerError, ServerAddr),
    #[error("{addr} does not accept TLS connections, and tls.backend = require")]
    TlsRefused { addr: ServerAddr },
    #[error("TLS with {addr} failed: {detail}")]
    Tls { addr: ServerAddr, detail: String },
}

impl BackendError {
    /// The server could not be reached or vanished (as opposed to a server
    /// that answered and refused): what may mean it died.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            BackendError::Connect { .. } | BackendError::Timeout { .. } | BackendError::Lost { .. }
        )
    }
}

impl BackendError {
    /// The SQLSTATE a client is told when this stops its session.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            BackendError::Connect { .. }
            | BackendError::Timeout { .. }
            | BackendError::Lost { .. }
            | BackendError::TlsRefused { .. }
            | BackendError::Tls { .. } => SqlState::CONNECTION_FAILURE,
            BackendError::Protocol { .. } => SqlState::PROTOCOL_VIOLATION,
            BackendError::UnsupportedAuth { .. } | BackendError::NoCredentials { .. } => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            BackendError::Refused { error, .. } | BackendError::Query(error, _) => {
                SqlState::from_code(&error.code).unwrap_or(SqlState::CONNECTION_FAILURE)
            }
        }
    }
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConnection {
    pub addr: ServerAddr,
    stream: Stream,
    /// Bytes read from the server and not yet consumed.
    pub read_buf: BytesMut,
    pub decoder: Decoder,
    pub key: Option<ServerKey>,
    /// ParameterStatus values as the server last reported them.
    pub params: BTreeMap<String, String>,
    /// From the last ReadyForQuery.
    pub tx_status: TransactionStatus,
    pub created: Instant,
    pub last_used: Instant,
    /// Server-side names of the statements transaction pooling prepared
    /// on this connection (they outlive the clients that asked for them).
    pub prepared: std::collections::HashSet<String>,
    /// Fingerprint of the client settings last applied here (0: none, the
    /// connection's own defaults).
    pub applied_settings: u64,
    /// The runtime the socket is registered with.
    home: crate::net::home::Home,
}

impl ServerConnection {
    /// Dials `addr` and logs in as `user` to `database`, all within `limit`.
    pub async fn connect(
        addr: &ServerAddr,
        user: &str,
        database: &str,
        credentials: &BackendCredentials,
        limit: Duration,
    ) -> Result<ServerConnection, BackendError> {
        tokio::time::timeout(
            limit,
            Self::connect_inner(addr, user, database, credentials),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            addr: addr.clone(),
            limit,
        })?
    }

    async fn connect_inner(
        addr: &ServerAddr,
        user: &str,
        database: &str,
        credentials: &BackendCredentials,
    ) -> Result<ServerConnection, BackendError> {
        let stream = addr.dial().await.map_err(|source| BackendError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let stream = start_tls(addr, stream).await?;
        let mut conn = ServerConnection {
            addr: addr.clone(),
            stream,
            read_buf: BytesMut::with_capacity(crate::net::READ_CHUNK),
            decoder: Decoder::default(),
            key: None,
            params: BTreeMap::new(),
            tx_status: TransactionStatus::Idle,
            created: Instant::now(),
            last_used: Instant::now(),
            prepared: std::collections::HashSet::new(),
            applied_settings: 0,
            home: crate::net::home::here(),
        };
        let mut out = BytesMut::new();
        let params = [("user", user), ("database", database)];
        frontend::write_startup_message(&mut out, pghalo_protocol::ProtocolVersion::V3_0, &params)
            .map_err(|e| conn.protocol(e))?;
        conn.write_all(&out).await?;
        auth::login(&mut conn, user, credentials).await?;
        conn.await_ready().await?;
        Ok(conn)
    }

    fn protocol(&self, detail: impl std::fmt::Display) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.clone(),
            detail: detail.to_string(),
        }
    }

    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Whether the socket is registered with the calling thread's runtime.
    pub fn is_home(&self) -> bool {
        self.home == crate::net::home::here()
    }

    /// Moves the socket's registration to the calling thread's runtime
    /// (see `net::home`), unless it cannot move (TLS).
    pub fn rehome(mut self) -> std::io::Result<ServerConnection> {
        if !self.is_home() && self.stream.can_rehome() {
            self.stream = self.stream.rehome()?;
            self.home = crate::net::home::here();
        }
        Ok(self)
    }

    /// The socket and the read buffer, borrowed apart for a relay.
    pub fn io(&mut self) -> (&mut Stream, &mut BytesMut) {
        (&mut self.stream, &mut self.read_buf)
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| BackendError::Lost {
                addr: self.addr.clone(),
                source: ReadError::Io(e),
            })
    }

    pub async fn read(&mut self) -> Result<pghalo_protocol::Message, BackendError> {
        read_message(&mut self.stream, &mut self.read_buf, &self.decoder)
            .await
            .map_err(|source| BackendError::Lost {
                addr: self.addr.clone(),
                source,
            })
    }

    /// After authentication: collects ParameterStatus and BackendKeyData
    /// until the first ReadyForQuery.
    async fn await_ready(&mut self) -> Result<(), BackendError> {
        loop {
            let msg = self.read().await?;
            match BackendMessage::parse(msg.tag, &msg.body).map_err(|e| self.protocol(e))? {
                BackendMessage::BackendKeyData(k) => {
                    self.key = k.cancel_key().map(|key| ServerKey { pid: k.pid, key });
                }
                BackendMessage::ParameterStatus(p) => self.note_parameter(&p),
                BackendMessage::ReadyForQuery(r) => {
                    self.tx_status = r.status;
                    return Ok(());
                }
                BackendMessage::ErrorResponse(_) => {
                    return Err(BackendError::Refused {
                        addr: self.addr.clone(),
                        error: ServerError::from_fields(msg.body),
                    });
                }
                BackendMessage::NoticeResponse(_) => {}
                other => {
                    return Err(self.protocol(format!("unexpected {other:?} before ReadyForQuery")));
                }
            }
        }
    }

    pub fn note_parameter(&mut self, p: &be::ParameterStatus<'_>) {
        if let (Ok(name), Ok(value)) = (p.name.to_str(), p.value.to_str()) {
            self.params.insert(name.to_string(), value.to_string());
        }
    }

    /// Runs `sql` with the simple protocol and discards its results; used
    /// for reset queries and session setup, never for client statements.
    pub async fn execute(&mut self, sql: &str) -> Result<(), BackendError> {
        self.query_value(sql).await.map(|_| ())
    }

    /// Runs `sql` like [`execute`](Self::execute) and returns the first
    /// column of its first row as text (None: no row, or NULL).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        // Boxed: a session runs it a few times (its settings, its reset),
        // and inline its future would make every session's future, idle
        // clients' included, that much larger.
        Box::pin(self.run_query(sql)).await
    }

    async fn run_query(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        let mut value = None;
        let mut out = BytesMut::new();
        frontend::write_query(&mut out, sql).map_err(|e| self.protocol(e))?;
        self.write_all(&out).await?;
        let mut failure = None;
        loop {
            let msg = self.read().await?;
            match msg.tag {
                be::READY_FOR_QUERY => {
                    let status = be::ReadyForQuery::parse(&msg.body)
                        .map_err(|e| self.protocol(e))?
                        .status;
                    self.tx_status = status;
                    self.last_used = Instant::now();
                    return match failure {
                        Some(error) => Err(BackendError::Query(error, self.addr.clone())),
                        None => Ok(value),
                    };
                }
                be::DATA_ROW if value.is_none() => {
                    if let Ok(row) = be::DataRow::parse(&msg.body) {
                        value = row
                            .values()
                            .next()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                    }
                }
                be::ERROR_RESPONSE => failure = Some(ServerError::from_fields(msg.body)),
                be::PARAMETER_STATUS => {
                    if let Ok(p) = be::ParameterStatus::parse(&msg.body) {
                        self.note_parameter(&p);
                    }
                }
                be::COPY_IN_RESPONSE => {
                    // A setup query has no data to feed: fail the COPY so the
                    // server returns to ReadyForQuery.
                    let mut fail = BytesMut::new();
                    fail.extend_from_slice(b"f\0\0\0\x05\0");
                    self.write_all(&fail).await?;
                }
                _ => {}
            }
        }
    }

    /// Asks the server to end the session politely; errors do not matter,
    /// the socket is dropped either way.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::write_terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.stream.write_all(&out)).await;
    }
}

/// Asks for TLS before the startup packet when `addr.tls` says so, and
/// hands back the stream to log in on.
async fn start_tls(addr: &ServerAddr, mut stream: Stream) -> Result<Stream, BackendError> {
    let Some(tls) = addr.tls.client().filter(|_| stream.can_start_tls()) else {
        return Ok(stream);
    };
    let lost = |e: std::io::Error| BackendError::Lost {
        addr: addr.clone(),
        source: ReadError::Io(e),
    };
    let mut request = BytesMut::new();
    frontend::write_ssl_request(&mut request);
    stream.write_all(&request).await.map_err(lost)?;
    // Exactly one byte: whatever follows an 'S' before the handshake came
    // unprotected and may be a man in the middle's (CVE-2021-23222); left
    // on the socket, it can only break the handshake.
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(lost)?;
    match (answer[0], &addr.tls) {
        (b'S', _) => stream
            .connect_tls(tls, &addr.host)
            .await
            .map_err(|e| BackendError::Tls {
                addr: addr.clone(),
                detail: e.to_string(),
            }),
        (b'N', BackendTls::Require(_)) => Err(BackendError::TlsRefused { addr: addr.clone() }),
        (b'N', _) => Ok(stream),
        (other, _) => Err(BackendError::Protocol {
            addr: addr.clone(),
            detail: format!(
                "answered the SSLRequest with {:?} instead of 'S' or 'N'",
                other as char
            ),
        }),
    }
}
