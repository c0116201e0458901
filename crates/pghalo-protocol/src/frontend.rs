//! Messages a client sends: tag constants, lazy body parsers for the kinds a
//! proxy must read, and writers for the ones it must send to a server.
//!
//! Parsers borrow the body (`&'a [u8]`, usually a decoded
//! [`Message::body`](crate::Message)) and validate the whole layout up front
//! (lengths, counts, terminators, no trailing bytes) without allocating;
//! accessors then only hand out sub-slices. Bind parameters are validated
//! but not copied, so a proxy that only needs the statement name pays for
//! one pass over the lengths.
//!
//! Writers append to a `BytesMut` and leave it unchanged on error (see
//! [`crate::codec`]). The untagged startup-phase packets are written here
//! too, because only a client sends them.

use bytes::{BufMut, BytesMut};

use crate::codec::{EncodeError, MessageWriter, ParseError, Reader, Text, write_empty};
use crate::frame::DEFAULT_MAX_MESSAGE_LEN;
use crate::startup::{
    CANCEL_REQUEST_CODE, CancelKey, GSSENC_REQUEST_CODE, ProtocolVersion, SSL_REQUEST_CODE,
};

/// Bind.
pub const BIND: u8 = b'B';
/// Close (a statement or portal).
pub const CLOSE: u8 = b'C';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyFail.
pub const COPY_FAIL: u8 = b'f';
/// Describe (a statement or portal).
pub const DESCRIBE: u8 = b'D';
/// Execute.
pub const EXECUTE: u8 = b'E';
/// Flush.
pub const FLUSH: u8 = b'H';
/// FunctionCall.
pub const FUNCTION_CALL: u8 = b'F';
/// Parse.
pub const PARSE: u8 = b'P';
/// PasswordMessage, GSSResponse, SASLInitialResponse and SASLResponse all
/// share this tag; which one it is follows from the authentication request
/// the server sent.
pub const PASSWORD: u8 = b'p';
/// Query (simple protocol).
pub const QUERY: u8 = b'Q';
/// Sync.
pub const SYNC: u8 = b'S';
/// Terminate.
pub const TERMINATE: u8 = b'X';

/// PostgreSQL's limit on the length field of a password or SASL message
/// (`PG_MAX_AUTH_TOKEN_LENGTH`; like every limit here it counts the four
/// length bytes, as `pq_getmessage` does).
pub const MAX_AUTH_MESSAGE_LEN: u32 = 65535;
/// PostgreSQL's limit for messages that carry no data
/// (`PQ_SMALL_MESSAGE_LIMIT`).
pub const SMALL_MESSAGE_LEN: u32 = 10000;

/// The largest length field PostgreSQL accepts for a frontend message with
/// this tag: only messages that carry SQL or data may be large.
///
/// A proxy can refuse a 1 GB Sync before buffering it instead of relaying
/// it to a server that will refuse it anyway.
pub fn max_message_len(tag: u8) -> u32 {
    match tag {
        QUERY | FUNCTION_CALL | PARSE | BIND | COPY_DATA => DEFAULT_MAX_MESSAGE_LEN,
        PASSWORD => MAX_AUTH_MESSAGE_LEN,
        _ => SMALL_MESSAGE_LEN,
    }
}

/// Whether Describe and Close name a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `S`: a prepared statement.
    Statement,
    /// `P`: a portal.
    Portal,
}

impl Target {
    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Target, ParseError> {
        match r.u8("kind")? {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            other => Err(r.invalid("kind", i64::from(other))),
        }
    }
}

/// A simple-protocol Query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The SQL text (possibly several statements).
    pub sql: Text<'a>,
}

impl<'a> Query<'a> {
    /// Parses a Query body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("Query", body);
        let sql = r.cstr("query string")?;
        r.finish()?;
        Ok(Query { sql })
    }
}

