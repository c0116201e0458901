//! The small typed values of the configuration: listen addresses, backend
//! hosts and flags, modes, the reset query list, and the serde helpers that
//! read pgpool's spellings (`"*"`, `"a,b"`, `"ALLOW_TO_FAILOVER|ALWAYS_PRIMARY"`,
//! `"ABORT; DISCARD ALL"`) as well as TOML arrays.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// One entry of pgpool's listen_addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// `"*"`: every IPv4 and IPv6 address of the host.
    Any,
    Ip(IpAddr),
    /// Resolved when the listener binds, so a name that moves is followed on
    /// restart.
    Host(String),
}

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            Ok(ListenAddress::Any)
        } else if let Ok(ip) = text.parse::<IpAddr>() {
            Ok(ListenAddress::Ip(ip))
        } else if is_hostname(text) {
            Ok(ListenAddress::Host(text.to_owned()))
        } else {
            Err(format!(
                "invalid listen address {text:?} (use \"*\", an IP address or a hostname)"
            ))
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Any => f.write_str("*"),
            ListenAddress::Ip(ip) => ip.fmt(f),
            ListenAddress::Host(host) => f.write_str(host),
        }
    }
}

/// Where a backend listens: pgpool's backend_hostnameN, which is a TCP host
/// or, when it starts with '/', the directory holding the server's socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendHost {
    Tcp(String),
    /// The directory of `.s.PGSQL.<port>`, as libpq's `host=/dir`.
    Unix(PathBuf),
}

impl BackendHost {
    pub fn is_unix(&self) -> bool {
        matches!(self, BackendHost::Unix(_))
    }
}

impl FromStr for BackendHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('/') {
            Ok(BackendHost::Unix(PathBuf::from(text)))
        } else if text.parse::<IpAddr>().is_ok() || is_hostname(text) {
            Ok(BackendHost::Tcp(text.to_owned()))
        } else {
            Err(format!(
                "invalid host {text:?} (use a hostname, an IP address, or a Unix socket directory starting with '/')"
            ))
        }
    }
}

impl fmt::Display for BackendHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendHost::Tcp(host) => f.write_str(host),
            BackendHost::Unix(dir) => dir.display().fmt(f),
        }
    }
}

/// RFC 1123 names, plus '_' because internal DNS zones use it; this catches
/// typos such as a stray ':' or space, not every unresolvable name. An
/// all-digit last label is refused so that a mistyped IPv4 address
/// ("10.0.0.300") is not taken for a name.
fn is_hostname(text: &str) -> bool {
    let name = text.trim_end_matches('.');
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    !name.is_empty()
        && name.len() <= 253
        && !numeric_tld
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// pgpool's backend_flagN. Only two facts are kept because only two can
/// vary: whether failover of this node is allowed, and whether it is always
/// the primary whatever it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendFlags {
    /// DISALLOW_TO_FAILOVER: a dead node is detached but never failed over.
    pub disallow_to_failover: bool,
    /// ALWAYS_PRIMARY: the node is the primary even when it cannot be asked
    /// (pgpool uses this for managed services such as Aurora).
    pub always_primary: bool,
}

const FLAG_NAMES: &str = "ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER or ALWAYS_PRIMARY";

impl BackendFlags {
    pub fn allows_failover(self) -> bool {
        !self.disallow_to_failover
    }

    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut allow = false;
        let mut flags = BackendFlags::default();
        for name in names {
            // pgpool compares the flag names without regard to case.
            match name.trim().to_ascii_uppercase().as_str() {
                "ALLOW_TO_FAILOVER" => allow = true,
                "DISALLOW_TO_FAILOVER" => flags.disallow_to_failover = true,
                "ALWAYS_PRIMARY" => flags.always_primary = true,
                "" => {}
                _ => {
                    return Err(format!(
                        "unknown backend flag {:?} (expected {FLAG_NAMES})",
                        name.trim()
                    ));
                }
            }
        }
        if allow && flags.disallow_to_failover {
            return Err("ALLOW_TO_FAILOVER and DISALLOW_TO_FAILOVER cannot both be set".to_owned());
        }
        Ok(flags)
    }

    fn names(self) -> Vec<&'static str> {
        let mut names = vec![if self.disallow_to_failover {
            "DISALLOW_TO_FAILOVER"
        } else {
            "ALLOW_TO_FAILOVER"
        }];
        if self.always_primary {
            names.push("ALWAYS_PRIMARY");
        }
        names
    }
}

