//! Client authentication rules: pgpool's `pool_hba.conf`, which has the
//! syntax of PostgreSQL's `pg_hba.conf`.
//!
//! Owns parsing the file into [`HbaRules`] and answering, for one incoming
//! connection, which rule applies ([`HbaRules::find`]). It does no I/O
//! beyond [`HbaRules::load`] reading the file, and it does not
//! authenticate: the proxy asks for the rule, then runs the rule's
//! [`AuthMethod`] against the user's entry in `pool_passwd`
//! ([`super::passwd`]; see [`super::passwd::effective_method`] for the
//! `md5`-rule-with-SCRAM-secret case).
//!
//! # What is accepted
//!
//! One rule per line: `TYPE DATABASE USER [ADDRESS [NETMASK]] METHOD
//! [OPTION=VALUE ...]`, `#` comments, blank lines, and (as in PostgreSQL
//! 16) a backslash as the very last character continuing a line on the
//! next; errors name the first line of a continued rule.
//!
//! - TYPE: `local`, `host`, `hostssl`, `hostnossl`.
//! - DATABASE: `all`, `sameuser`, a name, a `/regex`, or a comma-separated
//!   list of those. `replication` matches nothing, because pghalo never
//!   proxies replication connections.
//! - USER: `all`, a name, a `/regex`, or a list.
//! - ADDRESS: `all`, `addr/len` (IPv4 or IPv6), or an address followed by
//!   a NETMASK column. A client connecting over IPv6 from an IPv4-mapped
//!   address (`::ffff:10.1.2.3`) matches IPv4 rules, because that is an
//!   IPv4 client reaching a dual-stack listener.
//! - METHOD: `trust`, `reject`, `md5`, `scram-sha-256`, `password`, `cert`.
//! - OPTIONS: `clientcert=verify-ca|verify-full` and `clientname=CN|DN` on
//!   `hostssl` rules. As in PostgreSQL, a `cert` rule always verifies the
//!   full certificate, so `clientcert=verify-ca` is refused on it.
//!
//! Double quotes make a word literal: `"all"` is a database called `all`,
//! and `""` inside quotes is one quote character. As in PostgreSQL, a name
//! starting with `/` is a regular expression even when quoted (quoting is
//! how a pattern containing a comma is written). Patterns are compiled by
//! the `regex` crate, whose syntax is close to but not exactly PostgreSQL's
//! (no backreferences or lookaround); like PostgreSQL, a pattern matches
//! anywhere in the name unless anchored with `^` and `$`.
//!
//! # What is refused, and why
//!
//! Anything pghalo cannot honour is an error at load time rather than a
//! rule that silently never matches, so that a file written for PostgreSQL
//! or pgpool never grants or denies more than its author meant:
//! `samerole`/`samegroup` and `+group` (pghalo cannot see role membership),
//! `@file` includes and `include*` directives, `samehost`/`samenet` and
//! host names (they need interface lists or DNS at connect time),
//! `hostgssenc`/`hostnogssenc`, methods other than the six above (`ldap`,
//! `pam`, `peer`, `ident`, `gss`, `radius`...), and unknown options. A file
//! with no rules at all is refused too, since it would reject everyone.
//!
//! Every error about a line is one sentence starting with `file:line:`,
//! naming the first faulty line.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use regex::Regex;

/// The rules of one `pool_hba.conf`, in file order.
#[derive(Debug, Clone)]
pub struct HbaRules {
    rules: Vec<HbaRule>,
}

/// One connection attempt, as far as rule matching needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HbaRequest<'a> {
    /// How the client reached the proxy.
    pub conn: Connection,
    /// The database named in the startup packet.
    pub database: &'a str,
    /// The user named in the startup packet.
    pub user: &'a str,
}

/// How a client reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A Unix-domain socket.
    Local,
    /// TCP from `addr`; `tls` once the SSLRequest handshake completed.
    Host {
        /// The client's address.
        addr: IpAddr,
        /// True if the connection is TLS-encrypted.
        tls: bool,
    },
}

/// One rule (one logical line of the file).
#[derive(Debug, Clone)]
pub struct HbaRule {
    /// The line the rule starts on (1-based).
    pub line: usize,
    /// The record type.
    pub conn_type: ConnectionType,
    /// The DATABASE column; the rule applies if any entry matches.
    pub databases: Vec<DatabaseMatch>,
    /// The USER column; the rule applies if any entry matches.
    pub users: Vec<UserMatch>,
    /// The ADDRESS column; `None` for `local` rules, which have none.
    pub address: Option<AddressMatch>,
    /// How the client must authenticate.
    pub method: AuthMethod,
    /// Whether the client must present a certificate, and how far it is
    /// checked. Always `Some(VerifyFull)` for `cert` rules.
    pub clientcert: Option<ClientCert>,
    /// Which part of the certificate is compared with the user name when
    /// the certificate is fully verified.
    pub clientname: ClientName,
}

/// The record type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionType {
    /// `local`: Unix-domain sockets.
    Local,
    /// `host`: TCP, with or without TLS.
    Host,
    /// `hostssl`: TCP with TLS.
    HostSsl,
    /// `hostnossl`: TCP without TLS.
    HostNoSsl,
}

/// An entry of the DATABASE column.
#[derive(Debug, Clone)]
pub enum DatabaseMatch {
    /// `all`.
    All,
    /// `sameuser`: the database named like the user.
    SameUser,
    /// `replication`: physical replication connections, which pghalo does
    /// not proxy, so it matches nothing.
    Replication,
    /// A database name (quotes removed).
    Name(String),
    /// A `/regex`.
    Regex(NameRegex),
}

/// An entry of the USER column.
#[derive(Debug, Clone)]
pub enum UserMatch {
    /// `all`.
    All,
    /// A user name (quotes removed).
    Name(String),
    /// A `/regex`.
    Regex(NameRegex),
}

/// A compiled `/regex` entry; `Debug` shows the pattern as written.
#[derive(Clone)]
pub struct NameRegex {
    /// The pattern without its leading slash.
    source: String,
    regex: Regex,
}

/// The ADDRESS column of a `host*` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMatch {
    /// `all`.
    All,
    /// An address range.
    Net(IpNet),
}

/// An address range: an address and a mask of the same family. The mask
/// need not be contiguous when it came from a NETMASK column; matching
/// compares the bits it selects, as PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    mask: IpAddr,
}

