//! The untagged packets a client may send before the first tagged message:
//! StartupMessage, SSLRequest, GSSENCRequest and CancelRequest.
//!
//! Owns their decoding (length + request code, no tag byte), the
//! [`ProtocolVersion`] and [`CancelKey`] types, and the protocol-version
//! negotiation decision. Writers for these packets live in
//! [`crate::frontend`], next to the other client-side writers.
//!
//! Limits follow PostgreSQL's `ProcessStartupPacket`, so the proxy refuses
//! exactly what a server would, and refuses it before buffering: a packet
//! shorter than 8 bytes or longer than `MAX_STARTUP_PACKET_LENGTH` (10000)
//! is an error as soon as its length field is read.
//!
//! Parameters are decoded to `String`: they are names (user, database,
//! GUCs) that the proxy matches on and logs, so a non-UTF-8 name or value is
//! refused rather than carried as opaque bytes. PostgreSQL itself would
//! accept a non-UTF-8 value in a non-UTF-8 database; a client doing that
//! through pghalo gets a clear 08P01 error instead.

use std::fmt;

use bytes::{Bytes, BytesMut};
use subtle::ConstantTimeEq;

use crate::SqlState;

/// The request code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80877103;
/// The request code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
/// The request code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80877102;
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET_LEN: u32 = 10000;
/// The smallest startup-phase packet: length and code.
pub const MIN_STARTUP_PACKET_LEN: u32 = 8;
/// The major version that marks a request code rather than a protocol.
const REQUEST_MAJOR: u16 = 1234;

/// A fault in a startup-phase packet. The connection is closed after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The length field is below 8 (or negative).
    #[error("invalid length of startup packet: {len}")]
    InvalidLength {
        /// The length as sent, read as signed.
        len: i32,
    },
    /// The length field is above the maximum.
    #[error("startup packet of length {len} exceeds the maximum {max}")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// [`MAX_STARTUP_PACKET_LEN`].
        max: u32,
    },
    /// A StartupMessage for a major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol {
        /// The requested major version.
        major: u16,
        /// The requested minor version.
        minor: u16,
    },
    /// A 1234.x request code that is none of SSL, GSSENC or cancel.
    #[error("unknown startup request code 1234.{minor}")]
    UnknownRequestCode {
        /// The low 16 bits of the code.
        minor: u16,
    },
    /// An SSL, GSSENC or cancel request whose length does not fit its kind
    /// (SSL and GSSENC carry nothing; a cancel key is 4 to 256 bytes).
    #[error("invalid length {len} for {request}")]
    InvalidRequestLength {
        /// The request kind.
        request: &'static str,
        /// The length field.
        len: u32,
    },
    /// A parameter name or value is not NUL-terminated.
    #[error("startup packet: {field} has no NUL terminator")]
    MissingNul {
        /// `"parameter name"` or `"parameter value"`.
        field: &'static str,
    },
    /// The parameter list does not end with the empty name (a lone NUL) as
    /// the packet's last byte.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    MissingTerminator,
    /// Bytes follow the list terminator.
    #[error("startup packet has {count} byte(s) after the terminator")]
    TrailingBytes {
        /// How many bytes follow.
        count: usize,
    },
    /// A parameter name is followed by the terminator instead of a value.
    #[error("startup parameter {name:?} has no value")]
    ParameterWithoutValue {
        /// The name that lacks a value.
        name: String,
    },
    /// A parameter name or value is not UTF-8.
    #[error("startup packet: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// `"parameter name"` or `"parameter value"`.
        field: &'static str,
    },
}

impl StartupError {
    /// The SQLSTATE PostgreSQL answers with: an unsupported protocol is a
    /// missing feature, everything else a protocol violation.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            StartupError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}

/// A protocol version as sent in a StartupMessage (major in the high 16
/// bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// The major version; 3 for every PostgreSQL since 7.4.
    pub major: u16,
    /// The minor version: 0 up to PostgreSQL 17, 2 added in 18.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };
    /// Protocol 3.2 (PostgreSQL 18: longer cancel keys).
    pub const V3_2: ProtocolVersion = ProtocolVersion { major: 3, minor: 2 };

    /// The version from its wire code.
    pub fn from_code(code: i32) -> Self {
        let code = code as u32;
        ProtocolVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }

    /// The wire code.
    pub fn code(self) -> i32 {
        ((u32::from(self.major) << 16) | u32::from(self.minor)) as i32
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The secret half of a cancel key, 4 bytes in protocol 3.0 and up to 256
/// in 3.2.
///
/// Comparison is constant-time and `Debug` hides the bytes: whoever knows a
/// key can cancel that session's queries, so it is treated like a password.
#[derive(Clone, Eq)]
pub struct CancelKey(Bytes);

impl CancelKey {
    /// The shortest key (protocol 3.0's `int32`).
    pub const MIN_LEN: usize = 4;
    /// The longest key protocol 3.2 allows.
    pub const MAX_LEN: usize = 256;

    /// A key from its bytes; `None` if the length is outside 4..=256.
    pub fn new(bytes: impl Into<Bytes>) -> Option<Self> {
        let bytes = bytes.into();
        (Self::MIN_LEN..=Self::MAX_LEN)
            .contains(&bytes.len())
            .then_some(CancelKey(bytes))
    }

    /// A protocol 3.0 key from the `int32` it is sent as.
    pub fn from_i32(secret: i32) -> Self {
        CancelKey(Bytes::copy_from_slice(&secret.to_be_bytes()))
    }

    /// A fresh random key of `len` bytes (clamped to 4..=256), for the keys
    /// the proxy hands its clients.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut bytes = vec![0; len.clamp(Self::MIN_LEN, Self::MAX_LEN)];
        getrandom::fill(&mut bytes)?;
        Ok(CancelKey(bytes.into()))
    }

    /// The key bytes as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a key has at least 4 bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for CancelKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_ref().ct_eq(other.0.as_ref()))
    }
}

impl fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CancelKey({} bytes)", self.0.len())
    }
}

/// A StartupMessage: the protocol version and the parameters, in the
/// order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The requested protocol version (major is always 3 once decoded).
    pub version: ProtocolVersion,
    /// `(name, value)` pairs; duplicates are kept as sent.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The last value sent for `name` (PostgreSQL lets a later one win).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter, which PostgreSQL requires.
    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The `database` parameter, defaulting to the user name as PostgreSQL
    /// does.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or_else(|| self.user())
    }

    /// The protocol options (`_pq_.` parameters) the client asked for.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with("_pq_."))
    }

    /// What to answer when the client asks for more than the proxy speaks.
    ///
    /// PostgreSQL sends NegotiateProtocolVersion when the requested minor
    /// version is above its newest, or when any `_pq_.` option is not one it
    /// recognises; the connection then goes on at the lower version.
    /// `newest_minor` is the newest 3.x minor the caller supports and
    /// `recognised` the protocol options it understands. `None` means no
    /// negotiation message is needed.
    pub fn negotiation(&self, newest_minor: u16, recognised: &[&str]) -> Option<Negotiation> {
        let unrecognised: Vec<String> = self
            .protocol_options()
            .filter(|o| !recognised.contains(o))
            .map(str::to_owned)
            .collect();
        if self.version.minor <= newest_minor && unrecognised.is_empty() {
            return None;
        }
        Some(Negotiation {
            newest_minor: self.version.minor.min(newest_minor),
            unrecognised,
        })
    }

    /// Writes the message (client side).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), crate::EncodeError> {
        let params: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        crate::frontend::write_startup_message(dst, self.version, &params)
    }
}

/// The content of a NegotiateProtocolVersion reply; see
/// [`StartupMessage::negotiation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    /// The minor version the session will use.
    pub newest_minor: u16,
    /// The `_pq_.` options that will be ignored.
    pub unrecognised: Vec<String>,
}

impl Negotiation {
    /// Writes the NegotiateProtocolVersion message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), crate::EncodeError> {
        let names: Vec<&str> = self.unrecognised.iter().map(String::as_str).collect();
        crate::backend::write_negotiate_protocol_version(dst, self.newest_minor, &names)
    }
}

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage for protocol 3.x.
    Startup(StartupMessage),
    /// The client asks for TLS; the answer is one byte, `S` or `N`.
    SslRequest,
    /// The client asks for GSSAPI encryption; answered `G` or `N`.
    GssEncRequest,
    /// A request to cancel the query running on another session.
    CancelRequest {
        /// The target session's process id (as the proxy handed it out).
        pid: i32,
        /// The target session's secret key.
        key: CancelKey,
    },
}