impl fmt::Display for BackendFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join("|"))
    }
}

impl<'de> Deserialize<'de> for BackendFlags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = deserializer.deserialize_any(StringOrList { separator: '|' })?;
        BackendFlags::from_names(names.iter().map(String::as_str)).map_err(de::Error::custom)
    }
}

impl Serialize for BackendFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.names())
    }
}

/// When a server connection goes back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// At the end of the client's session (pgpool's only mode).
    #[default]
    Session,
    /// At the end of each transaction, when the connection is clean.
    Transaction,
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        })
    }
}

/// TLS from pghalo to the backends, with libpq's sslmode meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendTlsMode {
    #[default]
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS or no connection.
    Require,
}

impl fmt::Display for BackendTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendTlsMode::Disable => "disable",
            BackendTlsMode::Prefer => "prefer",
            BackendTlsMode::Require => "require",
        })
    }
}

/// pgpool's reset_query_list: the statements run on a server connection
/// before another client gets it. The string form is split on ';' as pgpool
/// does; a query that itself contains ';' needs the array form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResetQueryList(pub Vec<String>);

impl ResetQueryList {
    pub fn queries(&self) -> &[String] {
        &self.0
    }
}

impl Default for ResetQueryList {
    fn default() -> Self {
        ResetQueryList(vec!["DISCARD ALL".to_owned()])
    }
}

impl fmt::Display for ResetQueryList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl<'de> Deserialize<'de> for ResetQueryList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let queries = deserializer.deserialize_any(StringOrList { separator: ';' })?;
        Ok(ResetQueryList(
            queries
                .iter()
                .map(|q| q.trim().trim_end_matches(';').trim_end().to_owned())
                .filter(|q| !q.is_empty())
                .collect(),
        ))
    }
}

impl Serialize for ResetQueryList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.0)
    }
}

/// Reads either a TOML array of strings or pgpool's single string with
/// `separator` between the items.
struct StringOrList {
    separator: char,
}

impl<'de> Visitor<'de> for StringOrList {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an array of strings or one string with '{}' between the items",
            self.separator
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(v.split(self.separator)
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(items)
    }
}

/// A list of values parsed with `FromStr`, from an array or from pgpool's
/// comma-separated string (listen_addresses, unix_socket_directories).
pub(super) fn comma_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    deserializer
        .deserialize_any(StringOrList { separator: ',' })?
        .iter()
        .map(|item| item.trim().parse().map_err(de::Error::custom))
        .collect()
}

pub(super) fn serialize_display_seq<S, T>(items: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: fmt::Display,
{
    serializer.collect_seq(items.iter().map(ToString::to_string))
}

pub(super) fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(deserializer)?
        .parse()
        .map_err(de::Error::custom)
}

pub(super) fn serialize_display<S, T>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: fmt::Display,
{
    serializer.collect_str(value)
}

/// A file path where `""` means "none", as pgpool writes unset paths.
pub(super) fn optional_path<'de, D>(deserializer: D) -> Result<Option<PathBuf>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    Ok((!text.is_empty()).then(|| PathBuf::from(text)))
}