/// An authentication method pghalo can carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Let the client in without a password.
    Trust,
    /// Refuse the client.
    Reject,
    /// md5 challenge and response (SCRAM when the stored secret is a SCRAM
    /// verifier, as in PostgreSQL).
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// Cleartext password (only sensible over TLS).
    Password,
    /// TLS client certificate, checked against the user name.
    Cert,
}

/// How far a client certificate is verified (`clientcert=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// The certificate chains to a trusted CA.
    VerifyCa,
    /// It also names the user (see [`ClientName`]).
    VerifyFull,
}

/// Which certificate field must equal the user name (`clientname=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientName {
    /// The subject's Common Name (the default).
    #[default]
    Cn,
    /// The whole subject Distinguished Name, in RFC 2253 form.
    Dn,
}

/// Why a `pool_hba.conf` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    /// The file could not be read.
    #[error("could not read {file}: {source}")]
    Io {
        /// The file, as given.
        file: String,
        /// The system error.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{file}:{line}: {kind}")]
    Line {
        /// The file name given to [`HbaRules::parse`].
        file: String,
        /// The 1-based line (the first line of a continued rule).
        line: usize,
        /// What is wrong with it.
        kind: LineError,
    },
    /// The file holds no rule, so every connection would be rejected.
    #[error("{file} contains no rules, so every connection would be rejected")]
    Empty {
        /// The file name.
        file: String,
    },
}

/// What is wrong with one line of a `pool_hba.conf`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A double quote is not closed before the end of the line.
    #[error("a double-quoted string is not terminated")]
    UnterminatedQuote,
    /// A column ends before the rule is complete.
    #[error("the line ends before the {0} column")]
    MissingField(&'static str),
    /// A comma-separated list has an empty entry.
    #[error("the {0} column has an empty entry in its comma-separated list")]
    EmptyListEntry(&'static str),
    /// A column that takes one value has a list.
    #[error("the {0} column takes a single value, not a comma-separated list")]
    MultipleValues(&'static str),
    /// The first word is not a record type.
    #[error("unknown connection type \"{0}\" (expected local, host, hostssl or hostnossl)")]
    UnknownConnectionType(String),
    /// A record type PostgreSQL knows but pghalo does not serve.
    #[error(
        "connection type \"{0}\" is not supported by pghalo, which does not offer GSSAPI encryption"
    )]
    UnsupportedConnectionType(String),
    /// `include`, `include_if_exists` or `include_dir`.
    #[error("the \"{0}\" directive is not supported by pghalo; put the rules in this file")]
    IncludeDirective(String),
    /// `samerole` or `samegroup`.
    #[error(
        "the database keyword \"{0}\" is not supported by pghalo, which cannot see role membership"
    )]
    RoleMembership(String),
    /// `+group` in the USER column.
    #[error(
        "group membership (\"{0}\") is not supported by pghalo, which cannot see role membership; list the users instead"
    )]
    GroupMembership(String),
    /// `@file` in the DATABASE or USER column.
    #[error("file inclusion (\"{0}\") is not supported by pghalo; list the names in this file")]
    FileInclusion(String),
    /// A `/regex` that does not compile.
    #[error("invalid regular expression \"{pattern}\": {reason}")]
    InvalidRegex {
        /// The pattern as written (with its slash).
        pattern: String,
        /// The compiler's complaint.
        reason: String,
    },
    /// `samehost` or `samenet`.
    #[error(
        "the address keyword \"{0}\" is not supported by pghalo; write the address range instead"
    )]
    UnsupportedAddressKeyword(String),
    /// A host name in the ADDRESS column.
    #[error(
        "host names in the address column (\"{0}\") are not supported by pghalo; write an IP address range instead"
    )]
    HostName(String),
    /// An address or CIDR range that does not parse.
    #[error("invalid IP address range \"{0}\"")]
    InvalidAddress(String),
    /// An address without `/len` and without a NETMASK column.
    #[error("the IP address \"{0}\" needs a CIDR mask length (such as {0}/32) or a netmask column")]
    MissingNetmask(String),
    /// A NETMASK column that is not an address of the same family.
    #[error("invalid netmask \"{netmask}\" for the IP address \"{addr}\"")]
    InvalidNetmask {
        /// The address column.
        addr: String,
        /// The netmask column.
        netmask: String,
    },
    /// A method PostgreSQL or pgpool knows but pghalo does not implement.
    #[error(
        "authentication method \"{0}\" is not supported by pghalo (it supports trust, reject, md5, scram-sha-256, password and cert)"
    )]
    UnsupportedMethod(String),
    /// A method nobody knows.
    #[error(
        "unknown authentication method \"{0}\" (pghalo supports trust, reject, md5, scram-sha-256, password and cert)"
    )]
    UnknownMethod(String),
    /// `cert` on a rule that also matches connections without TLS.
    #[error("the cert authentication method is only allowed on hostssl rules")]
    CertNeedsHostSsl,
    /// An option that is not `name=value`.
    #[error("authentication option \"{0}\" is not in name=value form")]
    OptionSyntax(String),
    /// An option that needs a `hostssl` rule.
    #[error("the {0} option is only allowed on hostssl rules")]
    OptionNeedsHostSsl(&'static str),
    /// A bad `clientcert` value.
    #[error("invalid clientcert value \"{0}\" (expected verify-ca or verify-full)")]
    InvalidClientCert(String),
    /// `clientcert=verify-ca` on a `cert` rule.
    #[error("clientcert only accepts verify-full with the cert authentication method")]
    CertNeedsVerifyFull,
    /// A bad `clientname` value.
    #[error("invalid clientname value \"{0}\" (expected CN or DN)")]
    InvalidClientName(String),
    /// `map=`, which needs pg_ident.conf.
    #[error("user name maps (\"map\" option) are not supported by pghalo")]
    UserMap,
    /// Any other option.
    #[error("unknown option \"{option}\" for authentication method {method}")]
    UnknownOption {
        /// The option name.
        option: String,
        /// The rule's method.
        method: AuthMethod,
    },
}

