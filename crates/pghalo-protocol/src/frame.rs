//! Message framing for the regular (tagged) phase of the protocol.
//!
//! Owns the 5-byte header (`tag`, `i32` length that counts itself) and the
//! [`Decoder`] that cuts complete messages out of a read buffer. It does not
//! look inside bodies (`frontend` and `backend` do) and does not know the
//! untagged startup-phase packets (`startup` does).
//!
//! The length is checked as soon as the header is in, before any memory is
//! reserved for the body and before waiting for more bytes: a peer that
//! announces a 2 GB message is refused at once instead of making the proxy
//! buffer 2 GB or wait forever for bytes that will never come. Bodies are
//! split off the read buffer as [`Bytes`] without copying, so a proxy can
//! parse a few kinds and forward the rest untouched.

use bytes::{BufMut, Bytes, BytesMut};

/// PostgreSQL's own ceiling for a message (`PQ_LARGE_MESSAGE_LIMIT`,
/// `MaxAllocSize - 1`): a server rejects anything longer, so a proxy loses
/// nothing by refusing it first.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 0x3fff_fffe;

/// The most the decoder reserves ahead for a partial frame. The length
/// field is the peer's claim: a client may announce a 1 GB message and send
/// nothing more, so the buffer grows with the bytes that actually arrive,
/// never by the announced amount.
pub const MAX_RESERVE: usize = 64 * 1024;

/// A framing fault: the connection cannot be resynchronised after one, so
/// the caller answers with an ErrorResponse (08P01) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4 (it counts itself), including negative
    /// values sent as a huge unsigned number.
    #[error("invalid message length {len} for message type {tag:#04x}")]
    InvalidLength {
        /// The message tag.
        tag: u8,
        /// The length as sent, read as signed.
        len: i32,
    },
    /// The length is above the decoder's maximum.
    #[error("message type {tag:#04x} of length {len} exceeds the maximum {max}")]
    TooLarge {
        /// The message tag.
        tag: u8,
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
}

impl FrameError {
    /// The SQLSTATE PostgreSQL sends for an invalid message length.
    pub fn sqlstate(&self) -> crate::SqlState {
        crate::SqlState::PROTOCOL_VIOLATION
    }
}

/// A message header: the tag and the length, which counts the 4 length
/// bytes and the body but not the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type byte.
    pub tag: u8,
    /// The length field, at least 4.
    pub len: u32,
}

impl Header {
    /// Bytes in a header: tag plus length.
    pub const SIZE: usize = 5;

    /// Reads the header at the start of `buf`: `None` if fewer than 5 bytes
    /// are there yet, an error if the length cannot be valid.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(&[tag, a, b, c, d]) = buf.first_chunk::<5>() else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([a, b, c, d]);
        match u32::try_from(len) {
            Ok(len) if len >= 4 => Ok(Some(Header { tag, len })),
            _ => Err(FrameError::InvalidLength { tag, len }),
        }
    }

    /// The body length (the length field minus itself).
    pub fn body_len(&self) -> usize {
        (self.len as usize).saturating_sub(4)
    }

    /// The whole frame on the wire: tag, length and body.
    pub fn frame_len(&self) -> usize {
        self.len as usize + 1
    }

    /// Writes the header.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.tag);
        dst.put_u32(self.len);
    }
}

/// One complete message: its tag and body, the header stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message type byte.
    pub tag: u8,
    /// The body, shared with the read buffer's allocation.
    pub body: Bytes,
}

impl Message {
    /// A message from its parts (for tests and synthesised messages).
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Message {
            tag,
            body: body.into(),
        }
    }

    /// Writes the message back to the wire format; the body length was
    /// bounded by the decoder, so the length field cannot overflow for
    /// decoded messages. A synthesised body over 2 GiB is an error.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), crate::EncodeError> {
        let len = u32::try_from(self.body.len())
            .ok()
            .and_then(|n| n.checked_add(4))
            .filter(|&n| n <= i32::MAX as u32)
            .ok_or(crate::EncodeError::TooLarge {
                message: "message",
                len: self.body.len().saturating_add(4),
            })?;
        dst.reserve(self.body.len() + Header::SIZE);
        Header { tag: self.tag, len }.encode(dst);
        dst.put_slice(&self.body);
        Ok(())
    }
}

