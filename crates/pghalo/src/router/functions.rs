//! Which function calls keep a read off the standbys.
//!
//! Three layers, first match wins:
//! 1. Built-in functions that fail on a hot standby or have effects that
//!    must happen on the primary (`nextval`, advisory locks, `txid_current`,
//!    `pg_notify`, `set_config`, large-object writes...): always primary,
//!    whatever pg_proc or the configured lists say (`txid_current` is marked
//!    stable; DESIGN "Facts that bite").
//! 2. pgpool's lists, mutually exclusive as in pgpool: with
//!    `write_function_list` set, a listed function writes and every other
//!    one is read-only; with `read_only_function_list` set, a listed
//!    function is read-only and every other one writes. Entries are regular
//!    expressions anchored at both ends (pgpool adds `^` and `$`).
//! 3. With both lists empty (pgpool's default since 4.2): the function's
//!    volatility, from a [`FunctionVolatility`] the caller supplies (a
//!    pg_proc lookup per backend, cached). Volatile functions count as
//!    writes; functions the lookup does not know go to the primary.
//!    `random()`, `clock_timestamp()` or `pg_sleep()` are volatile in pg_proc
//!    and so go to the primary too, as they do under pgpool: safe, if
//!    sometimes more than needed.
//!
//! Names are compared as the parser gives them: lowercased unless quoted,
//! without the quotes. A qualified call `s.f()` is matched by
//! `write_function_list` under both `s.f` and `f` (a missed writer would
//! reach a standby), by `read_only_function_list` only as written, `s.f`
//! (pgpool's rule: list both forms if queries use both). Calls qualified
//! with `pg_catalog` (which is also how the grammar writes `EXTRACT(...)`,
//! `AT TIME ZONE`, `SUBSTRING(... FROM ...)`) match the bare name as well.

use std::collections::HashMap;

use regex::RegexSet;

use super::classify::Reason;

/// pg_proc's provolatile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

/// How volatile a function is, as the backends' pg_proc says. Implemented
/// by a per-backend lookup (cached); [`StaticVolatility`] is an in-memory
/// stand-in for tests and for running without catalog access.
///
/// Called on the data path, during classification: an implementation
/// answers from memory and never blocks. A function it has not looked up
/// yet is `None` (the statement goes to the primary meanwhile); once it
/// has learnt more, it moves to a new [`generation`](Self::generation).
pub trait FunctionVolatility: Send + Sync {
    /// The volatility of `name`, called as `schema.name` when `schema` is
    /// given (`pg_catalog` for the functions the grammar writes for SQL
    /// syntax: EXTRACT, AT TIME ZONE, SUBSTRING ... FROM, OVERLAY...). For
    /// an overloaded name, the most volatile overload. `None` when the
    /// function is not known (the call then goes to the primary).
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility>;

    /// Changes whenever an answer may have changed (pg_proc re-read after
    /// DDL): classifications cached under another generation are not
    /// reused.
    fn generation(&self) -> u64 {
        0
    }
}

/// An in-memory [`FunctionVolatility`]: names (bare or `schema.name`) and
/// their volatility.
#[derive(Debug, Clone, Default)]
pub struct StaticVolatility {
    functions: HashMap<String, Volatility>,
    generation: u64,
}

impl StaticVolatility {
    /// An empty table: every function is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seeded with the volatility pg_proc gives common built-in functions
    /// (aggregates, string, number, date/time, JSON and catalog helpers).
    pub fn with_builtins() -> Self {
        let mut table = Self::new();
        for (names, volatility) in [
            (IMMUTABLE_BUILTINS, Volatility::Immutable),
            (STABLE_BUILTINS, Volatility::Stable),
            (VOLATILE_BUILTINS, Volatility::Volatile),
        ] {
            for name in names {
                table.functions.insert((*name).to_owned(), volatility);
            }
        }
        table
    }

    /// Adds or replaces `name` (bare, or `schema.name`) and moves to a new
    /// generation.
    pub fn insert(&mut self, name: impl Into<String>, volatility: Volatility) {
        self.functions.insert(name.into(), volatility);
        self.generation += 1;
    }
}

