//! Statement classification: where a query string may run, and what the
//! session must learn from it.
//!
//! [`Classifier::classify`] takes the raw bytes of a Query message (or of a
//! Parse message's statement: prepared statements are classified once, at
//! Parse) and returns a shared [`Classification`]: the [`Route`] (the
//! primary, with a [`Reason`], or any node: a load-balanceable read) and the
//! facts the session tracks (transaction control, SET TRANSACTION / SESSION
//! CHARACTERISTICS, writes, temporary tables created, relations read,
//! `pghalo.route` settings, statement count).
//!
//! [`PgQueryClassifier`] judges with the real PostgreSQL grammar
//! (libpg_query through the `pg_query` crate) in three steps, cheapest
//! first:
//! 1. bytes the backend must reject (NUL, invalid UTF-8), empty strings and
//!    text the lexer cannot read go to the primary, which reports the error;
//! 2. a lexical pre-scan (`prescan`) counts statements, reads hints and
//!    builds the cache key (the text with its literals masked); a cached
//!    answer for that key is returned;
//! 3. on a miss, one plain SELECT (no locking clause, INTO, CTE or function
//!    call) is settled from the pre-scan alone; anything else takes the
//!    full parse and a complete walk of the tree (`walk`).
//!
//! Rules (pgpool's load-balance rules, and then some; DESIGN rule 2:
//! anything not certain goes to the primary):
//! - Load-balanceable: SELECT, VALUES, TABLE, SHOW, EXPLAIN without ANALYZE
//!   (nothing runs), EXPLAIN ANALYZE of a read, COPY ... TO STDOUT of a
//!   table or a read query, transaction control that works on a hot standby
//!   (BEGIN [READ ONLY], COMMIT, ROLLBACK, SAVEPOINT...) and plain SET /
//!   RESET. A read balances only with no row lock (FOR UPDATE / NO KEY
//!   UPDATE / SHARE / KEY SHARE, at any depth), no data-modifying CTE, no
//!   SELECT INTO and no function call that may write (`functions`).
//! - Primary: all DML and DDL; anything that fails on a hot standby
//!   (SERIALIZABLE, READ WRITE transactions, LOCK, LISTEN/NOTIFY, two-phase
//!   commit, VACUUM/ANALYZE/CLUSTER/REINDEX/REFRESH, CALL, DO, COPY FROM);
//!   COPY to or from a server file or program; statements whose later
//!   statements must find state on the same node: cursors (DECLARE, FETCH,
//!   MOVE, CLOSE: pgpool sends them to the primary too; a cursor over a
//!   read is marked `runs_on_standby`, so a read-only transaction held on a
//!   standby may keep it), SQL-level PREPARE / EXECUTE / DEALLOCATE,
//!   `SET TRANSACTION SNAPSHOT`; DISCARD; LOAD; multi-statement strings;
//!   statements longer than `max_parse_bytes` that the pre-scan cannot
//!   settle; anything the parser rejects (including trees nested past
//!   pg_query's protobuf limit, e.g. more than ~45 chained operators).
//! - Hints: a leading `/* pghalo: primary */` sends the statement to the
//!   primary; `/* pghalo: standby */` lets a read go to a standby although
//!   pghalo would not balance it, but only when what kept it on the primary
//!   is a function judged by volatility or by read_only_function_list:
//!   never a write, a built-in writer, a write_function_list function, a row
//!   lock or anything else that fails on a standby; `/* pghalo: any */`
//!   means pghalo's own rules (overriding a session-level setting).
//!   `SET [LOCAL] pghalo.route = 'primary' | standby | 'any'` (PRIMARY
//!   and ANY are reserved words: unquoted, they are a syntax error) and
//!   `RESET pghalo.route` are reported in [`Classification::route_setting`]; the
//!   session applies them to later statements with
//!   [`Classification::route_with`]. A comment hint beats the session
//!   setting.
//!
//! Known limits, all on the side of the primary or of a standby's own error:
//! - Writes hidden where the text does not show them are not seen: a view
//!   or a rule whose query calls a writing function, a user-defined operator
//!   or cast that writes. Mark such statements with `/* pghalo: primary */`
//!   or name the functions in write_function_list.
//! - Unlogged tables cannot be read on a standby; nothing in the text says
//!   a table is unlogged (pgpool asks the catalog).
//! - When the client encoding is one whose multi-byte characters hold
//!   ASCII bytes (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) or
//!   standard_conforming_strings is off, the server reads the text
//!   differently: the relay keeps such a session on the primary (the
//!   server's ParameterStatus tells it; `proxy::tx_policy::unreadable_setting`).
//! - A plain SELECT settled lexically is not syntax-checked: if malformed,
//!   a standby reports the same syntax error the primary would.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use pg_query::NodeEnum;
use pg_query::protobuf::{self, DefElem, RangeVar, TransactionStmtKind, VariableSetKind, a_const};

use super::cache::{CacheStats, ClassificationCache};
use super::functions::{self, Call, FunctionRules, FunctionVolatility};
use super::prescan::{Prescan, identifiers, prescan};
use super::walk::{self, Facts, Unique};

