//! Messages a server sends: tag constants, lazy body parsers for the kinds a
//! proxy must read to track a session, and writers for the ones a proxy
//! must synthesise for its own clients (authentication, errors, SHOW
//! result sets).
//!
//! Parsers borrow the body and validate its whole layout first, so the
//! accessors cannot fail; see [`crate::codec`] for the rules. The kinds a
//! proxy relays without looking (DataRow streams, CopyData) have no parser
//! on the hot path; [`DataRow`] and [`RowDescription`] exist for tests and
//! for the admin side.

use bytes::BytesMut;

use crate::codec::{EncodeError, MessageWriter, ParseError, Reader, Text, write_empty};
use crate::sqlstate::SqlState;
use crate::startup::CancelKey;

/// Authentication request (Ok, password, SASL...).
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';
/// CommandComplete.
pub const COMMAND_COMPLETE: u8 = b'C';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyInResponse.
pub const COPY_IN_RESPONSE: u8 = b'G';
/// CopyOutResponse.
pub const COPY_OUT_RESPONSE: u8 = b'H';
/// CopyBothResponse (replication).
pub const COPY_BOTH_RESPONSE: u8 = b'W';
/// DataRow.
pub const DATA_ROW: u8 = b'D';
/// EmptyQueryResponse.
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// FunctionCallResponse.
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// NoData.
pub const NO_DATA: u8 = b'n';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// NotificationResponse (LISTEN/NOTIFY).
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// ParameterDescription.
pub const PARAMETER_DESCRIPTION: u8 = b't';
/// ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// PortalSuspended.
pub const PORTAL_SUSPENDED: u8 = b's';
/// ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';

/// The type OID of `text`, used for every column the proxy synthesises.
pub const TEXT_OID: u32 = 25;

// ---- ReadyForQuery ----

/// The transaction status a server reports in every ReadyForQuery: the one
/// fact that says whether a connection may go back to a transaction-mode
/// pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries refused until rollback).
    Failed,
}

impl TransactionStatus {
    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    /// The status for a wire byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// A ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery {
    /// The transaction status.
    pub status: TransactionStatus,
}

impl ReadyForQuery {
    /// Parses a ReadyForQuery body.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("ReadyForQuery", body);
        let b = r.u8("transaction status")?;
        let status = TransactionStatus::from_byte(b)
            .ok_or_else(|| r.invalid("transaction status", i64::from(b)))?;
        r.finish()?;
        Ok(ReadyForQuery { status })
    }
}

// ---- ErrorResponse / NoticeResponse ----

/// Field codes of ErrorResponse and NoticeResponse.
pub mod field {
    /// Severity, possibly localised.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localised (9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint.
    pub const HINT: u8 = b'H';
    /// Cursor position in the query.
    pub const POSITION: u8 = b'P';
    /// Position in an internal query.
    pub const INTERNAL_POSITION: u8 = b'p';
    /// Internal query text.
    pub const INTERNAL_QUERY: u8 = b'q';
    /// Context (call stack).
    pub const WHERE: u8 = b'W';
    /// Schema name.
    pub const SCHEMA: u8 = b's';
    /// Table name.
    pub const TABLE: u8 = b't';
    /// Column name.
    pub const COLUMN: u8 = b'c';
    /// Data type name.
    pub const DATA_TYPE: u8 = b'd';
    /// Constraint name.
    pub const CONSTRAINT: u8 = b'n';
    /// Source file.
    pub const FILE: u8 = b'F';
    /// Source line.
    pub const LINE: u8 = b'L';
    /// Source routine.
    pub const ROUTINE: u8 = b'R';
}

/// The fields of an ErrorResponse or NoticeResponse, validated to be a
/// well-formed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// The fields without the final terminator.
    fields: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    /// Parses an ErrorResponse body.
    pub fn parse_error(body: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse("ErrorResponse", body)
    }

    /// Parses a NoticeResponse body.
    pub fn parse_notice(body: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse("NoticeResponse", body)
    }

    fn parse(message: &'static str, body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(message, body);
        loop {
            if r.u8("field type")? == 0 {
                break;
            }
            r.cstr("field value")?;
        }
        let end = body.len() - r.remaining() - 1;
        r.finish()?;
        Ok(ErrorFields {
            fields: body.get(..end).unwrap_or_default(),
        })
    }

    /// Every `(field code, value)` in order.
    pub fn iter(&self) -> ErrorFieldIter<'a> {
        ErrorFieldIter {
            reader: Reader::new("ErrorResponse", self.fields),
        }
    }

    /// The first value of a field.
    pub fn get(&self, code: u8) -> Option<Text<'a>> {
        self.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// The severity, preferring the non-localised `V` field over `S`.
    pub fn severity(&self) -> Option<Text<'a>> {
        self.get(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get(field::SEVERITY))
    }

    /// The severity as a known level, if it is one.
    pub fn severity_level(&self) -> Option<Severity> {
        self.severity()
            .and_then(|s| Severity::from_name(s.as_bytes()))
    }

    /// The SQLSTATE text (always five characters from a real server).
    pub fn code(&self) -> Option<Text<'a>> {
        self.get(field::CODE)
    }

    /// The SQLSTATE as a known constant.
    pub fn sqlstate(&self) -> Option<SqlState> {
        self.code()
            .and_then(|c| c.to_str().ok())
            .and_then(SqlState::from_code)
    }

    /// The primary message.
    pub fn message(&self) -> Option<Text<'a>> {
        self.get(field::MESSAGE)
    }

    /// The detail.
    pub fn detail(&self) -> Option<Text<'a>> {
        self.get(field::DETAIL)
    }

    /// The hint.
    pub fn hint(&self) -> Option<Text<'a>> {
        self.get(field::HINT)
    }
}

