//! pgpool's `pool_passwd`: the secrets pghalo checks clients against and
//! logs in to the backends with, and the `pghalo passwd` command that
//! edits the file.
//!
//! Owns reading the file ([`PasswordFile`]), the pool key that decrypts
//! its AES entries ([`PoolKey`]), and writing one user's entry
//! ([`set_password`], [`passwd_command`]). Must not authenticate anyone:
//! the proxy does that with the [`PasswordEntry`] it looks up here.
//!
//! # File format
//!
//! One `user:secret` per line, as pgpool writes it (`pg_md5 -m`,
//! `pg_enc -m`). The secret is one of:
//!
//! | form | meaning |
//! |---|---|
//! | `md5` + 32 lowercase hex digits | `md5(password + user)`, as in `pg_authid` |
//! | `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` | a SCRAM verifier, as in `pg_authid` |
//! | `AES` + base64 | the password, AES-256-CBC encrypted with the pool key (`pg_enc`) |
//! | `TEXT` + password | the password in clear |
//! | anything else | the password in clear |
//!
//! A `\` in the user name or in a clear password escapes the next
//! character, so `\:` is a colon and `\\` a backslash, as pgpool reads
//! them. Blank lines and lines starting with `#` are ignored (pgpool
//! itself has no comments; no user name starts with `#` in practice). A
//! trailing `\r` is dropped, so files edited on Windows work.
//!
//! # Where pghalo is stricter than pgpool
//!
//! pgpool reads the file line by line at each login and quietly treats
//! what it cannot classify as a clear password. pghalo parses the whole
//! file at start and at every reload, and refuses it if any line is wrong;
//! the caller then keeps the previous version in force and reports the
//! error, which names `file:line`. One bad line could otherwise lock out
//! the user it belongs to without a word, or worse, turn a mistyped hash
//! into that user's clear password. Refused, each with its reason:
//! a line without `:`, an empty user or password, `md5...` that is not 32
//! lowercase hex digits (write `TEXTmd5...` for a clear password that
//! starts with md5), an `AES...` entry that is not base64, cannot be
//! decrypted with the key, or has no key to decrypt it with, a malformed
//! SCRAM verifier, pgpool's backend user-mapping fields (a second
//! unescaped `:` after a clear password), a user listed twice, and bytes
//! that are not UTF-8.
//!
//! # The pool key
//!
//! As in pgpool, the key is the first line of the key file (pgpool's
//! `.pgpoolkey`, `$PGPOOLKEYFILE`, or `pool_key_file` in pghalo's
//! configuration) without its newline and at most 255 bytes long. AES
//! entries use AES-256-CBC with PKCS#7 padding, the key and IV derived by
//! OpenSSL's `EVP_BytesToKey` with SHA-1, no salt and one round, exactly as
//! pgpool's `pg_enc` does, so files move between pgpool and pghalo
//! unchanged. This is not strong encryption (no salt, no authentication):
//! it keeps passwords out of casual view and out of backups that lack the
//! key, nothing more. pghalo refuses an empty key, which pgpool would use.
//!
//! # SCRAM to the backends
//!
//! A SCRAM verifier can check a client's proof but cannot produce one, so
//! to log in to a backend that uses SCRAM pghalo needs either the user's
//! password or the `ClientKey`. It has the password when the entry is
//! clear text or AES. With a SCRAM entry it recovers the `ClientKey` from
//! the client's own SCRAM exchange (as PgBouncer does), which works only
//! when the stored verifier is the very one the backend stores (same salt
//! and iteration count). So for SCRAM backends store either a clear or AES
//! password, or the exact verifier copied from the server:
//! `SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'`, fed to
//! `pghalo passwd --from-pg-authid alice` (see [`verifier_from_pg_authid`]).
//! A verifier made by `pghalo passwd --format scram` has its own random
//! salt: it lets clients in, but not pghalo into a SCRAM backend.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use pghalo_protocol::md5::{self, Md5Secret};
use pghalo_protocol::scram::{ScramError, ScramVerifier};
use sha1::{Digest, Sha1};

use super::hba::AuthMethod;

/// Where `pghalo passwd` writes when not told otherwise.
pub const DEFAULT_PASSWD_FILE: &str = "/etc/pghalo/pool_passwd";
/// pgpool's key file name in the home directory.
pub const POOL_KEY_FILE_NAME: &str = ".pgpoolkey";
/// pgpool's environment variable naming the key file.
pub const POOL_KEY_FILE_ENV: &str = "PGPOOLKEYFILE";
/// pgpool reads the key with a 256-byte buffer, so keys are cut here.
const MAX_POOL_KEY_LEN: usize = 255;

/// A password or other password-equivalent text. `Debug` and `Display`
/// print `<redacted>`, so it cannot reach a log by accident. `==` is not
/// constant-time: check a client's password with
/// [`PasswordEntry::verify_cleartext`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The key of pgpool's AES-encrypted `pool_passwd` entries. `Debug` hides
/// it.
#[derive(Clone)]
pub struct PoolKey(Vec<u8>);

/// What `pool_passwd` holds for one user.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordEntry {
    /// The password itself (a clear, `TEXT` or decrypted `AES` entry).
    Plain(Secret),
    /// The stored md5 form, `md5` and 32 lowercase hex digits (already
    /// validated).
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

/// A parsed `pool_passwd`.
#[derive(Clone, Default)]
pub struct PasswordFile {
    entries: Vec<(String, PasswordEntry)>,
}

/// The form `set_password` stores a password in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PasswdFormat {
    /// `md5(password + user)`: enough for md5 clients and md5 backends.
    Md5,
    /// A SCRAM-SHA-256 verifier with a new random salt: checks clients,
    /// but cannot log in to SCRAM backends (see the module docs).
    #[default]
    #[value(name = "scram", alias = "scram-sha-256")]
    Scram,
    /// The password in clear, with pgpool's `TEXT` prefix.
    Text,
    /// The password AES-encrypted with the pool key, as pgpool's `pg_enc`.
    Aes,
}

/// Arguments of `pghalo passwd [--file PATH] [--format F] [--key-file PATH]
/// [--from-pg-authid] USER`. The password is read from standard input,
/// never from the command line, where `ps` would show it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PasswdArgs {
    /// The pool_passwd file to edit (created if missing).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PASSWD_FILE)]
    pub file: PathBuf,
    /// How to store the password.
    #[arg(long, value_enum, default_value_t = PasswdFormat::Scram)]
    pub format: PasswdFormat,
    /// Key file for --format aes (default: $PGPOOLKEYFILE, else ~/.pgpoolkey).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Read the role's stored secret (SELECT rolpassword FROM pg_authid) from
    /// standard input instead of a password, and store it as it is.
    #[arg(long, conflicts_with_all = ["format", "key_file"])]
    pub from_pg_authid: bool,
    /// The user whose entry is added or replaced.
    pub user: String,
}