/// Classifies statements. Implemented over libpg_query by
/// [`PgQueryClassifier`]; tests may stand in another.
pub trait Classifier: Send + Sync {
    /// Classifies one query string: the statement bytes of a Query or Parse
    /// message, without the terminating NUL. Never fails and never panics:
    /// what cannot be classified goes to the primary.
    fn classify(&self, sql: &[u8]) -> Arc<Classification>;
}

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Only on the primary.
    Primary { reason: Reason },
    /// On any node: a load-balanceable read. `hinted` when only a standby
    /// hint made it so.
    Any { hinted: bool },
}

impl Route {
    pub fn is_primary(&self) -> bool {
        matches!(self, Route::Primary { .. })
    }
}

/// Why a statement goes to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The string holds no statement.
    Empty,
    /// A NUL byte in the text.
    NulByte,
    /// The text is not UTF-8.
    InvalidUtf8,
    /// The lexer or the parser rejects it (the backend reports the error).
    Unparsable,
    /// Longer than the classifier parses, and not a plain SELECT.
    TooLarge,
    /// More than one statement in the string.
    MultiStatement,
    /// A `pghalo: primary` hint (comment or session setting).
    Hint,
    /// INSERT, UPDATE, DELETE, MERGE.
    Write,
    /// DDL, GRANT and other catalog changes.
    Ddl,
    /// COPY ... FROM.
    CopyFrom,
    /// COPY to or from a server file or program.
    CopyFile,
    /// INSERT/UPDATE/DELETE/MERGE inside a query (WITH x AS (DELETE ...)).
    DataModifyingCte,
    /// SELECT ... INTO.
    SelectInto,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    RowLock,
    /// A function that writes: built-in writers (nextval, advisory locks,
    /// txid_current...) or write_function_list.
    WritingFunction,
    /// A function pg_proc marks volatile.
    VolatileFunction,
    /// A function the volatility lookup does not know.
    UnknownFunction,
    /// A function missing from read_only_function_list.
    NotReadOnlyFunction,
    /// A SERIALIZABLE transaction or default (fails on a hot standby).
    Serializable,
    /// A READ WRITE transaction (fails on a hot standby).
    ReadWrite,
    /// PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED.
    TwoPhase,
    /// SET TRANSACTION SNAPSHOT (the snapshot was exported on the primary).
    Snapshot,
    /// LOCK TABLE.
    Lock,
    /// CALL.
    Call,
    /// DO.
    Do,
    /// VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW,
    /// CHECKPOINT.
    Maintenance,
    /// LISTEN, UNLISTEN, NOTIFY.
    ListenNotify,
    /// DECLARE, FETCH, MOVE, CLOSE: a cursor lives where it was declared.
    Cursor,
    /// SQL-level PREPARE, EXECUTE, DEALLOCATE, EXPLAIN EXECUTE.
    PreparedStatement,
    /// DISCARD.
    Discard,
    /// Any other utility statement (LOAD, ALTER SYSTEM...).
    Utility,
}

impl Reason {
    /// A short stable name, for events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::NulByte => "nul_byte",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::Unparsable => "unparsable",
            Reason::TooLarge => "too_large",
            Reason::MultiStatement => "multi_statement",
            Reason::Hint => "hint",
            Reason::Write => "write",
            Reason::Ddl => "ddl",
            Reason::CopyFrom => "copy_from",
            Reason::CopyFile => "copy_file",
            Reason::DataModifyingCte => "data_modifying_cte",
            Reason::SelectInto => "select_into",
            Reason::RowLock => "row_lock",
            Reason::WritingFunction => "writing_function",
            Reason::VolatileFunction => "volatile_function",
            Reason::UnknownFunction => "unknown_function",
            Reason::NotReadOnlyFunction => "not_read_only_function",
            Reason::Serializable => "serializable",
            Reason::ReadWrite => "read_write",
            Reason::TwoPhase => "two_phase",
            Reason::Snapshot => "snapshot",
            Reason::Lock => "lock",
            Reason::Call => "call",
            Reason::Do => "do",
            Reason::Maintenance => "maintenance",
            Reason::ListenNotify => "listen_notify",
            Reason::Cursor => "cursor",
            Reason::PreparedStatement => "prepared_statement",
            Reason::Discard => "discard",
            Reason::Utility => "utility",
        }
    }

    /// Whether a standby hint may override this reason: only a function
    /// judged by volatility or by read_only_function_list.
    pub fn standby_hint_overrides(self) -> bool {
        matches!(
            self,
            Reason::VolatileFunction | Reason::UnknownFunction | Reason::NotReadOnlyFunction
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing hint: in a leading comment (`/* pghalo: standby */`) or set
/// for the session (`SET pghalo.route = standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    /// Always the primary.
    Primary,
    /// A standby may serve the read even where pghalo would not balance it
    /// (never a write).
    Standby,
    /// pghalo's own rules.
    Any,
}

impl Hint {
    /// `primary`, `standby` or `any`, in any case.
    pub fn parse(value: &str) -> Option<Hint> {
        let value = value.trim();
        [
            ("primary", Hint::Primary),
            ("standby", Hint::Standby),
            ("any", Hint::Any),
        ]
        .into_iter()
        .find(|(name, _)| value.eq_ignore_ascii_case(name))
        .map(|(_, hint)| hint)
    }
}

/// A change of `pghalo.route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSetting {
    /// `SET [SESSION|LOCAL] pghalo.route = ...`; `local` for SET LOCAL
    /// (until the transaction ends).
    Set { hint: Hint, local: bool },
    /// `RESET pghalo.route`, `SET pghalo.route TO DEFAULT`, `RESET ALL`,
    /// `DISCARD ALL`.
    Reset,
    /// A value other than primary, standby or any (PostgreSQL accepts it:
    /// the session may refuse it or ignore it).
    Invalid(String),
}

