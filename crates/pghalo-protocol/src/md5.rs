//! PostgreSQL's md5 password authentication.
//!
//! Owns the two hashes of the scheme: the stored form
//! `"md5" + hex(md5(password + user))` (what `pg_authid` and pgpool's
//! `pool_passwd` keep) and the wire response
//! `"md5" + hex(md5(hex(md5(password + user)) + salt))`. Because the
//! response needs only the stored hash, a proxy holding `pool_passwd`
//! entries can answer a server's md5 challenge without knowing the
//! password, and check a client's response the same way.
//!
//! md5 is weak (the stored hash is a password equivalent); it is here for
//! compatibility with existing deployments, not as a recommendation.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Length of the stored form: `md5` and 32 hex digits.
pub const STORED_LEN: usize = 35;

/// Why a stored md5 secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Md5Error {
    /// The text is not `md5` followed by 32 lowercase hex digits.
    #[error("not an md5 password hash (expected \"md5\" and 32 hex digits)")]
    InvalidStoredHash,
}

/// What the proxy knows about a user's password for md5 authentication.
#[derive(Clone, PartialEq, Eq)]
pub enum Md5Secret {
    /// The password itself.
    Plain(Vec<u8>),
    /// The stored form's 32 hex digits (without the `md5` prefix).
    Hashed([u8; 32]),
}

impl Md5Secret {
    /// Parses a stored `md5...` hash.
    pub fn parse_stored(stored: &str) -> Result<Self, Md5Error> {
        let hex = stored
            .strip_prefix("md5")
            .and_then(|h| <[u8; 32]>::try_from(h.as_bytes()).ok())
            .filter(|h| {
                h.iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            })
            .ok_or(Md5Error::InvalidStoredHash)?;
        Ok(Md5Secret::Hashed(hex))
    }

    /// The inner hash `hex(md5(password + user))` for `user`.
    fn inner(&self, user: &str) -> [u8; 32] {
        match self {
            Md5Secret::Plain(password) => {
                let mut h = Md5::new();
                h.update(password);
                h.update(user.as_bytes());
                hex32(&h.finalize().into())
            }
            Md5Secret::Hashed(hex) => *hex,
        }
    }

    /// The wire response to a server's challenge with `salt`.
    pub fn response(&self, user: &str, salt: [u8; 4]) -> String {
        salted(&self.inner(user), salt)
    }

    /// Checks a client's PasswordMessage against this secret in constant
    /// time.
    pub fn verify(&self, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
        let expected = self.response(user, salt);
        bool::from(expected.as_bytes().ct_eq(response))
    }
}

impl std::fmt::Debug for Md5Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Md5Secret::Plain(_) => f.write_str("Md5Secret::Plain(..)"),
            Md5Secret::Hashed(_) => f.write_str("Md5Secret::Hashed(..)"),
        }
    }
}

/// The stored form for a password: `"md5" + hex(md5(password + user))`.
pub fn hash_password(user: &str, password: &[u8]) -> String {
    let inner = Md5Secret::Plain(password.to_vec()).inner(user);
    let mut out = String::with_capacity(STORED_LEN);
    out.push_str("md5");
    out.extend(inner.iter().map(|&b| char::from(b)));
    out
}

/// The wire response for a password: what libpq sends.
pub fn client_response(user: &str, password: &[u8], salt: [u8; 4]) -> String {
    Md5Secret::Plain(password.to_vec()).response(user, salt)
}

fn salted(inner_hex: &[u8; 32], salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(inner_hex);
    h.update(salt);
    let outer = hex32(&h.finalize().into());
    let mut out = String::with_capacity(STORED_LEN);
    out.push_str("md5");
    out.extend(outer.iter().map(|&b| char::from(b)));
    out
}

fn hex32(digest: &[u8; 16]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently (Python's hashlib), as in
    // PostgreSQL: SELECT 'md5' || md5('pencil' || 'user').
    const STORED: &str = "md520c46e3762c864548e296b33c3406aa9";

    #[test]
    fn stored_form_matches_postgres() {
        assert_eq!(hash_password("user", b"pencil"), STORED);
        assert_eq!(
            hash_password("bar", b"foo"),
            "md53858f62230ac3c915f300c664312c63f"
        );
    }

    #[test]
    fn response_from_plain_and_from_stored_agree() {
        let salt = [1, 2, 3, 4];
        let plain = client_response("user", b"pencil", salt);
        let stored = Md5Secret::parse_stored(STORED).unwrap();
        assert_eq!(stored.response("user", salt), plain);
        assert_eq!(plain.len(), STORED_LEN);
        assert!(plain.starts_with("md5"));
        assert!(stored.verify("user", salt, plain.as_bytes()));
        assert!(Md5Secret::Plain(b"pencil".to_vec()).verify("user", salt, plain.as_bytes()));
        assert!(!stored.verify("user", [1, 2, 3, 5], plain.as_bytes()));
        // The stored hash already contains the user name; a plain password
        // is hashed with the user given.
        assert!(!Md5Secret::Plain(b"pencil".to_vec()).verify("other", salt, plain.as_bytes()));
        assert!(!stored.verify("user", salt, &plain.as_bytes()[..34]));
        assert!(!Md5Secret::Plain(b"pencil2".to_vec()).verify("user", salt, plain.as_bytes()));
    }

    #[test]
    fn response_known_values() {
        assert_eq!(
            client_response("bar", b"foo", *b"abcd"),
            "md5f159bdced6a9f4c4c195caf229b6154e"
        );
        assert_eq!(
            client_response("user", b"pencil", [1, 2, 3, 4]),
            "md54376eb6913b38f9aaff38dc7cf19ca76"
        );
    }

    #[test]
    fn stored_form_validation() {
        for bad in [
            "",
            "md5",
            "b4ea4d2d3fd4a0ba4cf9b5b2958ab4a6",
            "md5b4ea4d2d3fd4a0ba4cf9b5b2958ab4a",
            "md5b4ea4d2d3fd4a0ba4cf9b5b2958ab4a66",
            "md5B4EA4D2D3FD4A0BA4CF9B5B2958AB4A6",
            "md5g4ea4d2d3fd4a0ba4cf9b5b2958ab4a6",
            "SCRAM-SHA-256$4096:...",
        ] {
            assert_eq!(
                Md5Secret::parse_stored(bad),
                Err(Md5Error::InvalidStoredHash),
                "{bad}"
            );
        }
        assert_eq!(
            format!("{:?}", Md5Secret::parse_stored(STORED).unwrap()),
            "Md5Secret::Hashed(..)"
        );
    }
}
