//! Read/write routing for one session: what a request needs (the primary
//! or any node that may serve reads) and which node that is now.
//!
//! The relay asks at the start of each request it can still move (outside
//! a transaction, with nothing outstanding on the current server): a simple
//! Query, a FunctionCall, or an extended-protocol segment up to its Sync.
//! Inside a transaction everything follows the transaction's node.
//!
//! Decisions (DESIGN rule 2: when unsure, the primary):
//! - A request goes to the primary if any statement in it must
//!   (`router::Classification`), touches one of the session's temporary
//!   tables, matches primary_routing_query_pattern_list, or opens a
//!   transaction that is not READ ONLY. A read-write transaction runs on
//!   the primary as a whole, first read included: pgpool sends its reads
//!   to a standby until the first write, outside the transaction's
//!   snapshot; pghalo does not. A READ ONLY transaction is balanced as a
//!   whole.
//! - disable_load_balance_on_write: `always` keeps every read on the
//!   primary once the session has written; `trans_transaction` once it has
//!   written inside an explicit transaction. `transaction` and
//!   `dml_adaptive` restrict reads inside a transaction after its first
//!   write, which pghalo never balances anyway, and `off` has nothing to
//!   relax for the same reason.
//! - Session state that exists only where it was made and that pghalo does
//!   not replay (SET ROLE, LISTEN, session advisory locks, set_config...)
//!   pins the session to the primary; SET and RESET are replayed on every
//!   node the session uses.
//! - A SERIALIZABLE session default keeps reads on the primary (a hot
//!   standby refuses SERIALIZABLE).

use std::collections::HashSet;
use std::sync::Arc;

use crate::cluster::{ClusterSnapshot, Lsn, NodeId};
use crate::config::{Config, DisableLoadBalanceOnWrite, Pattern, RedirectPreference};
use crate::router::{
    Classification, Classifier, ClassifierConfig, FunctionRules, FunctionVolatility, Hint,
    Isolation, PgQueryClassifier, ReadConstraints, RouteSetting, StaticVolatility, TxControl,
    choose_read_node, read_node_now,
};

use super::tx_policy::Effect;

/// The routing configuration every session reads; replaced whole on
/// reload.
pub struct Routing {
    pub classifier: Arc<dyn Classifier>,
    /// load_balance_mode, more than one backend and the replication
    /// monitor on: without it nothing is classified and every request goes
    /// to the primary.
    pub load_balance: bool,
    pub statement_level: bool,
    pub on_write: DisableLoadBalanceOnWrite,
    pub read_your_writes: bool,
    pub constraints: ReadConstraints,
    pub primary_patterns: Vec<Pattern>,
    pub app_name_preferences: Vec<RedirectPreference>,
    pub database_preferences: Vec<RedirectPreference>,
    pub user_preferences: Vec<RedirectPreference>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("load_balance", &self.load_balance)
            .field("statement_level", &self.statement_level)
            .field("on_write", &self.on_write)
            .field("read_your_writes", &self.read_your_writes)
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// Everything to the primary, nothing classified.
    pub fn primary_only() -> Routing {
        Routing {
            classifier: Arc::new(PgQueryClassifier::new(
                ClassifierConfig::default(),
                Arc::new(StaticVolatility::with_builtins()),
            )),
            load_balance: false,
            statement_level: false,
            on_write: DisableLoadBalanceOnWrite::Transaction,
            read_your_writes: false,
            constraints: ReadConstraints::default(),
            primary_patterns: Vec::new(),
            app_name_preferences: Vec::new(),
            database_preferences: Vec::new(),
            user_preferences: Vec::new(),
        }
    }