/// Transaction isolation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// Transaction characteristics named by a statement (`None`: not named).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxMode {
    pub isolation: Option<Isolation>,
    pub read_only: Option<bool>,
    pub deferrable: Option<bool>,
}

impl TxMode {
    /// PostgreSQL's defaults, which RESET restores (assuming the server
    /// configuration keeps them).
    pub const DEFAULTS: TxMode = TxMode {
        isolation: Some(Isolation::ReadCommitted),
        read_only: Some(false),
        deferrable: Some(false),
    };

    pub fn is_serializable(&self) -> bool {
        self.isolation == Some(Isolation::Serializable)
    }
}

/// What a statement does to transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    /// BEGIN / START TRANSACTION, with its characteristics.
    Begin(TxMode),
    /// COMMIT / END, `chain` for AND CHAIN.
    Commit {
        chain: bool,
    },
    /// ROLLBACK / ABORT.
    Rollback {
        chain: bool,
    },
    Savepoint,
    ReleaseSavepoint,
    RollbackToSavepoint,
    PrepareTransaction,
    CommitPrepared,
    RollbackPrepared,
    /// SET TRANSACTION ..., `SET transaction_isolation / transaction_read_only`.
    SetTransaction(TxMode),
    /// SET SESSION CHARACTERISTICS AS TRANSACTION ...,
    /// `SET default_transaction_*`, their RESET, RESET ALL, DISCARD ALL.
    SetSessionCharacteristics(TxMode),
}

/// The family of a statement, for statistics (pgpool's
/// SHOW POOL_BACKEND_STATS counts SELECT, INSERT, UPDATE, DELETE, DDL and
/// other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Ddl,
    Transaction,
    Other,
}

/// What the classifier found in one query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Where it may run, with the leading comment's hint applied.
    pub route: Route,
    /// The first statement's family.
    pub kind: StatementKind,
    /// Non-empty statements in the string (more than one: primary).
    pub statements: usize,
    /// Changes data, schema or other persistent state, takes row or table
    /// locks, or calls a function that may write (volatile, unknown): what
    /// pgpool's disable_load_balance_on_write counts as a write.
    pub writes: bool,
    /// Would succeed on a hot standby. True for every read pghalo balances;
    /// also for some statements kept on the primary for other reasons (a
    /// cursor over a read, SQL-level PREPARE, DISCARD), so that a
    /// transaction held on a standby may keep them.
    pub runs_on_standby: bool,
    /// Transaction control (the last one, in a multi-statement string).
    pub transaction: Option<TxControl>,
    /// A change of `pghalo.route` (the last one).
    pub route_setting: Option<RouteSetting>,
    /// The hint in the leading comments.
    pub hint: Option<Hint>,
    /// Temporary relations created (CREATE TEMP TABLE/VIEW/SEQUENCE, CREATE
    /// TEMP TABLE AS, SELECT INTO TEMP, or created in schema pg_temp): the
    /// session keeps later statements reading them on the primary.
    pub temp_created: Vec<String>,
    /// Every relation created (tables, views, materialized views,
    /// sequences). A view over a temporary table is itself temporary
    /// (PostgreSQL says so in a NOTICE): a session should treat a created
    /// name as temporary when `relations` touches its temporary set.
    pub created: Vec<String>,
    /// Relation names the statement refers to (unqualified, as the parser
    /// folds them; CTE names included). When `lexical`, a superset: every
    /// identifier in the text. Either way, a name of the session's
    /// temporary tables showing up here means the primary.
    pub relations: Vec<String>,
    /// The function that decided a primary route, for logs.
    pub function: Option<String>,
    /// Settled by the pre-scan, without a parse.
    pub lexical: bool,
    /// Whether a standby hint may make this statement balanceable.
    standby_hintable: bool,
}

impl Classification {
    /// A classification with no facts beyond its route.
    pub fn primary(reason: Reason) -> Self {
        Classification {
            route: Route::Primary { reason },
            kind: StatementKind::Other,
            statements: 0,
            writes: false,
            runs_on_standby: false,
            transaction: None,
            route_setting: None,
            hint: None,
            temp_created: Vec::new(),
            created: Vec::new(),
            relations: Vec::new(),
            function: None,
            lexical: false,
            standby_hintable: false,
        }
    }

    /// Text that could not be read: the primary, and assumed to write (it
    /// may be valid for the server: another client encoding, newer syntax).
    fn unknown(reason: Reason) -> Self {
        let mut c = Classification::primary(reason);
        c.writes = true;
        c
    }