/// A TCP port. Read as a wide integer so that 0 and 70000 get a message about
/// ports rather than about `u16`.
pub(super) fn port<'de, D>(deserializer: D) -> Result<u16, D::Error>
where
    D: Deserializer<'de>,
{
    let n = i64::deserialize(deserializer)?;
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| de::Error::custom(format!("invalid port {n} (use 1 to 65535)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!("*".parse::<ListenAddress>().unwrap(), ListenAddress::Any);
        assert_eq!(
            "::1".parse::<ListenAddress>().unwrap(),
            ListenAddress::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            "db-1.example.com".parse::<ListenAddress>().unwrap(),
            ListenAddress::Host("db-1.example.com".into())
        );
        for bad in ["", "a b", "host:5432", "-x", "a..b", "10.0.0.300", "."] {
            let err = bad.parse::<ListenAddress>().unwrap_err();
            assert!(err.contains("invalid listen address"), "{bad}: {err}");
        }
    }

    #[test]
    fn backend_hosts() {
        assert_eq!(
            "/var/run/postgresql".parse::<BackendHost>().unwrap(),
            BackendHost::Unix("/var/run/postgresql".into())
        );
        assert!("/tmp".parse::<BackendHost>().unwrap().is_unix());
        assert_eq!(
            "10.0.0.1".parse::<BackendHost>().unwrap(),
            BackendHost::Tcp("10.0.0.1".into())
        );
        assert_eq!(
            "fe80::1".parse::<BackendHost>().unwrap().to_string(),
            "fe80::1"
        );
        let err = "tmp/sock".parse::<BackendHost>().unwrap_err();
        assert!(err.contains("starting with '/'"), "{err}");
        assert!("".parse::<BackendHost>().is_err());
    }

    #[test]
    fn flags() {
        let f = BackendFlags::from_names(["ALLOW_TO_FAILOVER"]).unwrap();
        assert!(f.allows_failover() && !f.always_primary);
        let f = BackendFlags::from_names(["disallow_to_failover", "ALWAYS_PRIMARY"]).unwrap();
        assert!(!f.allows_failover() && f.always_primary);
        assert_eq!(f.to_string(), "DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY");
        let err =
            BackendFlags::from_names(["ALLOW_TO_FAILOVER", "DISALLOW_TO_FAILOVER"]).unwrap_err();
        assert!(err.contains("cannot both be set"), "{err}");
        let err = BackendFlags::from_names(["FAILOVER"]).unwrap_err();
        assert!(err.contains("unknown backend flag \"FAILOVER\""), "{err}");
        assert!(err.contains("ALWAYS_PRIMARY"), "{err}");
    }

    #[derive(Deserialize, Debug)]
    struct W {
        #[serde(default)]
        flags: BackendFlags,
        #[serde(default)]
        reset: Option<ResetQueryList>,
        #[serde(default, deserialize_with = "comma_list")]
        listen: Vec<ListenAddress>,
    }

    #[test]
    fn pgpool_string_forms() {
        let w: W = toml::from_str(
            "flags = \"DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY\"\n\
             reset = \"ABORT; DISCARD ALL;\"\n\
             listen = \"localhost, 10.0.0.1\"",
        )
        .unwrap();
        assert!(w.flags.disallow_to_failover && w.flags.always_primary);
        assert_eq!(w.reset.unwrap().queries(), ["ABORT", "DISCARD ALL"]);
        assert_eq!(
            w.listen,
            [
                ListenAddress::Host("localhost".into()),
                ListenAddress::Ip("10.0.0.1".parse().unwrap())
            ]
        );
    }

    #[test]
    fn array_forms() {
        let w: W = toml::from_str(
            "flags = [\"ALWAYS_PRIMARY\"]\n\
             reset = [\"SELECT 'a;b'\", \"DISCARD ALL;\"]\n\
             listen = [\"*\"]",
        )
        .unwrap();
        assert!(w.flags.always_primary && w.flags.allows_failover());
        assert_eq!(w.reset.unwrap().queries(), ["SELECT 'a;b'", "DISCARD ALL"]);
        assert_eq!(w.listen, [ListenAddress::Any]);
    }

    #[test]
    fn reset_query_list_default_and_display() {
        assert_eq!(ResetQueryList::default().to_string(), "DISCARD ALL");
        assert_eq!(
            ResetQueryList(vec!["ABORT".into(), "DISCARD ALL".into()]).to_string(),
            "ABORT; DISCARD ALL"
        );
    }

    #[test]
    fn modes_display() {
        assert_eq!(PoolMode::Transaction.to_string(), "transaction");
        assert_eq!(BackendTlsMode::Require.to_string(), "require");
    }
}