/// Why a `pool_passwd`, a key file or a `pghalo passwd` run failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// A file could not be read or written.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// A line of the file is wrong.
    #[error("{file}:{line}: {kind}")]
    Line {
        /// The file name.
        file: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        kind: EntryError,
    },
    /// A password parameter of the configuration (`sr_check_password`)
    /// cannot be used.
    #[error("{parameter}: {kind}")]
    Parameter {
        /// The parameter's key.
        parameter: String,
        /// What is wrong with its value.
        kind: EntryError,
    },
    /// The pool key file cannot be used.
    #[error("pool key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// `--format aes` with no key file found.
    #[error(
        "the aes format needs a pool key file: give --key-file, set $PGPOOLKEYFILE or create ~/.pgpoolkey"
    )]
    NeedsKey,
    /// A user name that cannot be stored.
    #[error("invalid user name: {0}")]
    InvalidUser(&'static str),
    /// A password that cannot be stored.
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    /// Text that should be a `pg_authid.rolpassword` value is not.
    #[error("not a stored PostgreSQL secret: {0}")]
    NotStoredSecret(String),
    /// Reading the password from standard input failed.
    #[error("could not read the password from standard input: {0}")]
    Input(String),
    /// Making a SCRAM verifier failed (the random source).
    #[error(transparent)]
    Scram(#[from] ScramError),
}

/// What is wrong with one line of `pool_passwd`. Messages name the user
/// but never show the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// No `:` separates the user from the secret.
    #[error("the line has no ':' between user name and password")]
    NoSeparator,
    /// `:secret`.
    #[error("the user name is empty")]
    EmptyUser,
    /// `user:` or `user:TEXT`.
    #[error("the password of user \"{0}\" is empty")]
    EmptyPassword(String),
    /// Bytes that are not UTF-8.
    #[error("the line is not valid UTF-8")]
    NotUtf8,
    /// `md5...` that is not a stored md5 hash.
    #[error(
        "the md5 entry of user \"{0}\" is not \"md5\" and 32 lowercase hex digits (write TEXT before a clear password that starts with md5)"
    )]
    InvalidMd5(String),
    /// `SCRAM-SHA-256$...` that does not parse.
    #[error("the SCRAM verifier of user \"{user}\" is invalid: {reason}")]
    InvalidScram {
        /// The user.
        user: String,
        /// The parser's complaint.
        reason: String,
    },
    /// `AES...` with no key loaded.
    #[error(
        "the entry of user \"{0}\" is AES-encrypted but no pool key file is configured (write TEXT before a clear password that starts with AES)"
    )]
    AesWithoutKey(String),
    /// `AES...` that is not base64.
    #[error("the AES entry of user \"{0}\" is not valid base64")]
    AesNotBase64(String),
    /// `AES...` that the key does not decrypt.
    #[error(
        "the AES entry of user \"{0}\" cannot be decrypted with the pool key (wrong key file, or a damaged entry)"
    )]
    AesDecrypt(String),
    /// A decrypted password that is not UTF-8 or is empty.
    #[error("the AES entry of user \"{0}\" decrypts to an empty or non-UTF-8 password")]
    AesBadPlaintext(String),
    /// `user:password:backend_user:backend_password`.
    #[error(
        "the entry of user \"{0}\" has more fields after the password; pgpool's backend user mapping is not supported (escape a ':' in a password as '\\:')"
    )]
    ExtraFields(String),
    /// The same user twice.
    #[error("user \"{user}\" is already listed on line {first_line}")]
    Duplicate {
        /// The user.
        user: String,
        /// Where it first appears.
        first_line: usize,
    },
}

// ---- secrets and keys ----

impl Secret {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The password, for the code that must use it; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PoolKey {
    /// A key from its bytes, cut as pgpool cuts what it reads (at a NUL
    /// and at 255 bytes). An empty key is refused.
    pub fn new(key: impl Into<Vec<u8>>) -> Option<PoolKey> {
        let mut key = key.into();
        if let Some(nul) = key.iter().position(|&b| b == 0) {
            key.truncate(nul);
        }
        key.truncate(MAX_POOL_KEY_LEN);
        (!key.is_empty()).then_some(PoolKey(key))
    }

    /// Reads the key from its first line, as pgpool does. Warns, as pgpool
    /// does, when group or others may read the file.
    pub fn load(path: &Path) -> Result<PoolKey, PasswdError> {
        let io_err = |source| PasswdError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        };
        // Checked on the open file, not the path, so that what is checked
        // is what is read (pgpool does the same).
        let mut file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(PasswdError::KeyFile {
                path: path.to_owned(),
                reason: "is not a regular file",
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "pool key file has group or world access; permissions should be 0600 or less"
            );
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        PoolKey::new(first_line).ok_or(PasswdError::KeyFile {
            path: path.to_owned(),
            reason: "its first line is empty",
        })
    }

    /// The AES-256 key and CBC IV, by `EVP_BytesToKey(aes-256-cbc, sha1,
    /// no salt, key, 1 round)`: SHA-1 blocks `D1 = H(key)`,
    /// `Dn = H(Dn-1 || key)` concatenated, key first, IV next.
    fn derive(&self) -> ([u8; 32], [u8; 16]) {
        let mut material = Vec::with_capacity(60);
        let mut previous: Option<[u8; 20]> = None;
        while material.len() < 48 {
            let mut hasher = Sha1::new();
            if let Some(previous) = previous {
                hasher.update(previous);
            }
            hasher.update(&self.0);
            let block: [u8; 20] = hasher.finalize().into();
            material.extend_from_slice(&block);
            previous = Some(block);
        }
        let mut key = [0u8; 32];
        let mut iv = [0u8; 16];
        key.copy_from_slice(&material[..32]);
        iv.copy_from_slice(&material[32..48]);
        (key, iv)
    }

    /// The base64 text pgpool's `pg_enc` prints for `password` (without
    /// the `AES` prefix).
    pub fn encrypt(&self, password: &str) -> String {
        let (key, iv) = self.derive();
        let cipher = cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into())
            .encrypt_padded_vec::<Pkcs7>(password.as_bytes());
        B64.encode(cipher)
    }

    /// Decrypts pgpool's `AES` form of `user`'s password (the base64 text
    /// after the prefix), wherever it is written: a `pool_passwd` entry or
    /// a password parameter such as `sr_check_password`. Errors name the
    /// user, never the text.
    pub fn decrypt_password(&self, user: &str, base64: &str) -> Result<Secret, EntryError> {
        let plain = self.decrypt(base64).map_err(|fault| match fault {
            AesFault::NotBase64 => EntryError::AesNotBase64(user.to_owned()),
            AesFault::Decrypt => EntryError::AesDecrypt(user.to_owned()),
        })?;
        match String::from_utf8(plain) {
            Ok(plain) if !plain.is_empty() => Ok(Secret(plain)),
            _ => Err(EntryError::AesBadPlaintext(user.to_owned())),
        }
    }