/// Iterator over the fields of an ErrorResponse or NoticeResponse.
pub struct ErrorFieldIter<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for ErrorFieldIter<'a> {
    type Item = (u8, Text<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // The list was validated by ErrorFields::parse.
        let code = self.reader.u8("field type").ok()?;
        let value = self.reader.cstr("field value").ok()?;
        Some((code, value))
    }
}

/// The severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session is over.
    Fatal,
    /// Every session is over (the server is restarting).
    Panic,
    /// Notice level.
    Warning,
    /// Notice level.
    Notice,
    /// Notice level.
    Debug,
    /// Notice level.
    Info,
    /// Notice level.
    Log,
}

impl Severity {
    /// The name PostgreSQL sends (in the `V` field, never localised).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }

    /// The level for a non-localised name.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"ERROR" => Severity::Error,
            b"FATAL" => Severity::Fatal,
            b"PANIC" => Severity::Panic,
            b"WARNING" => Severity::Warning,
            b"NOTICE" => Severity::Notice,
            b"DEBUG" => Severity::Debug,
            b"INFO" => Severity::Info,
            b"LOG" => Severity::Log,
            _ => return None,
        })
    }
}

/// An error or notice the proxy itself reports to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMessage<'a> {
    /// The severity.
    pub severity: Severity,
    /// The SQLSTATE.
    pub code: SqlState,
    /// The primary message: one line, no trailing period.
    pub message: &'a str,
    /// Optional detail.
    pub detail: Option<&'a str>,
    /// Optional hint.
    pub hint: Option<&'a str>,
}

impl<'a> ErrorMessage<'a> {
    /// An error or notice without detail or hint.
    pub fn new(severity: Severity, code: SqlState, message: &'a str) -> Self {
        ErrorMessage {
            severity,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    fn write(&self, dst: &mut BytesMut, tag: u8, kind: &'static str) -> Result<(), EncodeError> {
        let mut w = MessageWriter::new(dst, Some(tag), kind);
        let severity = self.severity.as_str().as_bytes();
        w.u8(field::SEVERITY).cstr(severity, "severity")?;
        w.u8(field::SEVERITY_NONLOCALIZED)
            .cstr(severity, "severity")?;
        w.u8(field::CODE)
            .cstr(self.code.code().as_bytes(), "code")?;
        w.u8(field::MESSAGE)
            .cstr(self.message.as_bytes(), "message")?;
        if let Some(detail) = self.detail {
            w.u8(field::DETAIL).cstr(detail.as_bytes(), "detail")?;
        }
        if let Some(hint) = self.hint {
            w.u8(field::HINT).cstr(hint.as_bytes(), "hint")?;
        }
        w.u8(0);
        w.finish()
    }
}

/// Writes an ErrorResponse.
pub fn write_error_response(
    dst: &mut BytesMut,
    error: &ErrorMessage<'_>,
) -> Result<(), EncodeError> {
    error.write(dst, ERROR_RESPONSE, "ErrorResponse")
}

/// Writes a NoticeResponse.
pub fn write_notice_response(
    dst: &mut BytesMut,
    notice: &ErrorMessage<'_>,
) -> Result<(), EncodeError> {
    notice.write(dst, NOTICE_RESPONSE, "NoticeResponse")
}

// ---- session state messages ----

/// A ParameterStatus (a GUC the client should know, such as
/// `server_version` or `client_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    /// The parameter name.
    pub name: Text<'a>,
    /// Its current value.
    pub value: Text<'a>,
}

impl<'a> ParameterStatus<'a> {
    /// Parses a ParameterStatus body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("ParameterStatus", body);
        let name = r.cstr("name")?;
        let value = r.cstr("value")?;
        r.finish()?;
        Ok(ParameterStatus { name, value })
    }
}

/// A BackendKeyData: what a client needs to cancel its queries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData<'a> {
    /// The server process id.
    pub pid: i32,
    /// The secret key: 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub key: &'a [u8],
}

impl<'a> BackendKeyData<'a> {
    /// Parses a BackendKeyData body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("BackendKeyData", body);
        let pid = r.i32("process id")?;
        let key = r.rest();
        if !(CancelKey::MIN_LEN..=CancelKey::MAX_LEN).contains(&key.len()) {
            return Err(r.invalid("secret key length", key.len() as i64));
        }
        Ok(BackendKeyData { pid, key })
    }

    /// The key as an owned [`CancelKey`].
    pub fn cancel_key(&self) -> Option<CancelKey> {
        CancelKey::new(bytes::Bytes::copy_from_slice(self.key))
    }
}