    /// From a validated configuration, judging functions by `volatility`
    /// when both function lists are empty. The lists were checked by
    /// validation; should they still not compile, volatility decides.
    pub fn from_config(config: &Config, volatility: Arc<dyn FunctionVolatility>) -> Routing {
        let lb = &config.load_balance;
        let functions =
            FunctionRules::from_lists(&lb.read_only_function_list, &lb.write_function_list)
                .unwrap_or_default();
        let classifier = PgQueryClassifier::new(
            ClassifierConfig {
                functions,
                ..ClassifierConfig::default()
            },
            volatility,
        );
        let sr = &config.streaming_replication;
        Routing {
            classifier: Arc::new(classifier),
            // Without the monitor no node is known to be a standby: every
            // request would end on the primary, classified for nothing.
            load_balance: lb.load_balance_mode
                && config.backends.len() > 1
                && config.checks_nodes(),
            statement_level: lb.statement_level_load_balance,
            on_write: lb.disable_load_balance_on_write,
            read_your_writes: lb.read_your_writes,
            constraints: ReadConstraints {
                limits: crate::cluster::LagLimits::from_config(sr),
                prefer_lower_delay_standby: sr.prefer_lower_delay_standby,
                replayed_at_least: None,
            },
            primary_patterns: lb.primary_routing_query_pattern_list.clone(),
            app_name_preferences: lb.app_name_redirect_preference_list.clone(),
            database_preferences: lb.database_redirect_preference_list.clone(),
            user_preferences: lb.user_redirect_preference_list.clone(),
        }
    }

    /// pgpool's precedence: application name, then database, then user.
    fn preference(&self, who: &SessionIdentity) -> Option<RedirectPreference> {
        let find = |list: &[RedirectPreference], name: Option<&str>| {
            name.and_then(|name| list.iter().find(|p| p.pattern.is_match(name)).cloned())
        };
        find(&self.app_name_preferences, who.application_name.as_deref())
            .or_else(|| find(&self.database_preferences, Some(&who.database)))
            .or_else(|| find(&self.user_preferences, Some(&who.user)))
    }
}

/// Who the session is, for redirect preferences.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionIdentity {
    pub database: String,
    pub user: String,
    pub application_name: Option<String>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Primary,
    /// Any node that may serve reads now.
    Read,
}

/// One session's routing state.
#[derive(Debug, Default)]
pub(super) struct SessionRoute {
    identity: SessionIdentity,
    /// The session's read node (pgpool's load_balance_node), once chosen.
    read_node: Option<NodeId>,
    /// `SET pghalo.route`.
    hint: Option<Hint>,
    /// `SET LOCAL pghalo.route`, until the transaction ends.
    local_hint: Option<Hint>,
    temp_tables: HashSet<String>,
    /// Why the session stays on the primary for good, if it does.
    pinned: Option<String>,
    serializable: bool,
    wrote: bool,
    wrote_in_transaction: bool,
    /// Read-your-writes: the primary's WAL position after the session's
    /// last write.
    written: Option<Lsn>,
    /// A write ran whose WAL position is not known yet.
    write_position_pending: bool,
}

impl SessionRoute {
    pub(super) fn new(identity: SessionIdentity) -> SessionRoute {
        SessionRoute {
            identity,
            ..SessionRoute::default()
        }
    }

    /// What one statement of a request needs, outside a transaction.
    pub(super) fn need(&self, sql: &[u8], c: &Classification, routing: &Routing) -> Need {
        if !routing.load_balance
            || c.route_with(self.local_hint.or(self.hint)).is_primary()
            || self.pinned.is_some()
            || self.serializable
            || (routing.on_write == DisableLoadBalanceOnWrite::Always && self.wrote)
            || (routing.on_write == DisableLoadBalanceOnWrite::TransTransaction
                && self.wrote_in_transaction)
            || (routing.read_your_writes && self.write_position_pending)
        {
            return Need::Primary;
        }
        if let Some(TxControl::Begin(mode)) = c.transaction
            && (mode.read_only != Some(true) || mode.isolation == Some(Isolation::Serializable))
        {
            return Need::Primary;
        }
        if !self.temp_tables.is_empty() && c.touches(|name| self.temp_tables.contains(name)) {
            return Need::Primary;
        }
        if !routing.primary_patterns.is_empty() {
            let text = String::from_utf8_lossy(sql);
            let text = text.trim().trim_end_matches(';').trim();
            if routing.primary_patterns.iter().any(|p| p.is_match(text)) {
                return Need::Primary;
            }
        }
        Need::Read
    }