    /// A plain read with no other facts: any node. For test doubles.
    pub fn read() -> Self {
        let mut c = Classification::primary(Reason::Empty);
        c.route = Route::Any { hinted: false };
        c.kind = StatementKind::Select;
        c.statements = 1;
        c.runs_on_standby = true;
        c
    }

    /// The route under a session-level `pghalo.route` setting. A hint in
    /// the statement's own comments wins over the session's.
    pub fn route_with(&self, session: Option<Hint>) -> Route {
        if self.hint.is_some() {
            return self.route;
        }
        apply_hint(self.route, session, self.standby_hintable)
    }

    /// Whether the statement may refer to a relation `is_listed` accepts
    /// (one of the session's temporary tables, say:
    /// `c.touches(|name| temp_tables.contains(name))`).
    pub fn touches(&self, is_listed: impl Fn(&str) -> bool) -> bool {
        self.relations.iter().any(|r| is_listed(r))
    }
}

fn apply_hint(route: Route, hint: Option<Hint>, hintable: bool) -> Route {
    match (hint, route) {
        (Some(Hint::Primary), _) => Route::Primary {
            reason: Reason::Hint,
        },
        (Some(Hint::Standby), Route::Primary { reason })
            if hintable && reason.standby_hint_overrides() =>
        {
            Route::Any { hinted: true }
        }
        _ => route,
    }
}

/// Settings of a [`PgQueryClassifier`].
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// pgpool's function lists, or volatility.
    pub functions: FunctionRules,
    /// Cached classifications (0: no cache).
    pub cache_entries: usize,
    /// Longer statements are not cached.
    pub cache_max_key_bytes: usize,
    /// Longer statements are not parsed (primary) unless the pre-scan
    /// settles them: a 1 MB parse costs a worker thread hundreds of
    /// milliseconds.
    pub max_parse_bytes: usize,
    /// Settle plain SELECTs lexically, without a parse.
    pub lexical_fast_path: bool,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            functions: FunctionRules::Volatility,
            cache_entries: 4096,
            cache_max_key_bytes: 4096,
            max_parse_bytes: 64 * 1024,
            lexical_fast_path: true,
        }
    }
}

/// The [`Classifier`] over libpg_query, with the pre-scan and the cache.
pub struct PgQueryClassifier {
    config: ClassifierConfig,
    volatility: Arc<dyn FunctionVolatility>,
    cache: ClassificationCache,
}

impl PgQueryClassifier {
    pub fn new(config: ClassifierConfig, volatility: Arc<dyn FunctionVolatility>) -> Self {
        let cache = ClassificationCache::new(config.cache_entries);
        PgQueryClassifier {
            config,
            volatility,
            cache,
        }
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Forgets every cached classification.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    fn classify_text(&self, text: &str) -> Arc<Classification> {
        let want_key = self.cache.enabled() && text.len() <= self.config.cache_max_key_bytes;
        let scan = match prescan(text, want_key) {
            Ok(scan) => scan,
            Err(_) => return Arc::new(Classification::unknown(Reason::Unparsable)),
        };
        if scan.statements == 0 {
            let mut c = Classification::primary(Reason::Empty);
            c.runs_on_standby = true;
            return Arc::new(c);
        }
        let generation = self.volatility.generation();
        if let Some(key) = scan.key.as_deref()
            && let Some(hit) = self.cache.get(key, generation)
        {
            return hit;
        }
        let c = if self.config.lexical_fast_path && scan.plain_select {
            let mut c = Classification::read();
            c.route = apply_hint(c.route, scan.hint, false);
            c.hint = scan.hint;
            c.relations = identifiers(text);
            c.lexical = true;
            c
        } else if text.len() > self.config.max_parse_bytes {
            let mut c = Classification::unknown(Reason::TooLarge);
            c.statements = scan.statements;
            c.hint = scan.hint;
            c
        } else {
            self.parse(text, &scan)
        };
        let c = Arc::new(c);
        if let Some(key) = scan.key {
            self.cache.insert(key, generation, c.clone());
        }
        c
    }

    fn parse(&self, text: &str, scan: &Prescan) -> Classification {
        // pg_query reports parse errors as errors, but its result
        // post-processing indexes lists the grammar guarantees non-empty:
        // keep a surprise from reaching the session task.
        let parsed = match catch_unwind(AssertUnwindSafe(|| pg_query::parse(text, 0))) {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(_)) | Err(_) => {
                let mut c = Classification::unknown(Reason::Unparsable);
                c.statements = scan.statements;
                c.hint = scan.hint;
                return c;
            }
        };
        let analyzer = Analyzer {
            rules: &self.config.functions,
            volatility: &*self.volatility,
        };
        let mut verdicts = Vec::with_capacity(parsed.protobuf.stmts.len());
        for raw in &parsed.protobuf.stmts {
            match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
                Some(node) => verdicts.push(analyzer.statement(node)),
                None => verdicts.push(Verdict::primary(Reason::Unparsable)),
            }
        }
        finish(verdicts, scan.hint)
    }
}

