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
use super::route::{Need, SessionRoute};
use super::tx_policy::{Effect, effects};
use crate::admin::show;
use crate::backend::{BackendCredentials, BackendError, ServerAddr};
use crate::config::PoolMode;
use crate::net::{READ_CHUNK, Stream};
use crate::pool::{PoolError, PoolKey, PooledConnection};
use crate::router::Classification;

/// Above this much unsent output in one direction, stop reading input for
/// it: memory stays bounded whatever the peers do.
const HIGH_WATER: usize = 256 * 1024;

/// A server connection's `applied_settings` when nobody knows them: no
/// client's fingerprint (0 or odd) equals it, so the next one resets.
const SETTINGS_UNKNOWN: u64 = 2;

/// What the relay sends in place of a statement it refused, to fail in
/// the server's parser (a syntax error) as the refused one would have
/// failed there.
const REFUSED_STAND_IN: &str = "pghalo refused the statement";

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
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended;
    /// `effects` are the bound statement's, settled by its CommandComplete.
    Execute {
        effects: Vec<Effect>,
    },
    Close,
    Sync,
    /// Answered by the relay, in turn.
    Synthetic(Bytes),
    /// A statement the relay sent to fail in the server's parser, standing
    /// for one it refused: the server rolls back or aborts as it would
    /// have for the real one. Its ErrorResponse is dropped (the client got
    /// the relay's); in the simple protocol its ReadyForQuery passes.
    Refused {
        simple: bool,
    },
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
    /// The session's node left the topology (failed over, fenced,
    /// detached): the session ends rather than go on there.
    NodeRetired(String),
    /// Transaction pooling cannot go on with what the session did.
    CannotPool(String),
}

/// A client's session-level settings, which follow it across server
/// connections in transaction mode.
#[derive(Debug, Default, Clone)]
pub(super) struct ClientSettings {
    /// From the startup packet, applied as SETs.
    startup: Vec<(String, String)>,
    /// Session-level SETs the client ran and committed, by parameter.
    sets: BTreeMap<String, String>,
    /// `fingerprint()`, kept: it is asked at every checkout in transaction
    /// pooling, and the settings change far less often.
    fingerprint: u64,
}

impl ClientSettings {
    pub(super) fn new(startup: Vec<(String, String)>) -> ClientSettings {
        let mut settings = ClientSettings {
            startup,
            sets: BTreeMap::new(),
            fingerprint: 0,
        };
        settings.fingerprint = settings.compute_fingerprint();
        settings
    }

    /// Equal settings give equal fingerprints; none gives 0.
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn compute_fingerprint(&self) -> u64 {
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
            // The client's text may end in a `--` comment.
            sql.push_str("\n;");
        }
        sql
    }

    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Set { name, statement } => {
                self.sets.insert(name.clone(), statement.clone());
            }
            // A custom (dotted) parameter, once set, stays defined with an
            // empty value after RESET: other nodes must define it too.
            Effect::Reset(Some(name)) if name.contains('.') => {
                let quoted: Vec<String> = name
                    .split('.')
                    .map(super::startup_params::quote_ident)
                    .collect();
                self.sets
                    .insert(name.clone(), format!("RESET {}", quoted.join(".")));
            }
            Effect::Reset(Some(name)) => {
                self.sets.remove(name);
                self.startup.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            }
            Effect::Reset(None) | Effect::Discard => {
                self.sets.clear();
                self.startup.clear();
            }
            Effect::Plain
            | Effect::Refuse(_)
            | Effect::DeallocateAll
            | Effect::RollbackToSavepoint => return,
        }
        self.fingerprint = self.compute_fingerprint();
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
    /// Where it may run (None when the session does not route).
    class: Option<Arc<Classification>>,
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
    /// Effects of the statements bound to portals still open, by portal
    /// name: what an Execute of that portal runs. Only portals with
    /// effects are listed (most have none); all are gone when the
    /// transaction ends.
    portal_effects: Vec<(Vec<u8>, Vec<Effect>)>,
    /// Effects of the unnamed statement, bound with it.
    unnamed_effects: Vec<Effect>,
    /// Effects of statements the segment being answered ran outside a
    /// transaction block: they stand if it ends without an error.
    segment_implicit: Vec<Effect>,
    /// Whether the segment being answered is inside a transaction block by
    /// now (None: nothing of it answered yet).
    segment_in_block: Option<bool>,
    /// Session SETs made inside the open transaction: kept on COMMIT.
    pending_effects: Vec<Effect>,
    /// `settings` changed since the last ReadyForQuery.
    settings_touched: bool,
    /// A ROLLBACK TO SAVEPOINT may have undone SETs still counted as
    /// pending: the server's settings are not known for sure.
    settings_uncertain: bool,
    /// The server is in copy-in mode for an extended-protocol COPY and
    /// ignores Sync until CopyDone or CopyFail.
    copy_in_extended: bool,
    tx_status: u8,
    statements: HashMap<String, ClientStatement>,
    /// The server's last word was a FATAL: the client has been told why
    /// the connection ends, and needs no second error from pghalo.
    server_fatal: bool,
    /// The server hit an error in the extended protocol and skips what
    /// comes before the next Sync, which the client has not sent yet.
    server_discarding: bool,
    /// Session mode: server connections to other nodes, kept for the
    /// session while `server` serves another node. Idle, by construction:
    /// the relay moves only between transactions.
    parked: Vec<Option<PooledConnection>>,
    route: SessionRoute,
    /// Reads may go to other nodes than the primary: requests are
    /// classified, statements tracked, SETs replayed on every node.
    balancing: bool,
    /// The node the request at the head of `cin` must run on, once decided.
    planned: Option<usize>,
    /// The relay must move to this node before going on.
    want_node: Option<usize>,
    /// The planned request waits for the current server to finish.
    blocked: bool,
    /// Where the unnamed statement was last prepared and what it is.
    unnamed: Option<(usize, Option<Routed>)>,
    /// A DDL statement ran since the transaction began.
    ddl_ran: bool,
    /// The idle standby connection announced its end: let it go.
    standby_gone: bool,
    /// Transaction mode: the server was set to read text differently from
    /// pghalo; the session ends once the server has answered.
    unreadable: Option<String>,
    /// What the Query at the head of `cin` does to the session, read when
    /// it was planned (session mode with load balancing), so that
    /// `client_message` need not read it again.
    planned_effects: Option<Vec<Effect>>,
    /// While a segment is waited for (`segment_still_arriving`): how long
    /// `cin` must grow before reading it again can tell more, so a client
    /// sending a byte at a time does not make pghalo read the segment
    /// again each time.
    arriving_until: usize,
    /// Statements the client prepared for pgpool SHOW commands, which
    /// pghalo answers itself.
    show_statements: HashMap<Vec<u8>, show::ShowCommand>,
    /// Session mode: statements the client closed that a parked
    /// connection still holds, by node.
    stale: Vec<(usize, String)>,
    /// Session mode: the client discarded its session state; parked
    /// connections still hold theirs and are given back.
    release_parked: bool,
}

/// A statement's text and what the classifier made of it.
type Routed = (Bytes, Arc<Classification>);

/// Where the request at the head of the client's input runs.
enum Plan {
    /// Not decidable yet: more of the request must arrive.
    Wait,
    Node(usize),
    /// It binds the unnamed statement on a node the session cannot reach
    /// any more (its connection let go, or the node down or detached).
    Gone(String),
}

/// Where the unnamed statement lives once the connection it was prepared
/// on is gone: nowhere.
const UNNAMED_LOST: usize = usize::MAX;

const UNNAMED_GONE: &str = "terminating connection because the unnamed prepared statement is on a server connection that is gone";

