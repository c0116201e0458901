//! The heart of a session: one task moving messages between a client and
//! its server connection, in session or transaction pooling mode.
//!
//! Everything runs in one loop over one readiness poll of both sockets, so a
//! peer that is busy writing never stops us reading from the other (no
//! deadlock on full socket buffers), with no locks and no second task.
//!
//! The relay keeps the queue of replies the server still owes
//! ([`Expect`]): that is what tells it where one request's answer ends, when
//! the server connection is clean (DESIGN rule 1), and where to slip in an
//! answer pghalo gives itself (a ParseComplete for a statement already
//! prepared on this server connection, a refusal under transaction
//! pooling).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pghalo_protocol::SqlState;
use pghalo_protocol::backend::{self as be, TransactionStatus};
use pghalo_protocol::frontend::{self as fe, Bind};
use tokio::io::AsyncWrite;

use super::Proxy;
use super::cancel::{CancelHandle, CancelTarget};
use super::error::ClientError;
use super::tx_policy::{Effect, effects};
use crate::backend::{BackendCredentials, BackendError, ServerAddr};
use crate::config::PoolMode;
use crate::net::{READ_CHUNK, Stream};
use crate::pool::{PoolKey, PooledConnection};

/// Above this much unsent output in one direction, stop reading input for
/// it: memory stays bounded whatever the peers do.
const HIGH_WATER: usize = 256 * 1024;

/// The first read of a quiet client: most requests fit.
const SMALL_READ: usize = 1024;

/// Client messages the relay must see whole; everything else (CopyData
/// above all) streams through in pieces.
const CLIENT_WHOLE: &[u8] = b"QPBDCSHEFXcf";
/// Every message type a client may send after authentication.
const FRONTEND_TAGS: &[u8] = b"QPBDCSHEFXdcf";
/// Server messages the relay must see whole (small ones, by nature, and
/// errors, whose severity matters).
const SERVER_WHOLE: &[u8] = b"123ZCSInsE";

/// What the server will send back for something the relay forwarded, or
/// what the relay will answer itself.
#[derive(Debug)]
enum Expect {
    /// A simple Query: everything up to its ReadyForQuery.
    Query {
        effects: Vec<Effect>,
        failed: bool,
        tags: Vec<String>,
    },
    /// A FunctionCall: up to its ReadyForQuery.
    FunctionCall,
    /// ParseComplete: passed on, or swallowed for a Parse the relay sent on
    /// its own.
    Parse {
        swallow: bool,
        server_name: Option<String>,
    },
    Bind,
    /// ParameterDescription (statements) and RowDescription or NoData.
    Describe,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    Close,
    Sync,
    /// Answered by the relay, in turn.
    Synthetic(Bytes),
}

/// How a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// Terminate received.
    ClientTerminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client broke the protocol; it is told why.
    ClientProtocol(String),
    /// The server's socket closed or failed.
    ServerGone,
    /// client_idle_limit passed.
    IdleTimeout,
    /// A server connection could not be had (the error is sent).
    NoServer(ClientError),
}

/// A client's session-level settings, which follow it across server
/// connections in transaction mode.
#[derive(Debug, Default, Clone)]
pub(super) struct ClientSettings {
    /// From the startup packet, applied as SETs.
    startup: Vec<(String, String)>,
    /// Session-level SETs the client ran and committed, by parameter.
    sets: BTreeMap<String, String>,
}

impl ClientSettings {
    pub(super) fn new(startup: Vec<(String, String)>) -> ClientSettings {
        ClientSettings {
            startup,
            sets: BTreeMap::new(),
        }
    }

    /// Equal settings give equal fingerprints; none gives 0.
    fn fingerprint(&self) -> u64 {
        if self.startup.is_empty() && self.sets.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.startup.hash(&mut h);
        self.sets.hash(&mut h);
        h.finish() | 1
    }

    /// The statements that bring a freshly reset session to these settings.
    fn replay(&self) -> String {
        let mut sql = super::startup_params::set_statements(&self.startup, &BTreeMap::new());
        for statement in self.sets.values() {
            sql.push_str(statement);
            sql.push(';');
        }
        sql
    }

    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Set { name, statement } => {
                self.sets.insert(name.clone(), statement.clone());
            }
            Effect::Reset(Some(name)) => {
                self.sets.remove(name);
                self.startup.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            }
            Effect::Reset(None) | Effect::Discard => {
                self.sets.clear();
                self.startup.clear();
            }
            Effect::Plain | Effect::Refuse(_) => {}
        }
    }
}

/// A client's protocol-level prepared statement, kept so that it can be
/// prepared again on whichever server connection the client gets next.
#[derive(Debug, Clone)]
struct ClientStatement {
    server_name: String,
    /// The Parse body after the statement name: query, parameter types.
    rest: Bytes,
    effects: Vec<Effect>,
}

