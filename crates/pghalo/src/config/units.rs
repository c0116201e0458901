//! Values with units, written the way pgpool and PostgreSQL operators already
//! write them: durations (`"500ms"`, `"5s"`, `"2min"`, `"1h"`, `"1d"`, or a
//! bare integer of seconds, pgpool's convention), byte sizes (`"64MB"`, with
//! PostgreSQL's binary units, 1kB = 1024 bytes, or a bare integer of bytes)
//! and octal file modes (`"0777"`).
//!
//! Each type parses from a string (`FromStr`), deserialises from a TOML string
//! or integer, and prints back in a form it parses again.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const DURATION_UNITS: &str = "use ms, s, min, h, d; a bare number means seconds";
const SIZE_UNITS: &str = "use B, kB, MB, GB, TB (1kB = 1024 bytes); a bare number means bytes";

/// A duration from the configuration. Zero is meaningful for several
/// parameters (pgpool uses it for "off"), so it is kept rather than rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const ZERO: ConfigDuration = ConfigDuration(Duration::ZERO);

    pub const fn from_secs(secs: u64) -> ConfigDuration {
        ConfigDuration(Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> ConfigDuration {
        ConfigDuration(Duration::from_millis(ms))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// The duration as a limit, where zero means "no limit" (pgpool's meaning
    /// of 0 for authentication_timeout, client_idle_limit, connect_timeout).
    pub fn limit(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

/// Why a duration, size or mode did not parse; the text is one phrase meant
/// to follow the key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError(String);

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnitError {}

/// Splits `"15 min"` into `(15, "min")`. Only whole numbers are accepted:
/// fractions would need a rounding rule nobody reads in a config file.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse::<u64>().ok()?;
    Some((number, text[digits..].trim_start()))
}

impl FromStr for ConfigDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let bad = || UnitError(format!("invalid duration {text:?} ({DURATION_UNITS})"));
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "min" | "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| UnitError(format!("duration {text:?} is too large")))?;
        Ok(ConfigDuration::from_millis(millis))
    }
}

impl fmt::Display for ConfigDuration {
    /// Prints the largest unit that divides the value exactly, so `90s`
    /// stays `90s` rather than becoming `1.5min`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("min", 60_000),
            ("s", 1_000),
        ] {
            if millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        write!(f, "{millis}ms")
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor::<ConfigDuration>::new(
            "a duration such as \"30s\" or a number of seconds",
            |n| {
                u64::try_from(n)
                    .map(ConfigDuration::from_secs)
                    .map_err(|_| UnitError(format!("invalid duration {n} (must not be negative)")))
            },
        ))
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A number of bytes, with PostgreSQL's units (kB = 1024 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

const KB: u64 = 1024;
const SIZE_TABLE: [(&str, u64); 4] = [
    ("TB", KB * KB * KB * KB),
    ("GB", KB * KB * KB),
    ("MB", KB * KB),
    ("kB", KB),
];

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let bad = || UnitError(format!("invalid size {text:?} ({SIZE_UNITS})"));
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        // Case matters, as in PostgreSQL: "mb" would read as millibits.
        let multiplier = match unit {
            "" | "B" => 1,
            other => SIZE_TABLE
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, size)| *size)
                .ok_or_else(bad)?,
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| UnitError(format!("size {text:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, size) in SIZE_TABLE {
                if self.0.is_multiple_of(size) {
                    return write!(f, "{}{unit}", self.0 / size);
                }
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor::<ByteSize>::new(
            "a size such as \"64MB\" or a number of bytes",
            |n| {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| UnitError(format!("invalid size {n} (must not be negative)")))
            },
        ))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Permission bits for a Unix socket file, written in octal as in pgpool's
/// unix_socket_permissions (`"0777"`); a TOML octal integer (`0o777`) works
/// too.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(pub u32);

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileMode({:#o})", self.0)
    }
}

impl FileMode {
    pub const fn bits(self) -> u32 {
        self.0
    }

    fn checked(bits: i64) -> Result<FileMode, UnitError> {
        u32::try_from(bits)
            .ok()
            .filter(|b| *b <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| {
                // A negative number printed in octal would show its two's
                // complement, which nobody wrote.
                let shown = if bits < 0 {
                    bits.to_string()
                } else {
                    format!("{bits:#o}")
                };
                UnitError(format!(
                    "invalid file mode {shown} (use an octal string from \"0000\" to \"7777\")"
                ))
            })
    }
}