impl Classifier for PgQueryClassifier {
    fn classify(&self, sql: &[u8]) -> Arc<Classification> {
        if sql.contains(&0) {
            return Arc::new(Classification::unknown(Reason::NulByte));
        }
        match std::str::from_utf8(sql) {
            Ok(text) => self.classify_text(text),
            // Possibly a valid statement in a client encoding other than
            // UTF-8 (LATIN1...): it may write.
            Err(_) => Arc::new(Classification::unknown(Reason::InvalidUtf8)),
        }
    }
}

/// One statement's findings.
#[derive(Debug)]
struct Verdict {
    primary: Option<Reason>,
    kind: StatementKind,
    writes: bool,
    runs_on_standby: bool,
    transaction: Option<TxControl>,
    route_setting: Option<RouteSetting>,
    temp_created: Vec<String>,
    created: Vec<String>,
    relations: Vec<String>,
    function: Option<String>,
}

impl Verdict {
    fn read(kind: StatementKind) -> Self {
        Verdict {
            primary: None,
            kind,
            writes: false,
            runs_on_standby: true,
            transaction: None,
            route_setting: None,
            temp_created: Vec::new(),
            created: Vec::new(),
            relations: Vec::new(),
            function: None,
        }
    }

    /// Primary, writes, fails on a standby: the default for what is not
    /// known to be harmless.
    fn primary(reason: Reason) -> Self {
        Verdict {
            primary: Some(reason),
            writes: true,
            runs_on_standby: false,
            ..Verdict::read(StatementKind::Other)
        }
    }

    /// Primary for affinity (later statements need it there), although it
    /// would run on a standby and writes nothing.
    fn pinned(reason: Reason) -> Self {
        Verdict {
            primary: Some(reason),
            ..Verdict::read(StatementKind::Other)
        }
    }

    fn kind(mut self, kind: StatementKind) -> Self {
        self.kind = kind;
        self
    }
}

fn finish(verdicts: Vec<Verdict>, hint: Option<Hint>) -> Classification {
    let statements = verdicts.len();
    let mut c = Classification::primary(Reason::Empty);
    c.statements = statements;
    c.hint = hint;
    if statements == 0 {
        return c;
    }
    c.runs_on_standby = true;
    let mut base = None;
    let mut relations = Vec::new();
    for (i, v) in verdicts.into_iter().enumerate() {
        if i == 0 {
            c.kind = v.kind;
            base = Some(v.primary);
            c.standby_hintable =
                statements == 1 && v.primary.is_some_and(Reason::standby_hint_overrides);
        }
        c.writes |= v.writes;
        c.runs_on_standby &= v.runs_on_standby;
        if v.transaction.is_some() {
            c.transaction = v.transaction;
        }
        if v.route_setting.is_some() {
            c.route_setting = v.route_setting;
        }
        c.temp_created.extend(v.temp_created);
        c.created.extend(v.created);
        relations.extend(v.relations);
        if c.function.is_none() {
            c.function = v.function;
        }
    }
    c.relations = if statements == 1 {
        relations
    } else {
        relations.into_iter().collect::<Unique<_>>().into_vec()
    };
    let route = match (statements, base.flatten()) {
        (1, None) => Route::Any { hinted: false },
        (1, Some(reason)) => Route::Primary { reason },
        _ => Route::Primary {
            reason: Reason::MultiStatement,
        },
    };
    c.route = apply_hint(route, hint, c.standby_hintable);
    c
}

struct Analyzer<'a> {
    rules: &'a FunctionRules,
    volatility: &'a dyn FunctionVolatility,
}