pub(super) struct Relay<'a> {
    pub proxy: Arc<Proxy>,
    pub mode: PoolMode,
    pub key: PoolKey,
    pub addr: ServerAddr,
    pub credentials: BackendCredentials,
    pub client: &'a mut Stream,
    pub cancel: &'a CancelHandle,
    pub settings: ClientSettings,
    pub idle_limit: Option<Duration>,
    pub max_message_len: usize,
    /// Bytes from the client not yet processed.
    pub cin: BytesMut,
    /// Bytes for the client not yet written.
    cout: BytesMut,
    /// Bytes for the server not yet written.
    sout: BytesMut,
    /// How much the next client read asks for.
    client_read_size: usize,
    server: Option<PooledConnection>,
    queue: VecDeque<Expect>,
    /// Bytes of a streamed client message (CopyData) still to pass.
    client_skip: usize,
    /// Bytes of a streamed server message still to pass.
    server_skip: usize,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// After a refused extended-protocol message: drop until Sync.
    skip_until_sync: bool,
    /// An error was seen since the last Sync.
    pipeline_failed: bool,
    /// Effects of statements parsed since the last Sync.
    pipeline_effects: Vec<Effect>,
    /// Session SETs made inside the open transaction: kept on COMMIT.
    pending_effects: Vec<Effect>,
    tx_status: u8,
    statements: HashMap<String, ClientStatement>,
    /// The server's last word was a FATAL: the client has been told why
    /// the connection ends, and needs no second error from pghalo.
    server_fatal: bool,
    /// The server hit an error in the extended protocol and skips what
    /// comes before the next Sync, which the client has not sent yet.
    server_discarding: bool,
}

enum Io {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Idle,
}

