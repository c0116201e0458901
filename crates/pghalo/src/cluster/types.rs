//! The units of the node table: identities, WAL positions, epochs, roles
//! and statuses. Newtypes, so that a node id cannot be taken for an epoch
//! nor an LSN for a byte count.

use std::fmt;
use std::str::FromStr;

/// A node's identity: its position among the configured `[[backend]]`s,
/// pgpool's node id. Stable for the life of the process (adding, removing
/// or reordering backends needs a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

impl NodeId {
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in the WAL, PostgreSQL's `pg_lsn`: printed and parsed as
/// `X/Y`, the high and low 32 bits in hexadecimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// How many bytes of WAL lie between `earlier` and `self`; 0 when
    /// `earlier` is not earlier (a standby's replay position read after the
    /// primary's current one can be ahead of it).
    pub const fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Why a text is not an LSN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?} (expected two hexadecimal numbers of up to 8 digits, as in 0/16B3748)")]
pub struct LsnError(String);

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(text: &str) -> Result<Lsn, LsnError> {
        let bad = || LsnError(text.to_owned());
        let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
        let half = |part: &str| {
            // from_str_radix accepts a leading '+', PostgreSQL does not.
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(part, 16).map_err(|_| bad())
        };
        Ok(Lsn(u64::from(half(hi)?) << 32 | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL 13 to 17's form: `%X/%X`, no padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The number of a published topology: every change of any node's role
/// gets the next one, so a decision or action can say which topology it
/// was made under and be refused under an older one (DESIGN rule 3).
/// Epoch 0 is the configuration before anything was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    #[must_use]
    pub const fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What pghalo takes a node to be. At most one node of a snapshot is
/// `Primary`: that is the node writes may go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    /// In recovery: may serve reads.
    Standby,
    /// Says it is not in recovery while another node is (or may be) the
    /// primary. Routed nothing: neither writes (rule 4) nor reads (it is
    /// diverging from the primary's history). Issue 5's fencing acts on it.
    FalsePrimary(FalsePrimary),
    /// Not known yet (never answered), or a former primary that is
    /// unreachable since another node was taken as primary.
    Unknown,
}

impl Role {
    /// The role pgpool's SHOW POOL_NODES would print.
    pub const fn pgpool_name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::FalsePrimary(_) | Role::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Standby => f.write_str("standby"),
            Role::FalsePrimary(why) => write!(f, "false primary ({why})"),
            Role::Unknown => f.write_str("unknown"),
        }
    }
}

/// Why a node that says it is a primary is not taken as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FalsePrimary {
    /// This node is the primary and still answers as one.
    OtherPrimary(NodeId),
    /// This node carries ALWAYS_PRIMARY.
    AlwaysPrimary(NodeId),
    /// Several nodes claim the primary's role on the same timeline, with
    /// no primary known before: pghalo takes none of them.
    Ambiguous,
}

impl fmt::Display for FalsePrimary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FalsePrimary::OtherPrimary(primary) => {
                write!(f, "node {primary} is the primary and answers as one")
            }
            FalsePrimary::AlwaysPrimary(primary) => {
                write!(f, "node {primary} is ALWAYS_PRIMARY")
            }
            FalsePrimary::Ambiguous => {
                f.write_str("several nodes claim to be primary on the same timeline")
            }
        }
    }
}

/// pgpool's node status, from the replication monitor's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The last check got an answer.
    Up,
    /// The last check could not reach the node, or it did not answer in
    /// time.
    Down,
    /// Configured, not checked yet (or the check cannot log in: see
    /// `NodeState::last_error`).
    Waiting,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Waiting => "waiting",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF", "A/3000060"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert_eq!("0/16b3748".parse::<Lsn>().unwrap(), Lsn(0x16B_3748));
        // Zero-padded input, as PostgreSQL 18 prints it, reads the same.
        assert_eq!("0/016B3748".parse::<Lsn>().unwrap(), Lsn(0x16B_3748));
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "0/+1",
            "G/0",
            "1/123456789",
            "0/1/2",
            " 0/1",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(err.to_string().contains("invalid LSN"), "{bad}");
        }
    }

    #[test]
    fn lsn_differences_are_bytes() {
        let primary: Lsn = "1/10".parse().unwrap();
        let standby: Lsn = "0/FFFFFFF0".parse().unwrap();
        assert_eq!(primary.bytes_after(standby), 0x20);
        assert_eq!(standby.bytes_after(primary), 0);
    }

    #[test]
    fn epochs_and_names() {
        assert_eq!(Epoch::ZERO.next().next(), Epoch(2));
        assert!(Epoch(3) > Epoch(2));
        assert_eq!(
            Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(0))).pgpool_name(),
            "unknown"
        );
        assert_eq!(
            Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(0))).to_string(),
            "false primary (node 0 is the primary and answers as one)"
        );
        assert_eq!(Status::Waiting.to_string(), "waiting");
    }
}