impl std::fmt::Debug for BackendKeyData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("pid", &self.pid)
            .field("key_len", &self.key.len())
            .finish()
    }
}

/// A CommandComplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    /// The command tag, such as `INSERT 0 5` or `BEGIN`.
    pub tag: Text<'a>,
}

impl<'a> CommandComplete<'a> {
    /// Parses a CommandComplete body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("CommandComplete", body);
        let tag = r.cstr("command tag")?;
        r.finish()?;
        Ok(CommandComplete { tag })
    }

    /// The command word(s) without the counts (`INSERT`, `BEGIN`,
    /// `CREATE TABLE`).
    pub fn command(&self) -> &'a [u8] {
        let tag = self.tag.as_bytes();
        let mut end = tag.len();
        while let Some(pos) = tag
            .get(..end)
            .and_then(|t| t.iter().rposition(|&b| b == b' '))
        {
            let word = tag.get(pos + 1..end).unwrap_or_default();
            if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
                break;
            }
            end = pos;
        }
        tag.get(..end).unwrap_or_default()
    }

    /// The row count at the end of the tag, if there is one.
    pub fn rows(&self) -> Option<u64> {
        let tag = self.tag.as_bytes();
        let (cmd, count) = tag.rsplit_once_byte(b' ')?;
        if cmd.is_empty() {
            return None;
        }
        std::str::from_utf8(count).ok()?.parse().ok()
    }
}

trait RsplitOnce {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])>;
}

impl RsplitOnce for [u8] {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])> {
        let pos = self.iter().rposition(|&c| c == b)?;
        Some((self.get(..pos)?, self.get(pos + 1..)?))
    }
}

// ---- authentication ----

/// Authentication request codes.
pub mod auth_code {
    /// AuthenticationOk.
    pub const OK: i32 = 0;
    /// AuthenticationKerberosV5 (unsupported since PostgreSQL 9.4).
    pub const KERBEROS_V5: i32 = 2;
    /// AuthenticationCleartextPassword.
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    /// AuthenticationMD5Password.
    pub const MD5_PASSWORD: i32 = 5;
    /// AuthenticationSCMCredential (unsupported since PostgreSQL 9.1).
    pub const SCM_CREDENTIAL: i32 = 6;
    /// AuthenticationGSS.
    pub const GSS: i32 = 7;
    /// AuthenticationGSSContinue.
    pub const GSS_CONTINUE: i32 = 8;
    /// AuthenticationSSPI.
    pub const SSPI: i32 = 9;
    /// AuthenticationSASL.
    pub const SASL: i32 = 10;
    /// AuthenticationSASLContinue.
    pub const SASL_CONTINUE: i32 = 11;
    /// AuthenticationSASLFinal.
    pub const SASL_FINAL: i32 = 12;
}

/// An authentication request from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send `md5(md5(password + user) + salt)`.
    Md5Password {
        /// The per-connection salt.
        salt: [u8; 4],
    },
    /// Start a SASL exchange with one of these mechanisms.
    Sasl {
        /// The mechanisms offered, most preferred first.
        mechanisms: SaslMechanisms<'a>,
    },
    /// The next SASL server message (server-first for SCRAM).
    SaslContinue {
        /// Mechanism data.
        data: &'a [u8],
    },
    /// The last SASL server message (server-final for SCRAM).
    SaslFinal {
        /// Mechanism data.
        data: &'a [u8],
    },
    /// A method pghalo does not implement (Kerberos, GSS, SSPI...); the
    /// rest of the body is not inspected.
    Unsupported(i32),
}

impl<'a> Authentication<'a> {
    /// Parses an Authentication body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("Authentication", body);
        let auth = match r.i32("request code")? {
            auth_code::OK => Authentication::Ok,
            auth_code::CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
            auth_code::MD5_PASSWORD => Authentication::Md5Password {
                salt: r.array4("salt")?,
            },
            auth_code::SASL => {
                let start = body.len() - r.remaining();
                loop {
                    if r.cstr("mechanism")?.is_empty() {
                        break;
                    }
                }
                let end = body.len() - r.remaining();
                Authentication::Sasl {
                    mechanisms: SaslMechanisms(body.get(start..end).unwrap_or_default()),
                }
            }
            auth_code::SASL_CONTINUE => Authentication::SaslContinue { data: r.rest() },
            auth_code::SASL_FINAL => Authentication::SaslFinal { data: r.rest() },
            other => {
                r.rest();
                Authentication::Unsupported(other)
            }
        };
        r.finish()?;
        Ok(auth)
    }
}

/// The mechanism list of an AuthenticationSASL, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a>(&'a [u8]);