/// A Parse (prepare a statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// The statement name; empty for the unnamed statement.
    pub name: Text<'a>,
    /// The SQL text.
    pub query: Text<'a>,
    /// The parameter types the client fixed (0 = unspecified).
    pub param_types: Oids<'a>,
}

impl<'a> Parse<'a> {
    /// Parses a Parse body. (Every body type has a `parse`; the message
    /// happening to be called Parse is no reason to break the pattern.)
    #[allow(clippy::self_named_constructors)]
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("Parse", body);
        let name = r.cstr("statement name")?;
        let query = r.cstr("query string")?;
        let n = r.count16("parameter type count")?;
        let oids = r.bytes(n * 4, "parameter types")?;
        r.finish()?;
        Ok(Parse {
            name,
            query,
            param_types: Oids(oids),
        })
    }
}

/// A list of type OIDs, validated to be whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Oids<'a>(&'a [u8]);

impl<'a> Oids<'a> {
    /// How many OIDs.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The OIDs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// A list of i16 format codes, validated to be whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FormatCodes<'a>(&'a [u8]);

impl<'a> FormatCodes<'a> {
    /// How many codes.
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    /// True if there are none (all text).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The codes in order (0 text, 1 binary; other values are the server's
    /// to refuse).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = i16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
    }
}

/// A Bind (create a portal from a statement and parameter values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// The portal name; empty for the unnamed portal.
    pub portal: Text<'a>,
    /// The prepared statement name; empty for the unnamed statement.
    pub statement: Text<'a>,
    /// Parameter format codes (0, 1 or one per parameter).
    pub param_formats: FormatCodes<'a>,
    /// The parameter values.
    pub params: BindParams<'a>,
    /// Result column format codes.
    pub result_formats: FormatCodes<'a>,
    /// Everything after the statement name, kept to re-send the message
    /// under another statement name.
    after_statement: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Parses a Bind body, walking every parameter length once.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("Bind", body);
        let portal = r.cstr("portal name")?;
        let statement = r.cstr("statement name")?;
        let after_statement = body.get(body.len() - r.remaining()..).unwrap_or_default();
        let n = r.count16("parameter format count")?;
        let param_formats = FormatCodes(r.bytes(n * 2, "parameter formats")?);
        let count = r.count16("parameter count")?;
        let params_start = body.len() - r.remaining();
        for _ in 0..count {
            let len = r.i32("parameter length")?;
            match usize::try_from(len) {
                Ok(len) => {
                    r.bytes(len, "parameter value")?;
                }
                Err(_) if len == -1 => {}
                Err(_) => return Err(r.invalid("parameter length", i64::from(len))),
            }
        }
        let params_end = body.len() - r.remaining();
        let params = BindParams {
            count,
            bytes: body.get(params_start..params_end).unwrap_or_default(),
        };
        let n = r.count16("result format count")?;
        let result_formats = FormatCodes(r.bytes(n * 2, "result formats")?);
        r.finish()?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
            after_statement,
        })
    }

    /// Writes this Bind again with another statement name, the rest of the
    /// body byte for byte: what a pooler needs when it renames prepared
    /// statements per server connection.
    pub fn write_renamed(&self, dst: &mut BytesMut, statement: &str) -> Result<(), EncodeError> {
        let mut w = MessageWriter::new(dst, Some(BIND), "Bind");
        w.cstr(self.portal.as_bytes(), "portal name")?;
        w.cstr(statement.as_bytes(), "statement name")?;
        w.bytes(self.after_statement);
        w.finish()
    }
}

/// The parameter values of a Bind, validated to be whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BindParams<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> BindParams<'a> {
    /// How many parameters.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values in order, `None` for SQL NULL.
    pub fn iter(&self) -> BindParamIter<'a> {
        BindParamIter {
            reader: Reader::new("Bind", self.bytes),
            left: self.count,
        }
    }
}