impl Analyzer<'_> {
    fn statement(&self, node: &NodeEnum) -> Verdict {
        match node {
            NodeEnum::SelectStmt(s) => {
                let mut v = self.query(node, StatementKind::Select);
                if let Some(rel) = s.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
                    created(&mut v, rel);
                }
                v
            }
            NodeEnum::ExplainStmt(e) => {
                let Some(inner) = e.query.as_ref().and_then(|q| q.node.as_ref()) else {
                    return Verdict::primary(Reason::Unparsable);
                };
                if explain_analyzes(&e.options) {
                    return self.statement(inner).kind(StatementKind::Other);
                }
                if matches!(inner, NodeEnum::ExecuteStmt(_)) {
                    return Verdict::pinned(Reason::PreparedStatement);
                }
                // Nothing runs: planning alone works on a standby.
                let mut facts = Facts::default();
                walk::collect(inner, &mut facts);
                let mut v = Verdict::read(StatementKind::Other);
                v.relations = facts.relations.into_vec();
                v
            }
            NodeEnum::VariableShowStmt(_) => Verdict::read(StatementKind::Other),
            NodeEnum::CopyStmt(c) => {
                if c.is_from {
                    let mut v = Verdict::primary(Reason::CopyFrom);
                    v.relations
                        .extend(c.relation.iter().map(|r| r.relname.clone()));
                    return v;
                }
                let mut v = match c.query.as_ref().and_then(|q| q.node.as_ref()) {
                    Some(q) => self.statement(q),
                    None => {
                        let mut v = Verdict::read(StatementKind::Other);
                        v.relations
                            .extend(c.relation.iter().map(|r| r.relname.clone()));
                        v
                    }
                };
                v.kind = StatementKind::Other;
                if (c.is_program || !c.filename.is_empty())
                    && v.primary.is_none_or(Reason::standby_hint_overrides)
                {
                    // The server writes a file on whichever node runs it:
                    // the primary's, whatever a hint says.
                    v.primary = Some(Reason::CopyFile);
                }
                v
            }
            NodeEnum::DeclareCursorStmt(d) => {
                let mut v = match d.query.as_ref().and_then(|q| q.node.as_ref()) {
                    Some(q) => self.statement(q),
                    None => Verdict::primary(Reason::Unparsable),
                };
                v.kind = StatementKind::Other;
                if v.primary.is_none_or(Reason::standby_hint_overrides) {
                    v.primary = Some(Reason::Cursor);
                }
                v
            }
            NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) => {
                Verdict::pinned(Reason::Cursor)
            }
            NodeEnum::PrepareStmt(_) | NodeEnum::DeallocateStmt(_) => {
                Verdict::pinned(Reason::PreparedStatement)
            }
            NodeEnum::ExecuteStmt(_) => Verdict::primary(Reason::PreparedStatement),
            NodeEnum::TransactionStmt(t) => transaction(t),
            NodeEnum::VariableSetStmt(s) => variable_set(s),
            NodeEnum::ConstraintsSetStmt(_) => Verdict::read(StatementKind::Other),
            NodeEnum::DiscardStmt(d) => {
                let mut v = Verdict::pinned(Reason::Discard);
                if d.target == protobuf::DiscardMode::DiscardAll as i32 {
                    v.route_setting = Some(RouteSetting::Reset);
                    v.transaction = Some(TxControl::SetSessionCharacteristics(TxMode::DEFAULTS));
                }
                v
            }
            NodeEnum::ListenStmt(_) => Verdict {
                writes: false,
                ..Verdict::primary(Reason::ListenNotify)
            },
            NodeEnum::UnlistenStmt(_) => Verdict::pinned(Reason::ListenNotify),
            NodeEnum::NotifyStmt(_) => Verdict::primary(Reason::ListenNotify),
            NodeEnum::LockStmt(l) => {
                // Up to ROW EXCLUSIVE a standby grants it; above, it fails.
                let weak = l.mode <= pg_query::LockMode::RowExclusiveLock as i32;
                let mut v = Verdict::primary(Reason::Lock);
                v.runs_on_standby = weak;
                v.writes = !weak;
                v.relations = self.facts(node).relations.into_vec();
                v
            }
            NodeEnum::CallStmt(_) => Verdict::primary(Reason::Call),
            NodeEnum::DoStmt(_) => Verdict::primary(Reason::Do),
            NodeEnum::VacuumStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::ReindexStmt(_)
            | NodeEnum::RefreshMatViewStmt(_) => Verdict::primary(Reason::Maintenance),
            NodeEnum::CheckPointStmt(_) => Verdict {
                writes: false,
                ..Verdict::primary(Reason::Maintenance)
            },
            NodeEnum::LoadStmt(_) => Verdict::pinned(Reason::Utility),
            NodeEnum::InsertStmt(_) => self.write(node, StatementKind::Insert),
            NodeEnum::UpdateStmt(_) => self.write(node, StatementKind::Update),
            NodeEnum::DeleteStmt(_) => self.write(node, StatementKind::Delete),
            NodeEnum::MergeStmt(_) => self.write(node, StatementKind::Merge),
            NodeEnum::CreateStmt(s) => self.ddl_creating(node, s.relation.as_ref()),
            NodeEnum::CreateTableAsStmt(s) => {
                let rel = s.into.as_ref().and_then(|i| i.rel.as_ref());
                self.ddl_creating(node, rel)
            }
            NodeEnum::ViewStmt(s) => self.ddl_creating(node, s.view.as_ref()),
            NodeEnum::CreateSeqStmt(s) => self.ddl_creating(node, s.sequence.as_ref()),
            _ => {
                let facts = self.facts(node);
                let mut v = if is_ddl(facts.root) {
                    Verdict::primary(Reason::Ddl).kind(StatementKind::Ddl)
                } else {
                    Verdict::primary(Reason::Utility)
                };
                v.relations = facts.relations.into_vec();
                v
            }
        }
    }

    fn facts(&self, node: &NodeEnum) -> Facts {
        let mut facts = Facts::default();
        walk::collect(node, &mut facts);
        facts
    }

    /// A query that reads, unless something in it writes or locks.
    fn query(&self, node: &NodeEnum, kind: StatementKind) -> Verdict {
        let facts = self.facts(node);
        let mut v = Verdict::read(kind);
        v.relations = facts.relations.into_vec();
        let hard = if facts.modifies {
            Some(Reason::DataModifyingCte)
        } else if facts.into {
            Some(Reason::SelectInto)
        } else if facts.row_lock {
            Some(Reason::RowLock)
        } else {
            None
        };
        if let Some(reason) = hard {
            v.primary = Some(reason);
            v.writes = true;
            v.runs_on_standby = false;
            return v;
        }
        let mut uncertain = None;
        for (schema, name) in facts.functions.iter() {
            match functions::judge(self.rules, self.volatility, schema.as_deref(), name) {
                Call::Read => {}
                Call::Writes => {
                    v.primary = Some(Reason::WritingFunction);
                    v.function = Some(qualified(schema.as_deref(), name));
                    v.writes = true;
                    v.runs_on_standby = false;
                    return v;
                }
                Call::Uncertain(reason) => {
                    if uncertain.is_none() {
                        uncertain = Some((reason, qualified(schema.as_deref(), name)));
                    }
                }
            }
        }
        if let Some((reason, function)) = uncertain {
            // pgpool counts these as writes; a standby hint may still say
            // the statement only reads.
            v.primary = Some(reason);
            v.function = Some(function);
            v.writes = true;
            v.runs_on_standby = false;
        }
        v
    }

    fn write(&self, node: &NodeEnum, kind: StatementKind) -> Verdict {
        let mut v = Verdict::primary(Reason::Write).kind(kind);
        v.relations = self.facts(node).relations.into_vec();
        v
    }

    fn ddl_creating(&self, node: &NodeEnum, relation: Option<&RangeVar>) -> Verdict {
        let mut v = Verdict::primary(Reason::Ddl).kind(StatementKind::Ddl);
        v.relations = self.facts(node).relations.into_vec();
        if let Some(rel) = relation {
            created(&mut v, rel);
        }
        v
    }
}

