//! Bounded reading and length-patched writing of message bodies.
//!
//! Owns the two primitives every message parser and writer in `frontend`,
//! `backend` and `startup` is built from, and their error types:
//!
//! - `Reader` walks one body that framing has already delimited. Each read
//!   checks the bytes left first, so a length or count that lies becomes a
//!   [`ParseError`] naming the message and field, never an over-read or a
//!   panic; `finish` makes bytes left after the last field an error too,
//!   because a peer that sends more than the format allows is either broken
//!   or probing, and silently ignoring it hides both.
//! - `MessageWriter` appends one message to a `BytesMut`, patches the
//!   length when done, and on any error (or an early return) truncates the
//!   buffer back to where it started, so a failed write never leaves half a
//!   message in an output buffer that is shared with other messages.
//!
//! Protocol strings are [`Text`]: bytes in whatever encoding the session
//! uses (`client_encoding` may be LATIN1), viewed as UTF-8 only on request.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// A fault in a message body received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body ended before the field was complete.
    #[error("{message} message ends inside {field}")]
    Truncated {
        /// The message kind being parsed.
        message: &'static str,
        /// The field that was cut short.
        field: &'static str,
    },
    /// A string field runs to the end of the body without its terminator.
    #[error("{message} message: {field} has no NUL terminator")]
    MissingNul {
        /// The message kind being parsed.
        message: &'static str,
        /// The unterminated string field.
        field: &'static str,
    },
    /// Bytes follow the last field the format defines.
    #[error("{message} message has {count} unexpected trailing byte(s)")]
    TrailingBytes {
        /// The message kind being parsed.
        message: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A field holds a value the format does not allow (a negative count, an
    /// unknown status byte, a key of the wrong length...).
    #[error("{message} message: {field} has invalid value {value}")]
    InvalidValue {
        /// The message kind being parsed.
        message: &'static str,
        /// The offending field.
        field: &'static str,
        /// The value received (bytes are widened).
        value: i64,
    },
}

impl ParseError {
    /// The SQLSTATE PostgreSQL uses when a peer sends a malformed message.
    pub fn sqlstate(&self) -> crate::SqlState {
        crate::SqlState::PROTOCOL_VIOLATION
    }
}

/// Why a message could not be written. The output buffer is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string sent NUL-terminated contains a NUL, which would end it early
    /// and shift every later field: the peer would read a different message.
    #[error("{message} message: {field} contains a NUL byte")]
    InteriorNul {
        /// The message kind being written.
        message: &'static str,
        /// The string field.
        field: &'static str,
    },
    /// The message would exceed the protocol's i32 length.
    #[error("{message} message would be {len} bytes, over the protocol limit")]
    TooLarge {
        /// The message kind being written.
        message: &'static str,
        /// The length it would have had.
        len: usize,
    },
    /// A list is longer than its count field (an i16 or i32) can say.
    #[error("{message} message: {count} items in {field} do not fit its count field")]
    TooManyItems {
        /// The message kind being written.
        message: &'static str,
        /// The list field.
        field: &'static str,
        /// The number of items given.
        count: usize,
    },
    /// A byte field has a length the format does not allow.
    #[error("{message} message: {field} has invalid length {len}")]
    InvalidLength {
        /// The message kind being written.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The length given.
        len: usize,
    },
}