/// Iterator over Bind parameter values.
pub struct BindParamIter<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for BindParamIter<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        // The layout was validated by Bind::parse; a failure here would mean
        // a bug, and ends the iteration rather than panicking.
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let len = self.reader.i32("parameter length").ok()?;
        match usize::try_from(len) {
            Ok(len) => self.reader.bytes(len, "parameter value").ok().map(Some),
            Err(_) => Some(None),
        }
    }
}

/// An Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    /// The portal name; empty for the unnamed portal.
    pub portal: Text<'a>,
    /// The row limit; 0 (or negative) means no limit.
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    /// Parses an Execute body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("Execute", body);
        let portal = r.cstr("portal name")?;
        let max_rows = r.i32("max rows")?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }
}

/// A Describe or Close: which kind of object, and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetName<'a> {
    /// Statement or portal.
    pub target: Target,
    /// The name; empty for the unnamed one.
    pub name: Text<'a>,
}

impl<'a> TargetName<'a> {
    /// Parses a Describe body.
    pub fn parse_describe(body: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse("Describe", body)
    }

    /// Parses a Close body.
    pub fn parse_close(body: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse("Close", body)
    }

    fn parse(message: &'static str, body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(message, body);
        let target = Target::read(&mut r)?;
        let name = r.cstr("name")?;
        r.finish()?;
        Ok(TargetName { target, name })
    }
}

/// A CopyFail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFail<'a> {
    /// Why the client aborted the COPY.
    pub message: Text<'a>,
}

impl<'a> CopyFail<'a> {
    /// Parses a CopyFail body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("CopyFail", body);
        let message = r.cstr("error message")?;
        r.finish()?;
        Ok(CopyFail { message })
    }
}

/// A PasswordMessage: a cleartext password or an md5 response.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasswordMessage<'a> {
    /// The password or `md5...` response, without terminator.
    pub password: &'a [u8],
}

impl<'a> PasswordMessage<'a> {
    /// Parses a PasswordMessage body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("PasswordMessage", body);
        let password = r.cstr("password")?.as_bytes();
        r.finish()?;
        Ok(PasswordMessage { password })
    }
}

impl std::fmt::Debug for PasswordMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordMessage { .. }")
    }
}

/// A SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// The mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: Text<'a>,
    /// The initial response; `None` when the length field is -1.
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Parses a SASLInitialResponse body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("SASLInitialResponse", body);
        let mechanism = r.cstr("mechanism")?;
        let len = r.i32("data length")?;
        let data = match usize::try_from(len) {
            Ok(len) => Some(r.bytes(len, "data")?),
            Err(_) if len == -1 => None,
            Err(_) => return Err(r.invalid("data length", i64::from(len))),
        };
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }
}

impl std::fmt::Debug for SaslInitialResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// A SASLResponse: the whole body is mechanism data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SaslResponse<'a> {
    /// The client's next SASL message.
    pub data: &'a [u8],
}

impl<'a> SaslResponse<'a> {
    /// Parses a SASLResponse body (any bytes are valid).
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        Ok(SaslResponse { data: body })
    }
}

impl std::fmt::Debug for SaslResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaslResponse { .. }")
    }
}