    /// Decrypts the base64 text of an `AES` entry (without the prefix). Like
    /// pgpool, the password ends at the first NUL byte.
    fn decrypt(&self, base64: &str) -> Result<Vec<u8>, AesFault> {
        // pgpool's base64 decoder skips blanks; so do we.
        let compact: String = base64
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let cipher = B64.decode(compact).map_err(|_| AesFault::NotBase64)?;
        let (key, iv) = self.derive();
        let mut plain = cbc::Decryptor::<Aes256>::new(&key.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(&cipher)
            .map_err(|_| AesFault::Decrypt)?;
        if let Some(nul) = plain.iter().position(|&b| b == 0) {
            plain.truncate(nul);
        }
        Ok(plain)
    }
}

enum AesFault {
    NotBase64,
    Decrypt,
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolKey(<redacted>)")
    }
}

/// The key file pgpool's tools use when none is given: `$PGPOOLKEYFILE`,
/// else `~/.pgpoolkey`.
pub fn default_key_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(POOL_KEY_FILE_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(POOL_KEY_FILE_NAME))
}

// ---- entries ----

impl PasswordEntry {
    /// What the md5 exchange can use: the password, or the stored hash.
    /// `None` for a SCRAM verifier, from which no md5 answer can be made.
    pub fn md5_secret(&self) -> Option<Md5Secret> {
        match self {
            PasswordEntry::Plain(secret) => {
                Some(Md5Secret::Plain(secret.expose().as_bytes().to_vec()))
            }
            PasswordEntry::Md5(stored) => Md5Secret::parse_stored(stored).ok(),
            PasswordEntry::Scram(_) => None,
        }
    }

    /// True if a cleartext `password` (from the `password` method) is the
    /// user's, compared in constant time.
    pub fn verify_cleartext(&self, user: &str, password: &[u8]) -> bool {
        match self {
            PasswordEntry::Plain(secret) => constant_time_eq(secret.expose().as_bytes(), password),
            PasswordEntry::Md5(stored) => constant_time_eq(
                md5::hash_password(user, password).as_bytes(),
                stored.as_bytes(),
            ),
            PasswordEntry::Scram(verifier) => verifier.verify_password(password),
        }
    }

    /// A short name of the form, for messages: `plain`, `md5` or
    /// `SCRAM-SHA-256`.
    pub fn kind(&self) -> &'static str {
        match self {
            PasswordEntry::Plain(_) => "plain",
            PasswordEntry::Md5(_) => "md5",
            PasswordEntry::Scram(_) => "SCRAM-SHA-256",
        }
    }
}

impl fmt::Debug for PasswordEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordEntry::Plain(secret) => write!(f, "Plain({secret:?})"),
            // The md5 form is a password equivalent for md5 logins.
            PasswordEntry::Md5(_) => f.write_str("Md5(<redacted>)"),
            PasswordEntry::Scram(verifier) => write!(f, "Scram({verifier:?})"),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (every md5 form has the same one); the
    // contents are compared without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The method that really runs for an hba rule, given the stored secret.
/// As in PostgreSQL, an `md5` rule does SCRAM when the stored secret is a
/// SCRAM verifier, since no md5 answer can be checked against one. Every
/// other combination is unchanged; in particular a `scram-sha-256` rule
/// with an md5 entry stays SCRAM, and the exchange must then fail, as it
/// does in PostgreSQL.
pub fn effective_method(rule_method: AuthMethod, stored: &PasswordEntry) -> AuthMethod {
    match (rule_method, stored) {
        (AuthMethod::Md5, PasswordEntry::Scram(_)) => AuthMethod::ScramSha256,
        (method, _) => method,
    }
}

/// Parses a `pg_authid.rolpassword` SCRAM value (blanks around it are
/// ignored), to store as it is so that pghalo can log in to SCRAM backends
/// with the key a client's exchange reveals.
pub fn verifier_from_pg_authid(text: &str) -> Result<ScramVerifier, PasswdError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(PasswdError::NotStoredSecret(
            "the value is empty (the role has no password)".into(),
        ));
    }
    if text.starts_with("md5") {
        return Err(PasswdError::NotStoredSecret(
            "this is an md5 hash, not a SCRAM verifier".into(),
        ));
    }
    ScramVerifier::parse(text).map_err(|e| PasswdError::NotStoredSecret(e.to_string()))
}

// ---- the file ----

impl PasswordFile {
    /// Parses the text of a `pool_passwd`; `file_name` is only used in
    /// error messages. `key` decrypts `AES` entries.
    pub fn parse(
        text: &str,
        file_name: &str,
        key: Option<&PoolKey>,
    ) -> Result<PasswordFile, PasswdError> {
        Self::parse_bytes(text.as_bytes(), file_name, key)
    }

    /// Reads and parses `path`, reading the pool key from `key_path` if
    /// given (an unreadable key file is an error even when no entry needs
    /// it: it is configured, so it is meant to work).
    pub fn load(path: &Path, key_path: Option<&Path>) -> Result<PasswordFile, PasswdError> {
        let key = key_path.map(PoolKey::load).transpose()?;
        let bytes = fs::read(path).map_err(|source| PasswdError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse_bytes(&bytes, &path.display().to_string(), key.as_ref())
    }

    fn parse_bytes(
        bytes: &[u8],
        file_name: &str,
        key: Option<&PoolKey>,
    ) -> Result<PasswordFile, PasswdError> {
        let mut entries: Vec<(String, PasswordEntry)> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let fail = |kind| PasswdError::Line {
                file: file_name.to_owned(),
                line,
                kind,
            };
            let Ok(text) = std::str::from_utf8(raw) else {
                return Err(fail(EntryError::NotUtf8));
            };
            let Some((user, entry)) = parse_line(text, key).map_err(fail)? else {
                continue;
            };
            if let Some(pos) = entries.iter().position(|(u, _)| *u == user) {
                return Err(fail(EntryError::Duplicate {
                    user,
                    first_line: lines_of[pos],
                }));
            }
            entries.push((user, entry));
            lines_of.push(line);
        }
        Ok(PasswordFile { entries })
    }

    /// The entry of `user`, if any.
    pub fn lookup(&self, user: &str) -> Option<&PasswordEntry> {
        self.entries
            .iter()
            .find_map(|(u, entry)| (u == user).then_some(entry))
    }

    /// The users listed, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(u, _)| u.as_str())
    }

    /// How many users are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no user is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(u, e)| (u, e)))
            .finish()
    }
}

/// True for lines that hold no entry.
fn is_ignored(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// Splits at the first `:` not escaped by `\`; the user comes back
/// unescaped, the rest untouched.
fn split_user(line: &str) -> Option<(String, &str)> {
    let mut user = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => user.push(escaped),
                None => user.push('\\'),
            },
            ':' => return Some((user, &line[i + 1..])),
            _ => user.push(c),
        }
    }
    None
}

/// Unescapes a clear password; `None` if an unescaped `:` starts another
/// field.
fn unescape_field(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            ':' => return None,
            _ => out.push(c),
        }
    }
    Some(out)
}