    /// Learns what a statement forwarded to a server does to the session.
    /// `in_transaction`: inside an explicit transaction block.
    pub(super) fn note(&mut self, c: &Classification, in_transaction: bool, routing: &Routing) {
        for name in &c.temp_created {
            self.temp_tables.insert(name.clone());
        }
        // A view over a temporary table is temporary too.
        if !c.created.is_empty()
            && !self.temp_tables.is_empty()
            && c.touches(|name| self.temp_tables.contains(name))
        {
            self.temp_tables.extend(c.created.iter().cloned());
        }
        match &c.route_setting {
            Some(RouteSetting::Set { hint, local: true }) => self.local_hint = Some(*hint),
            Some(RouteSetting::Set { hint, local: false }) => self.hint = Some(*hint),
            Some(RouteSetting::Reset) => {
                self.hint = None;
                self.local_hint = None;
            }
            Some(RouteSetting::Invalid(_)) | None => {}
        }
        if let Some(TxControl::SetSessionCharacteristics(mode)) = c.transaction
            && let Some(isolation) = mode.isolation
        {
            self.serializable = isolation == Isolation::Serializable;
        }
        if c.writes {
            self.wrote = true;
            if in_transaction {
                self.wrote_in_transaction = true;
            }
            if routing.read_your_writes {
                self.write_position_pending = true;
            }
        }
    }

    /// Session state pghalo cannot carry to another node keeps the session
    /// on the primary from now on.
    pub(super) fn note_effects(&mut self, effects: &[Effect]) {
        if self.pinned.is_none()
            && let Some(reason) = effects.iter().find_map(|e| match e {
                Effect::Refuse(reason) => Some(reason.clone()),
                _ => None,
            })
        {
            tracing::debug!(%reason, "session pinned to the primary");
            self.pinned = Some(reason);
        }
    }

    /// The transaction ended: SET LOCAL is gone.
    pub(super) fn transaction_ended(&mut self) {
        self.local_hint = None;
    }

    /// Whether the WAL position of a write should be read now.
    pub(super) fn wants_write_position(&self) -> bool {
        self.write_position_pending
    }

    /// The primary's WAL position after the session's writes. None: it
    /// could not be read; reads stay on the primary until a later write's
    /// position is known, which is safe. (Later positions are never
    /// smaller: they replace earlier ones.)
    pub(super) fn wrote_up_to(&mut self, lsn: Option<Lsn>) {
        self.written = Some(lsn.unwrap_or(Lsn(u64::MAX)));
        self.write_position_pending = false;
    }

    /// The node for a request needing `need`; None when the snapshot knows
    /// no node for it (the caller falls back to the configured primary).
    pub(super) fn node(
        &mut self,
        need: Need,
        snapshot: &ClusterSnapshot,
        routing: &Routing,
    ) -> Option<NodeId> {
        if need == Need::Primary || !routing.load_balance {
            return snapshot.primary;
        }
        let mut constraints = routing.constraints;
        if routing.read_your_writes {
            constraints.replayed_at_least = self.written;
        }
        let rechoose = routing.statement_level
            || self
                .read_node
                .and_then(|id| snapshot.node(id))
                .is_none_or(|n| !n.is_routable());
        if rechoose {
            // The session's node is drawn within the lag limits only: a
            // constraint of the moment (its own writes not replayed yet)
            // must not push it to the primary for the rest of the session.
            let drawing = if routing.statement_level {
                constraints
            } else {
                routing.constraints
            };
            let preference = routing.preference(&self.identity);
            self.read_node = choose_read_node(
                snapshot,
                &drawing,
                preference.as_ref(),
                (rand::random::<f64>(), rand::random::<f64>()),
            );
        }
        read_node_now(snapshot, &constraints, self.read_node)
    }

    /// Chooses the session's read node if it has none yet.
    pub(super) fn ensure_read_node(&mut self, snapshot: &ClusterSnapshot, routing: &Routing) {
        if self.read_node.is_none() && routing.load_balance {
            let preference = routing.preference(&self.identity);
            self.read_node = choose_read_node(
                snapshot,
                &routing.constraints,
                preference.as_ref(),
                (rand::random::<f64>(), rand::random::<f64>()),
            );
        }
    }

    /// The session's read node, for SHOW POOL_NODES' load_balance_node.
    pub(super) fn read_node(&self) -> Option<NodeId> {
        self.read_node
    }
}