impl StartupPacket {
    /// Reads the length field at the start of `buf`: `None` if fewer than 4
    /// bytes are there, an error if it is out of bounds.
    pub fn peek_len(buf: &[u8]) -> Result<Option<u32>, StartupError> {
        let Some(&len) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = i32::from_be_bytes(len);
        let Some(ulen) = u32::try_from(len)
            .ok()
            .filter(|&l| l >= MIN_STARTUP_PACKET_LEN)
        else {
            return Err(StartupError::InvalidLength { len });
        };
        if ulen > MAX_STARTUP_PACKET_LEN {
            return Err(StartupError::TooLarge {
                len: ulen,
                max: MAX_STARTUP_PACKET_LEN,
            });
        }
        Ok(Some(ulen))
    }

    /// Splits the next packet off `buf` and decodes it; `None` means more
    /// bytes are needed. The length is validated before waiting.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
        let Some(len) = Self::peek_len(buf)? else {
            return Ok(None);
        };
        let len = len as usize;
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let packet = buf.split_to(len).freeze();
        Self::parse(&packet).map(Some)
    }

    /// Decodes one complete packet, length field included. `packet` must be
    /// exactly the packet: a length field that disagrees with its size is an
    /// error.
    pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
        let len = match Self::peek_len(packet)? {
            Some(len) => len,
            None => {
                return Err(StartupError::InvalidLength {
                    len: i32::try_from(packet.len()).unwrap_or(i32::MAX),
                });
            }
        };
        if len as usize != packet.len() {
            return Err(StartupError::InvalidLength { len: len as i32 });
        }
        // peek_len guarantees at least 8 bytes: the length and the code.
        let Some((code, body)) = packet.get(4..).and_then(<[u8]>::split_first_chunk::<4>) else {
            return Err(StartupError::InvalidLength { len: len as i32 });
        };
        let version = ProtocolVersion::from_code(i32::from_be_bytes(*code));
        if version.major == REQUEST_MAJOR {
            return Self::parse_request(version.minor, len, body);
        }
        if version.major != 3 {
            return Err(StartupError::UnsupportedProtocol {
                major: version.major,
                minor: version.minor,
            });
        }
        let params = parse_params(body)?;
        Ok(StartupPacket::Startup(StartupMessage { version, params }))
    }

    fn parse_request(minor: u16, len: u32, body: &[u8]) -> Result<StartupPacket, StartupError> {
        let code = ProtocolVersion {
            major: REQUEST_MAJOR,
            minor,
        }
        .code();
        match code {
            SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
                let (packet, request) = if code == SSL_REQUEST_CODE {
                    (StartupPacket::SslRequest, "SSLRequest")
                } else {
                    (StartupPacket::GssEncRequest, "GSSENCRequest")
                };
                if body.is_empty() {
                    Ok(packet)
                } else {
                    Err(StartupError::InvalidRequestLength { request, len })
                }
            }
            CANCEL_REQUEST_CODE => {
                let bad_len = StartupError::InvalidRequestLength {
                    request: "CancelRequest",
                    len,
                };
                let Some((pid, key)) = body.split_first_chunk::<4>() else {
                    return Err(bad_len);
                };
                let key = CancelKey::new(Bytes::copy_from_slice(key)).ok_or(bad_len)?;
                Ok(StartupPacket::CancelRequest {
                    pid: i32::from_be_bytes(*pid),
                    key,
                })
            }
            _ => Err(StartupError::UnknownRequestCode { minor }),
        }
    }
}