/// A protocol string: the bytes between a field's start and its NUL.
///
/// PostgreSQL sends names, SQL text and error messages in the session's
/// `client_encoding`, which need not be UTF-8, so the bytes are kept as they
/// came and converted only when asked. Comparing with `&str` compares bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    /// Wraps bytes that carry no NUL.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Text(bytes)
    }

    /// The raw bytes, without the terminator.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The text as UTF-8, if it is.
    pub fn to_str(&self) -> Result<&'a str, std::str::Utf8Error> {
        std::str::from_utf8(self.0)
    }

    /// The text with invalid sequences replaced, for logs and messages.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.0)
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string (the unnamed statement or portal).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A cursor over one message body that never reads past its end.
pub(crate) struct Reader<'a> {
    message: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(message: &'static str, buf: &'a [u8]) -> Self {
        Reader { message, buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(ParseError::Truncated {
                message: self.message,
                field,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ParseError> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(*head)
            }
            None => Err(ParseError::Truncated {
                message: self.message,
                field,
            }),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, ParseError> {
        self.array(field).map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ParseError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn array4(&mut self, field: &'static str) -> Result<[u8; 4], ParseError> {
        self.array(field)
    }

    /// An i16 count of following items; negative counts are an error.
    pub(crate) fn count16(&mut self, field: &'static str) -> Result<usize, ParseError> {
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| self.invalid(field, i64::from(n)))
    }

    /// A NUL-terminated string; the terminator is consumed, not returned.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Text<'a>, ParseError> {
        match memchr::memchr(0, self.buf) {
            Some(end) => {
                let (text, tail) = self.buf.split_at(end);
                self.buf = tail.get(1..).unwrap_or_default();
                Ok(Text(text))
            }
            None => Err(ParseError::MissingNul {
                message: self.message,
                field,
            }),
        }
    }

    /// Everything left; the reader is then empty.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn invalid(&self, field: &'static str, value: i64) -> ParseError {
        ParseError::InvalidValue {
            message: self.message,
            field,
            value,
        }
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::TrailingBytes {
                message: self.message,
                count: self.buf.len(),
            })
        }
    }
}

/// Most messages a proxy writes itself (ParameterStatus, authentication
/// requests, short queries) fit in this many bytes.
pub const TYPICAL_MESSAGE: usize = 128;

/// Appends one message to a buffer; see the module docs for the rollback.
pub(crate) struct MessageWriter<'b> {
    dst: &'b mut BytesMut,
    message: &'static str,
    /// Where this message starts in `dst`, for rollback.
    start: usize,
    /// Where the length field starts (after the tag, if any).
    len_at: usize,
    done: bool,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message; `tag` is `None` for the untagged startup-phase
    /// packets.
    pub(crate) fn new(dst: &'b mut BytesMut, tag: Option<u8>, message: &'static str) -> Self {
        // Room for a typical message at once: growing an empty buffer byte
        // by byte doubles it from 8 bytes, an allocation per step.
        dst.reserve(TYPICAL_MESSAGE);
        let start = dst.len();
        if let Some(tag) = tag {
            dst.put_u8(tag);
        }
        let len_at = dst.len();
        dst.put_i32(0);
        MessageWriter {
            dst,
            message,
            start,
            len_at,
            done: false,
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.dst.put_u8(v);
        self
    }

    pub(crate) fn i16(&mut self, v: i16) -> &mut Self {
        self.dst.put_i16(v);
        self
    }

    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.dst.put_i32(v);
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.dst.put_slice(v);
        self
    }

    /// A string and its terminator; a NUL inside it is an error.
    pub(crate) fn cstr(&mut self, v: &[u8], field: &'static str) -> Result<&mut Self, EncodeError> {
        if memchr::memchr(0, v).is_some() {
            return Err(EncodeError::InteriorNul {
                message: self.message,
                field,
            });
        }
        self.dst.put_slice(v);
        self.dst.put_u8(0);
        Ok(self)
    }

    /// An item count that must fit an i16.
    pub(crate) fn count16(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        let n16 = i16::try_from(n).map_err(|_| EncodeError::TooManyItems {
            message: self.message,
            field,
            count: n,
        })?;
        Ok(self.i16(n16))
    }

    /// A byte length that must fit an i32.
    pub(crate) fn len32(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        let n32 = i32::try_from(n).map_err(|_| EncodeError::InvalidLength {
            message: self.message,
            field,
            len: n,
        })?;
        Ok(self.i32(n32))
    }

    /// Patches the length field; the message is then kept.
    pub(crate) fn finish(mut self) -> Result<(), EncodeError> {
        let len = self.dst.len() - self.len_at;
        let len32 = i32::try_from(len).map_err(|_| EncodeError::TooLarge {
            message: self.message,
            len,
        })?;
        if let Some(field) = self.dst.get_mut(self.len_at..self.len_at + 4) {
            field.copy_from_slice(&len32.to_be_bytes());
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for MessageWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.dst.truncate(self.start);
        }
    }
}