impl<'a> SaslMechanisms<'a> {
    /// The mechanisms in order.
    pub fn iter(&self) -> impl Iterator<Item = Text<'a>> + 'a {
        self.0
            .split(|&b| b == 0)
            .take_while(|m| !m.is_empty())
            .map(Text::new)
    }

    /// True if `name` is offered.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|m| m == name)
    }
}

// ---- result sets ----

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    /// The column name.
    pub name: Text<'a>,
    /// The source table's OID, or 0.
    pub table_oid: u32,
    /// The source column's attribute number, or 0.
    pub column_id: i16,
    /// The type OID.
    pub type_oid: u32,
    /// The type size (negative for variable-width types).
    pub type_size: i16,
    /// The type modifier.
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A RowDescription, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDescription<'a> {
    count: usize,
    fields: &'a [u8],
}

impl<'a> RowDescription<'a> {
    /// Parses a RowDescription body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("RowDescription", body);
        let count = r.count16("field count")?;
        let start = body.len() - r.remaining();
        for _ in 0..count {
            read_column(&mut r)?;
        }
        r.finish()?;
        Ok(RowDescription {
            count,
            fields: body.get(start..).unwrap_or_default(),
        })
    }

    /// How many columns.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a description with no columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The columns in order.
    pub fn columns(&self) -> impl Iterator<Item = Column<'a>> + 'a {
        let mut r = Reader::new("RowDescription", self.fields);
        std::iter::from_fn(move || read_column(&mut r).ok()).take(self.count)
    }
}

fn read_column<'a>(r: &mut Reader<'a>) -> Result<Column<'a>, ParseError> {
    Ok(Column {
        name: r.cstr("column name")?,
        table_oid: r.u32("table oid")?,
        column_id: r.i16("column number")?,
        type_oid: r.u32("type oid")?,
        type_size: r.i16("type size")?,
        type_modifier: r.i32("type modifier")?,
        format: r.i16("format code")?,
    })
}

/// A DataRow, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRow<'a> {
    count: usize,
    values: &'a [u8],
}

impl<'a> DataRow<'a> {
    /// Parses a DataRow body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("DataRow", body);
        let count = r.count16("column count")?;
        let start = body.len() - r.remaining();
        for _ in 0..count {
            read_value(&mut r)?;
        }
        r.finish()?;
        Ok(DataRow {
            count,
            values: body.get(start..).unwrap_or_default(),
        })
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a row with no columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values in order, `None` for NULL.
    pub fn values(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader::new("DataRow", self.values);
        std::iter::from_fn(move || read_value(&mut r).ok()).take(self.count)
    }
}

fn read_value<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>, ParseError> {
    let len = r.i32("value length")?;
    match usize::try_from(len) {
        Ok(len) => r.bytes(len, "value").map(Some),
        Err(_) if len == -1 => Ok(None),
        Err(_) => Err(r.invalid("value length", i64::from(len))),
    }
}

/// A NegotiateProtocolVersion, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    /// The newest minor version the server supports.
    pub newest_minor: i32,
    count: usize,
    options: &'a [u8],
}

impl<'a> NegotiateProtocolVersion<'a> {
    /// Parses a NegotiateProtocolVersion body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new("NegotiateProtocolVersion", body);
        let newest_minor = r.i32("newest minor version")?;
        let n = r.i32("option count")?;
        let count = usize::try_from(n).map_err(|_| r.invalid("option count", i64::from(n)))?;
        let start = body.len() - r.remaining();
        for _ in 0..count {
            r.cstr("option name")?;
        }
        let end = body.len() - r.remaining();
        r.finish()?;
        Ok(NegotiateProtocolVersion {
            newest_minor,
            count,
            options: body.get(start..end).unwrap_or_default(),
        })
    }

    /// The protocol options the server did not recognise.
    pub fn unrecognised(&self) -> impl Iterator<Item = Text<'a>> + 'a {
        let mut r = Reader::new("NegotiateProtocolVersion", self.options);
        std::iter::from_fn(move || r.cstr("option name").ok()).take(self.count)
    }
}