fn escape_field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn parse_line(
    line: &str,
    key: Option<&PoolKey>,
) -> Result<Option<(String, PasswordEntry)>, EntryError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if is_ignored(line) {
        return Ok(None);
    }
    let (user, rest) = split_user(line).ok_or(EntryError::NoSeparator)?;
    if user.is_empty() {
        return Err(EntryError::EmptyUser);
    }
    // A verifier has colons of its own, so it is taken whole; pgpool would
    // cut it at the first one.
    if rest.starts_with("SCRAM-SHA-256$") {
        let verifier = ScramVerifier::parse(rest).map_err(|e| EntryError::InvalidScram {
            user: user.clone(),
            reason: e.to_string(),
        })?;
        return Ok(Some((user, PasswordEntry::Scram(verifier))));
    }
    let Some(secret) = unescape_field(rest) else {
        return Err(EntryError::ExtraFields(user));
    };
    let entry = if secret.starts_with("md5") {
        Md5Secret::parse_stored(&secret).map_err(|_| EntryError::InvalidMd5(user.clone()))?;
        PasswordEntry::Md5(secret)
    } else if let Some(base64) = secret.strip_prefix("AES") {
        let key = key.ok_or_else(|| EntryError::AesWithoutKey(user.clone()))?;
        PasswordEntry::Plain(key.decrypt_password(&user, base64)?)
    } else {
        let plain = secret.strip_prefix("TEXT").unwrap_or(&secret);
        if plain.is_empty() {
            return Err(EntryError::EmptyPassword(user));
        }
        PasswordEntry::Plain(Secret(plain.to_owned()))
    };
    Ok(Some((user, entry)))
}

// ---- writing ----

/// Adds or replaces `user`'s entry in `path` with `password` stored in
/// `format` (`key` is the pool key file, needed for [`PasswdFormat::Aes`]).
/// Every other line, comments and lines pghalo would refuse included, is
/// kept byte for byte; a second entry of the same user is dropped. The
/// file is replaced atomically (temporary file, then rename) with mode
/// 0600 and the previous file's owner, and created if missing; a symbolic
/// link is followed, so the file it points to is the one replaced. Two runs at the same moment may lose
/// one of the two changes: this is an operator's command, not a database.
pub fn set_password(
    path: &Path,
    user: &str,
    password: &str,
    format: PasswdFormat,
    key: Option<&Path>,
) -> Result<(), PasswdError> {
    store_password(path, user, password, format, key).map(|_| ())
}

/// [`set_password`], telling whether an entry was replaced.
fn store_password(
    path: &Path,
    user: &str,
    password: &str,
    format: PasswdFormat,
    key: Option<&Path>,
) -> Result<bool, PasswdError> {
    check_user(user)?;
    check_password(password)?;
    let value = match format {
        PasswdFormat::Md5 => md5::hash_password(user, password.as_bytes()),
        PasswdFormat::Scram => ScramVerifier::generate(password.as_bytes())?.to_string(),
        PasswdFormat::Text => format!("TEXT{}", escape_field(password)),
        PasswdFormat::Aes => {
            let key = PoolKey::load(key.ok_or(PasswdError::NeedsKey)?)?;
            format!("AES{}", key.encrypt(password))
        }
    };
    write_entry(path, user, &value)
}

/// Adds or replaces `user`'s entry with a secret copied from
/// `pg_authid.rolpassword` (a SCRAM verifier or an md5 hash), like
/// [`set_password`] otherwise.
pub fn set_stored_secret(path: &Path, user: &str, rolpassword: &str) -> Result<(), PasswdError> {
    check_user(user)?;
    let value = stored_secret_value(rolpassword)?;
    write_entry(path, user, &value).map(|_| ())
}

fn stored_secret_value(rolpassword: &str) -> Result<String, PasswdError> {
    let text = rolpassword.trim();
    if text.starts_with("md5") {
        Md5Secret::parse_stored(text).map_err(|e| PasswdError::NotStoredSecret(e.to_string()))?;
        return Ok(text.to_owned());
    }
    Ok(verifier_from_pg_authid(text)?.to_string())
}

fn check_user(user: &str) -> Result<(), PasswdError> {
    if user.is_empty() {
        return Err(PasswdError::InvalidUser("it is empty"));
    }
    if user.contains(['\n', '\r', '\0']) {
        return Err(PasswdError::InvalidUser(
            "it contains a line break or a NUL byte",
        ));
    }
    if user.trim_start().starts_with('#') {
        return Err(PasswdError::InvalidUser(
            "it starts with '#', which pool_passwd reads as a comment",
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::InvalidPassword("it is empty"));
    }
    if password.contains(['\n', '\r', '\0']) {
        return Err(PasswdError::InvalidPassword(
            "it contains a line break or a NUL byte",
        ));
    }
    Ok(())
}

/// Writes `user:value` in place of the user's first line or at the end;
/// returns true if an entry was replaced.
fn write_entry(path: &Path, user: &str, value: &str) -> Result<bool, PasswdError> {
    let target = match fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(source) => {
            return Err(PasswdError::Io {
                action: "resolve",
                path: path.to_owned(),
                source,
            });
        }
    };
    let old = match fs::read(&target) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(PasswdError::Io {
                action: "read",
                path: target,
                source,
            });
        }
    };
    let new_line = format!("{}:{value}\n", escape_field(user));
    let mut out = Vec::with_capacity(old.len() + new_line.len());
    let mut replaced = false;
    for line in old.split_inclusive(|&b| b == b'\n') {
        if entry_user(line).as_deref() == Some(user) {
            if !replaced {
                out.extend_from_slice(new_line.as_bytes());
                replaced = true;
            }
            continue;
        }
        out.extend_from_slice(line);
    }
    if !replaced {
        if out.last().is_some_and(|&b| b != b'\n') {
            out.push(b'\n');
        }
        out.extend_from_slice(new_line.as_bytes());
    }
    write_atomically(&target, &out)?;
    Ok(replaced)
}

/// The user a raw line belongs to, if it is an entry.
fn entry_user(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if is_ignored(text) {
        return None;
    }
    split_user(text).map(|(user, _)| user)
}