/// The frontend messages a proxy reads after startup, parsed by tag.
///
/// Kinds a proxy forwards without looking (CopyData, FunctionCall) and the
/// `p` family (ambiguous without the authentication state) come back as
/// [`FrontendMessage::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// `Q`.
    Query(Query<'a>),
    /// `P`.
    Parse(Parse<'a>),
    /// `B`.
    Bind(Bind<'a>),
    /// `E`.
    Execute(Execute<'a>),
    /// `D`.
    Describe(TargetName<'a>),
    /// `C`.
    Close(TargetName<'a>),
    /// `S`.
    Sync,
    /// `H`.
    Flush,
    /// `X`.
    Terminate,
    /// `c`.
    CopyDone,
    /// `f`.
    CopyFail(CopyFail<'a>),
    /// Any other tag, body unparsed.
    Other(u8),
}

impl<'a> FrontendMessage<'a> {
    /// Parses `body` as the message kind `tag` names.
    pub fn parse(tag: u8, body: &'a [u8]) -> Result<Self, ParseError> {
        let empty = |message: &'static str, m: FrontendMessage<'a>| {
            Reader::new(message, body).finish().map(|()| m)
        };
        Ok(match tag {
            QUERY => FrontendMessage::Query(Query::parse(body)?),
            PARSE => FrontendMessage::Parse(Parse::parse(body)?),
            BIND => FrontendMessage::Bind(Bind::parse(body)?),
            EXECUTE => FrontendMessage::Execute(Execute::parse(body)?),
            DESCRIBE => FrontendMessage::Describe(TargetName::parse_describe(body)?),
            CLOSE => FrontendMessage::Close(TargetName::parse_close(body)?),
            SYNC => empty("Sync", FrontendMessage::Sync)?,
            FLUSH => empty("Flush", FrontendMessage::Flush)?,
            TERMINATE => empty("Terminate", FrontendMessage::Terminate)?,
            COPY_DONE => empty("CopyDone", FrontendMessage::CopyDone)?,
            COPY_FAIL => FrontendMessage::CopyFail(CopyFail::parse(body)?),
            other => FrontendMessage::Other(other),
        })
    }
}

// ---- writers: startup-phase packets ----

/// Writes a StartupMessage with the parameters in the order given.
pub fn write_startup_message(
    dst: &mut BytesMut,
    version: ProtocolVersion,
    params: &[(&str, &str)],
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, None, "StartupMessage");
    w.i32(version.code());
    for (name, value) in params {
        if name.is_empty() {
            // An empty name is the list terminator: it would cut the list.
            return Err(EncodeError::InvalidLength {
                message: "StartupMessage",
                field: "parameter name",
                len: 0,
            });
        }
        w.cstr(name.as_bytes(), "parameter name")?;
        w.cstr(value.as_bytes(), "parameter value")?;
    }
    w.u8(0);
    w.finish()
}

/// Writes an SSLRequest.
pub fn write_ssl_request(dst: &mut BytesMut) {
    dst.put_i32(8);
    dst.put_i32(SSL_REQUEST_CODE);
}

/// Writes a GSSENCRequest.
pub fn write_gssenc_request(dst: &mut BytesMut) {
    dst.put_i32(8);
    dst.put_i32(GSSENC_REQUEST_CODE);
}

/// Writes a CancelRequest (the key's length decides 3.0 or 3.2 layout).
pub fn write_cancel_request(dst: &mut BytesMut, pid: i32, key: &CancelKey) {
    // A CancelKey is at most 256 bytes, so the length always fits.
    dst.put_i32(12 + key.len() as i32);
    dst.put_i32(CANCEL_REQUEST_CODE);
    dst.put_i32(pid);
    dst.put_slice(key.as_bytes());
}

// ---- writers: authentication responses ----

/// Writes a PasswordMessage (cleartext password or md5 response).
pub fn write_password(dst: &mut BytesMut, password: &[u8]) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(PASSWORD), "PasswordMessage");
    w.cstr(password, "password")?;
    w.finish()
}

/// Writes a SASLInitialResponse.
pub fn write_sasl_initial_response(
    dst: &mut BytesMut,
    mechanism: &str,
    data: &[u8],
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(PASSWORD), "SASLInitialResponse");
    w.cstr(mechanism.as_bytes(), "mechanism")?;
    w.len32(data.len(), "data")?;
    w.bytes(data);
    w.finish()
}

/// Writes a SASLResponse.
pub fn write_sasl_response(dst: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(PASSWORD), "SASLResponse");
    w.bytes(data);
    w.finish()
}

// ---- writers: queries ----

/// Writes a simple-protocol Query.
pub fn write_query(dst: &mut BytesMut, sql: &str) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(QUERY), "Query");
    w.cstr(sql.as_bytes(), "query string")?;
    w.finish()
}