/// The backend messages a proxy reads, parsed by tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `R`.
    Authentication(Authentication<'a>),
    /// `K`.
    BackendKeyData(BackendKeyData<'a>),
    /// `C`.
    CommandComplete(CommandComplete<'a>),
    /// `E`.
    ErrorResponse(ErrorFields<'a>),
    /// `N`.
    NoticeResponse(ErrorFields<'a>),
    /// `S`.
    ParameterStatus(ParameterStatus<'a>),
    /// `Z`.
    ReadyForQuery(ReadyForQuery),
    /// `v`.
    NegotiateProtocolVersion(NegotiateProtocolVersion<'a>),
    /// `I`.
    EmptyQueryResponse,
    /// `1`.
    ParseComplete,
    /// `2`.
    BindComplete,
    /// `3`.
    CloseComplete,
    /// `n`.
    NoData,
    /// `s`.
    PortalSuspended,
    /// `c`.
    CopyDone,
    /// Anything else (DataRow, RowDescription, CopyData...), not inspected.
    Other(u8),
}

impl<'a> BackendMessage<'a> {
    /// Parses `body` as the message kind `tag` names.
    pub fn parse(tag: u8, body: &'a [u8]) -> Result<Self, ParseError> {
        let empty = |message: &'static str, m: BackendMessage<'a>| {
            Reader::new(message, body).finish().map(|()| m)
        };
        Ok(match tag {
            AUTHENTICATION => BackendMessage::Authentication(Authentication::parse(body)?),
            BACKEND_KEY_DATA => BackendMessage::BackendKeyData(BackendKeyData::parse(body)?),
            COMMAND_COMPLETE => BackendMessage::CommandComplete(CommandComplete::parse(body)?),
            ERROR_RESPONSE => BackendMessage::ErrorResponse(ErrorFields::parse_error(body)?),
            NOTICE_RESPONSE => BackendMessage::NoticeResponse(ErrorFields::parse_notice(body)?),
            PARAMETER_STATUS => BackendMessage::ParameterStatus(ParameterStatus::parse(body)?),
            READY_FOR_QUERY => BackendMessage::ReadyForQuery(ReadyForQuery::parse(body)?),
            NEGOTIATE_PROTOCOL_VERSION => {
                BackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion::parse(body)?)
            }
            EMPTY_QUERY_RESPONSE => {
                empty("EmptyQueryResponse", BackendMessage::EmptyQueryResponse)?
            }
            PARSE_COMPLETE => empty("ParseComplete", BackendMessage::ParseComplete)?,
            BIND_COMPLETE => empty("BindComplete", BackendMessage::BindComplete)?,
            CLOSE_COMPLETE => empty("CloseComplete", BackendMessage::CloseComplete)?,
            NO_DATA => empty("NoData", BackendMessage::NoData)?,
            PORTAL_SUSPENDED => empty("PortalSuspended", BackendMessage::PortalSuspended)?,
            COPY_DONE => empty("CopyDone", BackendMessage::CopyDone)?,
            other => BackendMessage::Other(other),
        })
    }
}

// ---- writers ----

/// Writes a ReadyForQuery.
pub fn write_ready_for_query(dst: &mut BytesMut, status: TransactionStatus) {
    let mut w = MessageWriter::new(dst, Some(READY_FOR_QUERY), "ReadyForQuery");
    w.u8(status.byte());
    // Five bytes cannot exceed the length limit.
    let _ = w.finish();
}

fn write_auth(
    dst: &mut BytesMut,
    code: i32,
    data: &[u8],
    kind: &'static str,
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(AUTHENTICATION), kind);
    w.i32(code);
    w.bytes(data);
    w.finish()
}

/// Writes AuthenticationOk.
pub fn write_authentication_ok(dst: &mut BytesMut) {
    let _ = write_auth(dst, auth_code::OK, &[], "AuthenticationOk");
}

/// Writes AuthenticationCleartextPassword.
pub fn write_authentication_cleartext_password(dst: &mut BytesMut) {
    let _ = write_auth(
        dst,
        auth_code::CLEARTEXT_PASSWORD,
        &[],
        "AuthenticationCleartextPassword",
    );
}

/// Writes AuthenticationMD5Password.
pub fn write_authentication_md5_password(dst: &mut BytesMut, salt: [u8; 4]) {
    let _ = write_auth(
        dst,
        auth_code::MD5_PASSWORD,
        &salt,
        "AuthenticationMD5Password",
    );
}

/// Writes AuthenticationSASL offering `mechanisms` in order of preference.
pub fn write_authentication_sasl(
    dst: &mut BytesMut,
    mechanisms: &[&str],
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(AUTHENTICATION), "AuthenticationSASL");
    w.i32(auth_code::SASL);
    for m in mechanisms {
        if m.is_empty() {
            // An empty name is the list terminator.
            return Err(EncodeError::InvalidLength {
                message: "AuthenticationSASL",
                field: "mechanism",
                len: 0,
            });
        }
        w.cstr(m.as_bytes(), "mechanism")?;
    }
    w.u8(0);
    w.finish()
}

/// Writes AuthenticationSASLContinue.
pub fn write_authentication_sasl_continue(
    dst: &mut BytesMut,
    data: &[u8],
) -> Result<(), EncodeError> {
    write_auth(
        dst,
        auth_code::SASL_CONTINUE,
        data,
        "AuthenticationSASLContinue",
    )
}

/// Writes AuthenticationSASLFinal.
pub fn write_authentication_sasl_final(dst: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    write_auth(dst, auth_code::SASL_FINAL, data, "AuthenticationSASLFinal")
}

/// Writes a ParameterStatus.
pub fn write_parameter_status(
    dst: &mut BytesMut,
    name: &str,
    value: &str,
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(PARAMETER_STATUS), "ParameterStatus");
    w.cstr(name.as_bytes(), "name")?;
    w.cstr(value.as_bytes(), "value")?;
    w.finish()
}

/// Writes a BackendKeyData. A key longer than 4 bytes needs protocol 3.2:
/// which one the session negotiated is the caller's to know.
pub fn write_backend_key_data(dst: &mut BytesMut, pid: i32, key: &CancelKey) {
    let mut w = MessageWriter::new(dst, Some(BACKEND_KEY_DATA), "BackendKeyData");
    w.i32(pid);
    w.bytes(key.as_bytes());
    // At most 4 + 4 + 256 bytes.
    let _ = w.finish();
}

/// Writes a RowDescription of text columns, as SHOW commands return.
pub fn write_row_description(dst: &mut BytesMut, columns: &[&str]) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(ROW_DESCRIPTION), "RowDescription");
    w.count16(columns.len(), "columns")?;
    for name in columns {
        w.cstr(name.as_bytes(), "column name")?;
        w.i32(0); // table oid
        w.i16(0); // column number
        w.bytes(&TEXT_OID.to_be_bytes());
        w.i16(-1); // variable width
        w.i32(-1); // no type modifier
        w.i16(0); // text format
    }
    w.finish()
}