/// What an extended-protocol segment holds, as far as routing cares.
#[derive(Default)]
struct Segment {
    /// Its Sync was seen: nothing else joins it.
    complete: bool,
    /// How many of its messages have fully arrived.
    messages: usize,
    /// How long the buffer must be for the next message to be whole.
    needs: usize,
    /// The scan stopped before a Sync at something that will not change
    /// when more arrives: a Flush (the client waits for answers before it
    /// sends the rest) or a message it could not read.
    stopped: bool,
    /// Something in it needs the primary.
    primary: bool,
    /// It binds a statement that exists on one node only.
    forced: Option<usize>,
    /// The statements it executes.
    runs: Vec<Arc<Classification>>,
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
        route: SessionRoute,
    ) -> Relay<'a> {
        let proxy_settings = proxy.settings();
        let balancing = proxy.routing().load_balance;
        let nodes = proxy_settings.backends.len();
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
            portal_effects: Vec::new(),
            unnamed_effects: Vec::new(),
            segment_implicit: Vec::new(),
            segment_in_block: None,
            pending_effects: Vec::new(),
            settings_touched: false,
            settings_uncertain: false,
            copy_in_extended: false,
            tx_status: b'I',
            statements: HashMap::new(),
            server_fatal: false,
            server_discarding: false,
            parked: (0..nodes).map(|_| None).collect(),
            route,
            balancing,
            planned: None,
            want_node: None,
            blocked: false,
            unnamed: None,
            stale: Vec::new(),
            release_parked: false,
            show_statements: HashMap::new(),
            ddl_ran: false,
            standby_gone: false,
            unreadable: None,
            planned_effects: None,
            arriving_until: 0,
        }
    }

    /// Whether client statements are tracked (renamed, re-prepared where
    /// needed) and session SETs replayed: needed when the next request may
    /// run on another server connection.
    fn tracking(&self) -> bool {
        self.transaction_mode() || self.balancing
    }

    fn transaction_mode(&self) -> bool {
        self.mode == PoolMode::Transaction
    }

    /// Gets a server connection and brings it to this client's settings;
    /// or, when the node a request was planned for cannot be reached,
    /// none, with the plan dropped: the caller plans the request again.
    pub(super) async fn attach(&mut self) -> Result<(), ClientError> {
        if self.server.is_some() {
            return Ok(());
        }
        // A primary that is down: wait for it, or for its successor.
        let node = self.proxy.primary_when_up(self.key.node).await;
        self.retarget(node);
        // A parked connection whose server went away (a standby that died
        // and came back) is dropped, and a fresh one checked out.
        let parked = self
            .parked
            .get_mut(self.key.node)
            .and_then(Option::take)
            .and_then(|mut p| p.still_open().then_some(p));
        if parked.is_none() {
            let node = self.key.node;
            self.stale.retain(|(n, _)| *n != node);
        }
        let pooled = match parked {
            Some(mut parked) => {
                let node = self.key.node;
                let stale: Vec<String> = self
                    .stale
                    .iter()
                    .filter(|(n, _)| *n == node)
                    .map(|(_, name)| name.clone())
                    .collect();
                self.stale.retain(|(n, _)| *n != node);
                if let Some(conn) = parked.get() {
                    for name in stale {
                        let sql = format!("DEALLOCATE \"{}\"", name.replace('"', "\"\""));
                        conn.execute(&sql)
                            .await
                            .map_err(|e| ClientError::from_backend(&e))?;
                    }
                }
                parked
            }
            None => match self
                .proxy
                .pools
                .checkout(&self.key, &self.addr, &self.credentials)
                .await
            {
                Ok(pooled) => pooled,
                Err(PoolError::Backend(e)) if e.is_unreachable() => {
                    // Maybe the node just died: have it checked now. A
                    // primary that is down is waited for (or its
                    // successor); a standby's read goes to the primary.
                    let failed = self.key.node;
                    self.unnamed_lost_on(failed);
                    let mut node = self.proxy.after_unreachable(failed).await;
                    if node == failed && self.balancing && failed != self.proxy.primary_node() {
                        node = self.proxy.primary_node();
                    }
                    if node == failed {
                        return Err(ClientError::from(PoolError::Backend(e)));
                    }
                    self.retarget(node);
                    if self.planned.take().is_some() {
                        if self.proxy.settings().check_on_backend_error {
                            // A request planned for the lost node is planned
                            // again on the topology the check left (the node
                            // now down); kept, it would send the relay back
                            // to the lost node again and again.
                            return Ok(());
                        }
                        // No check was asked for: the topology still offers
                        // the lost node, and planning again would pick it
                        // again, at once, forever. This request goes here.
                        self.planned = Some(node);
                    }
                    self.proxy
                        .pools
                        .checkout(&self.key, &self.addr, &self.credentials)
                        .await
                        .map_err(ClientError::from)?
                }
                Err(e) => return Err(ClientError::from(e)),
            },
        };
        self.adopt(pooled).await
    }

    /// Points the next checkout at `node`.
    fn retarget(&mut self, node: usize) {
        if node != self.key.node
            && let Some(addr) = self.proxy.settings().backends.get(node).cloned()
        {
            self.key.node = node;
            self.addr = addr;
        }
    }

    /// Moves the session to `node` between requests: the current server
    /// connection is parked (session mode) or released (transaction mode).
    async fn switch_to(&mut self, node: usize) -> Result<(), ClientError> {
        if self.server.is_some() && self.key.node == node {
            return Ok(());
        }
        let addr = self
            .proxy
            .settings()
            .backends
            .get(node)
            .cloned()
            .ok_or_else(|| ClientError::fatal(SqlState::CONNECTION_FAILURE, "no such backend"))?;
        // A connection a cancel may yet land on is dropped: closed.
        if let Some(current) = self.server.take()
            && self.cancel.let_go().await
        {
            if self.transaction_mode() {
                current.release(false).await;
            } else if let Some(slot) = self.parked.get_mut(self.key.node) {
                *slot = Some(current);
            }
        }
        tracing::trace!(
            client = self.cancel.pid,
            from = self.key.node,
            to = node,
            "switch node"
        );
        self.key.node = node;
        self.addr = addr;
        self.attach().await
    }

    /// Makes `pooled` the session's server connection.
    async fn adopt(&mut self, mut pooled: PooledConnection) -> Result<(), ClientError> {
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
        // A login default or a startup parameter may have set it.
        if let Some(why) = ["standard_conforming_strings", "client_encoding"]
            .into_iter()
            .find_map(|name| {
                let value = conn.params.get(name)?;
                super::tx_policy::unreadable_setting(name, value)
            })
        {
            if self.transaction_mode() {
                return Err(ClientError::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("{why} is not supported in transaction pooling mode"),
                ));
            }
            self.text_unreadable(why);
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
        // Every message at once: ParameterStatus each, BackendKeyData,
        // ReadyForQuery, and the room each message writer reserves.
        let size: usize = conn.params.iter().map(|(n, v)| n.len() + v.len() + 7).sum();
        self.cout.reserve(
            size + 9 + self.cancel.key.len() + 6 + pghalo_protocol::codec::TYPICAL_MESSAGE,
        );
        for (name, value) in &conn.params {
            be::write_parameter_status(&mut self.cout, name, value).map_err(internal)?;
        }
        be::write_backend_key_data(&mut self.cout, self.cancel.pid, &self.cancel.key);
        be::write_ready_for_query(&mut self.cout, conn.tx_status);
        Ok(())
    }

    /// Writes what waits for the client, within 5 s.
    async fn flush_client(&mut self) {
        use tokio::io::AsyncWriteExt;
        let mut written = 0;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while written < self.cout.len() {
                match self.client.write(&self.cout[written..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
        })
        .await;
        self.cout.advance(written);
    }

    /// Gives the server connection back between transactions.
    async fn detach(&mut self) {
        if let Some(mut pooled) = self.server.take() {
            tracing::trace!(client = self.cancel.pid, server = ?pooled.get().and_then(|c| c.key.as_ref().map(|k| k.pid)), "detach");
            if self.cancel.cancel_in_flight() {
                // The client gets its reply now, not once the cancel has
                // landed.
                self.flush_client().await;
            }
            if self.cancel.let_go().await {
                pooled.release(false).await;
            }
        }
    }

    /// Whether the server connection owes nothing and holds no transaction.
    fn server_clean(&self) -> bool {
        self.queue.is_empty()
            && self.tx_status == b'I'
            && !self.unsynced
            // The server ignores everything until the client's next Sync.
            && !self.server_discarding
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
            if let Some(node) = self.want_node.take() {
                if let Err(error) = self.switch_to(node).await {
                    return End::NoServer(error);
                }
                continue;
            }
            if self.server.is_none() && self.needs_server() && self.planned.is_none() {
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
            if std::mem::take(&mut self.standby_gone) {
                self.let_standby_go();
                continue;
            }
            if self.unreadable.is_some() && self.in_sync() {
                let why = self.unreadable.take().unwrap_or_default();
                return End::CannotPool(format!(
                    "{why} is not supported in transaction pooling mode"
                ));
            }
            if self.route.wants_write_position() && self.in_sync() && self.tx_status == b'I' {
                self.read_write_position().await;
            }
            if self.release_parked && self.in_sync() {
                self.release_parked = false;
                self.stale.clear();
                for slot in &mut self.parked {
                    if let Some(parked) = slot.take() {
                        parked.release(true).await;
                    }
                }
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
                    if self.standby_lost_while_idle() {
                        continue;
                    }
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

    /// Nothing outstanding on the server connection: the next request may
    /// go elsewhere.
    fn in_sync(&self) -> bool {
        self.queue.is_empty()
            && !self.unsynced
            && self.sout.is_empty()
            && self.server_skip == 0
            && self.client_skip == 0
            && !self.server_discarding
    }

    /// Read-your-writes: the primary's WAL position once the session's
    /// write is over (committed or not: a position past a rollback only
    /// keeps reads on the primary a little longer).
    async fn read_write_position(&mut self) {
        if self.key.node != self.proxy.primary_node() {
            return;
        }
        let Some(conn) = self.server.as_mut().and_then(|p| p.get()) else {
            return;
        };
        let lsn = match conn.query_value("SELECT pg_current_wal_lsn()").await {
            Ok(value) => value.and_then(|v| v.parse().ok()),
            Err(e) => {
                tracing::debug!("reading the primary's WAL position failed: {e}");
                None
            }
        };
        self.route.wrote_up_to(lsn);
    }

    /// Whether buffered client input must go to a server.
    fn needs_server(&self) -> bool {
        self.client_skip > 0
            || self.cin.len() >= 5 && !self.skip_until_sync && !self.request_still_arriving()
    }

    /// With load balancing, whether the request at the head of `cin` is
    /// planned (its node chosen) only once more of it has arrived: no
    /// connection is taken for it before.
    fn request_still_arriving(&self) -> bool {
        if !self.balancing || self.tx_status != b'I' {
            return false;
        }
        match self.cin.first() {
            // (A length no message has ends the session before this.)
            Some(&fe::QUERY) => whole_message(&self.cin, 0).is_none(),
            Some(&(fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE)) => {
                self.waiting_known()
                    || self.segment_still_arriving(&self.scan_segment(&self.proxy.routing()))
            }
            _ => false,
        }
    }

    /// Whether an extended-protocol segment is planned only once more of
    /// it has arrived: which statement a Bind or Describe names may decide
    /// its node (the unnamed statement lives on one node only). Its first
    /// message is waited for whole (it is forwarded whole anyway), the
    /// rest up to the Sync within HIGH_WATER; a Flush or a message pghalo
    /// cannot read ends the wait (the client may wait for answers).
    fn segment_still_arriving(&self, segment: &Segment) -> bool {
        !segment.complete
            && !segment.stopped
            && (segment.messages == 0 || self.cin.len() < HIGH_WATER)
    }

    /// Drops `n` bytes from the head of `cin`: the request waited for, if
    /// any, is no longer at its head.
    fn consume(&mut self, n: usize) {
        self.cin.advance(n);
        self.arriving_until = 0;
    }

    /// Takes the whole message of `total` bytes at the head of `cin`.
    fn take_message(&mut self, total: usize) -> Bytes {
        self.arriving_until = 0;
        self.cin.split_to(total).freeze()
    }

    /// Whether the segment waited for last time is still short of its
    /// next whole message (nothing of `cin` is consumed while it waits).
    fn waiting_known(&self) -> bool {
        self.cin.len() < self.arriving_until && self.cin.len() < HIGH_WATER
    }

    /// One readiness poll of everything the relay may do next.
    async fn poll_io(&mut self) -> Io {
        let read_client = self.cout.len() < HIGH_WATER
            && self.sout.len() < HIGH_WATER
            && !(self.blocked && self.cin.len() >= HIGH_WATER);
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
                self.consume(n);
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
                self.consume(total);
                continue;
            }
            // Everything below needs a server connection (the caller
            // attaches one and calls again), except preparing a statement
            // some server has already accepted.
            if self.server.is_none() && self.answer_known_prepare() {
                continue;
            }
            if self.planned.is_none() && self.request_starts(tag) {
                if let Some(why) = self.node_retired() {
                    if !self.standby_retired_while_idle() {
                        return Some(End::NodeRetired(why));
                    }
                    match self.needs_this_node(tag) {
                        Some(true) => return Some(End::NodeRetired(why)),
                        Some(false) => self.let_standby_go(),
                        None => return None,
                    }
                }
                match self.answer_show(tag, total) {
                    None => return None,
                    Some(true) => continue,
                    Some(false) => {}
                }
                match self.plan_request(tag, total) {
                    Plan::Wait => return None,
                    Plan::Node(node) => self.planned = Some(node),
                    Plan::Gone(why) => return Some(End::NodeRetired(why)),
                }
            }
            if let Some(node) = self.planned {
                if self.server.is_none() || self.key.node != node {
                    if self.server.is_none() || (self.in_sync() && self.tx_status == b'I') {
                        self.want_node = Some(node);
                    } else if self.in_sync() {
                        // A transaction was opened here in the meantime (a
                        // BEGIN READ ONLY pipelined ahead of this request):
                        // the request belongs to it. Planned again, it
                        // stays.
                        self.planned = None;
                        self.blocked = false;
                        continue;
                    } else {
                        // Replies to earlier requests are still coming
                        // from the current node.
                        self.blocked = true;
                    }
                    return None;
                }
                self.planned = None;
                self.blocked = false;
            }
            self.server.as_ref()?;
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
            let message = self.take_message(total);
            if let Err(end) = self.client_message(tag, message) {
                return Some(end);
            }
        }
    }

    /// pgpool's SHOW commands (SHOW POOL_NODES...), answered here, over
    /// the simple protocol and over an extended-protocol segment made of
    /// nothing else. Some(true): answered and consumed; Some(false): not
    /// one; None: the Query has not fully arrived.
    fn answer_show(&mut self, tag: u8, total: usize) -> Option<bool> {
        match tag {
            fe::QUERY => {
                let body = self.cin.get(5..total)?;
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                let Some(command) = show::parse_show(sql) else {
                    return Some(false);
                };
                let mut reply = BytesMut::new();
                self.write_show(command, &mut reply, true);
                be::write_ready_for_query(&mut reply, self.client_tx_status());
                self.consume(total);
                self.queue.push_back(Expect::Synthetic(reply.freeze()));
                self.emit_synthetic();
                Some(true)
            }
            fe::PARSE | fe::BIND => Some(self.answer_show_segment()),
            _ => Some(false),
        }
    }

    fn client_tx_status(&self) -> TransactionStatus {
        TransactionStatus::from_byte(self.tx_status).unwrap_or(TransactionStatus::Idle)
    }

    /// RowDescription (if `describe`), DataRows and CommandComplete of a
    /// SHOW, or an error in their place.
    fn write_show(&mut self, command: show::ShowCommand, out: &mut BytesMut, describe: bool) {
        let result = self.render_show(command);
        let start = out.len();
        let written = if describe {
            result.write(out)
        } else {
            result
                .write_data_rows(out)
                .and_then(|()| result.write_command_complete(out))
        };
        if let Err(e) = written {
            out.truncate(start);
            ClientError {
                severity: be::Severity::Error,
                code: SqlState::INTERNAL_ERROR,
                message: format!("cannot send SHOW {}: {e}", command.name()),
                detail: None,
            }
            .write(out);
        }
    }

    fn render_show(&mut self, command: show::ShowCommand) -> show::ShowResult {
        let routing = self.proxy.routing();
        if self.balancing
            && let Some(snapshot) = self.proxy.topology()
        {
            // pgpool picks a session's load-balance node when it starts:
            // SHOW POOL_NODES shows it even before the first read.
            self.route.ensure_read_node(&snapshot, &routing);
        }
        let snapshot = self.proxy.topology().unwrap_or_else(|| {
            Arc::new(crate::cluster::ClusterSnapshot {
                epoch: crate::cluster::Epoch::ZERO,
                generation: 0,
                primary: None,
                nodes: Vec::new(),
            })
        });
        let counts: Vec<show::NodeCounts> =
            self.proxy.counters().iter().map(|c| c.snapshot()).collect();
        let pools: Vec<show::PoolStat> = self
            .proxy
            .pools
            .stats()
            .into_iter()
            .map(|(key, idle, in_use, waiting, max)| show::PoolStat {
                node: key.node,
                database: key.database,
                user: key.user,
                idle,
                in_use,
                waiting,
                max,
            })
            .collect();
        show::render(
            command,
            &show::ShowContext {
                snapshot: &snapshot,
                counts: &counts,
                load_balance_node: self.route.read_node().map(|id| id.index()),
                pools: &pools,
                sessions: self.proxy.sessions(),
                lag_limits: routing.constraints.limits,
            },
        )
    }

    /// An extended-protocol segment that only prepares, describes and runs
    /// pgpool SHOW commands, up to its Sync: answered whole. Mixed with
    /// other statements, a SHOW goes to the server, which rejects it.
    fn answer_show_segment(&mut self) -> bool {
        // First pass: is it one, whole?
        let mut statements: Vec<(Vec<u8>, show::ShowCommand)> = Vec::new();
        let mut portals: Vec<(Vec<u8>, show::ShowCommand)> = Vec::new();
        let known = |list: &[(Vec<u8>, show::ShowCommand)], name: &[u8]| {
            list.iter()
                .rev()
                .find(|(n, _)| n[..] == name[..])
                .map(|(_, c)| *c)
        };
        let mut replies = BytesMut::new();
        let mut at = 0;
        loop {
            let Some((tag, body, total)) = whole_message(&self.cin, at) else {
                return false;
            };
            let statement = |name: &[u8], list: &[(Vec<u8>, show::ShowCommand)]| {
                known(list, name).or_else(|| self.show_statements.get(name).copied())
            };
            match tag {
                fe::PARSE => {
                    let Ok(parse) = fe::Parse::parse(body) else {
                        return false;
                    };
                    let Some(command) = show::parse_show(parse.query.as_bytes()) else {
                        return false;
                    };
                    statements.push((parse.name.as_bytes().to_vec(), command));
                    be::write_parse_complete(&mut replies);
                }
                fe::BIND => {
                    let Ok(bind) = Bind::parse(body) else {
                        return false;
                    };
                    let Some(command) = statement(bind.statement.as_bytes(), &statements) else {
                        return false;
                    };
                    portals.push((bind.portal.as_bytes().to_vec(), command));
                    be::write_bind_complete(&mut replies);
                }
                fe::DESCRIBE => {
                    let Ok(target) = fe::TargetName::parse_describe(body) else {
                        return false;
                    };
                    let name = target.name.as_bytes();
                    let command = if target.target == fe::Target::Statement {
                        statement(name, &statements)
                    } else {
                        known(&portals, name)
                    };
                    let Some(command) = command else {
                        return false;
                    };
                    if target.target == fe::Target::Statement {
                        // ParameterDescription: no parameters.
                        replies.extend_from_slice(b"t\0\0\0\x06\0\0");
                    }
                    if self
                        .render_show(command)
                        .write_row_description(&mut replies)
                        .is_err()
                    {
                        return false;
                    }
                }
                fe::EXECUTE => {
                    let Ok(execute) = fe::Execute::parse(body) else {
                        return false;
                    };
                    let Some(command) = known(&portals, execute.portal.as_bytes()) else {
                        return false;
                    };
                    self.write_show(command, &mut replies, false);
                }
                fe::CLOSE => {
                    let Ok(target) = fe::TargetName::parse_close(body) else {
                        return false;
                    };
                    let name = target.name.as_bytes();
                    let shown = if target.target == fe::Target::Statement {
                        statement(name, &statements).is_some()
                    } else {
                        known(&portals, name).is_some()
                    };
                    if !shown {
                        return false;
                    }
                    be::write_close_complete(&mut replies);
                }
                fe::FLUSH => {}
                fe::SYNC => {
                    be::write_ready_for_query(&mut replies, self.client_tx_status());
                    at += total;
                    break;
                }
                _ => return false,
            }
            at += total;
        }
        // Second pass: learn the names, consume, answer.
        for (name, command) in statements {
            if self.show_statements.len() < 1000 {
                self.show_statements.insert(name, command);
            }
        }
        self.consume(at);
        self.queue.push_back(Expect::Synthetic(replies.freeze()));
        self.emit_synthetic();
        true
    }

    /// A read-only server connection (not the primary's) that died while
    /// nothing was outstanding on it is let go: the session's next request
    /// goes to a node that is up, with its settings replayed there. Only a
    /// session whose state lives on the primary alone could not go on, and
    /// such a session never reads from a standby.
    fn standby_lost_while_idle(&mut self) -> bool {
        if !self.standby_may_go() {
            return false;
        }
        self.let_standby_go();
        true
    }

    /// Whether the server connection is a standby's that the session does
    /// not need: nothing outstanding, no transaction, and nothing arriving
    /// that must run there (a request still arriving, not yet sent, may
    /// run elsewhere: see `needs_this_node`).
    fn standby_may_go(&self) -> bool {
        self.standby_between_requests()
            && self
                .cin
                .first()
                .is_none_or(|&tag| self.needs_this_node(tag) != Some(true))
    }

    /// Whether the server connection is a standby's that owes the session
    /// nothing and holds no transaction: the next request, not sent yet,
    /// may run elsewhere.
    fn standby_between_requests(&self) -> bool {
        self.balancing
            && self.key.node != self.proxy.primary_node()
            && self.in_sync()
            && self.tx_status == b'I'
    }

    /// Whether the session's server connection is on a standby that was
    /// detached while the session has nothing outstanding there: its
    /// settings are replayed elsewhere, so it moves on instead of ending.
    /// A node that lost or claims a primary's role is another matter: the
    /// session's state may live there alone.
    fn standby_retired_while_idle(&self) -> bool {
        self.proxy.topology().and_then(|s| {
            s.node(crate::cluster::NodeId(self.key.node))
                .map(|n| n.role)
        }) == Some(crate::cluster::Role::Standby)
            && self.standby_between_requests()
    }

    /// Whether the request at the head of `cin` must run on the session's
    /// node: it binds or describes the unnamed statement an earlier
    /// segment prepared there. None while that is not known because the
    /// rest has not arrived: the caller waits for it. A client that sent
    /// Flush waits for answers instead, and a request larger than the
    /// buffer would not fit: then it must stay, as if forced.
    fn needs_this_node(&self, tag: u8) -> Option<bool> {
        if matches!(tag, fe::QUERY | fe::FUNCTION_CALL) {
            return Some(false);
        }
        let segment = self.scan_segment(&self.proxy.routing());
        if segment.forced == Some(self.key.node) {
            Some(true)
        } else if segment.complete {
            Some(false)
        } else if segment.stopped || self.cin.len() >= HIGH_WATER {
            Some(true)
        } else {
            None
        }
    }

    /// Session mode with load balancing: whether statement text `sql` holds
    /// session state pghalo cannot replay on other nodes (SET ROLE, LISTEN,
    /// standard_conforming_strings off...). Such a statement pins the
    /// session to the primary, and must itself run there, where the rest
    /// of the session will. (Transaction mode refuses it instead.)
    fn pins_session(&self, sql: &[u8]) -> bool {
        !self.transaction_mode()
            && effects(&String::from_utf8_lossy(sql))
                .iter()
                .any(|e| matches!(e, Effect::Refuse(_)))
    }

    /// Whether `node` may serve the session's next request: up and
    /// attached, as far as the published topology says (without one,
    /// every node may).
    fn node_usable(&self, node: usize) -> bool {
        self.proxy.topology().is_none_or(|s| {
            s.node(crate::cluster::NodeId(node))
                .is_some_and(|n| n.is_routable())
        })
    }

    /// With load balancing, whether the unnamed statement the client
    /// prepared is not on the current server connection (lost with a
    /// connection, or on another node's): a Bind or Describe of it here
    /// would find another statement, or none. The last guard behind
    /// `plan_request`'s forcing.
    fn unnamed_elsewhere(&self) -> bool {
        self.balancing
            && self
                .unnamed
                .as_ref()
                .is_some_and(|(node, _)| *node != self.key.node)
    }

    /// Whether a decision detached `node` (a failed check alone does not).
    fn node_detached(&self, node: usize) -> bool {
        self.proxy.topology().is_some_and(|s| {
            s.node(crate::cluster::NodeId(node))
                .is_some_and(|n| n.detached)
        })
    }

    /// The unnamed statement was on `node`'s connection, which is gone.
    fn unnamed_lost_on(&mut self, node: usize) {
        if let Some((on, known)) = &mut self.unnamed
            && *on == node
        {
            *on = UNNAMED_LOST;
            *known = None;
        }
    }

    fn let_standby_go(&mut self) {
        tracing::debug!(
            client = self.cancel.pid,
            node = self.key.node,
            "standby connection let go while idle"
        );
        self.cancel.set_target(None);
        // Dropped: closed, never pooled.
        self.server = None;
        // The unnamed statement went with it: a Bind of it cannot run
        // anywhere now (see `plan_request`).
        self.unnamed_lost_on(self.key.node);
        // A request that has not fully arrived attaches before it is
        // planned, where the session is: that is now the primary, never
        // the standby just let go.
        self.retarget(self.proxy.primary_node());
    }

    /// The server now reads the session's text in a way pghalo does not
    /// (see `tx_policy::unreadable_setting`). Tracking it is over: with
    /// load balancing the session stays on the primary from now on; in
    /// transaction mode it ends once the server has answered, its server
    /// connection closed, before a SET pghalo could not see reaches
    /// another client.
    fn text_unreadable(&mut self, why: String) {
        if self.transaction_mode() {
            tracing::warn!(client = self.cancel.pid, "{why}: the session ends");
            self.unreadable.get_or_insert(why);
        } else if self.balancing {
            self.route.note_effects(&[Effect::Refuse(why)]);
        }
    }

    /// Why the node of the session's server connection must not serve it
    /// any more, if it must not: another node was taken as primary in its
    /// place, it claims a primary's role it does not have, or a decision
    /// detached it. A node merely failing a check is not reason enough.
    fn node_retired(&self) -> Option<String> {
        self.server.as_ref()?;
        let snapshot = self.proxy.topology()?;
        let node = snapshot.node(crate::cluster::NodeId(self.key.node))?;
        let retired = node.detached
            || matches!(node.role, crate::cluster::Role::FalsePrimary(_))
            || (node.role == crate::cluster::Role::Unknown
                && node.role_epoch > crate::cluster::Epoch::ZERO);
        retired.then(|| {
            if node.detached {
                format!(
                    "terminating connection because node {} was detached",
                    node.name
                )
            } else {
                format!(
                    "terminating connection because node {} is no longer the primary",
                    node.name
                )
            }
        })
    }

    /// Whether a message starts a request the relay may route anew.
    fn request_starts(&self, tag: u8) -> bool {
        match tag {
            fe::QUERY | fe::FUNCTION_CALL => !self.unsynced,
            fe::PARSE
            | fe::BIND
            | fe::DESCRIBE
            | fe::CLOSE
            | fe::EXECUTE
            | fe::FLUSH
            | fe::SYNC => !self.unsynced && !self.server_discarding,
            _ => false,
        }
    }

    /// Decides where the request at the head of `cin` runs, and learns
    /// what it does to the session.
    fn plan_request(&mut self, tag: u8, total: usize) -> Plan {
        if !self.balancing {
            return Plan::Node(self.key.node);
        }
        let routing = self.proxy.routing();
        let in_transaction = self.tx_status != b'I';
        // What decides the node, and what runs.
        let mut need = Need::Read;
        let mut runs: Vec<Arc<Classification>> = Vec::new();
        let mut forced = None;
        match tag {
            fe::QUERY => {
                let Some(body) = self.cin.get(5..total) else {
                    return Plan::Wait;
                };
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                let class = routing.classifier.classify(sql);
                need = self.route.need(sql, &class, &routing);
                if !self.transaction_mode() {
                    // Session state pghalo cannot replay on other nodes
                    // pins the session to the primary, this statement too.
                    let list = effects(&String::from_utf8_lossy(sql));
                    if list.iter().any(|e| matches!(e, Effect::Refuse(_))) {
                        need = Need::Primary;
                    }
                    self.planned_effects = Some(list);
                }
                runs.push(class);
            }
            fe::FUNCTION_CALL => need = Need::Primary,
            _ => {
                if !in_transaction && self.waiting_known() {
                    return Plan::Wait;
                }
                let segment = self.scan_segment(&routing);
                if !in_transaction && self.segment_still_arriving(&segment) {
                    self.arriving_until = segment.needs;
                    return Plan::Wait;
                }
                self.arriving_until = 0;
                if !segment.complete || segment.primary {
                    need = Need::Primary;
                }
                forced = segment.forced;
                runs = segment.runs;
            }
        }
        let node = if in_transaction {
            self.key.node
        } else if let Some(node) = forced {
            if node == UNNAMED_LOST || self.node_detached(node) {
                // Anywhere else it would bind another statement, or none.
                return Plan::Gone(UNNAMED_GONE.to_string());
            }
            node
        } else if runs.is_empty()
            && need == Need::Read
            && (self.node_usable(self.key.node) || self.key.node == self.proxy.primary_node())
        {
            // Nothing runs (a lone Sync, a Describe): wherever the session
            // is, unless that is a standby found down: its backend may not
            // have noticed yet, and would answer with its dying words. (On
            // the primary the session's state may live alone: it stays.)
            self.key.node
        } else {
            let snapshot = self.proxy.topology();
            snapshot
                .and_then(|s| self.route.node(need, &s, &routing))
                .map_or_else(|| self.proxy.primary_node(), |id| id.index())
        };
        let opens = runs
            .iter()
            .any(|c| matches!(c.transaction, Some(crate::router::TxControl::Begin(_))));
        for class in &runs {
            self.proxy.count(node, class.kind);
            self.ddl_ran |= class.kind == crate::router::StatementKind::Ddl;
            self.route.note(class, in_transaction || opens, &routing);
        }
        Plan::Node(node)
    }

    /// Reads the extended-protocol segment at the head of `cin`, up to its
    /// Sync, without consuming it.
    fn scan_segment(&self, routing: &super::Routing) -> Segment {
        let mut segment = Segment::default();
        // Statements parsed in this segment: name, text, classification.
        let mut parsed: Vec<(&[u8], &[u8], Arc<Classification>)> = Vec::new();
        let mut at = 0;
        while let Some((tag, body, total)) = whole_message(&self.cin, at) {
            segment.messages += 1;
            // What a Bind or a Describe of a statement refers to: its text
            // and classification, None when nobody tracked it.
            let statement = |name: &[u8], segment: &mut Segment| {
                if let Some((_, sql, class)) = parsed.iter().rev().find(|(n, _, _)| *n == name) {
                    return Some((Bytes::copy_from_slice(sql), class.clone()));
                }
                if name.is_empty() {
                    // Prepared by an earlier segment: it exists only where
                    // that ran.
                    let (node, known) = self.unnamed.as_ref()?;
                    segment.forced = Some(*node);
                    return known.clone();
                }
                let s = self
                    .statements
                    .get(String::from_utf8_lossy(name).as_ref())?;
                let sql = s.rest.slice(..query_of(&s.rest).len());
                s.class.clone().map(|class| (sql, class))
            };
            match tag {
                fe::PARSE => {
                    let Ok(parse) = fe::Parse::parse(body) else {
                        segment.stopped = true;
                        return segment;
                    };
                    let sql = parse.query.as_bytes();
                    let class = routing.classifier.classify(sql);
                    if self.route.need(sql, &class, routing) == Need::Primary
                        || self.pins_session(sql)
                    {
                        segment.primary = true;
                    }
                    parsed.push((parse.name.as_bytes(), sql, class));
                }
                fe::BIND | fe::DESCRIBE => {
                    let name = if tag == fe::BIND {
                        let Ok(bind) = Bind::parse(body) else {
                            segment.stopped = true;
                            return segment;
                        };
                        bind.statement.as_bytes()
                    } else {
                        match fe::TargetName::parse_describe(body) {
                            Ok(t) if t.target == fe::Target::Statement => t.name.as_bytes(),
                            // A portal lives in this transaction, where it
                            // was bound.
                            Ok(_) => {
                                at += total;
                                continue;
                            }
                            Err(_) => {
                                segment.stopped = true;
                                return segment;
                            }
                        }
                    };
                    match statement(name, &mut segment) {
                        Some((sql, class)) => {
                            if self.route.need(&sql, &class, routing) == Need::Primary {
                                segment.primary = true;
                            }
                            if tag == fe::BIND {
                                segment.runs.push(class);
                            }
                        }
                        // Not tracked: who knows what it does.
                        None => segment.primary = true,
                    }
                }
                fe::EXECUTE | fe::CLOSE => {}
                fe::SYNC => {
                    segment.complete = true;
                    return segment;
                }
                // Flush: the client waits for replies before sending the
                // rest, which may write: not known, so the primary.
                _ => {
                    segment.stopped = true;
                    return segment;
                }
            }
            at += total;
        }
        // The next message is not whole: when it will be, or, for a length
        // no message has, never (the relay refuses it when it gets there).
        match self.cin.get(at + 1..at + 5) {
            Some(len) => {
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                match usize::try_from(len).ok().filter(|len| *len >= 4) {
                    Some(len) => segment.needs = at + 1 + len,
                    None => segment.stopped = true,
                }
            }
            None => segment.needs = at + 5,
        }
        segment
    }

    fn client_message(&mut self, tag: u8, message: Bytes) -> Result<(), End> {
        // Planned as the head of `cin`, this is that message.
        let planned_effects = self.planned_effects.take();
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
                let list = match planned_effects {
                    Some(list) => list,
                    None if self.tracking() => effects(&sql.to_string_lossy()),
                    None => Vec::new(),
                };
                if let Some(refused) = self.refused_here(&list) {
                    self.refuse(refused, false);
                    return Ok(());
                }
                self.route.note_effects(&list);
                if !self.transaction_mode()
                    && list
                        .iter()
                        .any(|e| matches!(e, Effect::Discard | Effect::DeallocateAll))
                {
                    self.release_parked = true;
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
                if target.target == fe::Target::Statement
                    && target.name.as_bytes().is_empty()
                    && self.unnamed_elsewhere()
                {
                    return Err(End::NodeRetired(UNNAMED_GONE.to_string()));
                }
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
                if target.target == fe::Target::Portal {
                    let portal = target.name.as_bytes();
                    self.portal_effects
                        .retain(|(name, _)| name.as_slice() != portal);
                }
                let named_statement = self.tracking()
                    && target.target == fe::Target::Statement
                    && !target.name.as_bytes().is_empty();
                if named_statement && !self.transaction_mode() {
                    // Session mode keeps the client's names: closed on this
                    // node by the server, on the others before their next
                    // use.
                    let name = String::from_utf8_lossy(target.name.as_bytes()).into_owned();
                    self.statements.remove(&name);
                    self.forget_everywhere(&name);
                    self.sout.extend_from_slice(&message);
                    self.queue.push_back(Expect::Close);
                } else if named_statement {
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
                // A malformed one is the server's to judge: it runs nothing.
                let effects = fe::Execute::parse(&body)
                    .ok()
                    .and_then(|execute| {
                        let portal = execute.portal.as_bytes();
                        self.portal_effects
                            .iter()
                            .find(|(name, _)| name.as_slice() == portal)
                            .map(|(_, effects)| effects.clone())
                    })
                    .unwrap_or_default();
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::Execute { effects });
            }
            fe::SYNC if self.copy_in_extended => {
                // The server ignores it in copy-in mode: nothing answers it.
                self.sout.extend_from_slice(&message);
            }
            fe::SYNC => {
                self.server_discarding = false;
                self.unsynced = false;
                self.skip_until_sync = false;
                self.sout.extend_from_slice(&message);
                self.queue.push_back(Expect::Sync);
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                self.copy_in_extended = false;
                self.sout.extend_from_slice(&message);
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
        let class = self
            .balancing
            .then(|| self.proxy.routing().classifier.classify(query_of(&rest)));
        self.statements.insert(
            name,
            ClientStatement {
                server_name,
                rest,
                effects: list,
                class,
            },
        );
        self.consume(parse_len + 5);
        be::write_parse_complete(&mut self.cout);
        be::write_ready_for_query(&mut self.cout, TransactionStatus::Idle);
        true
    }

    fn client_parse(&mut self, message: Bytes, body: &Bytes) -> Result<(), End> {
        self.unsynced = true;
        let parse = fe::Parse::parse(body).map_err(|e| End::ClientProtocol(e.to_string()))?;
        let list = if self.tracking() {
            effects(&parse.query.to_string_lossy())
        } else {
            Vec::new()
        };
        if let Some(refused) = self.refused_here(&list) {
            self.refuse(refused, true);
            return Ok(());
        }
        self.route.note_effects(&list);
        let class = self.balancing.then(|| {
            self.proxy
                .routing()
                .classifier
                .classify(parse.query.as_bytes())
        });
        let name = parse.name.as_bytes();
        if name.is_empty() {
            let sql = Bytes::copy_from_slice(parse.query.as_bytes());
            self.unnamed = Some((self.key.node, class.clone().map(|c| (sql, c))));
        }
        if !self.tracking() || name.is_empty() {
            // A statement's effects count when a Bind runs it, not here:
            // its Execute may yet fail, or come in a later segment.
            self.unnamed_effects = list;
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
        let client_name = String::from_utf8_lossy(name).into_owned();
        let server_name = if self.transaction_mode() {
            server_statement_name(&rest)
        } else {
            client_name.clone()
        };
        self.statements.insert(
            client_name,
            ClientStatement {
                server_name: server_name.clone(),
                rest: rest.clone(),
                effects: list,
                class,
            },
        );
        let prepared = self
            .server
            .as_mut()
            .and_then(|p| p.get())
            .is_some_and(|c| c.prepared.contains(&server_name));
        // In session mode the name is the client's own: the server must
        // see the Parse (and refuse a duplicate, as it would directly).
        if prepared && self.transaction_mode() {
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
        if bind.statement.as_bytes().is_empty() && self.unnamed_elsewhere() {
            return Err(End::NodeRetired(UNNAMED_GONE.to_string()));
        }
        let effects = match self.statement_for(fe::Target::Statement, bind.statement.as_bytes()) {
            Some((server_name, rest, effects)) => {
                self.ensure_prepared(&server_name, &rest);
                bind.write_renamed(&mut self.sout, &server_name)
                    .map_err(|e| End::ClientProtocol(e.to_string()))?;
                effects
            }
            None => {
                self.sout.extend_from_slice(&message);
                if bind.statement.as_bytes().is_empty() {
                    self.unnamed_effects.clone()
                } else {
                    Vec::new()
                }
            }
        };
        // A Bind replaces a portal of the same name (the unnamed one; a
        // named one only after it was closed).
        let portal = bind.portal.as_bytes();
        self.portal_effects
            .retain(|(name, _)| name.as_slice() != portal);
        if !effects.is_empty() {
            self.portal_effects.push((portal.to_vec(), effects));
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
        if !self.tracking() || target != fe::Target::Statement || name.is_empty() {
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

    /// A session-mode statement the client closed: gone from this server
    /// connection, and to be deallocated on parked ones before they serve
    /// again.
    fn forget_everywhere(&mut self, name: &str) {
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.prepared.remove(name);
        }
        for (node, slot) in self.parked.iter_mut().enumerate() {
            if let Some(conn) = slot.as_mut().and_then(|p| p.get())
                && conn.prepared.remove(name)
            {
                self.stale.push((node, name.to_owned()));
            }
        }
    }

    fn mark_prepared(&mut self, server_name: &str) {
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.prepared.insert(server_name.to_string());
        }
    }

    /// Why a statement with effects `list` must not run here, as the
    /// error's message and detail: transaction pooling refuses session
    /// state that cannot follow the client; load balancing refuses it
    /// inside a transaction on a standby, since the session goes on on the
    /// primary (pinned there) once the transaction ends.
    fn refused_here(&self, list: &[Effect]) -> Option<(String, &'static str)> {
        let reason = refusal(list)?;
        if self.transaction_mode() {
            return Some((
                format!("{reason} is not supported in transaction pooling mode"),
                "the next transaction may run on another server connection, where this session state would not exist",
            ));
        }
        // As the topology says: during a failover no primary is known, and
        // the node the session is on may be the one about to be promoted.
        let on_standby = self.proxy.topology().is_some_and(|s| {
            s.node(crate::cluster::NodeId(self.key.node))
                .is_some_and(|n| n.role == crate::cluster::Role::Standby)
        });
        (self.balancing && self.tx_status != b'I' && on_standby).then(|| {
            (
                format!("{reason} inside a transaction on a standby is not supported with load balancing"),
                "after this transaction the session goes on on the primary, where this session state would not exist; run it outside a transaction",
            )
        })
    }

    /// Answers a statement pghalo will not run, in the place its reply
    /// would have had.
    fn refuse(&mut self, (message, detail): (String, &'static str), extended: bool) {
        let mut reply = BytesMut::new();
        ClientError {
            severity: be::Severity::Error,
            code: SqlState::FEATURE_NOT_SUPPORTED,
            message,
            detail: Some(detail.into()),
        }
        .write(&mut reply);
        // PostgreSQL fails a statement inside the server: the segment's
        // implicit transaction rolls back (an INSERT before it in the
        // pipeline is undone), an explicit block is aborted. A statement
        // that fails to parse there does the same.
        let in_server = self.server.is_some() && (extended || self.tx_status != b'I');
        if extended {
            // As PostgreSQL does after an error: ignore until Sync.
            self.skip_until_sync = true;
        } else if !in_server {
            let status =
                TransactionStatus::from_byte(self.tx_status).unwrap_or(TransactionStatus::Idle);
            be::write_ready_for_query(&mut reply, status);
        }
        self.queue.push_back(Expect::Synthetic(reply.freeze()));
        if in_server {
            let written = if extended {
                // Named: a Parse that fails stores nothing, and the
                // client's unnamed statement stays.
                fe::write_parse(&mut self.sout, "pghalo_refused", REFUSED_STAND_IN, &[])
            } else {
                fe::write_query(&mut self.sout, REFUSED_STAND_IN)
            };
            if written.is_ok() {
                self.queue.push_back(Expect::Refused { simple: !extended });
            }
        }
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

    /// Messages are handled where they lie in `input`, which is advanced
    /// once at the end: no per-message buffer split on the hot path.
    fn server_messages(&mut self, input: &mut BytesMut) -> Result<(), End> {
        let mut at = 0;
        let result = loop {
            if self.server_skip > 0 {
                let n = self.server_skip.min(input.len() - at);
                self.cout.extend_from_slice(&input[at..at + n]);
                at += n;
                self.server_skip -= n;
                if self.server_skip > 0 {
                    break Ok(());
                }
            }
            if self.cout.len() >= HIGH_WATER {
                break Ok(());
            }
            let Some(header) = input.get(at..at + 5) else {
                break Ok(());
            };
            let tag = header[0];
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len < 4 {
                break Err(End::ServerGone);
            }
            let total = 1 + len as usize;
            if !SERVER_WHOLE.contains(&tag) {
                self.server_event(tag, None);
                self.server_skip = total;
                continue;
            }
            let Some(message) = input.get(at..at + total) else {
                break Ok(());
            };
            self.server_event(tag, Some(message));
            at += total;
        };
        input.advance(at);
        result
    }

    /// Advances the reply queue for one server message and passes the
    /// message on (or not). `message` is whole for the kinds in
    /// SERVER_WHOLE; for the others only the tag is known and the bytes are
    /// streamed by the caller.
    fn server_event(&mut self, tag: u8, message: Option<&[u8]>) {
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
            be::COPY_IN_RESPONSE if matches!(self.queue.front(), Some(Expect::Execute { .. })) => {
                // The Sync sent with the Execute reached a server in
                // copy-in mode, which ignored it: the one after CopyDone
                // or CopyFail gets the ReadyForQuery.
                self.copy_in_extended = true;
                // Until that Sync, the segment is open again.
                self.unsynced = true;
                if matches!(self.queue.get(1), Some(Expect::Sync)) {
                    self.queue.remove(1);
                }
            }
            be::CLOSE_COMPLETE => self.pop_if(|e| matches!(e, Expect::Close)),
            be::ROW_DESCRIPTION | be::NO_DATA => self.pop_if(|e| matches!(e, Expect::Describe)),
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                // The tags only settle a query with session effects
                // (query_effects), all of its statements then: none to
                // keep for a plain query.
                if let (Some(Expect::Query { tags, effects, .. }), Some(message)) =
                    (self.queue.front_mut(), message)
                    && tag == be::COMMAND_COMPLETE
                    && tags.len() < effects.len()
                    && effects.iter().any(|e| !matches!(e, Effect::Plain))
                    && let Ok(cc) = be::CommandComplete::parse(&message[5..])
                {
                    tags.push(String::from_utf8_lossy(cc.command()).into_owned());
                }
                // Without tracking (session mode, no balancing) nothing
                // has effects: no tag to read.
                if tag == be::COMMAND_COMPLETE
                    && self.tracking()
                    && let Some(message) = message
                {
                    match self.queue.front_mut() {
                        Some(Expect::Execute { effects }) => {
                            let effects = std::mem::take(effects);
                            let command = be::CommandComplete::parse(&message[5..])
                                .ok()
                                .map(|cc| cc.command());
                            self.statement_done(effects, command);
                        }
                        // A Query with session effects settles its
                        // statements at its ReadyForQuery (query_effects).
                        Some(Expect::Query { effects, .. })
                            if effects.iter().all(|e| matches!(e, Effect::Plain)) =>
                        {
                            self.note_transaction_end(&message[5..]);
                        }
                        _ => {}
                    }
                }
                self.pop_if(|e| matches!(e, Expect::Execute { .. }));
            }
            be::ERROR_RESPONSE if matches!(self.queue.front(), Some(Expect::Refused { .. })) => {
                forward = false;
                if matches!(self.queue.front(), Some(Expect::Refused { simple: false })) {
                    self.server_error();
                }
            }
            be::ERROR_RESPONSE => {
                if let Some(message) = message {
                    let fields = be::ErrorFields::parse_error(&message[5..]).ok();
                    let severity = fields.as_ref().and_then(|f| f.severity_level());
                    self.server_fatal =
                        matches!(severity, Some(be::Severity::Fatal | be::Severity::Panic));
                    if self.server_fatal
                        && fields.and_then(|f| f.sqlstate()).is_some_and(|code| {
                            code == SqlState::ADMIN_SHUTDOWN || code == SqlState::CRASH_SHUTDOWN
                        })
                    {
                        self.proxy.backend_shut_down();
                    }
                    self.proxy.count_error(self.key.node, severity);
                    // A standby ending an idle connection (its postmaster
                    // died, an admin shutdown): not the client's business.
                    if self.server_fatal && self.queue.is_empty() && self.standby_may_go() {
                        self.server_fatal = false;
                        self.standby_gone = true;
                        return;
                    }
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
                    if let (Ok(name), Ok(value)) = (p.name.to_str(), p.value.to_str())
                        && let Some(why) = super::tx_policy::unreadable_setting(name, value)
                    {
                        self.text_unreadable(why);
                    }
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
        self.copy_in_extended = false;
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

    /// A Query without session effects ended: COMMIT keeps the session
    /// SETs made in the transaction, ROLLBACK (not ROLLBACK TO, which is an
    /// effect) drops them, as the server does.
    fn note_transaction_end(&mut self, body: &[u8]) {
        if self.pending_effects.is_empty() {
            return; // COMMIT and ROLLBACK would both leave nothing to settle
        }
        let Ok(cc) = be::CommandComplete::parse(body) else {
            return;
        };
        match cc.command() {
            b"COMMIT" => {
                for effect in std::mem::take(&mut self.pending_effects) {
                    self.settle(&effect);
                }
            }
            // ROLLBACK (AND CHAIN).
            b"ROLLBACK" => self.pending_effects.clear(),
            _ => {}
        }
    }

    /// A statement completed (an Execute's, or one of a Query's): its
    /// effects are settled in the order the server ran them. Those outside
    /// a block wait for the end of the segment or Query (an error before
    /// it rolls them back).
    fn statement_done(
        &mut self,
        effects: impl IntoIterator<Item = Effect>,
        command: Option<&[u8]>,
    ) {
        let mut in_block = self.segment_in_block.unwrap_or(self.tx_status != b'I');
        if matches!(command, Some(b"BEGIN" | b"START TRANSACTION")) {
            in_block = true;
        }
        let mut to_savepoint = false;
        for effect in effects {
            match effect {
                Effect::Plain => {}
                // Not transactional: gone even if the block rolls back.
                Effect::DeallocateAll => self.forget_statements(),
                Effect::RollbackToSavepoint => {
                    to_savepoint = true;
                    self.savepoint_rolled_back();
                }
                effect if in_block => self.pending_effects.push(effect),
                effect => self.segment_implicit.push(effect),
            }
        }
        match command {
            Some(b"COMMIT") => {
                for effect in std::mem::take(&mut self.pending_effects) {
                    self.settle(&effect);
                }
                in_block = false;
            }
            Some(b"ROLLBACK") if !to_savepoint => {
                self.pending_effects.clear();
                in_block = false;
            }
            _ => {}
        }
        self.segment_in_block = Some(in_block);
    }

    /// A session effect that stands: the client's settings follow it.
    fn settle(&mut self, effect: &Effect) {
        self.settings.apply(effect);
        self.settings_touched = true;
        if matches!(effect, Effect::Discard) {
            self.forget_statements();
        }
    }

    /// The server session dropped every prepared statement: the client's
    /// are gone, as with PostgreSQL, and pghalo's shared ones get prepared
    /// again on this connection when next used.
    fn forget_statements(&mut self) {
        self.statements.clear();
        if let Some(conn) = self.server.as_mut().and_then(|p| p.get()) {
            conn.prepared.clear();
        }
    }

    /// Went back to a savepoint: SETs made after it are undone, those
    /// before it stand, and pghalo does not know which is which.
    fn savepoint_rolled_back(&mut self) {
        if !self.pending_effects.is_empty() {
            self.settings_uncertain = true;
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
                    self.query_effects(&effects, &tags, failed);
                }
            }
            Some(Expect::Sync) => {
                let implicit = std::mem::take(&mut self.segment_implicit);
                changed = !implicit.is_empty();
                if !self.pipeline_failed {
                    if status == b'I' {
                        implicit.iter().for_each(|e| self.settle(e));
                    } else {
                        // A block the segment opened holds them now.
                        self.pending_effects.extend(implicit);
                    }
                }
            }
            _ => {}
        }
        changed |= std::mem::take(&mut self.settings_touched);
        self.segment_in_block = None;
        self.pipeline_failed = false;
        if status == b'I' && self.ddl_ran {
            // Committed (or rolled back): pg_proc may say something new.
            self.ddl_ran = false;
            self.proxy.catalog_changed();
        }
        if status == b'I' {
            // Portals live no longer than their transaction.
            self.portal_effects.clear();
        }
        if status == b'I' && before != b'I' {
            self.route.transaction_ended();
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
            if status == b'I' && std::mem::take(&mut self.settings_uncertain) {
                // Whoever gets this connection next, this client included,
                // starts from RESET ALL and a replay of its own settings.
                conn.applied_settings = SETTINGS_UNKNOWN;
            }
        }
    }

    /// Settles the session effects of a simple Query, statement by
    /// statement, the way the server settled them: outside an explicit
    /// block they stand unless the (implicit) transaction failed; inside one
    /// they wait for its COMMIT and vanish with its ROLLBACK.
    fn query_effects(&mut self, effects: &[Effect], tags: &[String], failed: bool) {
        // Only statements that completed have a tag.
        for (effect, tag) in effects.iter().zip(tags) {
            self.statement_done([effect.clone()], Some(tag.as_bytes()));
        }
        let implicit = std::mem::take(&mut self.segment_implicit);
        if !failed {
            implicit.iter().for_each(|e| self.settle(e));
        }
    }

    /// Leaves the server connections clean for the next client, or closed.
    async fn finish(&mut self, end: &End) {
        for parked in std::mem::take(&mut self.parked).into_iter().flatten() {
            parked.release(self.mode == PoolMode::Session).await;
        }
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
            End::NodeRetired(why) => {
                Some(ClientError::fatal(SqlState::ADMIN_SHUTDOWN, why.clone()))
            }
            End::CannotPool(why) => Some(ClientError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                why.clone(),
            )),
            End::ClientTerminated | End::ClientGone => None,
        };
        if let Some(error) = reply {
            error.write(&mut self.cout);
        }
        if !matches!(end, End::ClientGone) {
            self.flush_client().await;
        }
        let Some(mut pooled) = self.server.take() else {
            return;
        };
        let reusable = self.cancel.let_go().await
            && matches!(
                end,
                End::ClientTerminated | End::ClientGone | End::IdleTimeout
            )
            && self.queue.is_empty()
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

/// The message starting at `at` in `buf`, if it is all there: its type,
/// its body and its total length.
fn whole_message(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let header = buf.get(at..at + 5)?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let total = usize::try_from(len).ok().filter(|l| *l >= 4)? + 1;
    Some((header[0], buf.get(at + 5..at + total)?, total))
}

/// The Parse at the head of `buf`, if whole: (its total length, the
/// statement name, the body after the name).
fn leading_parse(buf: &[u8]) -> Option<(usize, String, Bytes)> {
    let (tag, body, total) = whole_message(buf, 0)?;
    if tag != fe::PARSE {
        return None;
    }
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