fn created(v: &mut Verdict, rel: &RangeVar) {
    if rel.relname.is_empty() {
        return;
    }
    let temp = rel.relpersistence == "t"
        || rel.schemaname == "pg_temp"
        || rel.schemaname.starts_with("pg_temp_");
    if temp {
        v.temp_created.push(rel.relname.clone());
    }
    v.created.push(rel.relname.clone());
}

fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(s) => format!("{s}.{name}"),
        None => name.to_owned(),
    }
}

/// Node kinds that change the catalog, for statistics.
fn is_ddl(kind: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "Create",
        "Alter",
        "Drop",
        "Rename",
        "Comment",
        "Grant",
        "Truncate",
        "Reassign",
        "SecLabel",
        "ImportForeignSchema",
        "Define",
        "CompositeType",
        "Rule",
        "Index",
        "View",
    ];
    PREFIXES.iter().any(|p| kind.starts_with(p))
}

/// Whether EXPLAIN's options ask it to run the statement. Anything other
/// than a clear false counts as ANALYZE.
fn explain_analyzes(options: &[protobuf::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            !matches!(bool_arg(d), Some(false))
        }
        _ => false,
    })
}

/// A DefElem's boolean argument: absent means true.
fn bool_arg(d: &DefElem) -> Option<bool> {
    match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
        None => Some(true),
        Some(node) => node_bool(node),
    }
}

fn node_bool(node: &NodeEnum) -> Option<bool> {
    match node {
        NodeEnum::Integer(i) => Some(i.ival != 0),
        NodeEnum::Boolean(b) => Some(b.boolval),
        NodeEnum::String(s) => text_bool(&s.sval),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Ival(i) => Some(i.ival != 0),
            a_const::Val::Boolval(b) => Some(b.boolval),
            a_const::Val::Sval(s) => text_bool(&s.sval),
            _ => None,
        },
        _ => None,
    }
}

/// PostgreSQL's parse_bool: true/false, on/off, yes/no, 1/0, and unique
/// prefixes of them.
fn text_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(&t);
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

fn node_text(node: &NodeEnum) -> Option<&str> {
    match node {
        NodeEnum::String(s) => Some(&s.sval),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Sval(s) => Some(&s.sval),
            _ => None,
        },
        _ => None,
    }
}

fn isolation(text: &str) -> Option<Isolation> {
    match text.trim().to_ascii_lowercase().as_str() {
        "serializable" => Some(Isolation::Serializable),
        "repeatable read" => Some(Isolation::RepeatableRead),
        "read committed" => Some(Isolation::ReadCommitted),
        "read uncommitted" => Some(Isolation::ReadUncommitted),
        _ => None,
    }
}

/// Transaction characteristics from BEGIN / SET TRANSACTION options.
fn tx_mode(options: &[protobuf::Node]) -> TxMode {
    let mut mode = TxMode::default();
    for option in options {
        let Some(NodeEnum::DefElem(d)) = &option.node else {
            continue;
        };
        let arg = d.arg.as_ref().and_then(|a| a.node.as_ref());
        apply_setting(&mut mode, &d.defname, arg);
    }
    mode
}

/// Applies `transaction_isolation`, `transaction_read_only` or
/// `transaction_deferrable` (with or without `default_`); false for other
/// names.
fn apply_setting(mode: &mut TxMode, name: &str, value: Option<&NodeEnum>) -> bool {
    let name = name.strip_prefix("default_").unwrap_or(name);
    match name {
        "transaction_isolation" => {
            mode.isolation = value.and_then(node_text).and_then(isolation);
            true
        }
        "transaction_read_only" => {
            mode.read_only = value.and_then(node_bool);
            true
        }
        "transaction_deferrable" => {
            mode.deferrable = value.and_then(node_bool);
            true
        }
        _ => false,
    }
}