/// Writes a DataRow of text values, `None` for NULL.
pub fn write_data_row(dst: &mut BytesMut, values: &[Option<&str>]) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(DATA_ROW), "DataRow");
    w.count16(values.len(), "values")?;
    for value in values {
        match value {
            Some(v) => {
                w.len32(v.len(), "value")?;
                w.bytes(v.as_bytes());
            }
            None => {
                w.i32(-1);
            }
        }
    }
    w.finish()
}

/// Writes a CommandComplete (`SHOW`, `SELECT 3`...).
pub fn write_command_complete(dst: &mut BytesMut, tag: &str) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(dst, Some(COMMAND_COMPLETE), "CommandComplete");
    w.cstr(tag.as_bytes(), "command tag")?;
    w.finish()
}

/// Writes a NegotiateProtocolVersion.
pub fn write_negotiate_protocol_version(
    dst: &mut BytesMut,
    newest_minor: u16,
    unrecognised: &[&str],
) -> Result<(), EncodeError> {
    let mut w = MessageWriter::new(
        dst,
        Some(NEGOTIATE_PROTOCOL_VERSION),
        "NegotiateProtocolVersion",
    );
    w.i32(i32::from(newest_minor));
    w.len32(unrecognised.len(), "options")?;
    for option in unrecognised {
        w.cstr(option.as_bytes(), "option name")?;
    }
    w.finish()
}

/// Writes an EmptyQueryResponse.
pub fn write_empty_query_response(dst: &mut BytesMut) {
    write_empty(dst, EMPTY_QUERY_RESPONSE);
}

/// Writes a ParseComplete.
pub fn write_parse_complete(dst: &mut BytesMut) {
    write_empty(dst, PARSE_COMPLETE);
}

/// Writes a BindComplete.
pub fn write_bind_complete(dst: &mut BytesMut) {
    write_empty(dst, BIND_COMPLETE);
}

/// Writes a CloseComplete.
pub fn write_close_complete(dst: &mut BytesMut) {
    write_empty(dst, CLOSE_COMPLETE);
}