fn write_atomically(target: &Path, contents: &[u8]) -> Result<(), PasswdError> {
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PasswdError::Io {
            action,
            path,
            source,
        }
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut name = OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(format!(
        ".tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let temp = dir.join(name);
    let owner = fs::metadata(target).ok().map(|m| (m.uid(), m.gid()));

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        // The umask cannot widen 0600, but a narrower umask could leave the
        // owner unable to read; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("set permissions on", &temp))?;
        // Root editing a file the daemon's user owns must not leave it
        // readable by root alone.
        if let Some((uid, gid)) = owner {
            let meta = file.metadata().map_err(io_err("inspect", &temp))?;
            if (meta.uid(), meta.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(io_err("keep the owner of", target))?;
            }
        }
        file.write_all(contents).map_err(io_err("write", &temp))?;
        file.sync_all().map_err(io_err("sync", &temp))?;
        fs::rename(&temp, target).map_err(io_err("replace", target))?;
        // Make the rename itself durable.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

// ---- the command ----

/// `pghalo passwd`: reads the password (or with `--from-pg-authid` the
/// stored secret) from standard input and writes the user's entry. On a
/// terminal it asks twice without echo; otherwise it takes the first line.
/// Returns the message for the operator.
pub fn passwd_command(args: PasswdArgs) -> Result<String, PasswdError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let prompt = if args.from_pg_authid {
            format!("rolpassword of {}: ", args.user)
        } else {
            format!("Password for {}: ", args.user)
        };
        let first =
            rpassword::prompt_password(prompt).map_err(|e| PasswdError::Input(e.to_string()))?;
        if !args.from_pg_authid {
            let again = rpassword::prompt_password("Repeat it: ")
                .map_err(|e| PasswdError::Input(e.to_string()))?;
            if first != again {
                return Err(PasswdError::Input("the two entries differ".into()));
            }
        }
        return passwd_command_with_input(args, &mut io::Cursor::new(first));
    }
    passwd_command_with_input(args, &mut stdin.lock())
}

/// [`passwd_command`] reading from `input` (its first line, without the
/// line break).
pub fn passwd_command_with_input(
    args: PasswdArgs,
    input: &mut dyn BufRead,
) -> Result<String, PasswdError> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| PasswdError::Input(e.to_string()))?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let file = args.file.display();
    let user = &args.user;

    if args.from_pg_authid {
        check_user(user)?;
        let value = stored_secret_value(line)?;
        let replaced = write_entry(&args.file, user, &value)?;
        let what = if value.starts_with("md5") {
            "the md5 hash"
        } else {
            "the SCRAM-SHA-256 verifier"
        };
        return Ok(format!(
            "{} {what} from pg_authid for user \"{user}\" in {file}",
            if replaced { "replaced with" } else { "stored" },
        ));
    }

    let key_file = match (args.format, &args.key_file) {
        (PasswdFormat::Aes, Some(k)) => Some(k.clone()),
        (PasswdFormat::Aes, None) => Some(default_key_file().ok_or(PasswdError::NeedsKey)?),
        _ => None,
    };
    let replaced = store_password(&args.file, user, line, args.format, key_file.as_deref())?;
    let action = if replaced { "replaced" } else { "added" };
    let message = match args.format {
        PasswdFormat::Scram => format!(
            "{action} a SCRAM-SHA-256 verifier for user \"{user}\" in {file}. It checks clients, \
             but pghalo can log in to a SCRAM backend with it only if the backend stores the same \
             verifier: for SCRAM backends store --format aes or text, or copy the server's own \
             verifier with --from-pg-authid."
        ),
        PasswdFormat::Md5 => format!("{action} an md5 hash for user \"{user}\" in {file}."),
        PasswdFormat::Text => format!(
            "{action} the clear-text password of user \"{user}\" in {file} (readable by whoever can read the file)."
        ),
        PasswdFormat::Aes => format!(
            "{action} an AES-encrypted password for user \"{user}\" in {file}; pghalo needs the same key file (pool_key_file) to read it."
        ),
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    // Made with pgpool-II 4.3.5's pg_enc (Debian 12 package pgpool2):
    // `printf 'my-secret-key\n' > k; pg_enc -k k 'pencil'` and so on.
    const PG_ENC_KEY: &str = "my-secret-key";
    const PG_ENC_PENCIL: &str = "QDYyE0sHuHnbZcszwEjUZw==";
    const PG_ENC_SPECIAL: &str = "uxo4yKvHdo/fP42vIREcWA=="; // a:b\\c é
    const PG_ENC_X_P: &str = "XEMhY2ZTzD9jmcdGSf2zbg=="; // key "x", password "p"
    const PG_ENC_X_LONG: &str = "MNeBGciQ5Vd04z6ydg3lRdrEBmh5Rt7IeiHf5t4uAs5KdMtDukPbLQYd/gQ9aS+r";
    const LONG: &str = "this is a longer password that crosses blocks!";

    fn key(text: &str) -> PoolKey {
        PoolKey::new(text).unwrap()
    }

    fn parse(text: &str, key: Option<&PoolKey>) -> PasswordFile {
        match PasswordFile::parse(text, "pool_passwd", key) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    fn line_error(text: &str, key: Option<&PoolKey>) -> (usize, EntryError, String) {
        match PasswordFile::parse(text, "pool_passwd", key) {
            Err(e @ PasswdError::Line { .. }) => {
                let message = e.to_string();
                let PasswdError::Line { line, kind, .. } = e else {
                    unreachable!()
                };
                (line, kind, message)
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    fn plain(file: &PasswordFile, user: &str) -> String {
        match file.lookup(user) {
            Some(PasswordEntry::Plain(s)) => s.expose().to_owned(),
            other => panic!("{user}: {other:?}"),
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "pghalo-passwd-{tag}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn aes_matches_real_pg_enc_output() {
        let k = key(PG_ENC_KEY);
        assert_eq!(k.encrypt("pencil"), PG_ENC_PENCIL);
        assert_eq!(k.encrypt("a:b\\\\c é"), PG_ENC_SPECIAL);
        assert_eq!(key("x").encrypt("p"), PG_ENC_X_P);
        assert_eq!(key("x").encrypt(LONG), PG_ENC_X_LONG);
        assert_eq!(k.decrypt(PG_ENC_PENCIL).ok().unwrap(), b"pencil");
        assert_eq!(
            key("x").decrypt(PG_ENC_X_LONG).ok().unwrap(),
            LONG.as_bytes()
        );
    }

    #[test]
    fn key_derivation_matches_openssl() {
        // `openssl enc -aes-256-cbc -md sha1 -nosalt -k my-secret-key -P`
        let (k, iv) = key(PG_ENC_KEY).derive();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        assert_eq!(hex(&k), OPENSSL_KEY);
        assert_eq!(hex(&iv), OPENSSL_IV);
    }

    const OPENSSL_KEY: &str = "01C92A77244F5E8E3B1E566C4A9266E724DE6D984445F9C0B9DD3751FC3BF933";
    const OPENSSL_IV: &str = "26C89B39512460B0EB27F8CD127F7A43";

    #[test]
    fn parses_every_format() {
        let verifier = ScramVerifier::from_password(b"pencil", b"0123456789abcdef", 4096);
        let k = key(PG_ENC_KEY);
        let text = format!(
            "# pool_passwd\n\
             \n\
             alice:{md5}\n\
             bob:{verifier}\n\
             carol:AES{PG_ENC_PENCIL}\n\
             dave:TEXTsecret:word\\:x\n\
             erin:plain pass \n\
             frank:TEXTmd5notahash\n\
             esc\\:aped\\\\user:pw\\\\x\r\n\
             gina:TEXTAESlike\n",
            md5 = md5::hash_password("alice", b"pencil"),
        );
        // "dave" has an unescaped ':' after TEXT: refused below; fix it here.
        let text = text.replace("TEXTsecret:word\\:x", "TEXTsecret\\:word\\:x");
        let file = parse(&text, Some(&k));
        assert_eq!(file.len(), 8);
        assert!(
            matches!(file.lookup("alice"), Some(PasswordEntry::Md5(h)) if *h == md5::hash_password("alice", b"pencil"))
        );
        assert!(matches!(file.lookup("bob"), Some(PasswordEntry::Scram(v)) if *v == verifier));
        assert_eq!(plain(&file, "carol"), "pencil");
        assert_eq!(plain(&file, "dave"), "secret:word:x");
        assert_eq!(plain(&file, "erin"), "plain pass ");
        assert_eq!(plain(&file, "frank"), "md5notahash");
        assert_eq!(plain(&file, "esc:aped\\user"), "pw\\x");
        assert_eq!(plain(&file, "gina"), "AESlike");
        assert!(file.lookup("nobody").is_none());
        assert!(file.lookup("#").is_none());
        assert_eq!(
            file.users().collect::<Vec<_>>(),
            [
                "alice",
                "bob",
                "carol",
                "dave",
                "erin",
                "frank",
                "esc:aped\\user",
                "gina"
            ]
        );
    }

    #[test]
    fn reads_a_file_written_by_pg_enc_and_pg_md5() {
        // The file `pg_enc -m` and `pg_md5 -m` (pgpool 4.3.5) left behind.
        let text = "# comment\n\
                    alice:AESQDYyE0sHuHnbZcszwEjUZw==\n\
                    carol:md56c96f6e52cf3c3e14f793f3207aca9e7\n";
        let file = parse(text, Some(&key(PG_ENC_KEY)));
        assert_eq!(plain(&file, "alice"), "pencil");
        assert!(
            file.lookup("carol")
                .unwrap()
                .verify_cleartext("carol", b"pw")
        );
    }

    #[test]
    fn every_error_names_file_and_line() {
        let k = key(PG_ENC_KEY);
        let cases: Vec<(String, Option<&PoolKey>, EntryError)> = vec![
            ("no separator".into(), None, EntryError::NoSeparator),
            (":pw".into(), None, EntryError::EmptyUser),
            ("u:".into(), None, EntryError::EmptyPassword("u".into())),
            ("u:TEXT".into(), None, EntryError::EmptyPassword("u".into())),
            ("u:md5abc".into(), None, EntryError::InvalidMd5("u".into())),
            (
                "u:md5B4EA4D2D3FD4A0BA4CF9B5B2958AB4A6".into(),
                None,
                EntryError::InvalidMd5("u".into()),
            ),
            (
                "u:AESQDYyE0sHuHnbZcszwEjUZw==".into(),
                None,
                EntryError::AesWithoutKey("u".into()),
            ),
            (
                "u:AES!!notbase64".into(),
                Some(&k),
                EntryError::AesNotBase64("u".into()),
            ),
            (
                format!("u:AES{PG_ENC_X_P}"),
                Some(&k),
                EntryError::AesDecrypt("u".into()),
            ),
            (
                "u:AESAAAA".into(),
                Some(&k),
                EntryError::AesDecrypt("u".into()),
            ),
            ("u:AES".into(), Some(&k), EntryError::AesDecrypt("u".into())),
            (
                "u:pw:backend:pw2".into(),
                None,
                EntryError::ExtraFields("u".into()),
            ),
            ("u:old:".into(), None, EntryError::ExtraFields("u".into())),
            (
                "u:SCRAM-SHA-256$4096:c2FsdA==$broken".into(),
                None,
                EntryError::InvalidScram {
                    user: "u".into(),
                    reason: "invalid SCRAM verifier: missing ':' between the keys".into(),
                },
            ),
            (
                "first:x".into(),
                None,
                EntryError::Duplicate {
                    user: "first".into(),
                    first_line: 2,
                },
            ),
        ];
        for (line_text, key, expected) in cases {
            let text = format!("# header\nfirst:pw\n{line_text}\nlast:pw\n");
            let (line, kind, message) = line_error(&text, key);
            assert_eq!(kind, expected, "{line_text}");
            assert_eq!(line, 3, "{line_text}");
            assert!(message.starts_with("pool_passwd:3: "), "{message}");
        }
        let (line, kind, _) =
            match PasswordFile::parse_bytes(b"a:b\nc:\xff\xfe\n", "pool_passwd", None) {
                Err(PasswdError::Line { line, kind, .. }) => (line, kind, ()),
                other => panic!("{other:?}"),
            };
        assert_eq!((line, kind), (2, EntryError::NotUtf8));
    }

    #[test]
    fn errors_never_show_secrets() {
        let (_, _, message) = line_error("u:md5secretsecret\n", None);
        assert!(!message.contains("secretsecret"), "{message}");
        let (_, _, message) = line_error("u:pw:other\n", None);
        assert!(!message.contains("other"), "{message}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{:?}", key("hunter2")), "PoolKey(<redacted>)");
        let hash = md5::hash_password("u", b"hunter2");
        let file = parse(
            &format!(
                "a:hunter2\nb:{hash}\nc:{}\n",
                ScramVerifier::generate(b"x").unwrap()
            ),
            None,
        );
        let debug = format!("{file:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains(&hash[3..]), "{debug}");
        assert!(debug.contains("Plain(<redacted>)"), "{debug}");
        assert!(debug.contains("Md5(<redacted>)"), "{debug}");
        assert!(debug.contains("Scram(ScramVerifier"), "{debug}");
    }

    #[test]
    fn effective_method_follows_postgres() {
        let scram = PasswordEntry::Scram(ScramVerifier::generate(b"pw").unwrap());
        let md5 = PasswordEntry::Md5(md5::hash_password("u", b"pw"));
        let plain = PasswordEntry::Plain(Secret::new("pw"));
        assert_eq!(
            effective_method(AuthMethod::Md5, &scram),
            AuthMethod::ScramSha256
        );
        assert_eq!(effective_method(AuthMethod::Md5, &md5), AuthMethod::Md5);
        assert_eq!(effective_method(AuthMethod::Md5, &plain), AuthMethod::Md5);
        assert_eq!(
            effective_method(AuthMethod::ScramSha256, &md5),
            AuthMethod::ScramSha256
        );
        assert_eq!(
            effective_method(AuthMethod::ScramSha256, &plain),
            AuthMethod::ScramSha256
        );
        for m in [
            AuthMethod::Trust,
            AuthMethod::Reject,
            AuthMethod::Password,
            AuthMethod::Cert,
        ] {
            assert_eq!(effective_method(m, &scram), m);
        }
    }

    #[test]
    fn entry_helpers() {
        let scram = PasswordEntry::Scram(ScramVerifier::generate(b"pw").unwrap());
        let md5 = PasswordEntry::Md5(md5::hash_password("u", b"pw"));
        let plain = PasswordEntry::Plain(Secret::new("pw"));
        for e in [&scram, &md5, &plain] {
            assert!(e.verify_cleartext("u", b"pw"), "{}", e.kind());
            assert!(!e.verify_cleartext("u", b"pw2"), "{}", e.kind());
        }
        assert!(!md5.verify_cleartext("other", b"pw"));
        assert!(scram.md5_secret().is_none());
        let salt = [1, 2, 3, 4];
        assert_eq!(
            md5.md5_secret().unwrap().response("u", salt),
            plain.md5_secret().unwrap().response("u", salt)
        );
        assert_eq!(
            (plain.kind(), md5.kind(), scram.kind()),
            ("plain", "md5", "SCRAM-SHA-256")
        );
    }

    #[test]
    fn verifier_from_pg_authid_accepts_server_values() {
        let v = ScramVerifier::from_password(b"pencil", b"saltsaltsaltsalt", 4096);
        let parsed = verifier_from_pg_authid(&format!("  {v}\n")).unwrap();
        assert_eq!(parsed, v);
        assert!(matches!(
            verifier_from_pg_authid(""),
            Err(PasswdError::NotStoredSecret(_))
        ));
        let e = verifier_from_pg_authid(&md5::hash_password("u", b"p")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a stored PostgreSQL secret: this is an md5 hash, not a SCRAM verifier"
        );
        assert!(verifier_from_pg_authid("SCRAM-SHA-256$x").is_err());
    }

    #[test]
    fn pool_key_is_read_as_pgpool_reads_it() {
        let dir = TempDir::new("key");
        let path = dir.0.join(".pgpoolkey");
        fs::write(&path, "my-secret-key\nsecond line ignored\n").unwrap();
        let k = PoolKey::load(&path).unwrap();
        assert_eq!(k.encrypt("pencil"), PG_ENC_PENCIL);
        // No newline at the end of the file.
        fs::write(&path, "my-secret-key").unwrap();
        assert_eq!(
            PoolKey::load(&path).unwrap().encrypt("pencil"),
            PG_ENC_PENCIL
        );
        // Cut at 255 bytes, as pgpool's buffer does.
        let long = "k".repeat(300);
        fs::write(&path, &long).unwrap();
        assert_eq!(
            PoolKey::load(&path).unwrap().encrypt("p"),
            key(&long[..255]).encrypt("p")
        );
        for empty in ["", "\n", "\nkey on line two\n"] {
            fs::write(&path, empty).unwrap();
            let e = PoolKey::load(&path).unwrap_err();
            assert!(matches!(e, PasswdError::KeyFile { .. }), "{e}");
        }
        assert!(matches!(
            PoolKey::load(&dir.0.join("missing")),
            Err(PasswdError::Io { .. })
        ));
        assert!(PoolKey::new("").is_none());
        assert!(PoolKey::new(&b"\0abc"[..]).is_none());
    }

    #[test]
    fn load_reads_file_and_key() {
        let dir = TempDir::new("load");
        let path = dir.0.join("pool_passwd");
        let key_path = dir.0.join("key");
        fs::write(&key_path, "x\n").unwrap();
        fs::write(
            &path,
            format!("u:AES{PG_ENC_X_P}\nv:md5{}\n", "0".repeat(32)),
        )
        .unwrap();
        let file = PasswordFile::load(&path, Some(&key_path)).unwrap();
        assert_eq!(plain(&file, "u"), "p");
        let e = PasswordFile::load(&path, None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:1: ", path.display())), "{e}");
        let e = PasswordFile::load(&path, Some(&dir.0.join("nokey"))).unwrap_err();
        assert!(matches!(e, PasswdError::Io { action: "read", .. }), "{e}");
    }

    #[test]
    fn set_password_round_trips_and_keeps_other_lines() {
        let dir = TempDir::new("set");
        let path = dir.0.join("pool_passwd");
        let key_path = dir.0.join("key");
        fs::write(&key_path, "my-secret-key\n").unwrap();
        let original = "# managed by hand\r\n\
                        bob:md5b4ea4d2d3fd4a0ba4cf9b5b2958ab4a6\n\
                        \n\
                        #alice:commented out\n\
                        alice:old\n\
                        broken line kept as is\n\
                        zed:TEXTz";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        set_password(&path, "alice", "new:pw", PasswdFormat::Text, None).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            original.replace("alice:old", "alice:TEXTnew\\:pw") + "\n".trim_end()
        );
        assert_eq!(mode(&path), 0o600);

        // Adding a user appends a line (and the missing final newline).
        set_password(&path, "carol", "pencil", PasswdFormat::Aes, Some(&key_path)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("zed:TEXTz\ncarol:AES{PG_ENC_PENCIL}\n")),
            "{text}"
        );
        assert!(
            text.starts_with("# managed by hand\r\nbob:md5b4ea"),
            "{text}"
        );
        assert!(text.contains("broken line kept as is\n"));
        assert!(text.contains("#alice:commented out\n"));

        // Without the broken line, the file parses, and each format reads
        // back as the password.
        let cleaned = text.replace("broken line kept as is\n", "");
        fs::write(&path, cleaned).unwrap();
        set_password(&path, "dave", "pw", PasswdFormat::Md5, None).unwrap();
        set_password(&path, "erin", "pw", PasswdFormat::Scram, None).unwrap();
        set_password(&path, "a:b\\c", "pw", PasswdFormat::Text, None).unwrap();
        let file = PasswordFile::load(&path, Some(&key_path)).unwrap();
        assert_eq!(plain(&file, "alice"), "new:pw");
        assert_eq!(plain(&file, "carol"), "pencil");
        assert_eq!(plain(&file, "a:b\\c"), "pw");
        assert!(file.lookup("dave").unwrap().verify_cleartext("dave", b"pw"));
        assert!(
            matches!(file.lookup("erin"), Some(PasswordEntry::Scram(v)) if v.verify_password(b"pw"))
        );
        assert_eq!(mode(&path), 0o600);

        // Replacing changes only that line, in place.
        let before = fs::read_to_string(&path).unwrap();
        set_password(&path, "dave", "pw2", PasswdFormat::Md5, None).unwrap();
        let after = fs::read_to_string(&path).unwrap();
        let changed: Vec<_> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0].1,
            format!("dave:{}", md5::hash_password("dave", b"pw2"))
        );
        assert_eq!(before.lines().count(), after.lines().count());

        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn set_password_creates_the_file_and_drops_duplicates() {
        let dir = TempDir::new("create");
        let path = dir.0.join("new_passwd");
        set_password(&path, "u", "pw", PasswdFormat::Text, None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "u:TEXTpw\n");
        assert_eq!(mode(&path), 0o600);
        fs::write(&path, "u:a\nv:b\nu:c\n").unwrap();
        set_password(&path, "u", "d", PasswdFormat::Text, None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "u:TEXTd\nv:b\n");
    }

    #[test]
    fn set_password_keeps_the_owner() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a file away
        }
        let dir = TempDir::new("owner");
        let path = dir.0.join("p");
        fs::write(&path, "v:b\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        set_password(&path, "u", "pw", PasswdFormat::Text, None).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn set_password_follows_symlinks() {
        let dir = TempDir::new("link");
        let real = dir.0.join("real");
        let link = dir.0.join("link");
        fs::write(&real, "v:b\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        set_password(&link, "u", "pw", PasswdFormat::Text, None).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "v:b\nu:TEXTpw\n");
    }

    #[test]
    fn set_password_refuses_bad_input() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("p");
        for (user, pw) in [("", "x"), ("a\nb", "x"), ("#u", "x"), ("u\0", "x")] {
            assert!(matches!(
                set_password(&path, user, pw, PasswdFormat::Text, None),
                Err(PasswdError::InvalidUser(_))
            ));
        }
        for pw in ["", "a\nb", "a\rb", "a\0b"] {
            assert!(matches!(
                set_password(&path, "u", pw, PasswdFormat::Text, None),
                Err(PasswdError::InvalidPassword(_))
            ));
        }
        assert!(matches!(
            set_password(&path, "u", "pw", PasswdFormat::Aes, None),
            Err(PasswdError::NeedsKey)
        ));
        assert!(!path.exists());
        // A directory that does not exist.
        let e = set_password(
            &dir.0.join("no/such/p"),
            "u",
            "pw",
            PasswdFormat::Text,
            None,
        );
        assert!(matches!(e, Err(PasswdError::Io { .. })));
    }

    fn args(file: &Path, user: &str) -> PasswdArgs {
        PasswdArgs {
            file: file.to_owned(),
            format: PasswdFormat::default(),
            key_file: None,
            from_pg_authid: false,
            user: user.to_owned(),
        }
    }

    #[test]
    fn passwd_command_reads_the_first_line_of_input() {
        let dir = TempDir::new("cmd");
        let path = dir.0.join("pool_passwd");
        let msg = passwd_command_with_input(
            args(&path, "alice"),
            &mut Cursor::new("s3cret\r\nignored\n"),
        )
        .unwrap();
        assert!(
            msg.starts_with("added a SCRAM-SHA-256 verifier for user \"alice\""),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"));
        let file = PasswordFile::load(&path, None).unwrap();
        assert!(
            matches!(file.lookup("alice"), Some(PasswordEntry::Scram(v)) if v.verify_password(b"s3cret"))
        );

        let mut a = args(&path, "alice");
        a.format = PasswdFormat::Md5;
        let msg = passwd_command_with_input(a, &mut Cursor::new("s3cret")).unwrap();
        assert!(msg.starts_with("replaced an md5 hash"), "{msg}");

        let mut a = args(&path, "bob");
        a.format = PasswdFormat::Aes;
        a.key_file = Some(dir.0.join("key"));
        fs::write(dir.0.join("key"), "x\n").unwrap();
        passwd_command_with_input(a, &mut Cursor::new("p\n")).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains(&format!("bob:AES{PG_ENC_X_P}\n"))
        );

        let e =
            passwd_command_with_input(args(&path, "carol"), &mut Cursor::new("\n")).unwrap_err();
        assert!(matches!(e, PasswdError::InvalidPassword(_)), "{e}");
        let e = passwd_command_with_input(args(&path, "carol"), &mut Cursor::new("")).unwrap_err();
        assert!(matches!(e, PasswdError::InvalidPassword(_)), "{e}");
    }

    #[test]
    fn passwd_command_from_pg_authid() {
        let dir = TempDir::new("authid");
        let path = dir.0.join("pool_passwd");
        let v = ScramVerifier::from_password(b"pencil", b"saltsaltsaltsalt", 4096);
        let mut a = args(&path, "alice");
        a.from_pg_authid = true;
        let msg =
            passwd_command_with_input(a.clone(), &mut Cursor::new(format!(" {v} \n"))).unwrap();
        assert_eq!(
            msg,
            format!(
                "stored the SCRAM-SHA-256 verifier from pg_authid for user \"alice\" in {}",
                path.display()
            )
        );
        let file = PasswordFile::load(&path, None).unwrap();
        assert!(matches!(file.lookup("alice"), Some(PasswordEntry::Scram(s)) if *s == v));
        let hash = md5::hash_password("alice", b"pencil");
        let msg = passwd_command_with_input(a.clone(), &mut Cursor::new(hash.clone())).unwrap();
        assert!(msg.starts_with("replaced with the md5 hash"), "{msg}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("alice:{hash}\n")
        );
        let e = passwd_command_with_input(a, &mut Cursor::new("pencil\n")).unwrap_err();
        assert!(matches!(e, PasswdError::NotStoredSecret(_)), "{e}");
        set_stored_secret(&path, "bob", &v.to_string()).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .ends_with(&format!("bob:{v}\n"))
        );
    }

    #[test]
    fn passwd_args_parse_from_a_command_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: PasswdArgs,
        }
        let cli = Cli::try_parse_from(["pghalo", "alice"]).unwrap();
        assert_eq!(cli.args.format, PasswdFormat::Scram);
        assert_eq!(cli.args.file, PathBuf::from(DEFAULT_PASSWD_FILE));
        let cli = Cli::try_parse_from([
            "pghalo",
            "--file",
            "/tmp/p",
            "--format",
            "aes",
            "--key-file",
            "/k",
            "bob",
        ])
        .unwrap();
        assert_eq!(cli.args.format, PasswdFormat::Aes);
        assert_eq!(cli.args.key_file, Some(PathBuf::from("/k")));
        let cli = Cli::try_parse_from(["pghalo", "--format", "scram-sha-256", "u"]).unwrap();
        assert_eq!(cli.args.format, PasswdFormat::Scram);
        assert!(Cli::try_parse_from(["pghalo", "--format", "sha1", "u"]).is_err());
        assert!(
            Cli::try_parse_from(["pghalo", "--from-pg-authid", "--format", "md5", "u"]).is_err()
        );
        let cli = Cli::try_parse_from(["pghalo", "--from-pg-authid", "u"]).unwrap();
        assert!(cli.args.from_pg_authid);
        // No option takes the password.
        assert!(Cli::try_parse_from(["pghalo", "--password", "x", "u"]).is_err());
        assert!(Cli::try_parse_from(["pghalo", "u", "secret"]).is_err());
    }

    #[test]
    fn odd_input_never_panics() {
        let k = key("k");
        for text in [
            "\\",
            ":",
            "\\:",
            "a\\",
            "a:\\",
            "a:AES=",
            "a:AES====",
            "a:SCRAM-SHA-256$",
            "a:md5",
            "\u{0}:\u{0}",
            "a:b\\",
            "a:TEXT\\",
            "\r",
            "a:\r",
        ] {
            let _ = PasswordFile::parse(text, "f", Some(&k));
            let _ = PasswordFile::parse(text, "f", None);
        }
        let file = parse("a:b\\\n", None);
        assert_eq!(plain(&file, "a"), "b\\");
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let words: Vec<&str> =
            "alice md5 AES SCRAM-SHA-256$ 4096: TEXT QDYyE0sHuHnbZcszwEjUZw== = \\ : # \n \r x é"
                .split(' ')
                .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let k = key("k");
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
            let _ = PasswordFile::parse(&text, "f", Some(&k));
            let _ = PasswordFile::parse(&text, "f", None);
        }
    }
}