/// Writes a message that is only a tag and a length (Sync, ParseComplete...).
pub(crate) fn write_empty(dst: &mut BytesMut, tag: u8) {
    dst.put_u8(tag);
    dst.put_i32(4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_fields_in_order() {
        let body = b"ab\0\x00\x01\x00\x00\x00\x02\xffrest";
        let mut r = Reader::new("Test", body);
        assert_eq!(r.cstr("s").unwrap(), "ab");
        assert_eq!(r.i16("h").unwrap(), 1);
        assert_eq!(r.i32("i").unwrap(), 2);
        assert_eq!(r.u8("b").unwrap(), 0xff);
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.rest(), b"rest");
        assert_eq!(r.remaining(), 0);
        r.finish().unwrap();
    }

    #[test]
    fn reader_reports_truncation_missing_nul_and_trailing_bytes() {
        let mut r = Reader::new("Test", b"\x00\x01\x02");
        assert_eq!(
            r.i32("len"),
            Err(ParseError::Truncated {
                message: "Test",
                field: "len"
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.remaining(), 3);
        assert_eq!(
            r.bytes(4, "x").unwrap_err().to_string(),
            "Test message ends inside x"
        );
        assert_eq!(
            Reader::new("Test", b"abc").cstr("name"),
            Err(ParseError::MissingNul {
                message: "Test",
                field: "name"
            })
        );
        let mut r = Reader::new("Test", b"a\0zz");
        r.cstr("name").unwrap();
        assert_eq!(
            r.finish(),
            Err(ParseError::TrailingBytes {
                message: "Test",
                count: 2
            })
        );
        let mut r = Reader::new("Test", b"\xff\xff");
        assert_eq!(
            r.count16("n"),
            Err(ParseError::InvalidValue {
                message: "Test",
                field: "n",
                value: -1
            })
        );
    }

    #[test]
    fn writer_patches_length_and_rolls_back_on_error() {
        let mut dst = BytesMut::from(&b"prev"[..]);
        let mut w = MessageWriter::new(&mut dst, Some(b'Q'), "Query");
        w.cstr(b"select 1", "sql").unwrap();
        w.finish().unwrap();
        assert_eq!(&dst[..], b"prevQ\x00\x00\x00\x0dselect 1\0");

        let mut w = MessageWriter::new(&mut dst, Some(b'Q'), "Query");
        let err = w.cstr(b"a\0b", "sql").map(|_| ()).unwrap_err();
        drop(w);
        assert_eq!(
            err,
            EncodeError::InteriorNul {
                message: "Query",
                field: "sql"
            }
        );
        assert_eq!(&dst[..], b"prevQ\x00\x00\x00\x0dselect 1\0");

        let mut w = MessageWriter::new(&mut dst, Some(b'X'), "X");
        assert!(w.count16(40_000, "items").is_err());
        drop(w);
        assert_eq!(dst.len(), 4 + 14);
    }

    #[test]
    fn untagged_writer_counts_its_length_field() {
        let mut dst = BytesMut::new();
        let mut w = MessageWriter::new(&mut dst, None, "SSLRequest");
        w.i32(80877103);
        w.finish().unwrap();
        assert_eq!(&dst[..], b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    }

    #[test]
    fn text_views() {
        let t = Text::new(b"caf\xe9");
        assert!(t.to_str().is_err());
        assert_eq!(t.to_string_lossy(), "caf\u{fffd}");
        assert_eq!(t.len(), 4);
        assert!(!t.is_empty());
        assert_eq!(Text::new(b"x"), "x");
        assert_eq!(format!("{:?}", Text::new(b"x")), "\"x\"");
    }
}