impl HbaRules {
    /// Parses the text of a `pool_hba.conf`; `file_name` is only used in
    /// error messages. The first faulty line is reported.
    pub fn parse(text: &str, file_name: &str) -> Result<HbaRules, HbaError> {
        let mut rules = Vec::new();
        for (line, content) in logical_lines(text) {
            let parsed = tokenize(&content).and_then(|fields| {
                if fields.is_empty() {
                    Ok(None)
                } else {
                    parse_rule(line, fields).map(Some)
                }
            });
            match parsed {
                Ok(Some(rule)) => rules.push(rule),
                Ok(None) => {}
                Err(kind) => {
                    return Err(HbaError::Line {
                        file: file_name.to_owned(),
                        line,
                        kind,
                    });
                }
            }
        }
        if rules.is_empty() {
            return Err(HbaError::Empty {
                file: file_name.to_owned(),
            });
        }
        Ok(HbaRules { rules })
    }

    /// Reads and parses the file at `path`; errors name it as given.
    pub fn load(path: impl AsRef<Path>) -> Result<HbaRules, HbaError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HbaError::Io {
            file: file.clone(),
            source,
        })?;
        HbaRules::parse(&text, &file)
    }

    /// The first rule that matches `req`, or `None`, in which case the
    /// connection must be rejected (as PostgreSQL does with "no pg_hba.conf
    /// entry").
    pub fn find(&self, req: &HbaRequest<'_>) -> Option<&HbaRule> {
        self.rules.iter().find(|rule| rule.matches(req))
    }

    /// All rules, in file order.
    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }
}

impl HbaRule {
    /// True if this rule applies to `req`.
    pub fn matches(&self, req: &HbaRequest<'_>) -> bool {
        let conn_ok = match (self.conn_type, req.conn) {
            (ConnectionType::Local, Connection::Local) => true,
            (ConnectionType::Host, Connection::Host { .. }) => true,
            (ConnectionType::HostSsl, Connection::Host { tls, .. }) => tls,
            (ConnectionType::HostNoSsl, Connection::Host { tls, .. }) => !tls,
            _ => false,
        };
        let addr_ok = match (self.address, req.conn) {
            (None, _) | (Some(AddressMatch::All), _) => true,
            (Some(AddressMatch::Net(net)), Connection::Host { addr, .. }) => net.contains(addr),
            (Some(AddressMatch::Net(_)), Connection::Local) => false,
        };
        conn_ok
            && addr_ok
            && self
                .databases
                .iter()
                .any(|d| d.matches(req.database, req.user))
            && self.users.iter().any(|u| u.matches(req.user))
    }
}

impl DatabaseMatch {
    fn matches(&self, database: &str, user: &str) -> bool {
        match self {
            DatabaseMatch::All => true,
            DatabaseMatch::SameUser => database == user,
            DatabaseMatch::Replication => false,
            DatabaseMatch::Name(name) => name == database,
            DatabaseMatch::Regex(re) => re.regex.is_match(database),
        }
    }
}

impl UserMatch {
    fn matches(&self, user: &str) -> bool {
        match self {
            UserMatch::All => true,
            UserMatch::Name(name) => name == user,
            UserMatch::Regex(re) => re.regex.is_match(user),
        }
    }
}

impl NameRegex {
    /// The pattern as written, without its leading slash.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for NameRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.source)
    }
}

impl IpNet {
    /// A range from an address and a mask of the same family; `None` if the
    /// families differ.
    pub fn new(addr: IpAddr, mask: IpAddr) -> Option<IpNet> {
        (addr.is_ipv4() == mask.is_ipv4()).then_some(IpNet { addr, mask })
    }

    /// The range `addr/prefix_len`; `None` if the length exceeds the
    /// address's bits.
    pub fn with_prefix(addr: IpAddr, prefix_len: u8) -> Option<IpNet> {
        let mask = match addr {
            IpAddr::V4(_) => {
                let ones = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32)));
                IpAddr::from(ones.unwrap_or(0).to_be_bytes())
            }
            IpAddr::V6(_) => {
                let ones = u128::MAX.checked_shl(128 - u32::from(prefix_len.min(128)));
                IpAddr::from(ones.unwrap_or(0).to_be_bytes())
            }
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= bits).then_some(IpNet { addr, mask })
    }

    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The mask.
    pub fn mask(&self) -> IpAddr {
        self.mask
    }

    /// True if `client` is in the range. An IPv4-mapped IPv6 client is also
    /// tried as the IPv4 address it stands for.
    pub fn contains(&self, client: IpAddr) -> bool {
        let mapped = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.contains_exact(client) || mapped.is_some_and(|v4| self.contains_exact(v4))
    }

    fn contains_exact(&self, client: IpAddr) -> bool {
        match (self.addr, self.mask, client) {
            (IpAddr::V4(a), IpAddr::V4(m), IpAddr::V4(c)) => {
                (u32::from(a) ^ u32::from(c)) & u32::from(m) == 0
            }
            (IpAddr::V6(a), IpAddr::V6(m), IpAddr::V6(c)) => {
                (u128::from(a) ^ u128::from(c)) & u128::from(m) == 0
            }
            _ => false,
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Reject => "reject",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Password => "password",
            AuthMethod::Cert => "cert",
        })
    }
}

// ---- lines and tokens ----

/// Joins backslash-continued lines; yields (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (start, mut acc) = pending.take().unwrap_or((index + 1, String::new()));
        match raw.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(raw);
                out.push((start, acc));
            }
        }
    }
    // A continuation on the last line has nothing to join; PostgreSQL
    // takes what it has, and so do we.
    out.extend(pending);
    out
}

/// One word of a column: its text with quotes removed, and whether any
/// part of it was quoted (which strips keywords of their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    quoted: bool,
}

/// A column: one or more comma-separated tokens.
type Field = Vec<Token>;

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\x0b' | '\x0c')
}