/// One complete message kept with its header, for forwarding as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    header: Header,
    bytes: Bytes,
}

impl Frame {
    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.header.tag
    }

    /// The whole frame as it came off the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole frame, for writing out unchanged.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The body (a cheap reference-counted slice).
    pub fn body(&self) -> Bytes {
        self.bytes.slice(Header::SIZE..)
    }

    /// The tag and body.
    pub fn into_message(self) -> Message {
        Message {
            tag: self.header.tag,
            body: self.body(),
        }
    }
}

/// Cuts complete messages out of a read buffer.
///
/// Stateless apart from its limit: the buffer is the state, so a caller can
/// call it after every read without bookkeeping, and any number of messages
/// may already sit in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    max_len: u32,
    /// Whether PostgreSQL's per-message-type limits for frontend messages
    /// apply on top of `max_len`.
    frontend_limits: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl Decoder {
    /// A decoder that refuses length fields above `max_len` (values below 4
    /// allow only empty bodies).
    pub fn new(max_len: u32) -> Self {
        Decoder {
            max_len,
            frontend_limits: false,
        }
    }

    /// Also applies the limits PostgreSQL sets per frontend message type
    /// ([`crate::frontend::max_message_len`]): only Query, Parse, Bind,
    /// FunctionCall and CopyData may be large. For decoding what clients
    /// send; a 1 GB Sync is refused on its header.
    pub fn with_frontend_limits(mut self) -> Self {
        self.frontend_limits = true;
        self
    }

    /// The largest length field accepted for a message of type `tag`.
    pub fn max_len(&self, tag: u8) -> u32 {
        if self.frontend_limits {
            self.max_len.min(crate::frontend::max_message_len(tag))
        } else {
            self.max_len
        }
    }

    /// The next header, validated against the limit, without consuming it.
    pub fn peek_header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(header) = Header::parse(buf)? else {
            return Ok(None);
        };
        let max = self.max_len(header.tag);
        if header.len > max {
            return Err(FrameError::TooLarge {
                tag: header.tag,
                len: header.len,
                max,
            });
        }
        Ok(Some(header))
    }

    /// Splits the next complete frame off `buf`, header included.
    ///
    /// `Ok(None)` means more bytes are needed; in that case, once the header
    /// is in and valid, `buf` has been reserved room for the rest of the
    /// frame, up to [`MAX_RESERVE`], so the next reads need not reallocate.
    pub fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.peek_header(buf)? else {
            return Ok(None);
        };
        let frame_len = header.frame_len();
        if buf.len() < frame_len {
            buf.reserve((frame_len - buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let bytes = buf.split_to(frame_len).freeze();
        Ok(Some(Frame { header, bytes }))
    }

    /// Splits the next complete message off `buf`, header stripped.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        Ok(self.decode_frame(buf)?.map(Frame::into_message))
    }

    /// How many more bytes the next frame needs (at least 1 when the header
    /// is incomplete, 0 when a whole frame is already buffered).
    pub fn needed(&self, buf: &[u8]) -> Result<usize, FrameError> {
        Ok(match self.peek_header(buf)? {
            Some(header) => header.frame_len().saturating_sub(buf.len()),
            None => Header::SIZE - buf.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(len);
        b.put_slice(body);
        b
    }

    #[test]
    fn header_needs_five_bytes() {
        for n in 0..5 {
            assert_eq!(Header::parse(&b"Q\x00\x00\x00\x05"[..n]), Ok(None));
        }
        let h = Header::parse(b"Q\x00\x00\x00\x05").unwrap().unwrap();
        assert_eq!(h, Header { tag: b'Q', len: 5 });
        assert_eq!(h.body_len(), 1);
        assert_eq!(h.frame_len(), 6);
    }

    #[test]
    fn header_rejects_lengths_below_four() {
        for len in [0, 1, 3, -1, i32::MIN] {
            let b = frame(b'Q', len, b"");
            assert_eq!(
                Header::parse(&b),
                Err(FrameError::InvalidLength { tag: b'Q', len })
            );
        }
        assert_eq!(
            Header::parse(&frame(b'S', 4, b"")),
            Ok(Some(Header { tag: b'S', len: 4 }))
        );
    }

    #[test]
    fn decoder_splits_messages_without_copying() {
        let mut buf = frame(b'Q', 13, b"select 1\0");
        buf.extend_from_slice(&frame(b'S', 4, b""));
        buf.extend_from_slice(b"X\x00\x00");
        let body_ptr = buf[5..].as_ptr();
        let d = Decoder::default();
        let m = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(&m.body[..], b"select 1\0");
        assert_eq!(m.body.as_ptr(), body_ptr);
        let m = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(m, Message::new(b'S', &b""[..]));
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"X\x00\x00");
        assert_eq!(d.needed(&buf), Ok(2));
    }

    #[test]
    fn decoder_waits_for_a_partial_body_and_reserves_room() {
        let d = Decoder::default();
        let mut buf = frame(b'D', 1004, b"abc");
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= 1005);
        assert_eq!(buf.len(), 8);
        assert_eq!(d.needed(&buf), Ok(997));
        buf.extend_from_slice(&[7; 997]);
        assert_eq!(d.needed(&buf), Ok(0));
        let f = d.decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag(), b'D');
        assert_eq!(f.as_bytes().len(), 1005);
        assert_eq!(f.body().len(), 1000);
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_reserves_at_most_max_reserve_for_an_announced_length() {
        let d = Decoder::default();
        let mut buf = frame(b'd', 1 << 29, b"x");
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < MAX_RESERVE + 64);
        assert!(buf.capacity() >= MAX_RESERVE);
    }

    #[test]
    fn decoder_checks_length_before_waiting_or_allocating() {
        let d = Decoder::new(1000);
        // A 2 GB length with no body yet: refused at once, nothing reserved.
        let mut buf = frame(b'Q', i32::MAX, b"");
        let cap = buf.capacity();
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                tag: b'Q',
                len: i32::MAX as u32,
                max: 1000
            })
        );
        assert_eq!(buf.capacity(), cap);
        assert_eq!(d.needed(&buf).unwrap_err().sqlstate().code(), "08P01");
        // The limit itself is allowed.
        let mut buf = frame(b'Q', 1000, &[b'a'; 996]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        let mut buf = frame(b'Q', 1001, b"");
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge { len: 1001, .. })
        ));
        // Negative and zero lengths.
        for len in [-5, 0, 3] {
            let mut buf = frame(b'Q', len, b"whatever");
            assert_eq!(
                d.decode(&mut buf),
                Err(FrameError::InvalidLength { tag: b'Q', len })
            );
        }
    }

    #[test]
    fn frontend_limits_apply_per_tag() {
        let d = Decoder::new(1 << 20).with_frontend_limits();
        assert_eq!(d.max_len(b'Q'), 1 << 20);
        assert_eq!(d.max_len(b'S'), 10000);
        let mut buf = frame(b'S', 10001, b"");
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                tag: b'S',
                len: 10001,
                max: 10000
            })
        );
        let mut buf = frame(b'Q', 10001, b"");
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(Decoder::new(100).max_len(b'S'), 100);
    }

    #[test]
    fn message_and_frame_round_trip() {
        let m = Message::new(b'Z', &b"I"[..]);
        let mut out = BytesMut::new();
        m.encode(&mut out).unwrap();
        assert_eq!(&out[..], b"Z\x00\x00\x00\x05I");
        let f = Decoder::default()
            .decode_frame(&mut out.clone())
            .unwrap()
            .unwrap();
        assert_eq!(f.header(), Header { tag: b'Z', len: 5 });
        assert_eq!(&f.clone().into_bytes()[..], &out[..]);
        assert_eq!(f.into_message(), m);
    }
}