fn reset_setting(mode: &mut TxMode, name: &str) -> bool {
    match name.strip_prefix("default_").unwrap_or(name) {
        "transaction_isolation" => mode.isolation = TxMode::DEFAULTS.isolation,
        "transaction_read_only" => mode.read_only = TxMode::DEFAULTS.read_only,
        "transaction_deferrable" => mode.deferrable = TxMode::DEFAULTS.deferrable,
        _ => return false,
    }
    true
}

fn transaction(t: &protobuf::TransactionStmt) -> Verdict {
    use TransactionStmtKind as K;
    let mut v = Verdict::read(StatementKind::Transaction);
    let control = match TransactionStmtKind::try_from(t.kind) {
        Ok(K::TransStmtBegin | K::TransStmtStart) => {
            let mode = tx_mode(&t.options);
            if mode.is_serializable() {
                v.primary = Some(Reason::Serializable);
                v.runs_on_standby = false;
            } else if mode.read_only == Some(false) {
                v.primary = Some(Reason::ReadWrite);
                v.runs_on_standby = false;
            }
            TxControl::Begin(mode)
        }
        Ok(K::TransStmtCommit) => TxControl::Commit { chain: t.chain },
        Ok(K::TransStmtRollback) => TxControl::Rollback { chain: t.chain },
        Ok(K::TransStmtSavepoint) => TxControl::Savepoint,
        Ok(K::TransStmtRelease) => TxControl::ReleaseSavepoint,
        Ok(K::TransStmtRollbackTo) => TxControl::RollbackToSavepoint,
        Ok(K::TransStmtPrepare) => two_phase(&mut v, TxControl::PrepareTransaction),
        Ok(K::TransStmtCommitPrepared) => two_phase(&mut v, TxControl::CommitPrepared),
        Ok(K::TransStmtRollbackPrepared) => two_phase(&mut v, TxControl::RollbackPrepared),
        Ok(K::Undefined) | Err(_) => return Verdict::primary(Reason::Utility),
    };
    v.transaction = Some(control);
    v
}

fn two_phase(v: &mut Verdict, control: TxControl) -> TxControl {
    v.primary = Some(Reason::TwoPhase);
    v.writes = true;
    v.runs_on_standby = false;
    control
}

fn variable_set(s: &protobuf::VariableSetStmt) -> Verdict {
    use VariableSetKind as K;
    let mut v = Verdict::read(StatementKind::Other);
    let kind = VariableSetKind::try_from(s.kind);
    let name = s.name.as_str();
    let value = s.args.first().and_then(|a| a.node.as_ref());
    match kind {
        Ok(K::VarResetAll) => {
            v.route_setting = Some(RouteSetting::Reset);
            v.transaction = Some(TxControl::SetSessionCharacteristics(TxMode::DEFAULTS));
            return v;
        }
        Ok(K::VarSetMulti) => {
            let mode = tx_mode(&s.args);
            match name {
                "TRANSACTION" => {
                    v.transaction = Some(TxControl::SetTransaction(mode));
                    transaction_route(&mut v, mode, true);
                }
                "SESSION CHARACTERISTICS" => {
                    v.transaction = Some(TxControl::SetSessionCharacteristics(mode));
                    transaction_route(&mut v, mode, false);
                }
                "TRANSACTION SNAPSHOT" => v.primary = Some(Reason::Snapshot),
                _ => return Verdict::primary(Reason::Utility),
            }
            return v;
        }
        Ok(K::VarSetValue | K::VarSetDefault | K::VarReset | K::VarSetCurrent) => {}
        Ok(K::Undefined) | Err(_) => return Verdict::primary(Reason::Utility),
    }
    let resets = matches!(kind, Ok(K::VarSetDefault | K::VarReset));
    if name == "pghalo.route" {
        v.route_setting = Some(if resets {
            RouteSetting::Reset
        } else {
            match value.and_then(node_text) {
                Some(text) => match Hint::parse(text) {
                    Some(hint) => RouteSetting::Set {
                        hint,
                        local: s.is_local,
                    },
                    None => RouteSetting::Invalid(text.to_owned()),
                },
                None => RouteSetting::Invalid(String::new()),
            }
        });
        return v;
    }
    let mut mode = TxMode::default();
    let known = if resets {
        reset_setting(&mut mode, name)
    } else if matches!(kind, Ok(K::VarSetCurrent)) {
        false
    } else {
        apply_setting(&mut mode, name, value)
    };
    if known {
        let session = name.starts_with("default_");
        v.transaction = Some(if session {
            TxControl::SetSessionCharacteristics(mode)
        } else {
            TxControl::SetTransaction(mode)
        });
        transaction_route(&mut v, mode, !session);
    }
    v
}

/// SERIALIZABLE fails on a standby (now, or at the next transaction for a
/// session default); READ WRITE fails there for the current transaction
/// (pgpool also keeps the session-level READ WRITE on the primary).
fn transaction_route(v: &mut Verdict, mode: TxMode, current: bool) {
    if mode.is_serializable() {
        v.primary = Some(Reason::Serializable);
        v.runs_on_standby = !current;
    } else if mode.read_only == Some(false) {
        v.primary = Some(Reason::ReadWrite);
        v.runs_on_standby = !current;
    }
}

#[cfg(test)]
mod tests;