/// Writes a NoData.
pub fn write_no_data(dst: &mut BytesMut) {
    write_empty(dst, NO_DATA);
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
    fn ready_for_query() {
        for (status, byte) in [
            (TransactionStatus::Idle, b'I'),
            (TransactionStatus::InTransaction, b'T'),
            (TransactionStatus::Failed, b'E'),
        ] {
            let bytes = written(|b| write_ready_for_query(b, status));
            assert_eq!(bytes, [b'Z', 0, 0, 0, 5, byte]);
            assert_eq!(ReadyForQuery::parse(&bytes[5..]).unwrap().status, status);
        }
        assert!(matches!(
            ReadyForQuery::parse(b"X"),
            Err(ParseError::InvalidValue { value: 88, .. })
        ));
        assert!(matches!(
            ReadyForQuery::parse(b""),
            Err(ParseError::Truncated { .. })
        ));
        assert!(matches!(
            ReadyForQuery::parse(b"II"),
            Err(ParseError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn error_response_round_trip() {
        let e = ErrorMessage::new(Severity::Fatal, SqlState::TOO_MANY_CONNECTIONS, "sorry")
            .with_detail("d")
            .with_hint("h");
        let bytes = written(|b| write_error_response(b, &e).unwrap());
        assert_eq!(
            bytes,
            b"E\x00\x00\x00\x27SFATAL\0VFATAL\0C53300\0Msorry\0Dd\0Hh\0\0"
        );
        let f = ErrorFields::parse_error(&bytes[5..]).unwrap();
        assert_eq!(f.severity().unwrap(), "FATAL");
        assert_eq!(f.severity_level(), Some(Severity::Fatal));
        assert_eq!(f.code().unwrap(), "53300");
        assert_eq!(f.sqlstate(), Some(SqlState::TOO_MANY_CONNECTIONS));
        assert_eq!(f.message().unwrap(), "sorry");
        assert_eq!(f.detail().unwrap(), "d");
        assert_eq!(f.hint().unwrap(), "h");
        assert_eq!(f.iter().count(), 6);
        assert_eq!(f.get(field::POSITION), None);

        let n = ErrorMessage::new(Severity::Notice, SqlState::SUCCESSFUL_COMPLETION, "hi");
        let bytes = written(|b| write_notice_response(b, &n).unwrap());
        assert_eq!(bytes, b"N\x00\x00\x00\x20SNOTICE\0VNOTICE\0C00000\0Mhi\0\0");
        assert!(ErrorFields::parse_notice(&bytes[5..]).is_ok());

        let mut b = BytesMut::new();
        let bad = ErrorMessage::new(Severity::Error, SqlState::INTERNAL_ERROR, "a\0b");
        assert!(write_error_response(&mut b, &bad).is_err());
        assert!(b.is_empty());
    }

    #[test]
    fn error_fields_malformed() {
        // Only the terminator: valid, no fields.
        assert_eq!(ErrorFields::parse_error(b"\0").unwrap().iter().count(), 0);
        // Localised S without V: severity falls back to S.
        let f = ErrorFields::parse_error(b"SFEHLER\0\0").unwrap();
        assert_eq!(f.severity().unwrap(), "FEHLER");
        assert_eq!(f.severity_level(), None);
        for bad in [
            &b""[..],
            b"S",
            b"SERROR",
            b"SERROR\0",
            b"SERROR\0\0x",
            b"\0\0",
        ] {
            assert!(ErrorFields::parse_error(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parameter_status_and_key_data() {
        let bytes = written(|b| write_parameter_status(b, "server_version", "17.2").unwrap());
        assert_eq!(bytes, b"S\x00\x00\x00\x18server_version\x0017.2\0");
        let p = ParameterStatus::parse(&bytes[5..]).unwrap();
        assert_eq!(
            (p.name, p.value),
            (Text::new(b"server_version"), Text::new(b"17.2"))
        );
        assert!(ParameterStatus::parse(b"a\0").is_err());
        assert!(ParameterStatus::parse(b"a\0b\0c").is_err());

        let bytes = written(|b| write_backend_key_data(b, 77, &CancelKey::from_i32(-2)));
        assert_eq!(bytes, b"K\x00\x00\x00\x0c\x00\x00\x00\x4d\xff\xff\xff\xfe");
        let k = BackendKeyData::parse(&bytes[5..]).unwrap();
        assert_eq!(k.pid, 77);
        assert_eq!(k.cancel_key(), Some(CancelKey::from_i32(-2)));
        assert_eq!(format!("{k:?}"), "BackendKeyData { pid: 77, key_len: 4 }");
        let long = [0u8; 4 + 32];
        assert_eq!(BackendKeyData::parse(&long).unwrap().key.len(), 32);
        assert!(BackendKeyData::parse(&[0; 7]).is_err());
        assert!(BackendKeyData::parse(&[0; 4 + 257]).is_err());
    }

    #[test]
    fn command_complete() {
        let bytes = written(|b| write_command_complete(b, "INSERT 0 5").unwrap());
        assert_eq!(bytes, b"C\x00\x00\x00\x0fINSERT 0 5\0");
        let c = CommandComplete::parse(&bytes[5..]).unwrap();
        assert_eq!(c.command(), b"INSERT");
        assert_eq!(c.rows(), Some(5));
        let c = CommandComplete::parse(b"CREATE TABLE\0").unwrap();
        assert_eq!(c.command(), b"CREATE TABLE");
        assert_eq!(c.rows(), None);
        let c = CommandComplete::parse(b"BEGIN\0").unwrap();
        assert_eq!(c.command(), b"BEGIN");
        assert_eq!(c.rows(), None);
        assert!(CommandComplete::parse(b"BEGIN").is_err());
    }

    #[test]
    fn authentication_requests() {
        let cases: Vec<(Vec<u8>, Authentication<'_>)> = vec![
            (written(write_authentication_ok), Authentication::Ok),
            (
                written(write_authentication_cleartext_password),
                Authentication::CleartextPassword,
            ),
            (
                written(|b| write_authentication_md5_password(b, *b"salt")),
                Authentication::Md5Password { salt: *b"salt" },
            ),
        ];
        for (bytes, want) in &cases {
            assert_eq!(&Authentication::parse(&bytes[5..]).unwrap(), want);
        }
        assert_eq!(cases[0].0, b"R\x00\x00\x00\x08\x00\x00\x00\x00");
        assert_eq!(cases[1].0, b"R\x00\x00\x00\x08\x00\x00\x00\x03");
        assert_eq!(cases[2].0, b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt");

        let bytes = written(|b| {
            write_authentication_sasl(b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]).unwrap()
        });
        assert_eq!(
            bytes,
            b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
        );
        let Authentication::Sasl { mechanisms } = Authentication::parse(&bytes[5..]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            mechanisms.iter().collect::<Vec<_>>(),
            vec![
                Text::new(b"SCRAM-SHA-256-PLUS"),
                Text::new(b"SCRAM-SHA-256")
            ]
        );
        assert!(mechanisms.contains("SCRAM-SHA-256"));
        assert!(!mechanisms.contains("SCRAM"));
        assert!(write_authentication_sasl(&mut BytesMut::new(), &[""]).is_err());

        let bytes = written(|b| write_authentication_sasl_continue(b, b"r=abc").unwrap());
        assert_eq!(bytes, b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc");
        assert_eq!(
            Authentication::parse(&bytes[5..]).unwrap(),
            Authentication::SaslContinue { data: b"r=abc" }
        );
        let bytes = written(|b| write_authentication_sasl_final(b, b"v=x").unwrap());
        assert_eq!(bytes, b"R\x00\x00\x00\x0b\x00\x00\x00\x0cv=x");
        assert_eq!(
            Authentication::parse(&bytes[5..]).unwrap(),
            Authentication::SaslFinal { data: b"v=x" }
        );
        assert_eq!(
            Authentication::parse(b"\x00\x00\x00\x07").unwrap(),
            Authentication::Unsupported(7)
        );
        // Malformed: trailing bytes, short salt, unterminated mechanism list.
        for bad in [
            &b"\x00\x00\x00\x00x"[..],
            b"\x00\x00\x00\x03\0",
            b"\x00\x00\x00\x05abc",
            b"\x00\x00\x00\x05abcde",
            b"\x00\x00\x00\x0aSCRAM\0",
            b"\x00\x00\x00\x0aSCRAM",
            b"\x00\x00\x00\x0aSCRAM\0\0x",
            b"\x00\x00",
        ] {
            assert!(Authentication::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn show_result_set() {
        let bytes = written(|b| write_row_description(b, &["node", "status"]).unwrap());
        let mut want = b"T\x00\x00\x00\x36\x00\x02".to_vec();
        for name in ["node", "status"] {
            want.extend_from_slice(name.as_bytes());
            want.extend_from_slice(
                b"\0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00",
            );
        }
        assert_eq!(bytes, want);
        let rd = RowDescription::parse(&bytes[5..]).unwrap();
        assert_eq!(rd.len(), 2);
        let cols: Vec<_> = rd.columns().collect();
        assert_eq!(cols[1].name, "status");
        assert_eq!(cols[1].type_oid, TEXT_OID);
        assert_eq!(cols[1].type_size, -1);

        let bytes = written(|b| write_data_row(b, &[Some("0"), None, Some("")]).unwrap());
        assert_eq!(
            bytes,
            b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x010\xff\xff\xff\xff\x00\x00\x00\x00"
        );
        let row = DataRow::parse(&bytes[5..]).unwrap();
        assert_eq!(
            row.values().collect::<Vec<_>>(),
            vec![Some(&b"0"[..]), None, Some(&b""[..])]
        );
        for n in 0..bytes.len() - 5 {
            assert!(DataRow::parse(&bytes[5..5 + n]).is_err());
        }
        assert!(DataRow::parse(b"\x00\x01\xff\xff\xff\xfe").is_err());

        assert_eq!(
            written(|b| write_command_complete(b, "SHOW").unwrap()),
            b"C\x00\x00\x00\x09SHOW\0"
        );
        assert_eq!(written(write_empty_query_response), b"I\x00\x00\x00\x04");
        assert_eq!(written(write_parse_complete), b"1\x00\x00\x00\x04");
        assert_eq!(written(write_bind_complete), b"2\x00\x00\x00\x04");
        assert_eq!(written(write_close_complete), b"3\x00\x00\x00\x04");
        assert_eq!(written(write_no_data), b"n\x00\x00\x00\x04");
    }

    #[test]
    fn negotiate_protocol_version() {
        let bytes =
            written(|b| write_negotiate_protocol_version(b, 0, &["_pq_.a", "_pq_.b"]).unwrap());
        assert_eq!(
            bytes,
            b"v\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x00\x02_pq_.a\0_pq_.b\0"
        );
        let n = NegotiateProtocolVersion::parse(&bytes[5..]).unwrap();
        assert_eq!(n.newest_minor, 0);
        assert_eq!(
            n.unrecognised().collect::<Vec<_>>(),
            vec![Text::new(b"_pq_.a"), Text::new(b"_pq_.b")]
        );
        assert!(NegotiateProtocolVersion::parse(b"\0\0\0\0\xff\xff\xff\xff").is_err());
        assert!(NegotiateProtocolVersion::parse(b"\0\0\0\0\x7f\xff\xff\xff").is_err());
    }

    #[test]
    fn dispatch_by_tag() {
        assert_eq!(
            BackendMessage::parse(READY_FOR_QUERY, b"T"),
            Ok(BackendMessage::ReadyForQuery(ReadyForQuery {
                status: TransactionStatus::InTransaction
            }))
        );
        assert_eq!(
            BackendMessage::parse(PARSE_COMPLETE, b""),
            Ok(BackendMessage::ParseComplete)
        );
        assert!(BackendMessage::parse(PARSE_COMPLETE, b"x").is_err());
        assert_eq!(
            BackendMessage::parse(DATA_ROW, b"junk"),
            Ok(BackendMessage::Other(b'D'))
        );
    }
}