impl<'a> Relay<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        proxy: Arc<Proxy>,
        mode: PoolMode,
        key: PoolKey,
        addr: ServerAddr,
        credentials: BackendCredentials,
        client: &'a mut Stream,
        cancel: &'a CancelHandle,
        settings: ClientSettings,
        cin: BytesMut,
    ) -> Relay<'a> {
        let proxy_settings = proxy.settings();
        Relay {
            idle_limit: proxy_settings.client_idle_limit,
            max_message_len: proxy_settings.max_message_len,
            proxy,
            mode,
            key,
            addr,
            credentials,
            client,
            cancel,
            settings,
            cin,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            client_read_size: SMALL_READ,
            server: None,
            queue: VecDeque::new(),
            client_skip: 0,
            server_skip: 0,
            unsynced: false,
            skip_until_sync: false,
            pipeline_failed: false,
            pipeline_effects: Vec::new(),
            pending_effects: Vec::new(),
            tx_status: b'I',
            statements: HashMap::new(),
            server_fatal: false,
            server_discarding: false,
        }
    }

    fn transaction_mode(&self) -> bool {
        self.mode == PoolMode::Transaction
    }

    /// Gets a server connection and brings it to this client's settings.
    pub(super) async fn attach(&mut self) -> Result<(), ClientError> {
        if self.server.is_some() {
            return Ok(());
        }
        let mut pooled = self
            .proxy
            .pools
            .checkout(&self.key, &self.addr, &self.credentials)
            .await
            .map_err(ClientError::from)?;
        let Some(conn) = pooled.get() else {
            return Err(ClientError::fatal(
                SqlState::INTERNAL_ERROR,
                "server connection missing",
            ));
        };
        let wanted = self.settings.fingerprint();
        if conn.applied_settings != wanted {
            let mut sql = if conn.applied_settings == 0 {
                String::new()
            } else {
                "RESET ALL;".to_string()
            };
            sql.push_str(&self.settings.replay());
            if !sql.is_empty() {
                conn.execute(&sql).await.map_err(|e| match e {
                    BackendError::Query(error, _) => ClientError::fatal(
                        SqlState::from_code(&error.code)
                            .unwrap_or(SqlState::INVALID_PARAMETER_VALUE),
                        error.message,
                    ),
                    other => ClientError::from_backend(&other),
                })?;
            }
            conn.applied_settings = wanted;
        }
        self.tx_status = conn.tx_status.byte();
        tracing::trace!(client = self.cancel.pid, server = ?conn.key.as_ref().map(|k| k.pid), "attach");
        self.cancel
            .set_target(conn.key.clone().map(|key| CancelTarget {
                addr: conn.addr.clone(),
                key,
            }));
        self.server = Some(pooled);
        Ok(())
    }

    /// What the client needs after AuthenticationOk: every ParameterStatus,
    /// BackendKeyData, ReadyForQuery.
    pub(super) fn welcome(&mut self) -> Result<(), ClientError> {
        let Some(conn) = self.server.as_mut().and_then(|p| p.get()) else {
            return Err(ClientError::fatal(
                SqlState::INTERNAL_ERROR,
                "no server connection to welcome with",
            ));
        };
        let internal = |e: pghalo_protocol::EncodeError| {
            ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string())
        };
        for (name, value) in &conn.params {
            be::write_parameter_status(&mut self.cout, name, value).map_err(internal)?;
        }
        be::write_backend_key_data(&mut self.cout, self.cancel.pid, &self.cancel.key);
        be::write_ready_for_query(&mut self.cout, conn.tx_status);
        Ok(())
    }

    /// Gives the server connection back between transactions.
    async fn detach(&mut self) {
        if let Some(mut pooled) = self.server.take() {
            tracing::trace!(client = self.cancel.pid, server = ?pooled.get().and_then(|c| c.key.as_ref().map(|k| k.pid)), "detach");
            self.cancel.set_target(None);
            pooled.release(false).await;
        }
    }

    /// Whether the server connection owes nothing and holds no transaction.
    fn server_clean(&self) -> bool {
        self.queue.is_empty()
            && self.tx_status == b'I'
            && !self.unsynced
            && self.sout.is_empty()
            && self.server_skip == 0
            // A request the client has started to send (a large Query
            // arriving in pieces) belongs on this connection.
            && self.cin.is_empty()
    }

    /// Runs until the session ends, then settles the server connection.
    pub(super) async fn run(mut self) -> End {
        let end = self.pump().await;
        self.finish(&end).await;
        end
    }

    async fn pump(&mut self) -> End {
        loop {
            if let Some(end) = self.process_client() {
                return end;
            }
            if self.server.is_none() && self.needs_server() {
                if let Err(error) = self.attach().await {
                    return End::NoServer(error);
                }
                if let Some(end) = self.process_client() {
                    return end;
                }
            }
            if let Err(end) = self.process_server() {
                return end;
            }
            if self.transaction_mode()
                && self.server.is_some()
                && self.server_clean()
                && self.client_skip == 0
            {
                self.detach().await;
                if self.needs_server() {
                    continue; // the next transaction is already buffered
                }
            }
            match self.poll_io().await {
                Io::ClientRead(Ok(0)) | Io::ClientRead(Err(_)) | Io::ClientWrote(Err(_)) => {
                    return End::ClientGone;
                }
                Io::ServerRead(Ok(0)) | Io::ServerRead(Err(_)) | Io::ServerWrote(Err(_)) => {
                    return End::ServerGone;
                }
                Io::ClientRead(Ok(n)) => {
                    // Grow reads while the client streams; an idle client
                    // costs a small buffer, not 16 KiB (10,000 idle clients).
                    self.client_read_size = if n >= self.client_read_size {
                        (self.client_read_size * 4).min(READ_CHUNK * 4)
                    } else {
                        SMALL_READ.max(n.next_power_of_two()).min(READ_CHUNK)
                    };
                }
                Io::ServerRead(Ok(_)) => {}
                Io::ClientWrote(Ok(n)) => self.cout.advance(n),
                Io::ServerWrote(Ok(n)) => self.sout.advance(n),
                Io::Idle => return End::IdleTimeout,
            }
        }
    }

    /// Whether buffered client input must go to a server.
    fn needs_server(&self) -> bool {
        self.client_skip > 0 || self.cin.len() >= 5 && !self.skip_until_sync
    }

    /// One readiness poll of everything the relay may do next.
    async fn poll_io(&mut self) -> Io {
        let read_client = self.cout.len() < HIGH_WATER && self.sout.len() < HIGH_WATER;
        let read_server = self.cout.len() < HIGH_WATER;
        let idle = self
            .idle_limit
            .filter(|_| self.queue.is_empty() && self.tx_status == b'I' && self.cout.is_empty());
        let mut timer = idle.map(|d| Box::pin(tokio::time::sleep(d)));
        if read_client {
            self.cin.reserve(self.client_read_size);
        }
        let Relay {
            client,
            server,
            cin,
            cout,
            sout,
            ..
        } = self;
        let mut server_io = server.as_mut().and_then(|p| p.get()).map(|c| c.io());
        if read_server && let Some((_, buf)) = server_io.as_mut() {
            buf.reserve(READ_CHUNK);
        }
        poll_fn(|cx| {
            if !cout.is_empty()
                && let Poll::Ready(r) = Pin::new(&mut **client).poll_write(cx, cout)
            {
                return Poll::Ready(Io::ClientWrote(r));
            }
            if let Some((stream, buf)) = server_io.as_mut() {
                if !sout.is_empty()
                    && let Poll::Ready(r) = Pin::new(&mut **stream).poll_write(cx, sout)
                {
                    return Poll::Ready(Io::ServerWrote(r));
                }
                if read_server
                    && let Poll::Ready(r) =
                        tokio_util::io::poll_read_buf(Pin::new(&mut **stream), cx, &mut **buf)
                {
                    return Poll::Ready(Io::ServerRead(r));
                }
            }
            if read_client
                && let Poll::Ready(r) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut **client), cx, cin)
            {
                return Poll::Ready(Io::ClientRead(r));
            }
            if let Some(timer) = timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Io::Idle);
            }
            Poll::Pending
        })
        .await
    }

    /// Handles every whole client message buffered (and streams partial
    /// CopyData). Returns an end when the client terminated or broke the
    /// protocol.
    fn process_client(&mut self) -> Option<End> {
        loop {
            if self.client_skip > 0 {
                self.server.as_ref()?;
                let n = self.client_skip.min(self.cin.len());
                self.sout.extend_from_slice(&self.cin[..n]);
                self.cin.advance(n);
                self.client_skip -= n;
                if self.client_skip > 0 {
                    return None;
                }
            }
            if self.sout.len() >= HIGH_WATER {
                return None;
            }
            let header = self.cin.get(..5)?;
            let tag = header[0];
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len < 4 || len as usize > self.max_message_len {
                return Some(End::ClientProtocol(format!(
                    "invalid message length {len} for message type '{}'",
                    tag as char
                )));
            }
            let total = 1 + len as usize;
            if tag == fe::TERMINATE {
                return Some(End::ClientTerminated);
            }
            if self.skip_until_sync && tag != fe::SYNC {
                if self.cin.len() < total {
                    return None;
                }
                self.cin.advance(total);
                continue;
            }
            // Everything below needs a server connection (the caller
            // attaches one and calls again), except preparing a statement
            // some server has already accepted.
            if self.server.is_none() {
                if self.answer_known_prepare() {
                    continue;
                }
                return None;
            }
            if !FRONTEND_TAGS.contains(&tag) {
                // As PostgreSQL answers it; forwarding it would leave the
                // server's FATAL on a connection another client may get.
                return Some(End::ClientProtocol(format!(
                    "invalid frontend message type {tag}"
                )));
            }
            if !CLIENT_WHOLE.contains(&tag) {
                // Streamed: CopyData.
                self.client_skip = total;
                continue;
            }
            if self.cin.len() < total {
                self.cin.reserve(total - self.cin.len());
                return None;
            }
            let message = self.cin.split_to(total).freeze();
            if let Err(end) = self.client_message(tag, message) {
                return Some(end);
            }
        }
    }

    fn client_message(&mut self, tag: u8, message: Bytes) -> Result<(), End> {
        if self.server_discarding && tag != fe::SYNC {
            // The server ignores everything up to Sync after an error in
            // the extended protocol: nothing of this will be answered.
            self.sout.extend_from_slice(&message);
            return Ok(());
        }
        let body = message.slice(5..);
        match tag {
            fe::QUERY => {
                let sql = fe::Query::parse(&body)
                    .map_err(|e| End::ClientProtocol(e.to_string()))?
                    .sql;
                let list = if self.transaction_mode() {
                    effects(&sql.to_string_lossy())
                } else {
                    Vec::new()
                };
                if let Some(reason) = refusal(&list) {
                    self.refuse(&reason, false);
                    return Ok(());
                }
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::Query {
                    effects: list,
                    failed: false,
                    tags: Vec::new(),
                });
            }
            fe::PARSE => self.client_parse(message, &body)?,
            fe::BIND => self.client_bind(message, &body)?,
            fe::DESCRIBE => {
                self.unsynced = true;
                let target = fe::TargetName::parse_describe(&body)
                    .map_err(|e| End::ClientProtocol(e.to_string()))?;
                match self.statement_for(target.target, target.name.as_bytes()) {
                    Some((server_name, rest, _)) => {
                        self.ensure_prepared(&server_name, &rest);
                        write_target(&mut self.sout, fe::DESCRIBE, b'S', server_name.as_bytes());
                    }
                    None => self.sout.extend_from_slice(&message),
                }
                self.queue.push_back(Expect::Describe);
            }
            fe::CLOSE => {
                self.unsynced = true;
                let target = fe::TargetName::parse_close(&body)
                    .map_err(|e| End::ClientProtocol(e.to_string()))?;
                let named_statement = self.transaction_mode()
                    && target.target == fe::Target::Statement
                    && !target.name.as_bytes().is_empty();
                if named_statement {
                    // The server keeps it for whoever prepares the same
                    // statement next; the client sees it closed.
                    self.statements
                        .remove(&String::from_utf8_lossy(target.name.as_bytes()).into_owned());
                    let mut reply = BytesMut::new();
                    be::write_close_complete(&mut reply);
                    self.queue.push_back(Expect::Synthetic(reply.freeze()));
                } else {
                    self.sout.extend_from_slice(&message);
                    self.queue.push_back(Expect::Close);
                }
            }
            fe::EXECUTE => {
                self.unsynced = true;
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::Execute);
            }
            fe::SYNC => {
                self.server_discarding = false;
                self.unsynced = false;
                self.skip_until_sync = false;
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::Sync);
            }
            fe::FLUSH => {
                self.unsynced = true;
                self.sout.extend_from_slice(&message);
            }
            fe::FUNCTION_CALL => {
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::FunctionCall);
            }
            _ => self.sout.extend_from_slice(&message),
        }
        self.emit_synthetic();
        Ok(())
    }

    /// Between transactions, a named Parse followed directly by Sync for a
    /// statement already accepted by a server is answered here: waiting for
    /// a server connection just to prepare would stall clients (pgbench's
    /// PQprepare blocks its whole thread) while others hold connections.
    /// The statement is prepared on a server when the client binds it.
    fn answer_known_prepare(&mut self) -> bool {
        if !self.transaction_mode() || self.tx_status != b'I' || !self.queue.is_empty() {
            return false;
        }
        let Some((parse_len, name, rest)) = leading_parse(&self.cin) else {
            return false;
        };
        if name.is_empty()
            || self.cin.get(parse_len..parse_len + 5) != Some(&[fe::SYNC, 0, 0, 0, 4][..])
        {
            return false;
        }
        let server_name = server_statement_name(&rest);
        if !self.proxy.pools.statement_known(&server_name) {
            return false;
        }
        let list = effects(&String::from_utf8_lossy(query_of(&rest)));
        if list.iter().any(|e| !matches!(e, Effect::Plain)) {
            return false;
        }
        self.statements.insert(
            name,
            ClientStatement {
                server_name,
                rest,
                effects: list,
            },
        );
        self.cin.advance(parse_len + 5);
        be::write_parse_complete(&mut self.cout);
        be::write_ready_for_query(&mut self.cout, TransactionStatus::Idle);
        true
    }

    fn client_parse(&mut self, message: Bytes, body: &Bytes) -> Result<(), End> {
        self.unsynced = true;
        let parse = fe::Parse::parse(body).map_err(|e| End::ClientProtocol(e.to_string()))?;
        let list = if self.transaction_mode() {
            effects(&parse.query.to_string_lossy())
        } else {
            Vec::new()
        };
        if let Some(reason) = refusal(&list) {
            self.refuse(&reason, true);
            return Ok(());
        }
        let name = parse.name.as_bytes();
        if !self.transaction_mode() || name.is_empty() {
            self.pipeline_effects.extend(list);
            self.sout.extend_from_slice(&message);
            self.queue.push_back(Expect::Parse {
                swallow: false,
                server_name: None,
            });
            return Ok(());
        }
        // Named, in transaction mode: one server-side name per distinct
        // statement, shared by every client that prepares it.
        let rest = body.slice(name.len() + 1..);
        let server_name = server_statement_name(&rest);
        let client_name = String::from_utf8_lossy(name).into_owned();
        self.statements.insert(
            client_name,
            ClientStatement {
                server_name: server_name.clone(),
                rest: rest.clone(),
                effects: list.clone(),
            },
        );
        self.pipeline_effects.extend(list);
        let prepared = self
            .server
            .as_mut()
            .and_then(|p| p.get())
            .is_some_and(|c| c.prepared.contains(&server_name));
        if prepared {
            let mut reply = BytesMut::new();
            be::write_parse_complete(&mut reply);
            self.queue.push_back(Expect::Synthetic(reply.freeze()));
        } else {
            write_parse(&mut self.sout, &server_name, &rest);
            self.mark_prepared(&server_name);
            self.queue.push_back(Expect::Parse {
                swallow: false,
                server_name: Some(server_name),
            });
        }
        Ok(())
    }

    fn client_bind(&mut self, message: Bytes, body: &Bytes) -> Result<(), End> {
        self.unsynced = true;
        let bind = Bind::parse(body).map_err(|e| End::ClientProtocol(e.to_string()))?;
        match self.statement_for(fe::Target::Statement, bind.statement.as_bytes()) {
            Some((server_name, rest, effects)) => {
                self.pipeline_effects.extend(effects);
                self.ensure_prepared(&server_name, &rest);
                bind.write_renamed(&mut self.sout, &server_name)
                    .map_err(|e| End::ClientProtocol(e.to_string()))?;
            }
            None => self.sout.extend_from_slice(&message),
        }
        self.queue.push_back(Expect::Bind);
        Ok(())
    }

    /// A client's named statement (transaction mode only; session mode
    /// passes names through): its server-side name, its Parse body after
    /// the name, and its session effects (empty, allocating nothing, for
    /// the usual statement). One map lookup per Bind or Describe: this is
    /// the hot path.
    fn statement_for(
        &self,
        target: fe::Target,
        name: &[u8],
    ) -> Option<(String, Bytes, Vec<Effect>)> {
        if !self.transaction_mode() || target != fe::Target::Statement || name.is_empty() {
            return None;
        }
        self.statements
            .get(String::from_utf8_lossy(name).as_ref())
            .map(|s| {
                let changing = s.effects.iter().any(|e| !matches!(e, Effect::Plain));
                let effects = if changing {
                    s.effects.clone()
                } else {
                    Vec::new()
                };
                (s.server_name.clone(), s.rest.clone(), effects)
            })
    }

    /// Prepares a client's statement on this server connection if it is
    /// not there yet; the ParseComplete is the relay's, not the client's.
    fn ensure_prepared(&mut self, server_name: &str, rest: &[u8]) {
        let prepared = self
            .server
            .as_mut()
            .and_then(|p| p.get())
            .is_some_and(|c| c.prepared.contains(server_name));
        if prepared {
            return;
        }
        write_parse(&mut self.sout, server_name, rest);
        self.mark_prepared(server_name);
        self.queue.push_back(Expect::Parse {
            swallow: true,
            server_name: Some(server_name.to_string()),
        });
    }

    fn mark_prepared(&mut self, server_name: &str) {
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.prepared.insert(server_name.to_string());
        }
    }

    /// Answers a statement pghalo will not run, in the place its reply
    /// would have had.
    fn refuse(&mut self, reason: &str, extended: bool) {
        let mut reply = BytesMut::new();
        ClientError {
            severity: be::Severity::Error,
            code: SqlState::FEATURE_NOT_SUPPORTED,
            message: format!("{reason} is not supported in transaction pooling mode"),
            detail: Some(
                "the next transaction may run on another server connection, where this session state would not exist"
                    .into(),
            ),
        }
        .write(&mut reply);
        if extended {
            // As PostgreSQL does after an error: ignore until Sync.
            self.skip_until_sync = true;
        } else {
            let status =
                TransactionStatus::from_byte(self.tx_status).unwrap_or(TransactionStatus::Idle);
            be::write_ready_for_query(&mut reply, status);
        }
        self.queue.push_back(Expect::Synthetic(reply.freeze()));
        self.emit_synthetic();
    }

    /// Writes the relay's own replies that have reached the head of the
    /// queue.
    fn emit_synthetic(&mut self) {
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            if let Some(Expect::Synthetic(reply)) = self.queue.pop_front() {
                self.cout.extend_from_slice(&reply);
            }
        }
    }

    /// Handles the server's buffered output.
    fn process_server(&mut self) -> Result<(), End> {
        let Some(conn) = self.server.as_mut().and_then(|p| p.get()) else {
            return Ok(());
        };
        let mut input = std::mem::take(&mut conn.read_buf);
        let result = self.server_messages(&mut input);
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.read_buf = input;
        }
        result
    }

    fn server_messages(&mut self, input: &mut BytesMut) -> Result<(), End> {
        loop {
            if self.server_skip > 0 {
                let n = self.server_skip.min(input.len());
                self.cout.extend_from_slice(&input[..n]);
                input.advance(n);
                self.server_skip -= n;
                if self.server_skip > 0 {
                    return Ok(());
                }
            }
            if self.cout.len() >= HIGH_WATER {
                return Ok(());
            }
            let Some(header) = input.get(..5) else {
                return Ok(());
            };
            let tag = header[0];
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len < 4 {
                return Err(End::ServerGone);
            }
            let total = 1 + len as usize;
            if !SERVER_WHOLE.contains(&tag) {
                self.server_event(tag, None);
                self.server_skip = total;
                continue;
            }
            if input.len() < total {
                return Ok(());
            }
            let message = input.split_to(total).freeze();
            self.server_event(tag, Some(&message));
        }
    }

    /// Advances the reply queue for one server message and passes the
    /// message on (or not). `message` is whole for the kinds in
    /// SERVER_WHOLE; for the others only the tag is known and the bytes are
    /// streamed by the caller.
    fn server_event(&mut self, tag: u8, message: Option<&Bytes>) {
        let mut forward = true;
        match tag {
            be::PARSE_COMPLETE => {
                if let Some(Expect::Parse {
                    swallow,
                    server_name,
                }) = self.queue.front()
                {
                    forward = !*swallow;
                    if let Some(name) = server_name {
                        self.proxy.pools.note_statement(name);
                    }
                    self.queue.pop_front();
                }
            }
            be::BIND_COMPLETE => self.pop_if(|e| matches!(e, Expect::Bind)),
            be::CLOSE_COMPLETE => self.pop_if(|e| matches!(e, Expect::Close)),
            be::ROW_DESCRIPTION | be::NO_DATA => self.pop_if(|e| matches!(e, Expect::Describe)),
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                if let (Some(Expect::Query { tags, .. }), Some(message)) =
                    (self.queue.front_mut(), message)
                    && tag == be::COMMAND_COMPLETE
                    && let Ok(cc) = be::CommandComplete::parse(&message[5..])
                {
                    tags.push(String::from_utf8_lossy(cc.command()).into_owned());
                }
                let in_query = matches!(self.queue.front(), Some(Expect::Query { .. }));
                if tag == be::COMMAND_COMPLETE
                    && !in_query
                    && let Some(message) = message
                {
                    self.note_transaction_end(&message[5..]);
                }
                self.pop_if(|e| matches!(e, Expect::Execute));
            }
            be::ERROR_RESPONSE => {
                if let Some(message) = message {
                    let severity = be::ErrorFields::parse_error(&message[5..])
                        .ok()
                        .and_then(|f| f.severity_level());
                    self.server_fatal =
                        matches!(severity, Some(be::Severity::Fatal | be::Severity::Panic));
                }
                self.server_error();
            }
            be::READY_FOR_QUERY => {
                if let Some(status) = message.and_then(|m| m.get(5)) {
                    self.ready(*status);
                }
            }
            be::PARAMETER_STATUS => {
                if let (Some(message), Some(conn)) =
                    (message, self.server.as_mut().and_then(|p| p.get()))
                    && let Ok(p) = be::ParameterStatus::parse(&message[5..])
                {
                    conn.note_parameter(&p);
                }
            }
            _ => {}
        }
        if forward && let Some(message) = message {
            self.cout.extend_from_slice(message);
        }
        self.emit_synthetic();
    }

    fn pop_if(&mut self, matches: impl Fn(&Expect) -> bool) {
        if self.queue.front().is_some_and(matches) {
            self.queue.pop_front();
        }
    }

    /// An ErrorResponse: inside a simple Query the Query's ReadyForQuery
    /// still comes; in the extended protocol the server now ignores
    /// everything up to Sync, so those replies will never come.
    fn server_error(&mut self) {
        self.pipeline_failed = true;
        match self.queue.front_mut() {
            Some(Expect::Query { failed, .. }) => *failed = true,
            Some(Expect::FunctionCall) => {}
            _ => {
                while let Some(front) = self.queue.front() {
                    if matches!(front, Expect::Sync) {
                        break;
                    }
                    if let Some(Expect::Parse {
                        server_name: Some(name),
                        ..
                    }) = self.queue.pop_front()
                    {
                        // The statement did not get prepared after all.
                        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
                            conn.prepared.remove(&name);
                        }
                    }
                }
                // No Sync sent yet (a pipeline with Flush): what the client
                // sends until its Sync will not be answered either.
                self.server_discarding = self.queue.is_empty();
            }
        }
    }

    /// COMMIT keeps the session SETs made in the transaction, ROLLBACK
    /// drops them, as the server does.
    fn note_transaction_end(&mut self, body: &[u8]) {
        let Ok(cc) = be::CommandComplete::parse(body) else {
            return;
        };
        match cc.command() {
            b"COMMIT" => {
                for effect in std::mem::take(&mut self.pending_effects) {
                    self.settings.apply(&effect);
                }
            }
            b"ROLLBACK" => self.pending_effects.clear(),
            _ => {}
        }
    }

    fn ready(&mut self, status: u8) {
        let before = self.tx_status;
        let mut changed = false;
        match self.queue.pop_front() {
            Some(Expect::Query {
                effects,
                failed,
                tags,
            }) => {
                changed = effects.iter().any(|e| !matches!(e, Effect::Plain));
                if changed {
                    self.query_effects(before, &effects, &tags, failed);
                }
            }
            Some(Expect::Sync) => {
                let done = std::mem::take(&mut self.pipeline_effects);
                changed = done.iter().any(|e| !matches!(e, Effect::Plain));
                if changed && !self.pipeline_failed {
                    if status == b'I' {
                        done.iter().for_each(|e| self.settings.apply(e));
                    } else {
                        self.pending_effects.extend(done);
                    }
                }
            }
            _ => {}
        }
        self.pipeline_failed = false;
        if status == b'I' && before != b'I' {
            // The transaction is over; whatever decided its SETs' fate has
            // been seen (COMMIT or ROLLBACK tags); nothing stays pending.
            self.pending_effects.clear();
        }
        self.tx_status = status;
        tracing::trace!(client = self.cancel.pid, status = %char::from(status), queue = ?self.queue, "ready");
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.tx_status =
                TransactionStatus::from_byte(status).unwrap_or(TransactionStatus::Failed);
            if changed {
                conn.applied_settings = self.settings.fingerprint();
            }
        }
    }

    /// Settles the session effects of a simple Query, statement by
    /// statement, the way the server settled them: outside an explicit
    /// block they stand unless the (implicit) transaction failed; inside one
    /// they wait for its COMMIT and vanish with its ROLLBACK.
    fn query_effects(&mut self, before: u8, effects: &[Effect], tags: &[String], failed: bool) {
        let mut in_block = before != b'I';
        let mut implicit = Vec::new();
        for (effect, tag) in effects.iter().zip(tags) {
            let tag = tag.as_str();
            if tag == "BEGIN" || tag == "START TRANSACTION" {
                in_block = true;
            }
            if !matches!(effect, Effect::Plain) {
                if in_block {
                    self.pending_effects.push(effect.clone());
                } else {
                    implicit.push(effect.clone());
                }
            }
            match tag {
                "COMMIT" => {
                    for e in std::mem::take(&mut self.pending_effects) {
                        self.settings.apply(&e);
                    }
                    in_block = false;
                }
                "ROLLBACK" => {
                    self.pending_effects.clear();
                    in_block = false;
                }
                _ => {}
            }
        }
        if !failed {
            implicit.iter().for_each(|e| self.settings.apply(e));
        }
    }

    /// Leaves the server connection clean for the next client, or closed.
    async fn finish(&mut self, end: &End) {
        let reply = match end {
            End::ServerGone if self.server_fatal => None,
            End::ServerGone => Some(ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "server closed the connection unexpectedly",
            )),
            End::ClientProtocol(why) => Some(ClientError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                why.clone(),
            )),
            End::IdleTimeout => Some(ClientError::fatal(
                SqlState::IDLE_SESSION_TIMEOUT,
                "terminating connection due to client_idle_limit",
            )),
            End::NoServer(error) => Some(error.clone()),
            End::ClientTerminated | End::ClientGone => None,
        };
        if let Some(error) = reply {
            error.write(&mut self.cout);
        }
        if !self.cout.is_empty() && !matches!(end, End::ClientGone) {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(Duration::from_secs(5), self.client.write_all(&self.cout))
                .await;
        }
        let Some(mut pooled) = self.server.take() else {
            return;
        };
        self.cancel.set_target(None);
        let reusable = matches!(
            end,
            End::ClientTerminated | End::ClientGone | End::IdleTimeout
        ) && self.queue.is_empty()
            && !self.unsynced
            && self.sout.is_empty()
            && self.server_skip == 0
            && self.client_skip == 0;
        if !reusable {
            return; // dropped: closed, never reused
        }
        if self.tx_status != b'I' {
            // The client left inside a transaction: roll it back so the
            // connection can serve someone else.
            let Some(conn) = pooled.get() else { return };
            if conn.execute("ROLLBACK").await.is_err() {
                return;
            }
        }
        pooled.release(self.mode == PoolMode::Session).await;
    }
}