/// Writes a Parse.
pub fn write_parse(
    dst: &mut BytesMut,
    name: &str,
    query: &str,
    param_types: &[u32],
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(PARSE), "Parse");
    w.cstr(name.as_bytes(), "statement name")?;
    w.cstr(query.as_bytes(), "query string")?;
    w.count16(param_types.len(), "parameter types")?;
    for oid in param_types {
        w.bytes(&oid.to_be_bytes());
    }
    w.finish()
}

/// Writes an Execute.
pub fn write_execute(dst: &mut BytesMut, portal: &str, max_rows: i32) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(EXECUTE), "Execute");
    w.cstr(portal.as_bytes(), "portal name")?;
    w.i32(max_rows);
    w.finish()
}

/// Writes a Describe.
pub fn write_describe(dst: &mut BytesMut, target: Target, name: &str) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(DESCRIBE), "Describe");
    w.u8(target.byte());
    w.cstr(name.as_bytes(), "name")?;
    w.finish()
}

/// Writes a Close.
pub fn write_close(dst: &mut BytesMut, target: Target, name: &str) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(CLOSE), "Close");
    w.u8(target.byte());
    w.cstr(name.as_bytes(), "name")?;
    w.finish()
}

/// Writes a Sync.
pub fn write_sync(dst: &mut BytesMut) {
    write_empty(dst, SYNC);
}

/// Writes a Flush.
pub fn write_flush(dst: &mut BytesMut) {
    write_empty(dst, FLUSH);
}