/// Splits a logical line into columns, following PostgreSQL's rules:
/// blanks separate columns, commas separate list entries (blanks may
/// follow a comma), `#` outside quotes starts a comment.
fn tokenize(line: &str) -> Result<Vec<Field>, LineError> {
    let mut chars = line.chars().peekable();
    let mut fields = Vec::new();
    loop {
        while chars.next_if(|&c| is_blank(c)).is_some() {}
        match chars.peek() {
            None | Some('#') => break,
            Some(_) => {}
        }
        let mut field = Vec::new();
        loop {
            let (token, comma) = next_token(&mut chars)?;
            field.push(token);
            if !comma {
                break;
            }
            while chars.next_if(|&c| is_blank(c)).is_some() {}
            if matches!(chars.peek(), None | Some('#')) {
                // A trailing comma: report it as an empty entry.
                field.push(Token {
                    text: String::new(),
                    quoted: false,
                });
                break;
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Reads one token; the flag says whether a comma ended it.
fn next_token(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<(Token, bool), LineError> {
    let mut text = String::new();
    let mut quoted = false;
    let mut in_quote = false;
    // True right after a quote character inside quotes: a second one
    // makes a literal quote.
    let mut after_quote = false;
    while let Some(&c) = chars.peek() {
        if !in_quote && (is_blank(c) || c == '#') {
            break;
        }
        chars.next();
        if c == ',' && !in_quote {
            return Ok((Token { text, quoted }, true));
        }
        if c != '"' || after_quote {
            text.push(c);
        }
        after_quote = in_quote && c == '"' && !after_quote;
        if c == '"' {
            in_quote = !in_quote;
            quoted = true;
        }
    }
    if in_quote {
        return Err(LineError::UnterminatedQuote);
    }
    Ok((Token { text, quoted }, false))
}

// ---- columns ----

fn parse_rule(line: usize, fields: Vec<Field>) -> Result<HbaRule, LineError> {
    let mut fields = fields.into_iter();
    let type_token = single(fields.next(), "connection type")?;
    let conn_type = match type_token.text.as_str() {
        "local" => ConnectionType::Local,
        "host" => ConnectionType::Host,
        "hostssl" => ConnectionType::HostSsl,
        "hostnossl" => ConnectionType::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => {
            return Err(LineError::UnsupportedConnectionType(type_token.text));
        }
        "include" | "include_if_exists" | "include_dir" => {
            return Err(LineError::IncludeDirective(type_token.text));
        }
        _ => return Err(LineError::UnknownConnectionType(type_token.text)),
    };

    let databases = fields
        .next()
        .ok_or(LineError::MissingField("database"))?
        .into_iter()
        .map(parse_database)
        .collect::<Result<Vec<_>, _>>()?;
    let users = fields
        .next()
        .ok_or(LineError::MissingField("user"))?
        .into_iter()
        .map(parse_user)
        .collect::<Result<Vec<_>, _>>()?;

    let address = if conn_type == ConnectionType::Local {
        None
    } else {
        Some(parse_address(&mut fields)?)
    };

    let method_token = single(fields.next(), "authentication method")?;
    let method = parse_method(method_token)?;
    if method == AuthMethod::Cert && conn_type != ConnectionType::HostSsl {
        return Err(LineError::CertNeedsHostSsl);
    }

    let mut rule = HbaRule {
        line,
        conn_type,
        databases,
        users,
        address,
        method,
        clientcert: (method == AuthMethod::Cert).then_some(ClientCert::VerifyFull),
        clientname: ClientName::default(),
    };
    for field in fields {
        apply_option(&mut rule, field)?;
    }
    Ok(rule)
}

/// The one token of a column that takes no list.
fn single(field: Option<Field>, name: &'static str) -> Result<Token, LineError> {
    let mut field = field.ok_or(LineError::MissingField(name))?;
    if field.len() > 1 {
        return Err(LineError::MultipleValues(name));
    }
    let token = field.pop().ok_or(LineError::MissingField(name))?;
    if token.text.is_empty() && !token.quoted {
        return Err(LineError::MissingField(name));
    }
    Ok(token)
}

fn parse_database(token: Token) -> Result<DatabaseMatch, LineError> {
    if let Some(pattern) = token.text.strip_prefix('/') {
        return compile(pattern).map(DatabaseMatch::Regex);
    }
    if token.quoted {
        return Ok(DatabaseMatch::Name(token.text));
    }
    match token.text.as_str() {
        "" => Err(LineError::EmptyListEntry("database")),
        "all" => Ok(DatabaseMatch::All),
        "sameuser" => Ok(DatabaseMatch::SameUser),
        "replication" => Ok(DatabaseMatch::Replication),
        "samerole" | "samegroup" => Err(LineError::RoleMembership(token.text)),
        t if t.starts_with('@') => Err(LineError::FileInclusion(token.text)),
        _ => Ok(DatabaseMatch::Name(token.text)),
    }
}

fn parse_user(token: Token) -> Result<UserMatch, LineError> {
    if let Some(pattern) = token.text.strip_prefix('/') {
        return compile(pattern).map(UserMatch::Regex);
    }
    if token.quoted {
        return Ok(UserMatch::Name(token.text));
    }
    match token.text.as_str() {
        "" => Err(LineError::EmptyListEntry("user")),
        "all" => Ok(UserMatch::All),
        t if t.starts_with('+') => Err(LineError::GroupMembership(token.text)),
        t if t.starts_with('@') => Err(LineError::FileInclusion(token.text)),
        _ => Ok(UserMatch::Name(token.text)),
    }
}

fn compile(pattern: &str) -> Result<NameRegex, LineError> {
    match Regex::new(pattern) {
        Ok(regex) => Ok(NameRegex {
            source: pattern.to_owned(),
            regex,
        }),
        Err(e) => Err(LineError::InvalidRegex {
            pattern: format!("/{pattern}"),
            reason: regex_reason(&e),
        }),
    }
}

/// The regex crate's syntax errors span several lines with a caret
/// diagram; an hba error must stay one sentence, so keep only the cause.
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| text.lines().next().unwrap_or("invalid pattern"))
        .to_owned()
}

fn parse_address(fields: &mut impl Iterator<Item = Field>) -> Result<AddressMatch, LineError> {
    let token = single(fields.next(), "address")?;
    if !token.quoted {
        match token.text.as_str() {
            "all" => return Ok(AddressMatch::All),
            "samehost" | "samenet" => {
                return Err(LineError::UnsupportedAddressKeyword(token.text));
            }
            _ => {}
        }
    }
    let text = token.text;
    if let Some((addr, len)) = text.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| LineError::InvalidAddress(text.clone()))?;
        // u8 parsing also refuses signs and spaces, as PostgreSQL does.
        let net = len
            .parse::<u8>()
            .ok()
            .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|len| IpNet::with_prefix(addr, len))
            .ok_or_else(|| LineError::InvalidAddress(text.clone()))?;
        return Ok(AddressMatch::Net(net));
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        let mask_token = single(fields.next(), "netmask")
            .map_err(|_| LineError::MissingNetmask(text.clone()))?;
        let net = mask_token
            .text
            .parse::<IpAddr>()
            .ok()
            .and_then(|mask| IpNet::new(addr, mask))
            .ok_or_else(|| {
                // "host all all 10.0.0.1 md5" reads the method as a mask;
                // say what is really missing.
                if is_method_name(&mask_token.text) {
                    LineError::MissingNetmask(text.clone())
                } else {
                    LineError::InvalidNetmask {
                        addr: text.clone(),
                        netmask: mask_token.text.clone(),
                    }
                }
            })?;
        return Ok(AddressMatch::Net(net));
    }
    // What looks like an address attempt is reported as a bad address, not
    // as a host name, so a typo such as 10.0.0.256 reads right.
    let addressish = text.contains(':')
        || (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if addressish || text.is_empty() {
        return Err(LineError::InvalidAddress(text));
    }
    Err(LineError::HostName(text))
}

const UNSUPPORTED_METHODS: &[&str] = &[
    "gss", "sspi", "ident", "peer", "ldap", "radius", "pam", "bsd", "oauth", "krb5", "crypt",
];

fn is_method_name(text: &str) -> bool {
    parse_method(Token {
        text: text.to_owned(),
        quoted: false,
    })
    .is_ok()
        || UNSUPPORTED_METHODS.contains(&text)
}

fn parse_method(token: Token) -> Result<AuthMethod, LineError> {
    match token.text.as_str() {
        "trust" => Ok(AuthMethod::Trust),
        "reject" => Ok(AuthMethod::Reject),
        "md5" => Ok(AuthMethod::Md5),
        "scram-sha-256" => Ok(AuthMethod::ScramSha256),
        "password" => Ok(AuthMethod::Password),
        "cert" => Ok(AuthMethod::Cert),
        m if UNSUPPORTED_METHODS.contains(&m) => Err(LineError::UnsupportedMethod(token.text)),
        _ => Err(LineError::UnknownMethod(token.text)),
    }
}

fn apply_option(rule: &mut HbaRule, field: Field) -> Result<(), LineError> {
    let text = field
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let Some((name, value)) = text.split_once('=') else {
        return Err(LineError::OptionSyntax(text));
    };
    match name {
        "clientcert" => {
            if rule.conn_type != ConnectionType::HostSsl {
                return Err(LineError::OptionNeedsHostSsl("clientcert"));
            }
            let level = match value {
                "verify-full" => ClientCert::VerifyFull,
                "verify-ca" if rule.method == AuthMethod::Cert => {
                    return Err(LineError::CertNeedsVerifyFull);
                }
                "verify-ca" => ClientCert::VerifyCa,
                _ => return Err(LineError::InvalidClientCert(value.to_owned())),
            };
            rule.clientcert = Some(level);
        }
        "clientname" => {
            if rule.conn_type != ConnectionType::HostSsl {
                return Err(LineError::OptionNeedsHostSsl("clientname"));
            }
            rule.clientname = match value {
                "CN" => ClientName::Cn,
                "DN" => ClientName::Dn,
                _ => return Err(LineError::InvalidClientName(value.to_owned())),
            };
        }
        "map" => return Err(LineError::UserMap),
        _ => {
            return Err(LineError::UnknownOption {
                option: name.to_owned(),
                method: rule.method,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn rules(text: &str) -> HbaRules {
        match HbaRules::parse(text, "pool_hba.conf") {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn line_error(text: &str) -> (usize, LineError, String) {
        match HbaRules::parse(text, "pool_hba.conf") {
            Err(e @ HbaError::Line { .. }) => {
                let message = e.to_string();
                let HbaError::Line { line, kind, .. } = e else {
                    unreachable!()
                };
                (line, kind, message)
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    fn host(addr: &str, tls: bool) -> Connection {
        Connection::Host {
            addr: addr.parse().unwrap(),
            tls,
        }
    }

    fn find_line(rules: &HbaRules, conn: Connection, database: &str, user: &str) -> Option<usize> {
        rules
            .find(&HbaRequest {
                conn,
                database,
                user,
            })
            .map(|r| r.line)
    }

    #[test]
    fn parses_every_accepted_form() {
        let r = rules(
            "# comment line\n\
             \n\
             local   all         all                         trust\n\
             host    db1,db2     alice,bob   10.0.0.0/8      md5   # trailing comment\n\
             hostssl all         all         ::1/128         scram-sha-256\n\
             hostnossl sameuser  all         192.168.1.0 255.255.255.0 password\n\
             host    all         all         all             reject\n\
             hostssl all         all         0.0.0.0/0       cert clientname=DN\n\
             hostssl all         all         0.0.0.0/0       md5 clientcert=verify-ca\n\
             \thost\t\"all\"\t\"x y\"\tall\ttrust\n",
        );
        let lines: Vec<_> = r.rules().iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10]);
        let rs = r.rules();
        assert_eq!(rs[0].conn_type, ConnectionType::Local);
        assert!(rs[0].address.is_none());
        assert_eq!(rs[1].method, AuthMethod::Md5);
        assert_eq!(rs[1].databases.len(), 2);
        assert_eq!(rs[2].conn_type, ConnectionType::HostSsl);
        assert_eq!(rs[2].method, AuthMethod::ScramSha256);
        assert_eq!(rs[3].conn_type, ConnectionType::HostNoSsl);
        assert!(matches!(rs[3].databases[0], DatabaseMatch::SameUser));
        assert_eq!(
            rs[3].address,
            Some(AddressMatch::Net(
                IpNet::new(
                    IpAddr::V4(Ipv4Addr::new(192, 168, 1, 0)),
                    IpAddr::V4(Ipv4Addr::new(255, 255, 255, 0))
                )
                .unwrap()
            ))
        );
        assert_eq!(rs[3].method, AuthMethod::Password);
        assert_eq!(rs[4].address, Some(AddressMatch::All));
        assert_eq!(rs[4].method, AuthMethod::Reject);
        assert_eq!(rs[5].method, AuthMethod::Cert);
        assert_eq!(rs[5].clientcert, Some(ClientCert::VerifyFull));
        assert_eq!(rs[5].clientname, ClientName::Dn);
        assert_eq!(rs[6].clientcert, Some(ClientCert::VerifyCa));
        assert!(matches!(&rs[7].databases[0], DatabaseMatch::Name(n) if n == "all"));
        assert!(matches!(&rs[7].users[0], UserMatch::Name(n) if n == "x y"));
    }

    #[test]
    fn comma_lists_allow_blanks_after_commas() {
        let r = rules("host a, b all 10.0.0.0/8 trust\n");
        let names: Vec<_> = r.rules()[0]
            .databases
            .iter()
            .map(|d| match d {
                DatabaseMatch::Name(n) => n.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
        // A comma after blanks starts a new column whose first entry is
        // empty, as in PostgreSQL; we refuse it.
        let (_, kind, _) = line_error("host a ,b all 10.0.0.0/8 trust\n");
        assert_eq!(kind, LineError::EmptyListEntry("user"));
    }

    #[test]
    fn backslash_continuation_joins_lines() {
        let r = rules("host all \\\n     all 10.0.0.0/8 \\\n   md5\r\nlocal all all trust\n");
        assert_eq!(r.rules().len(), 2);
        assert_eq!(r.rules()[0].line, 1);
        assert_eq!(r.rules()[0].method, AuthMethod::Md5);
        assert_eq!(r.rules()[1].line, 4);
        // A backslash followed by a blank does not continue the line.
        let (line, kind, _) = line_error("local all all trust \\ \nlocal all all md5\n");
        assert_eq!(line, 1);
        assert_eq!(kind, LineError::OptionSyntax("\\".into()));
        // A continuation on the last line keeps what it has.
        let r = rules("local all all trust\\");
        assert_eq!(r.rules()[0].method, AuthMethod::Trust);
    }

    #[test]
    fn continuation_errors_name_the_first_line() {
        let (line, kind, message) =
            line_error("local all all trust\nhost all \\\nall \\\n1.2.3.4/8 ldap\n");
        assert_eq!(line, 2);
        assert_eq!(kind, LineError::UnsupportedMethod("ldap".into()));
        assert!(message.starts_with("pool_hba.conf:2: "), "{message}");
    }

    #[test]
    fn quotes_make_keywords_literal() {
        let r = rules(
            "local \"all\" \"all\" reject\n\
             local \"replication\",\"sameuser\" \"+admins\",\"@list\" md5\n\
             local all all trust\n",
        );
        let at = |db, user| find_line(&r, Connection::Local, db, user);
        assert_eq!(at("all", "all"), Some(1));
        assert_eq!(at("all", "bob"), Some(3));
        assert_eq!(at("replication", "+admins"), Some(2));
        assert_eq!(at("sameuser", "@list"), Some(2));
        assert_eq!(at("bob", "bob"), Some(3));
    }

    #[test]
    fn doubled_quotes_and_partial_quotes() {
        let r = rules("local \"a\"\"b\" x\"y z\"w trust\n");
        assert!(matches!(&r.rules()[0].databases[0], DatabaseMatch::Name(n) if n == "a\"b"));
        assert!(matches!(&r.rules()[0].users[0], UserMatch::Name(n) if n == "xy zw"));
        // Comma and hash inside quotes are literal.
        let r = rules("local \"a,b#c\" all trust\n");
        assert!(matches!(&r.rules()[0].databases[0], DatabaseMatch::Name(n) if n == "a,b#c"));
    }

    #[test]
    fn keywords_are_case_sensitive() {
        let r = rules("local ALL All trust\n");
        assert_eq!(find_line(&r, Connection::Local, "db", "u"), None);
        assert_eq!(find_line(&r, Connection::Local, "ALL", "All"), Some(1));
    }

    #[test]
    fn sameuser_and_replication() {
        let r = rules("local sameuser all md5\nlocal replication all trust\n");
        assert_eq!(find_line(&r, Connection::Local, "bob", "bob"), Some(1));
        assert_eq!(find_line(&r, Connection::Local, "bob", "alice"), None);
        assert_eq!(
            find_line(&r, Connection::Local, "replication", "alice"),
            None
        );
    }

    #[test]
    fn regex_names() {
        let r = rules(
            "local /^app_\\d+$ all md5\n\
             local all \"/^(ro|rw)_,x$\" scram-sha-256\n\
             local all /admin trust\n",
        );
        assert_eq!(find_line(&r, Connection::Local, "app_12", "u"), Some(1));
        assert_eq!(find_line(&r, Connection::Local, "app_x", "rw_,x"), Some(2));
        // Unanchored patterns match anywhere, as in PostgreSQL.
        assert_eq!(
            find_line(&r, Connection::Local, "db", "superadmin1"),
            Some(3)
        );
        assert_eq!(find_line(&r, Connection::Local, "db", "bob"), None);
        assert_eq!(
            format!("{:?}", r.rules()[0].databases[0]),
            "Regex(/^app_\\d+$)"
        );
        let (line, kind, message) = line_error("local all all trust\nlocal all /(unclosed md5\n");
        assert_eq!(line, 2);
        assert!(
            matches!(kind, LineError::InvalidRegex { ref pattern, .. } if pattern == "/(unclosed")
        );
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.starts_with("pool_hba.conf:2: invalid regular expression"),
            "{message}"
        );
    }

    #[test]
    fn first_match_wins_and_no_match_is_none() {
        let r = rules(
            "host all bob 10.0.0.0/8 reject\n\
             host all all 10.0.0.0/8 md5\n\
             host all all 10.1.0.0/16 trust\n",
        );
        assert_eq!(find_line(&r, host("10.1.2.3", false), "d", "bob"), Some(1));
        assert_eq!(
            find_line(&r, host("10.1.2.3", false), "d", "alice"),
            Some(2)
        );
        assert_eq!(find_line(&r, host("11.0.0.1", false), "d", "alice"), None);
        assert_eq!(find_line(&r, Connection::Local, "d", "alice"), None);
        let rule = r
            .find(&HbaRequest {
                conn: host("10.9.9.9", true),
                database: "d",
                user: "alice",
            })
            .unwrap();
        assert_eq!((rule.line, rule.method), (2, AuthMethod::Md5));
    }

    #[test]
    fn connection_types() {
        let r = rules(
            "local all all trust\n\
             hostssl all all all scram-sha-256\n\
             hostnossl all all all reject\n",
        );
        assert_eq!(find_line(&r, Connection::Local, "d", "u"), Some(1));
        assert_eq!(find_line(&r, host("1.2.3.4", true), "d", "u"), Some(2));
        assert_eq!(find_line(&r, host("1.2.3.4", false), "d", "u"), Some(3));
        let r = rules("host all all all md5\n");
        assert_eq!(find_line(&r, host("1.2.3.4", true), "d", "u"), Some(1));
        assert_eq!(find_line(&r, host("1.2.3.4", false), "d", "u"), Some(1));
        assert_eq!(find_line(&r, Connection::Local, "d", "u"), None);
    }

    #[test]
    fn address_matching() {
        let r = rules(
            "host all all 192.168.1.7/32 trust\n\
             host all all 192.168.0.0/16 md5\n\
             host all all 10.0.0.0 255.0.0.0 password\n\
             host all all 2001:db8::/32 scram-sha-256\n\
             host all all ::1/128 trust\n\
             host all all 0.0.0.0/0 reject\n\
             host all all ::/0 reject\n",
        );
        let at = |addr: &str| find_line(&r, host(addr, false), "d", "u");
        assert_eq!(at("192.168.1.7"), Some(1));
        assert_eq!(at("192.168.1.8"), Some(2));
        assert_eq!(at("192.168.255.255"), Some(2));
        assert_eq!(at("10.200.0.1"), Some(3));
        assert_eq!(at("2001:db8:1::5"), Some(4));
        assert_eq!(at("2001:db9::5"), Some(7));
        assert_eq!(at("::1"), Some(5));
        assert_eq!(at("8.8.8.8"), Some(6));
        // IPv4-mapped IPv6 clients match IPv4 rules.
        assert_eq!(at("::ffff:192.168.1.7"), Some(1));
        assert_eq!(at("::ffff:10.1.1.1"), Some(3));
        assert_eq!(at("::ffff:8.8.8.8"), Some(6));
    }

    #[test]
    fn cidr_edges() {
        let r = rules(
            "host all all 10.1.2.3/24 trust\n\
             host all all 1.2.3.4/0 md5\n",
        );
        // Host bits in the range are ignored, as PostgreSQL does.
        assert_eq!(find_line(&r, host("10.1.2.200", false), "d", "u"), Some(1));
        assert_eq!(find_line(&r, host("200.1.1.1", false), "d", "u"), Some(2));
        // An IPv4 rule never matches a plain IPv6 client.
        assert_eq!(find_line(&r, host("::1", false), "d", "u"), None);
        let net = IpNet::with_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).unwrap();
        assert!(net.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(!net.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(IpNet::with_prefix(IpAddr::V4(Ipv4Addr::LOCALHOST), 33).is_none());
        assert!(IpNet::with_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_none());
        assert!(
            IpNet::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            )
            .is_none()
        );
        // A non-contiguous netmask selects exactly its bits.
        let r = rules("host all all 10.0.0.5 255.0.0.255 trust\n");
        assert_eq!(find_line(&r, host("10.77.88.5", false), "d", "u"), Some(1));
        assert_eq!(find_line(&r, host("10.77.88.6", false), "d", "u"), None);
    }

    #[test]
    fn clientcert_options() {
        let r = rules("hostssl all all all scram-sha-256 clientcert=verify-full clientname=CN\n");
        assert_eq!(r.rules()[0].clientcert, Some(ClientCert::VerifyFull));
        assert_eq!(r.rules()[0].clientname, ClientName::Cn);
        let r = rules("hostssl all all all cert clientcert=verify-full\n");
        assert_eq!(r.rules()[0].clientcert, Some(ClientCert::VerifyFull));
        let r = rules("hostssl all all all md5\n");
        assert_eq!(r.rules()[0].clientcert, None);
    }

    #[test]
    fn every_error_names_file_and_line() {
        let cases: &[(&str, LineError)] = &[
            (
                "bogus all all trust",
                LineError::UnknownConnectionType("bogus".into()),
            ),
            (
                "hostgssenc all all all trust",
                LineError::UnsupportedConnectionType("hostgssenc".into()),
            ),
            (
                "hostnogssenc all all all trust",
                LineError::UnsupportedConnectionType("hostnogssenc".into()),
            ),
            (
                "include other.conf",
                LineError::IncludeDirective("include".into()),
            ),
            (
                "include_dir conf.d",
                LineError::IncludeDirective("include_dir".into()),
            ),
            ("local", LineError::MissingField("database")),
            ("local all", LineError::MissingField("user")),
            (
                "local all all",
                LineError::MissingField("authentication method"),
            ),
            ("host all all", LineError::MissingField("address")),
            (
                "host all all 10.0.0.0/8",
                LineError::MissingField("authentication method"),
            ),
            ("local all all \"trust", LineError::UnterminatedQuote),
            (
                "local a,,b all trust",
                LineError::EmptyListEntry("database"),
            ),
            ("local all a,", LineError::EmptyListEntry("user")),
            (
                "host,local all all trust",
                LineError::MultipleValues("connection type"),
            ),
            (
                "local all all trust,md5",
                LineError::MultipleValues("authentication method"),
            ),
            (
                "host all all 1.0.0.0/8,2.0.0.0/8 trust",
                LineError::MultipleValues("address"),
            ),
            (
                "local samerole all trust",
                LineError::RoleMembership("samerole".into()),
            ),
            (
                "local samegroup all trust",
                LineError::RoleMembership("samegroup".into()),
            ),
            (
                "local all +admins trust",
                LineError::GroupMembership("+admins".into()),
            ),
            (
                "local @dbs all trust",
                LineError::FileInclusion("@dbs".into()),
            ),
            (
                "local all @users trust",
                LineError::FileInclusion("@users".into()),
            ),
            (
                "host all all samehost trust",
                LineError::UnsupportedAddressKeyword("samehost".into()),
            ),
            (
                "host all all samenet trust",
                LineError::UnsupportedAddressKeyword("samenet".into()),
            ),
            (
                "host all all db.example.com trust",
                LineError::HostName("db.example.com".into()),
            ),
            (
                "host all all .example.com trust",
                LineError::HostName(".example.com".into()),
            ),
            (
                "host all all \"all\" trust",
                LineError::HostName("all".into()),
            ),
            (
                "host all all 10.0.0.256/8 trust",
                LineError::InvalidAddress("10.0.0.256/8".into()),
            ),
            (
                "host all all 10.0.0.0/33 trust",
                LineError::InvalidAddress("10.0.0.0/33".into()),
            ),
            (
                "host all all 10.0.0.0/+8 trust",
                LineError::InvalidAddress("10.0.0.0/+8".into()),
            ),
            (
                "host all all ::1/129 trust",
                LineError::InvalidAddress("::1/129".into()),
            ),
            (
                "host all all 10.0.0.256 trust",
                LineError::InvalidAddress("10.0.0.256".into()),
            ),
            (
                "host all all fe80::1%eth0 trust",
                LineError::InvalidAddress("fe80::1%eth0".into()),
            ),
            (
                "host all all 10.0.0.1 md5",
                LineError::MissingNetmask("10.0.0.1".into()),
            ),
            (
                "host all all 10.0.0.1",
                LineError::MissingNetmask("10.0.0.1".into()),
            ),
            (
                "host all all 10.0.0.1 ffff:: md5",
                LineError::InvalidNetmask {
                    addr: "10.0.0.1".into(),
                    netmask: "ffff::".into(),
                },
            ),
            (
                "host all all 10.0.0.1 255.0.0 md5",
                LineError::InvalidNetmask {
                    addr: "10.0.0.1".into(),
                    netmask: "255.0.0".into(),
                },
            ),
            (
                "host all all all ldap",
                LineError::UnsupportedMethod("ldap".into()),
            ),
            (
                "host all all all pam",
                LineError::UnsupportedMethod("pam".into()),
            ),
            (
                "local all all peer",
                LineError::UnsupportedMethod("peer".into()),
            ),
            (
                "host all all all ident",
                LineError::UnsupportedMethod("ident".into()),
            ),
            (
                "host all all all gss",
                LineError::UnsupportedMethod("gss".into()),
            ),
            (
                "host all all all radius",
                LineError::UnsupportedMethod("radius".into()),
            ),
            (
                "host all all all md6",
                LineError::UnknownMethod("md6".into()),
            ),
            (
                "host all all all MD5",
                LineError::UnknownMethod("MD5".into()),
            ),
            ("host all all all cert", LineError::CertNeedsHostSsl),
            ("local all all cert", LineError::CertNeedsHostSsl),
            (
                "hostssl all all all md5 clientcert",
                LineError::OptionSyntax("clientcert".into()),
            ),
            (
                "host all all all md5 clientcert=verify-full",
                LineError::OptionNeedsHostSsl("clientcert"),
            ),
            (
                "host all all all md5 clientname=CN",
                LineError::OptionNeedsHostSsl("clientname"),
            ),
            (
                "hostssl all all all md5 clientcert=1",
                LineError::InvalidClientCert("1".into()),
            ),
            (
                "hostssl all all all md5 clientcert=no-verify",
                LineError::InvalidClientCert("no-verify".into()),
            ),
            (
                "hostssl all all all cert clientcert=verify-ca",
                LineError::CertNeedsVerifyFull,
            ),
            (
                "hostssl all all all cert clientname=cn",
                LineError::InvalidClientName("cn".into()),
            ),
            ("hostssl all all all cert map=certmap", LineError::UserMap),
            (
                "host all all all md5 pamservice=x",
                LineError::UnknownOption {
                    option: "pamservice".into(),
                    method: AuthMethod::Md5,
                },
            ),
        ];
        for (text, expected) in cases {
            let input = format!("# header\nlocal all all trust\n{text}\nlocal all all md5\n");
            let (line, kind, message) = line_error(&input);
            assert_eq!(&kind, expected, "{text}");
            assert_eq!(line, 3, "{text}");
            assert!(message.starts_with("pool_hba.conf:3: "), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn messages_read_well() {
        let (_, _, m) = line_error("host all all all ldap\n");
        assert_eq!(
            m,
            "pool_hba.conf:1: authentication method \"ldap\" is not supported by pghalo \
             (it supports trust, reject, md5, scram-sha-256, password and cert)"
        );
        let (_, _, m) = line_error("host all all 10.0.0.1 md5\n");
        assert_eq!(
            m,
            "pool_hba.conf:1: the IP address \"10.0.0.1\" needs a CIDR mask length \
             (such as 10.0.0.1/32) or a netmask column"
        );
    }

    #[test]
    fn empty_file_is_refused() {
        for text in ["", "\n\n", "# only comments\n   # more\n"] {
            let err = HbaRules::parse(text, "pool_hba.conf").unwrap_err();
            assert!(matches!(err, HbaError::Empty { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                "pool_hba.conf contains no rules, so every connection would be rejected"
            );
        }
    }

    #[test]
    fn load_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("pghalo-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool_hba.conf");
        std::fs::write(&path, "host all all 127.0.0.1/32 scram-sha-256\n").unwrap();
        let r = HbaRules::load(&path).unwrap();
        assert_eq!(r.rules()[0].method, AuthMethod::ScramSha256);
        std::fs::write(&path, "host all all 127.0.0.1/32 ldap\n").unwrap();
        let err = HbaRules::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:1: ", path.display())), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = HbaRules::load(&path).unwrap_err();
        assert!(matches!(err, HbaError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn odd_input_never_panics() {
        for text in [
            "\"",
            "\\",
            "#\"",
            ",",
            ",,,",
            "\"\"",
            "local \"\" \"\" trust",
            "host a b / trust",
            "host a b /8 trust",
            "host a b 1.2.3.4/ trust",
            "\u{0}\u{1}",
            "local / / trust",
            "host all all :: :: trust",
            "host all all ::ffff:1.2.3.4/128 trust",
        ] {
            let _ = HbaRules::parse(text, "f");
        }
        // A quoted empty name is a name that matches nothing.
        let r = rules("local \"\" \"\" trust\n");
        assert_eq!(find_line(&r, Connection::Local, "", ""), Some(1));
        assert_eq!(find_line(&r, Connection::Local, "d", "u"), None);
    }

    #[test]
    fn display_of_methods() {
        let names: Vec<_> = [
            AuthMethod::Trust,
            AuthMethod::Reject,
            AuthMethod::Md5,
            AuthMethod::ScramSha256,
            AuthMethod::Password,
            AuthMethod::Cert,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "trust",
                "reject",
                "md5",
                "scram-sha-256",
                "password",
                "cert"
            ]
        );
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let words: Vec<&str> = "local host hostssl all sameuser replication trust md5 cert ldap clientcert=verify-ca 10.0.0.0/8 ::1 255.0.0.0 \" , # \\ \n : / + @ x ( ) [ ] .".split(' ').collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..3000 {
            let n = rng.gen_range(0..16);
            let text: String = (0..n)
                .map(|_| {
                    let w = words[rng.gen_range(0..words.len())];
                    if rng.gen_bool(0.5) {
                        format!("{w} ")
                    } else {
                        w.to_owned()
                    }
                })
                .collect();
            let _ = HbaRules::parse(&text, "f");
        }
    }
}