/// The first refusal among `effects`, if any.
fn refusal(effects: &[Effect]) -> Option<String> {
    effects.iter().find_map(|e| match e {
        Effect::Refuse(reason) => Some(reason.clone()),
        _ => None,
    })
}

/// The Parse at the head of `buf`, if whole: (its total length, the
/// statement name, the body after the name).
fn leading_parse(buf: &[u8]) -> Option<(usize, String, Bytes)> {
    let header = buf.get(..5)?;
    if header[0] != fe::PARSE {
        return None;
    }
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let total = 1 + usize::try_from(len).ok()?;
    let body = buf.get(5..total)?;
    fe::Parse::parse(body).ok()?;
    let nul = body.iter().position(|b| *b == 0)?;
    let name = String::from_utf8_lossy(&body[..nul]).into_owned();
    Some((total, name, Bytes::copy_from_slice(&body[nul + 1..])))
}

/// The query text at the start of a Parse body's remainder.
fn query_of(rest: &[u8]) -> &[u8] {
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// A stable server-side name for a statement text and parameter types, so
/// clients preparing the same statement share one server-side copy.
fn server_statement_name(rest: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rest.hash(&mut h);
    format!("pghalo_{:016x}_{}", h.finish(), rest.len())
}

fn write_parse(out: &mut BytesMut, name: &str, rest: &[u8]) {
    out.put_u8(fe::PARSE);
    out.put_i32((4 + name.len() + 1 + rest.len()) as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
}

fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.put_slice(name);
    out.put_u8(0);
}