impl Default for FileMode {
    fn default() -> FileMode {
        FileMode(0o777)
    }
}

impl FromStr for FileMode {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let digits = text.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        let bad = || {
            UnitError(format!(
                "invalid file mode {text:?} (use an octal string from \"0000\" to \"7777\")"
            ))
        };
        if digits.is_empty() || digits.len() > 5 {
            return Err(bad());
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
        FileMode::checked(i64::from(bits)).map_err(|_| bad())
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor::<FileMode>::new(
            "an octal file mode such as \"0770\"",
            FileMode::checked,
        ))
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One visitor for the three unit types: strings go through `FromStr`,
/// integers through `from_int`, anything else is a type error that says what
/// was expected.
struct UnitVisitor<T> {
    expecting: &'static str,
    from_int: fn(i64) -> Result<T, UnitError>,
}

impl<T> UnitVisitor<T> {
    fn new(expecting: &'static str, from_int: fn(i64) -> Result<T, UnitError>) -> Self {
        UnitVisitor {
            expecting,
            from_int,
        }
    }
}

impl<T: FromStr<Err = UnitError>> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.from_int)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
        self.visit_i64(v)
    }
}

/// A duration whose bare numbers are milliseconds rather than seconds, for
/// the parameters pgpool defines in milliseconds (delay_threshold_by_time):
/// `500`, `"500"` and `"500ms"` are the same; `"2s"` still means 2 s.
pub(super) fn duration_millis<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ConfigDuration, D::Error> {
    struct Millis;

    impl Visitor<'_> for Millis {
        type Value = ConfigDuration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"500ms\" or a number of milliseconds")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
            let text = v.trim();
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                return text
                    .parse::<u64>()
                    .map(ConfigDuration::from_millis)
                    .map_err(|_| E::custom(format!("duration {v:?} is too large")));
            }
            v.parse().map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigDuration, E> {
            u64::try_from(v)
                .map(ConfigDuration::from_millis)
                .map_err(|_| E::custom(format!("invalid duration {v} (must not be negative)")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigDuration, E> {
            Ok(ConfigDuration::from_millis(v))
        }
    }

    deserializer.deserialize_any(Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Ms {
        #[serde(deserialize_with = "duration_millis")]
        d: ConfigDuration,
    }

    #[test]
    fn bare_numbers_in_milliseconds() {
        let ms = |text: &str| toml::from_str::<Ms>(text).map(|m| m.d);
        assert_eq!(ms("d = 500").unwrap(), ConfigDuration::from_millis(500));
        assert_eq!(ms("d = \"500\"").unwrap(), ConfigDuration::from_millis(500));
        assert_eq!(ms("d = \"2s\"").unwrap(), ConfigDuration::from_secs(2));
        assert_eq!(ms("d = 0").unwrap(), ConfigDuration::ZERO);
        assert!(
            ms("d = -1")
                .unwrap_err()
                .to_string()
                .contains("must not be negative")
        );
        assert!(
            ms("d = \"2 parsecs\"")
                .unwrap_err()
                .to_string()
                .contains("invalid duration")
        );
    }

    fn dur(s: &str) -> Duration {
        s.parse::<ConfigDuration>().unwrap().0
    }

    #[test]
    fn duration_units() {
        assert_eq!(dur("500ms"), Duration::from_millis(500));
        assert_eq!(dur("5s"), Duration::from_secs(5));
        assert_eq!(dur("2min"), Duration::from_secs(120));
        assert_eq!(dur("2m"), Duration::from_secs(120));
        assert_eq!(dur("1h"), Duration::from_secs(3600));
        assert_eq!(dur("1d"), Duration::from_secs(86_400));
        assert_eq!(dur("30"), Duration::from_secs(30));
        assert_eq!(dur(" 15 min "), Duration::from_secs(900));
        assert_eq!(dur("0"), Duration::ZERO);
    }

    #[test]
    fn duration_errors_name_the_units() {
        for bad in ["5 parsecs", "", "s", "-5s", "1.5s", "5S", "10 minutes"] {
            let err = bad.parse::<ConfigDuration>().unwrap_err().to_string();
            assert!(err.contains("use ms, s, min, h, d"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let err = "18446744073709551615d"
            .parse::<ConfigDuration>()
            .unwrap_err();
        assert!(err.to_string().contains("too large"));
        let err = "99999999999999999999999s"
            .parse::<ConfigDuration>()
            .unwrap_err();
        assert!(err.to_string().contains("invalid duration"));
    }

    #[test]
    fn duration_display_round_trips() {
        for (text, shown) in [
            ("500ms", "500ms"),
            ("90s", "90s"),
            ("120s", "2min"),
            ("60min", "1h"),
            ("24h", "1d"),
            ("0", "0s"),
            ("1500ms", "1500ms"),
        ] {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<ConfigDuration>().unwrap(), d);
        }
    }

    #[test]
    fn duration_limit_treats_zero_as_off() {
        assert_eq!(ConfigDuration::ZERO.limit(), None);
        assert_eq!(
            ConfigDuration::from_secs(3).limit(),
            Some(Duration::from_secs(3))
        );
    }

    fn size(s: &str) -> u64 {
        s.parse::<ByteSize>().unwrap().0
    }

    #[test]
    fn size_units() {
        assert_eq!(size("512kB"), 512 * 1024);
        assert_eq!(size("64MB"), 64 << 20);
        assert_eq!(size("1GB"), 1 << 30);
        assert_eq!(size("1TB"), 1 << 40);
        assert_eq!(size("100B"), 100);
        assert_eq!(size("100"), 100);
        assert_eq!(size("8 kB"), 8192);
    }

    #[test]
    fn size_errors_name_the_units() {
        for bad in ["64mb", "1KB", "1 PB", "x", "-1", ""] {
            let err = bad.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.contains("use B, kB, MB, GB, TB"), "{bad}: {err}");
        }
        assert!(
            "99999999TB"
                .parse::<ByteSize>()
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn size_display_round_trips() {
        for (bytes, shown) in [
            (0, "0B"),
            (100, "100B"),
            (2048, "2kB"),
            (64 << 20, "64MB"),
            (3 << 30, "3GB"),
            (1 << 40, "1TB"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), shown);
            assert_eq!(shown.parse::<ByteSize>().unwrap(), ByteSize(bytes));
        }
    }

    #[test]
    fn file_modes() {
        assert_eq!("0777".parse::<FileMode>().unwrap(), FileMode(0o777));
        assert_eq!("770".parse::<FileMode>().unwrap(), FileMode(0o770));
        assert_eq!("0o700".parse::<FileMode>().unwrap(), FileMode(0o700));
        assert_eq!(FileMode(0o70).to_string(), "0070");
        for bad in ["0778", "rwx", "", "17777", "000000"] {
            let err = bad.parse::<FileMode>().unwrap_err().to_string();
            assert!(err.contains("octal"), "{bad}: {err}");
        }
    }

    #[derive(Deserialize, Debug)]
    struct Wrap {
        d: Option<ConfigDuration>,
        b: Option<ByteSize>,
        m: Option<FileMode>,
    }

    fn wrap(text: &str) -> Result<Wrap, String> {
        toml::from_str::<Wrap>(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn deserialise_from_strings_and_integers() {
        let w = wrap("d = 7\nb = 4096\nm = 0o750").unwrap();
        assert_eq!(w.d, Some(ConfigDuration::from_secs(7)));
        assert_eq!(w.b, Some(ByteSize(4096)));
        assert_eq!(w.m, Some(FileMode(0o750)));
        let w = wrap("d = \"250ms\"\nb = \"1MB\"\nm = \"0700\"").unwrap();
        assert_eq!(w.d, Some(ConfigDuration::from_millis(250)));
        assert_eq!(w.b, Some(ByteSize(1 << 20)));
        assert_eq!(w.m, Some(FileMode(0o700)));
    }

    #[test]
    fn deserialise_errors() {
        assert!(wrap("d = -1").unwrap_err().contains("must not be negative"));
        assert!(wrap("b = -1").unwrap_err().contains("must not be negative"));
        assert!(wrap("m = 4096").unwrap_err().contains("octal"));
        assert!(wrap("d = 1.5").unwrap_err().contains("a duration such as"));
        assert!(wrap("b = true").unwrap_err().contains("a size such as"));
        assert!(wrap("d = \"3 weeks\"").unwrap_err().contains("use ms, s"));
    }

    #[test]
    fn serialise_as_strings() {
        #[derive(Serialize)]
        struct Out {
            d: ConfigDuration,
            b: ByteSize,
            m: FileMode,
        }
        let text = toml::to_string(&Out {
            d: ConfigDuration::from_secs(90),
            b: ByteSize(1 << 20),
            m: FileMode(0o700),
        })
        .unwrap();
        assert_eq!(text, "d = \"90s\"\nb = \"1MB\"\nm = \"0700\"\n");
    }
}