/// Writes a Terminate.
pub fn write_terminate(dst: &mut BytesMut) {
    write_empty(dst, TERMINATE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut b);
        b.to_vec()
    }

    #[test]
    fn query_parse_and_write() {
        let q = Query::parse(b"select 1\0").unwrap();
        assert_eq!(q.sql, "select 1");
        assert_eq!(
            written(|b| write_query(b, "select 1").unwrap()),
            b"Q\x00\x00\x00\x0dselect 1\0"
        );
        assert!(matches!(
            Query::parse(b"select 1"),
            Err(ParseError::MissingNul { .. })
        ));
        assert!(matches!(
            Query::parse(b"a\0b"),
            Err(ParseError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            Query::parse(b""),
            Err(ParseError::MissingNul { .. })
        ));
        let mut b = BytesMut::new();
        assert!(matches!(
            write_query(&mut b, "a\0b"),
            Err(EncodeError::InteriorNul { .. })
        ));
        assert!(b.is_empty());
    }

    #[test]
    fn parse_message() {
        let bytes = written(|b| write_parse(b, "s1", "select $1", &[23, 25]).unwrap());
        assert_eq!(
            bytes,
            b"P\x00\x00\x00\x1bs1\0select $1\0\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"
        );
        let p = Parse::parse(&bytes[5..]).unwrap();
        assert_eq!(p.name, "s1");
        assert_eq!(p.query, "select $1");
        assert_eq!(p.param_types.len(), 2);
        assert_eq!(p.param_types.iter().collect::<Vec<_>>(), vec![23, 25]);
        // Truncated types, negative count, trailing bytes.
        assert!(matches!(
            Parse::parse(b"\0q\0\x00\x02\x00\x00\x00\x17"),
            Err(ParseError::Truncated {
                field: "parameter types",
                ..
            })
        ));
        assert!(matches!(
            Parse::parse(b"\0q\0\xff\xff"),
            Err(ParseError::InvalidValue { value: -1, .. })
        ));
        assert!(matches!(
            Parse::parse(b"\0q\0\x00\x00\x00"),
            Err(ParseError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            Parse::parse(b"\0q\0\x00"),
            Err(ParseError::Truncated { .. })
        ));
    }

    fn bind_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"p1\0s1\0");
        b.extend_from_slice(&[0, 1, 0, 1]); // one format: binary
        b.extend_from_slice(&[0, 3]); // three params
        b.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // NULL
        b.extend_from_slice(&[0, 0, 0, 0]); // empty
        b.extend_from_slice(&[0, 2, 0, 0, 0, 1]); // two result formats
        b
    }

    #[test]
    fn bind_parse() {
        let body = bind_body();
        let b = Bind::parse(&body).unwrap();
        assert_eq!(b.portal, "p1");
        assert_eq!(b.statement, "s1");
        assert_eq!(b.param_formats.iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(b.params.len(), 3);
        assert_eq!(
            b.params.iter().collect::<Vec<_>>(),
            vec![Some(&b"hi"[..]), None, Some(&b""[..])]
        );
        assert_eq!(b.result_formats.iter().collect::<Vec<_>>(), vec![0, 1]);

        let mut out = BytesMut::new();
        b.write_renamed(&mut out, "pghalo_7").unwrap();
        let renamed = Bind::parse(&out[5..]).unwrap();
        assert_eq!(renamed.statement, "pghalo_7");
        assert_eq!(renamed.portal, "p1");
        assert_eq!(renamed.params, b.params);
        assert_eq!(out.len(), 5 + body.len() + 6);

        // Every truncation of a valid body is an error, never a panic.
        for n in 0..body.len() {
            assert!(Bind::parse(&body[..n]).is_err(), "prefix {n}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            Bind::parse(&long),
            Err(ParseError::TrailingBytes { count: 1, .. })
        ));
        // A parameter length below -1 or beyond the body.
        let bad = b"\0\0\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00";
        assert!(matches!(
            Bind::parse(bad),
            Err(ParseError::InvalidValue { value: -2, .. })
        ));
        let huge = b"\0\0\x00\x00\x00\x01\x7f\xff\xff\xff\x00\x00";
        assert!(matches!(
            Bind::parse(huge),
            Err(ParseError::Truncated {
                field: "parameter value",
                ..
            })
        ));
    }

    #[test]
    fn execute_describe_close() {
        let bytes = written(|b| write_execute(b, "", 0).unwrap());
        assert_eq!(bytes, b"E\x00\x00\x00\x09\0\x00\x00\x00\x00");
        assert_eq!(
            Execute::parse(&bytes[5..]).unwrap(),
            Execute {
                portal: Text::new(b""),
                max_rows: 0
            }
        );
        assert!(Execute::parse(b"\0\x00\x00\x00").is_err());
        assert!(Execute::parse(b"\0\x00\x00\x00\x00\x00").is_err());

        let bytes = written(|b| write_describe(b, Target::Statement, "s").unwrap());
        assert_eq!(bytes, b"D\x00\x00\x00\x07Ss\0");
        let d = TargetName::parse_describe(&bytes[5..]).unwrap();
        assert_eq!(d.target, Target::Statement);
        assert_eq!(d.name, "s");

        let bytes = written(|b| write_close(b, Target::Portal, "").unwrap());
        assert_eq!(bytes, b"C\x00\x00\x00\x06P\0");
        assert_eq!(
            TargetName::parse_close(&bytes[5..]).unwrap().target,
            Target::Portal
        );
        assert!(matches!(
            TargetName::parse_close(b"X\0"),
            Err(ParseError::InvalidValue {
                message: "Close",
                field: "kind",
                value: 88
            })
        ));
        assert!(TargetName::parse_close(b"").is_err());
        assert!(TargetName::parse_close(b"S").is_err());
    }

    #[test]
    fn dispatch_by_tag() {
        assert_eq!(FrontendMessage::parse(SYNC, b""), Ok(FrontendMessage::Sync));
        assert!(matches!(
            FrontendMessage::parse(SYNC, b"x"),
            Err(ParseError::TrailingBytes {
                message: "Sync",
                ..
            })
        ));
        assert!(matches!(
            FrontendMessage::parse(QUERY, b"begin\0"),
            Ok(FrontendMessage::Query(_))
        ));
        assert_eq!(
            FrontendMessage::parse(COPY_DATA, b"any"),
            Ok(FrontendMessage::Other(b'd'))
        );
        assert_eq!(
            FrontendMessage::parse(TERMINATE, b""),
            Ok(FrontendMessage::Terminate)
        );
        assert_eq!(
            FrontendMessage::parse(FLUSH, b""),
            Ok(FrontendMessage::Flush)
        );
        assert_eq!(
            FrontendMessage::parse(COPY_DONE, b""),
            Ok(FrontendMessage::CopyDone)
        );
        assert_eq!(
            FrontendMessage::parse(COPY_FAIL, b"oops\0"),
            Ok(FrontendMessage::CopyFail(CopyFail {
                message: Text::new(b"oops")
            }))
        );
    }

    #[test]
    fn auth_responses() {
        let bytes = written(|b| write_password(b, b"secret").unwrap());
        assert_eq!(bytes, b"p\x00\x00\x00\x0bsecret\0");
        assert_eq!(
            PasswordMessage::parse(&bytes[5..]).unwrap().password,
            b"secret"
        );
        assert_eq!(
            format!("{:?}", PasswordMessage::parse(b"x\0").unwrap()),
            "PasswordMessage { .. }"
        );
        assert!(PasswordMessage::parse(b"secret").is_err());
        assert!(PasswordMessage::parse(b"secret\0\0").is_err());

        let bytes =
            written(|b| write_sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc").unwrap());
        assert_eq!(
            bytes,
            b"p\x00\x00\x00\x21SCRAM-SHA-256\0\x00\x00\x00\x0bn,,n=,r=abc"
        );
        let s = SaslInitialResponse::parse(&bytes[5..]).unwrap();
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        assert_eq!(s.data, Some(&b"n,,n=,r=abc"[..]));
        assert_eq!(
            SaslInitialResponse::parse(b"M\0\xff\xff\xff\xff")
                .unwrap()
                .data,
            None
        );
        assert!(SaslInitialResponse::parse(b"M\0\xff\xff\xff\xfe").is_err());
        assert!(SaslInitialResponse::parse(b"M\0\x00\x00\x00\x05abc").is_err());
        assert!(SaslInitialResponse::parse(b"M\0\x00\x00\x00\x01abc").is_err());

        let bytes = written(|b| write_sasl_response(b, b"c=biws").unwrap());
        assert_eq!(bytes, b"p\x00\x00\x00\x0ac=biws");
        assert_eq!(SaslResponse::parse(&bytes[5..]).unwrap().data, b"c=biws");
    }

    #[test]
    fn startup_phase_writers() {
        let bytes = written(|b| {
            write_startup_message(
                b,
                ProtocolVersion::V3_0,
                &[("user", "u"), ("database", "d")],
            )
            .unwrap()
        });
        assert_eq!(
            bytes,
            b"\x00\x00\x00\x1b\x00\x03\x00\x00user\0u\0database\0d\0\0"
        );
        assert!(
            write_startup_message(&mut BytesMut::new(), ProtocolVersion::V3_0, &[("", "x")])
                .is_err()
        );
        assert_eq!(
            written(write_ssl_request),
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
        );
        assert_eq!(
            written(write_gssenc_request),
            b"\x00\x00\x00\x08\x04\xd2\x16\x30"
        );
        assert_eq!(
            written(|b| write_cancel_request(b, 42, &CancelKey::from_i32(7))),
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x2a\x00\x00\x00\x07"
        );
        assert_eq!(written(write_sync), b"S\x00\x00\x00\x04");
        assert_eq!(written(write_flush), b"H\x00\x00\x00\x04");
        assert_eq!(written(write_terminate), b"X\x00\x00\x00\x04");
    }

    #[test]
    fn limits_follow_postgres() {
        assert_eq!(max_message_len(QUERY), DEFAULT_MAX_MESSAGE_LEN);
        assert_eq!(max_message_len(SYNC), 10000);
        assert_eq!(max_message_len(PASSWORD), 65535);
    }
}