impl FunctionVolatility for StaticVolatility {
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        match schema {
            Some(schema) => self
                .functions
                .get(&format!("{schema}.{name}"))
                .or_else(|| {
                    // Built-ins live in pg_catalog.
                    (schema == "pg_catalog")
                        .then(|| self.functions.get(name))
                        .flatten()
                })
                .copied(),
            None => self.functions.get(name).copied(),
        }
    }

    fn generation(&self) -> u64 {
        self.generation
    }
}

/// Volatility as the backends' pg_proc says, over the built-in table: the
/// control path (`health::catalog`) replaces the catalog part whole when it
/// has read pg_proc again; the data path reads it without a lock.
#[derive(Debug)]
pub struct CatalogVolatility {
    builtins: StaticVolatility,
    /// `name` and `schema.name` of every function read from pg_proc, the
    /// most volatile overload (over every database) for each.
    catalog: arc_swap::ArcSwap<HashMap<String, Volatility>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Default for CatalogVolatility {
    fn default() -> Self {
        CatalogVolatility {
            builtins: StaticVolatility::with_builtins(),
            catalog: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl CatalogVolatility {
    /// Takes what pg_proc says now; a different answer moves to a new
    /// generation (cached classifications are judged again).
    pub fn replace(&self, functions: HashMap<String, Volatility>) {
        if **self.catalog.load() == functions {
            return;
        }
        self.catalog.store(std::sync::Arc::new(functions));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Functions known from pg_proc.
    pub fn catalog_len(&self) -> usize {
        self.catalog.load().len()
    }
}

/// Adds one pg_proc row to a map for [`CatalogVolatility::replace`]: under
/// `schema.name` and `name`, the most volatile wins.
pub fn merge_volatility(
    functions: &mut HashMap<String, Volatility>,
    schema: &str,
    name: &str,
    volatility: Volatility,
) {
    for key in [format!("{schema}.{name}"), name.to_owned()] {
        let entry = functions.entry(key).or_insert(volatility);
        *entry = (*entry).max(volatility);
    }
}

impl FunctionVolatility for CatalogVolatility {
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        let catalog = self.catalog.load();
        let found = match schema {
            Some(schema) => catalog.get(&format!("{schema}.{name}")),
            None => catalog.get(name),
        };
        found
            .copied()
            .or_else(|| self.builtins.volatility(schema, name))
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// How function calls are judged: pgpool's two lists (mutually exclusive)
/// or, with both empty, volatility.
#[derive(Debug, Clone, Default)]
pub enum FunctionRules {
    /// Neither list set: volatile and unknown functions count as writes.
    #[default]
    Volatility,
    /// pgpool's write_function_list: these write, all others are read-only.
    WriteList(FunctionList),
    /// pgpool's read_only_function_list: these are read-only, all others
    /// write.
    ReadOnlyList(FunctionList),
}

impl FunctionRules {
    /// From pgpool's two settings, each a list of patterns (empty entries
    /// ignored). Both non-empty is an error, as in pgpool.
    pub fn from_lists<S: AsRef<str>>(
        read_only_function_list: &[S],
        write_function_list: &[S],
    ) -> Result<Self, FunctionListError> {
        let read_only = FunctionList::new(read_only_function_list)?;
        let write = FunctionList::new(write_function_list)?;
        match (read_only.is_empty(), write.is_empty()) {
            (true, true) => Ok(FunctionRules::Volatility),
            (false, true) => Ok(FunctionRules::ReadOnlyList(read_only)),
            (true, false) => Ok(FunctionRules::WriteList(write)),
            (false, false) => Err(FunctionListError::BothSet),
        }
    }
}

/// Anchored regular expressions matched against function names.
#[derive(Debug, Clone)]
pub struct FunctionList {
    set: RegexSet,
}

impl FunctionList {
    /// Compiles `patterns`, each anchored as `^(?:pattern)$`; blank entries
    /// are skipped.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FunctionListError> {
        let mut anchored = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if pattern.is_empty() {
                continue;
            }
            let one = format!("^(?:{pattern})$");
            if let Err(e) = regex::Regex::new(&one) {
                return Err(FunctionListError::Pattern {
                    pattern: pattern.to_owned(),
                    reason: e.to_string(),
                });
            }
            anchored.push(one);
        }
        let set = RegexSet::new(&anchored).map_err(|e| FunctionListError::Pattern {
            pattern: anchored.join(","),
            reason: e.to_string(),
        })?;
        Ok(FunctionList { set })
    }

    /// pgpool's form: one comma-separated string.
    pub fn parse_pgpool(list: &str) -> Result<Self, FunctionListError> {
        Self::new(&list.split(',').collect::<Vec<_>>())
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionListError {
    #[error("read_only_function_list and write_function_list are mutually exclusive: set one")]
    BothSet,
    #[error("invalid function name pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
}

/// What a call does to a statement's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Reads only: fine on a standby.
    Read,
    /// Must reach the primary whatever a hint says (built-in writer or
    /// write_function_list).
    Writes,
    /// Not known to be read-only (volatile, unknown to the lookup, or not
    /// in read_only_function_list): primary unless a standby hint says the
    /// statement is a read.
    Uncertain(Reason),
}

/// Judges one call of `schema.name` (`schema` as written, if any).
pub(crate) fn judge(
    rules: &FunctionRules,
    volatility: &dyn FunctionVolatility,
    schema: Option<&str>,
    name: &str,
) -> Call {
    if is_primary_only(name) {
        return Call::Writes;
    }
    match rules {
        FunctionRules::WriteList(list) => {
            let qualified = schema.is_some_and(|s| list.matches(&format!("{s}.{name}")));
            if qualified || list.matches(name) {
                Call::Writes
            } else {
                Call::Read
            }
        }
        FunctionRules::ReadOnlyList(list) => {
            let listed = match schema {
                Some(s) => {
                    list.matches(&format!("{s}.{name}"))
                        || (s == "pg_catalog" && list.matches(name))
                }
                None => list.matches(name),
            };
            if listed {
                Call::Read
            } else {
                Call::Uncertain(Reason::NotReadOnlyFunction)
            }
        }
        FunctionRules::Volatility => match volatility.volatility(schema, name) {
            Some(Volatility::Immutable | Volatility::Stable) => Call::Read,
            Some(Volatility::Volatile) => Call::Uncertain(Reason::VolatileFunction),
            None => Call::Uncertain(Reason::UnknownFunction),
        },
    }
}

/// Built-in functions that fail on a hot standby, assign a transaction id,
/// leave state that later statements must find on the same server, take
/// locks that coordinate clients only when all take them on one server
/// (advisory locks: a standby grants them, to nobody's benefit), or act on
/// the server: these run on the primary whatever else says. Matched on the bare
/// name in any schema (a same-named user function goes to the primary too:
/// the safe side).
pub(crate) fn is_primary_only(name: &str) -> bool {
    PRIMARY_ONLY.contains(&name)
        || PRIMARY_ONLY_PREFIXES.iter().any(|p| name.starts_with(p))
        // Large objects: creating, writing, unlinking, importing and
        // exporting, and every descriptor-based call (the descriptor lives
        // where lo_open ran). Only lo_get reads by oid.
        || (name.starts_with("lo_") && name != "lo_get")
}

const PRIMARY_ONLY: &[&str] = &[
    // Sequences: nextval/setval write; currval/lastval answer what this
    // session's nextval did, which happened on the primary.
    "nextval",
    "setval",
    "currval",
    "lastval",
    // Transaction ids (assigning one fails during recovery).
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    // Notifications and settings.
    "pg_notify",
    "set_config",
    // WAL, backups, restore points, snapshots others import.
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_walfile_name",
    "pg_walfile_name_offset",
    "pg_export_snapshot",
    "pg_log_standby_snapshot",
    // Server control and other backends.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_logical_emit_message",
    // Replication slots.
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes",
    // Large-object descriptor calls without the lo_ prefix.
    "loread",
    "lowrite",
    // Extensions that write or act remotely.
    "dblink_exec",
    "pg_stat_statements_reset",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_truncate_visibility_map",
];

const PRIMARY_ONLY_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_replication_origin_",
    "pg_stat_reset",
];

/// Built-ins pg_proc marks immutable (for [`StaticVolatility::with_builtins`]).
const IMMUTABLE_BUILTINS: &[&str] = &[
    "abs",
    "acos",
    "array_append",
    "array_cat",
    "array_dims",
    "array_length",
    "array_lower",
    "array_ndims",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_upper",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "bit_length",
    "btrim",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "cos",
    "decode",
    "degrees",
    "div",
    "encode",
    "exp",
    "extract",
    "factorial",
    "floor",
    "gcd",
    "generate_series",
    "generate_subscripts",
    "initcap",
    "is_normalized",
    "isfinite",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object_keys",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_keys",
    "json_typeof",
    "lcm",
    "left",
    "length",
    "ln",
    "log",
    "log10",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "mod",
    "normalize",
    "octet_length",
    "overlay",
    "pi",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "rpad",
    "rtrim",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "similar_to_escape",
    "sin",
    "split_part",
    "sqrt",
    "starts_with",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "tan",
    "to_hex",
    "translate",
    "trim_array",
    "trunc",
    "unnest",
    "upper",
    "width_bucket",
    // Aggregates and window functions.
    "array_agg",
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "count",
    "cume_dist",
    "dense_rank",
    "every",
    "first_value",
    "jsonb_agg",
    "jsonb_object_agg",
    "json_agg",
    "json_object_agg",
    "lag",
    "last_value",
    "lead",
    "max",
    "min",
    "mode",
    "nth_value",
    "ntile",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "row_number",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "sum",
    "var_pop",
    "var_samp",
    "variance",
    "xmlagg",
];

/// Built-ins pg_proc marks stable.
const STABLE_BUILTINS: &[&str] = &[
    "age",
    "array_to_json",
    "array_to_string",
    "col_description",
    "concat",
    "concat_ws",
    "current_database",
    "current_query",
    "current_schema",
    "current_schemas",
    "current_setting",
    "date_part",
    "date_trunc",
    "format",
    "format_type",
    "has_column_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "has_schema_privilege",
    "has_sequence_privilege",
    "has_table_privilege",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_path_query",
    "jsonb_path_exists",
    "json_build_array",
    "json_build_object",
    "make_timestamptz",
    "now",
    "obj_description",
    "pg_backend_pid",
    "pg_column_size",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_functiondef",
    "pg_get_indexdef",
    "pg_get_serial_sequence",
    "pg_get_triggerdef",
    "pg_get_userbyid",
    "pg_get_viewdef",
    "pg_has_role",
    "pg_postmaster_start_time",
    "pg_size_pretty",
    "pg_table_is_visible",
    "pg_typeof",
    "row_to_json",
    "statement_timestamp",
    "system_user",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_regclass",
    "to_regproc",
    "to_regtype",
    "to_timestamp",
    "transaction_timestamp",
    "txid_current_snapshot",
    "pg_current_snapshot",
    "version",
];

/// Built-ins pg_proc marks volatile although they do not write.
const VOLATILE_BUILTINS: &[&str] = &[
    "clock_timestamp",
    "gen_random_uuid",
    "pg_database_size",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_relation_size",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_table_size",
    "pg_total_relation_size",
    "random",
    "setseed",
    "timeofday",
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_catalog_answers_before_the_builtins_and_moves_the_generation() {
        let v = CatalogVolatility::default();
        assert_eq!(v.volatility(None, "now"), Some(Volatility::Stable));
        assert_eq!(v.volatility(None, "get_label"), None);
        let g = v.generation();
        let mut functions = HashMap::new();
        merge_volatility(&mut functions, "public", "get_label", Volatility::Stable);
        merge_volatility(&mut functions, "app", "get_label", Volatility::Volatile);
        merge_volatility(&mut functions, "app", "price_of", Volatility::Immutable);
        v.replace(functions.clone());
        assert!(v.generation() > g);
        // Overloads and homonyms: the most volatile.
        assert_eq!(v.volatility(None, "get_label"), Some(Volatility::Volatile));
        assert_eq!(
            v.volatility(Some("public"), "get_label"),
            Some(Volatility::Stable)
        );
        assert_eq!(
            v.volatility(Some("app"), "price_of"),
            Some(Volatility::Immutable)
        );
        let g = v.generation();
        v.replace(functions);
        assert_eq!(v.generation(), g, "the same answer is not a new generation");
    }

    use super::*;

    #[test]
    fn built_in_writers_whatever_the_rules() {
        let vol = StaticVolatility::with_builtins();
        let lists = [
            FunctionRules::Volatility,
            FunctionRules::from_lists(&["nextval", ".*"], &[]).unwrap(),
            FunctionRules::from_lists(&[], &["nothing"]).unwrap(),
        ];
        for rules in &lists {
            for (schema, name) in [
                (None, "nextval"),
                (Some("pg_catalog"), "setval"),
                (None, "currval"),
                (None, "pg_advisory_lock"),
                (None, "pg_try_advisory_xact_lock_shared"),
                (None, "txid_current"),
                (None, "pg_current_xact_id"),
                (None, "pg_notify"),
                (None, "set_config"),
                (None, "lo_import"),
                (None, "lo_unlink"),
                (None, "lowrite"),
                (Some("public"), "dblink_exec"),
                (None, "pg_terminate_backend"),
                (None, "pg_current_wal_lsn"),
            ] {
                assert_eq!(
                    judge(rules, &vol, schema, name),
                    Call::Writes,
                    "{name} {rules:?}"
                );
            }
        }
        assert_ne!(
            judge(&FunctionRules::Volatility, &vol, None, "lo_get"),
            Call::Writes
        );
    }

    #[test]
    fn volatility_rules() {
        let mut vol = StaticVolatility::with_builtins();
        vol.insert("audit.log_it", Volatility::Volatile);
        vol.insert("get_name", Volatility::Stable);
        let r = FunctionRules::Volatility;
        assert_eq!(judge(&r, &vol, None, "lower"), Call::Read);
        assert_eq!(judge(&r, &vol, Some("pg_catalog"), "extract"), Call::Read);
        assert_eq!(judge(&r, &vol, None, "now"), Call::Read);
        assert_eq!(judge(&r, &vol, None, "get_name"), Call::Read);
        assert_eq!(
            judge(&r, &vol, None, "random"),
            Call::Uncertain(Reason::VolatileFunction)
        );
        assert_eq!(
            judge(&r, &vol, Some("audit"), "log_it"),
            Call::Uncertain(Reason::VolatileFunction)
        );
        assert_eq!(
            judge(&r, &vol, None, "log_it"),
            Call::Uncertain(Reason::UnknownFunction)
        );
        assert_eq!(
            judge(&r, &vol, Some("myschema"), "lower"),
            Call::Uncertain(Reason::UnknownFunction),
            "a qualified name outside pg_catalog is not the built-in"
        );
    }

    #[test]
    fn pgpool_lists() {
        let vol = StaticVolatility::new();
        let write = FunctionRules::from_lists(&[], &["set_.*", "audit.log_it", " "]).unwrap();
        assert_eq!(judge(&write, &vol, None, "set_price"), Call::Writes);
        assert_eq!(judge(&write, &vol, Some("app"), "set_price"), Call::Writes);
        assert_eq!(judge(&write, &vol, Some("audit"), "log_it"), Call::Writes);
        assert_eq!(judge(&write, &vol, None, "get_price"), Call::Read);
        assert_eq!(
            judge(&write, &vol, None, "xset_price"),
            Call::Read,
            "anchored at the start"
        );
        assert_eq!(judge(&write, &vol, None, "set_pricex"), Call::Writes);

        let read = FunctionRules::from_lists(&["get_.*|lower", "app.price"], &[]).unwrap();
        assert_eq!(judge(&read, &vol, None, "get_x"), Call::Read);
        assert_eq!(judge(&read, &vol, None, "lower"), Call::Read);
        assert_eq!(judge(&read, &vol, Some("pg_catalog"), "lower"), Call::Read);
        assert_eq!(judge(&read, &vol, Some("app"), "price"), Call::Read);
        assert_eq!(
            judge(&read, &vol, None, "price"),
            Call::Uncertain(Reason::NotReadOnlyFunction)
        );
        assert_eq!(
            judge(&read, &vol, Some("app"), "get_x"),
            Call::Uncertain(Reason::NotReadOnlyFunction),
            "read_only_function_list matches qualified calls as written"
        );
        assert_eq!(
            judge(&read, &vol, None, "xlower"),
            Call::Uncertain(Reason::NotReadOnlyFunction)
        );

        assert_eq!(
            FunctionRules::from_lists(&["a"], &["b"]).unwrap_err(),
            FunctionListError::BothSet
        );
        assert!(matches!(
            FunctionRules::from_lists(&["("], &[]),
            Err(FunctionListError::Pattern { .. })
        ));
        assert!(matches!(
            FunctionRules::from_lists::<&str>(&[], &[]),
            Ok(FunctionRules::Volatility)
        ));
        assert!(
            FunctionList::parse_pgpool("nextval, setval,")
                .unwrap()
                .matches("setval")
        );
    }
}