/// Reads `name\0value\0...\0`, requiring the final lone NUL as last byte.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut body, "parameter name")?;
        if name.is_empty() {
            break;
        }
        if body.first() == Some(&0) && body.len() == 1 {
            return Err(StartupError::ParameterWithoutValue {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        let value = take_cstr(&mut body, "parameter value")?;
        params.push((
            utf8(name, "parameter name")?,
            utf8(value, "parameter value")?,
        ));
    }
    if body.is_empty() {
        Ok(params)
    } else {
        Err(StartupError::TrailingBytes { count: body.len() })
    }
}

fn take_cstr<'a>(body: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], StartupError> {
    if body.is_empty() {
        return Err(StartupError::MissingTerminator);
    }
    let end = memchr::memchr(0, body).ok_or(StartupError::MissingNul { field })?;
    let (s, tail) = body.split_at(end);
    *body = tail.get(1..).unwrap_or_default();
    Ok(s)
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, StartupError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StartupError::InvalidUtf8 { field })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    fn packet(code: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(body.len() as i32 + 8);
        b.put_i32(code);
        b.put_slice(body);
        b
    }

    fn parse(code: i32, body: &[u8]) -> Result<StartupPacket, StartupError> {
        StartupPacket::parse(&packet(code, body))
    }

    #[test]
    fn startup_message_keeps_params_in_order() {
        let p = parse(
            196608,
            b"user\0alice\0database\0db1\0application_name\0psql\0\0",
        )
        .unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup message")
        };
        assert_eq!(m.version, ProtocolVersion::V3_0);
        assert_eq!(
            m.params,
            vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db1".into()),
                ("application_name".into(), "psql".into())
            ]
        );
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("db1"));
        assert_eq!(m.param("nope"), None);
        assert_eq!(m.negotiation(2, &[]), None);
    }

    #[test]
    fn database_defaults_to_user_and_later_duplicates_win() {
        let StartupPacket::Startup(m) = parse(196608, b"user\0a\0user\0b\0\0").unwrap() else {
            panic!()
        };
        assert_eq!(m.user(), Some("b"));
        assert_eq!(m.database(), Some("b"));
        // An empty value is allowed (PostgreSQL accepts it).
        let StartupPacket::Startup(m) = parse(196608, b"options\0\0\0").unwrap() else {
            panic!()
        };
        assert_eq!(m.params, vec![("options".into(), String::new())]);
        // No parameters at all is just the terminator.
        let StartupPacket::Startup(m) = parse(196608, b"\0").unwrap() else {
            panic!()
        };
        assert!(m.params.is_empty());
    }

    #[test]
    fn minor_versions_and_protocol_options_negotiate() {
        let StartupPacket::Startup(m) = parse(
            ProtocolVersion { major: 3, minor: 9 }.code(),
            b"user\0u\0_pq_.foo\0x\0\0",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(m.version.to_string(), "3.9");
        let n = m.negotiation(2, &[]).unwrap();
        assert_eq!(
            n,
            Negotiation {
                newest_minor: 2,
                unrecognised: vec!["_pq_.foo".into()]
            }
        );
        let mut out = BytesMut::new();
        n.encode(&mut out).unwrap();
        assert_eq!(
            &out[..],
            b"v\x00\x00\x00\x15\x00\x00\x00\x02\x00\x00\x00\x01_pq_.foo\0"
        );
        assert_eq!(
            m.negotiation(9, &["_pq_.foo"]),
            None,
            "nothing to negotiate when all is supported"
        );
        assert_eq!(
            m.negotiation(0, &["_pq_.foo"]).unwrap(),
            Negotiation {
                newest_minor: 0,
                unrecognised: vec![]
            }
        );
    }

    #[test]
    fn requests() {
        assert_eq!(parse(SSL_REQUEST_CODE, b""), Ok(StartupPacket::SslRequest));
        assert_eq!(
            parse(GSSENC_REQUEST_CODE, b""),
            Ok(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            parse(SSL_REQUEST_CODE, b"x"),
            Err(StartupError::InvalidRequestLength {
                request: "SSLRequest",
                len: 9
            })
        );
        assert_eq!(
            parse(CANCEL_REQUEST_CODE, b"\x00\x00\x30\x39\x01\x02\x03\x04"),
            Ok(StartupPacket::CancelRequest {
                pid: 12345,
                key: CancelKey::from_i32(0x01020304)
            })
        );
        let long_key = [9u8; 256];
        let mut body = vec![0, 0, 0, 1];
        body.extend_from_slice(&long_key);
        let StartupPacket::CancelRequest { pid, key } = parse(CANCEL_REQUEST_CODE, &body).unwrap()
        else {
            panic!()
        };
        assert_eq!(pid, 1);
        assert_eq!(key.as_bytes(), &long_key[..]);
        body.push(0);
        assert!(matches!(
            parse(CANCEL_REQUEST_CODE, &body),
            Err(StartupError::InvalidRequestLength { len: 269, .. })
        ));
        for short in [&b""[..], b"\0\0\0\x01", b"\0\0\0\x01abc"] {
            assert!(matches!(
                parse(CANCEL_REQUEST_CODE, short),
                Err(StartupError::InvalidRequestLength {
                    request: "CancelRequest",
                    ..
                })
            ));
        }
        assert_eq!(
            parse(80877199, b""),
            Err(StartupError::UnknownRequestCode { minor: 5775 })
        );
    }

    #[test]
    fn unsupported_protocols() {
        for (major, minor) in [(2u16, 0u16), (4, 0), (0, 0), (65535, 65535)] {
            let code = ProtocolVersion { major, minor }.code();
            let err = parse(code, b"user\0u\0\0").unwrap_err();
            assert_eq!(err, StartupError::UnsupportedProtocol { major, minor });
            assert_eq!(err.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED);
        }
    }

    #[test]
    fn malformed_layouts() {
        let v3 = 196608;
        assert_eq!(parse(v3, b""), Err(StartupError::MissingTerminator));
        assert_eq!(
            parse(v3, b"user\0u\0"),
            Err(StartupError::MissingTerminator)
        );
        assert_eq!(
            parse(v3, b"user"),
            Err(StartupError::MissingNul {
                field: "parameter name"
            })
        );
        assert_eq!(
            parse(v3, b"user\0u"),
            Err(StartupError::MissingNul {
                field: "parameter value"
            })
        );
        assert_eq!(
            parse(v3, b"user\0\0"),
            Err(StartupError::ParameterWithoutValue {
                name: "user".into()
            })
        );
        assert_eq!(
            parse(v3, b"user\0u\0\0junk"),
            Err(StartupError::TrailingBytes { count: 4 })
        );
        assert_eq!(
            parse(v3, b"us\xffer\0u\0\0"),
            Err(StartupError::InvalidUtf8 {
                field: "parameter name"
            })
        );
        assert_eq!(
            parse(v3, b"user\0\xc3\0\0"),
            Err(StartupError::InvalidUtf8 {
                field: "parameter value"
            })
        );
        assert_eq!(
            parse(v3, b"x").unwrap_err().sqlstate(),
            SqlState::PROTOCOL_VIOLATION
        );
    }

    #[test]
    fn lengths_are_checked_before_waiting() {
        for len in [0i32, 4, 7, -1, i32::MIN] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            assert_eq!(
                StartupPacket::decode(&mut buf),
                Err(StartupError::InvalidLength { len })
            );
        }
        for len in [10001i32, i32::MAX] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let cap = buf.capacity();
            assert_eq!(
                StartupPacket::decode(&mut buf),
                Err(StartupError::TooLarge {
                    len: len as u32,
                    max: 10000
                })
            );
            assert_eq!(buf.capacity(), cap);
        }
        // A packet of exactly the maximum is fine.
        let mut body = b"user\0".to_vec();
        body.resize(10000 - 8 - 2, b'a');
        body.extend_from_slice(b"\0\0");
        let buf = packet(196608, &body);
        assert_eq!(buf.len(), 10000);
        assert!(StartupPacket::parse(&buf).is_ok());
        // parse() insists the slice is exactly one packet.
        let mut two = packet(SSL_REQUEST_CODE, b"");
        two.extend_from_slice(b"x");
        assert_eq!(
            StartupPacket::parse(&two),
            Err(StartupError::InvalidLength { len: 8 })
        );
        assert_eq!(
            StartupPacket::parse(b"\0\0\0"),
            Err(StartupError::InvalidLength { len: 3 })
        );
    }

    #[test]
    fn decode_waits_for_whole_packet_then_leaves_the_rest() {
        let mut full = packet(SSL_REQUEST_CODE, b"");
        full.extend_from_slice(&packet(196608, b"user\0u\0\0"));
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.put_u8(*b);
            let got = StartupPacket::decode(&mut buf).unwrap();
            match i {
                7 => assert_eq!(got, Some(StartupPacket::SslRequest)),
                23 => assert!(matches!(got, Some(StartupPacket::Startup(_)))),
                _ => assert_eq!(got, None, "at byte {i}"),
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn cancel_keys() {
        assert!(CancelKey::new(vec![0; 3]).is_none());
        assert!(CancelKey::new(vec![0; 257]).is_none());
        let k = CancelKey::new(vec![1, 2, 3, 4]).unwrap();
        assert_eq!(k, CancelKey::from_i32(0x01020304));
        assert_ne!(k, CancelKey::from_i32(0x01020305));
        assert_ne!(k, CancelKey::new(vec![1, 2, 3, 4, 5]).unwrap());
        assert_eq!(format!("{k:?}"), "CancelKey(4 bytes)");
        let r = CancelKey::random(32).unwrap();
        assert_eq!(r.len(), 32);
        assert!(!r.is_empty());
        assert_eq!(CancelKey::random(1).unwrap().len(), 4);
    }

    #[test]
    fn version_codes() {
        assert_eq!(ProtocolVersion::V3_0.code(), 196608);
        assert_eq!(ProtocolVersion::V3_2.code(), 196610);
        assert_eq!(
            ProtocolVersion::from_code(SSL_REQUEST_CODE),
            ProtocolVersion {
                major: 1234,
                minor: 5679
            }
        );
    }
}
