//! Bad input on pghalo's client side, sent as raw bytes exactly as the
//! wire protocol lays them out: malformed startup packets, clients that
//! stall or vanish at the worst moment, messages that lie about their
//! length, cancel requests with the wrong key. Each gets a precise answer
//! (PostgreSQL's own error passed through, or pghalo's FATAL), pghalo keeps
//! serving everyone else, and no client slot or server connection leaks.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ProxyConfig, conninfo, pg_connect, shared_lab};
use pghalo::daemon::Daemon;
use pghalo::pool::PoolKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Protocol 3.0's version code.
const V3_0: u32 = 3 << 16;
/// How long any single answer may take before the test calls it a hang.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Raw protocol helpers
// ---------------------------------------------------------------------------

fn password() -> String {
    shared_lab().lab.secrets.postgres.clone()
}

/// The lab's own pghalo process (SCRAM for everyone, session pooling).
fn lab_proxy_port() -> u16 {
    shared_lab().lab.proxy("pghalo0").unwrap().port
}

/// A StartupMessage: length, version code, name/value pairs, terminator.
fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn postgres_startup() -> Vec<u8> {
    startup_packet(V3_0, &[("user", "postgres"), ("database", "postgres")])
}

/// A tagged message with a truthful length.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// An untagged CancelRequest with a 4-byte key.
fn cancel_request(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut out = ((12 + key.len()) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&80877102u32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The fields of an ErrorResponse or NoticeResponse body, by field code.
fn fields(body: &[u8]) -> BTreeMap<char, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .expect("NUL-terminated field");
        out.insert(
            code as char,
            String::from_utf8_lossy(&tail[..end]).into_owned(),
        );
        rest = &tail[end + 1..];
    }
    out
}

/// (severity, SQLSTATE, message) of an ErrorResponse body.
fn error_of(body: &[u8]) -> ErrorSummary {
    let f = fields(body);
    // PostgreSQL 9.6+ sends the non-localized severity as 'V'.
    assert_eq!(f.get(&'S'), f.get(&'V'), "S and V severities differ");
    (f[&'S'].clone(), f[&'C'].clone(), f[&'M'].clone())
}

type Msg = (u8, Vec<u8>);
/// (severity, SQLSTATE, message) of an ErrorResponse.
type ErrorSummary = (String, String, String);
/// A startup packet's parameters.
type Params<'a> = &'a [(&'a str, &'a str)];

/// A client speaking the protocol byte by byte.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Whether the peer closed (EOF or reset).
    closed: bool,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        Raw::over(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    fn over(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false once the peer has closed.
    async fn fill(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(ANSWER_LIMIT, self.stream.read(&mut chunk))
            .await
            .expect("no answer from pghalo within the limit")
            // A reset after pghalo's last word is a close too.
            .unwrap_or(0);
        if n == 0 {
            self.closed = true;
            return false;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        true
    }

    /// The next whole backend message; None once the peer closed between
    /// messages. A close in the middle of a message fails the test.
    async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(len >= 4, "backend message with length {len}");
                if self.buf.len() > len {
                    let rest = self.buf.split_off(1 + len);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Some((whole[0], whole[5..].to_vec()));
                }
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a message: {:?}",
                    self.buf
                );
                return None;
            }
        }
    }

    /// Everything up to and including the next ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let msg = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed before ReadyForQuery; got {}", tags(&out)));
            let done = msg.0 == b'Z';
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Everything until the peer closes.
    async fn until_closed(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(msg) = self.next().await {
            out.push(msg);
        }
        out
    }

    /// Sends a startup packet to a `trust` listener and reads up to the
    /// first ReadyForQuery; returns pghalo's (pid, key) for cancels.
    async fn login(port: u16, startup: &[u8]) -> (Raw, i32, [u8; 4]) {
        let mut raw = Raw::connect(port).await;
        raw.send(startup).await;
        let msgs = raw.until_ready().await;
        assert_eq!(msgs[0], (b'R', vec![0, 0, 0, 0]), "AuthenticationOk first");
        let key_data = msgs.iter().find(|m| m.0 == b'K').expect("BackendKeyData");
        assert_eq!(key_data.1.len(), 8, "a protocol 3.0 key is 4 bytes");
        let pid = i32::from_be_bytes(key_data.1[0..4].try_into().unwrap());
        let key: [u8; 4] = key_data.1[4..8].try_into().unwrap();
        assert_eq!(msgs.last().unwrap(), &(b'Z', b"I".to_vec()));
        (raw, pid, key)
    }

    /// Runs a simple query and returns every message up to ReadyForQuery.
    async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql.as_bytes())).await;
        self.until_ready().await
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

/// The only ErrorResponse among `msgs`.
fn the_error(msgs: &[Msg]) -> ErrorSummary {
    let errors: Vec<_> = msgs.iter().filter(|m| m.0 == b'E').collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error expected in {}",
        tags(msgs)
    );
    error_of(&errors[0].1)
}

/// The single-column text value of each DataRow.
fn column_values(msgs: &[Msg]) -> Vec<Option<String>> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .map(|m| {
            let body = &m.1;
            assert_eq!(&body[0..2], &[0, 1], "one column");
            let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
            (len >= 0).then(|| String::from_utf8(body[6..6 + len as usize].to_vec()).unwrap())
        })
        .collect()
}

/// Sends `bytes` as a whole startup phase and returns what pghalo answers
/// until it closes the connection.
async fn answer_to(port: u16, bytes: &[u8]) -> Vec<Msg> {
    let mut raw = Raw::connect(port).await;
    raw.send(bytes).await;
    raw.until_closed().await
}

fn fatal(code: &str, message: &str) -> ErrorSummary {
    ("FATAL".into(), code.into(), message.into())
}

/// The lab's pghalo process is still the same live process and still
/// lets a real client in.
async fn lab_proxy_still_serves(pid_before: i32) {
    let lab = &shared_lab().lab;
    let spec = lab.proxy("pghalo0").unwrap();
    assert_eq!(
        lab.proxy_pid(spec),
        Some(pid_before),
        "the pghalo process died or was replaced"
    );
    let client = pg_connect(&conninfo(lab_proxy_port(), "postgres", &password()))
        .await
        .unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

fn lab_proxy_pid() -> i32 {
    let lab = &shared_lab().lab;
    lab.proxy_pid(lab.proxy("pghalo0").unwrap())
        .expect("the lab's pghalo is running")
}

/// Both pooling modes: bad input must be handled alike in each.
const MODES: [&str; 2] = ["session", "transaction"];

/// An in-process pghalo that trusts 127.0.0.1 and logs in to the servers
/// with the superuser's password, with one server connection in all.
struct TrustProxy {
    config: ProxyConfig,
    daemon: Daemon,
}

impl TrustProxy {
    async fn start(tag: &str, listen_extra: &str, mode: &str) -> TrustProxy {
        let lab = &shared_lab().lab;
        let config = ProxyConfig::write(
            lab,
            tag,
            listen_extra,
            &format!("mode = \"{mode}\"\nmax_pool_size = 1\ncheckout_timeout = \"5s\""),
            "host all all 127.0.0.1/32 trust\n",
            Some(&format!("postgres:TEXT{}\n", password())),
        );
        let daemon = Daemon::start(&config.path()).await.unwrap();
        TrustProxy { config, daemon }
    }

    fn port(&self) -> u16 {
        self.config.port
    }

    /// (idle, checked out) server connections of postgres@postgres.
    fn pool_counts(&self) -> (usize, usize) {
        self.daemon.proxy().pools.counts(&PoolKey {
            node: 0,
            database: "postgres".into(),
            user: "postgres".into(),
        })
    }

    /// No server connection stays checked out, and a real client gets the
    /// one server connection within checkout_timeout and can use it.
    async fn assert_free_and_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pool_counts().1 != 0 {
            assert!(
                Instant::now() < deadline,
                "a server connection stays checked out: {:?}",
                self.pool_counts()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = pg_connect(&conninfo(self.port(), "postgres", "unused"))
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT 1, pg_current_xact_id_if_assigned() IS NULL, current_setting('transaction_isolation')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        assert!(row.get::<_, bool>(1), "no transaction may be open");
    }
}

/// A table of the shared lab's primary for one test, created fresh.
async fn fresh_table(name: &str, columns: &str) {
    let direct = shared_lab().lab.connect("node0").await.unwrap();
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"
        ))
        .await
        .unwrap();
}

async fn count_rows(table: &str) -> i64 {
    let direct = shared_lab().lab.connect("node0").await.unwrap();
    direct
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------
// The startup phase (the lab's pghalo process)
// ---------------------------------------------------------------------------

/// Lengths below 8 or above PostgreSQL's 10000 are refused as soon as the
/// length field arrives, with one FATAL 08P01, before anything is buffered.
#[tokio::test]
async fn startup_lengths_out_of_range_get_one_08p01_and_a_close() {
    let pid = lab_proxy_pid();
    let port = lab_proxy_port();
    let cases: [(i32, &[u8], String); 8] = [
        (-1, b"", "invalid length of startup packet: -1".into()),
        (
            i32::MIN,
            b"",
            format!("invalid length of startup packet: {}", i32::MIN),
        ),
        (0, b"", "invalid length of startup packet: 0".into()),
        (3, b"", "invalid length of startup packet: 3".into()),
        (7, b"\0\x03\0", "invalid length of startup packet: 7".into()),
        (
            0x7fff_ffff,
            b"\0\x03\0\0",
            "startup packet of length 2147483647 exceeds the maximum 10000".into(),
        ),
        (
            10001,
            b"\0\x03\0\0user\0",
            "startup packet of length 10001 exceeds the maximum 10000".into(),
        ),
        (
            1 << 20,
            b"",
            "startup packet of length 1048576 exceeds the maximum 10000".into(),
        ),
    ];
    for (len, tail, expected) in cases {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(tail);
        let msgs = answer_to(port, &bytes).await;
        assert_eq!(
            tags(&msgs),
            "E",
            "length {len}: one ErrorResponse, then close"
        );
        assert_eq!(
            error_of(&msgs[0].1),
            fatal("08P01", &expected),
            "length {len}"
        );
    }
    // A packet of exactly 10000 bytes is accepted: the client is asked to
    // authenticate (the lab's pghalo asks for SCRAM).
    let params = |app: &str| {
        startup_packet(
            V3_0,
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                ("application_name", app),
            ],
        )
    };
    let pad = 10_000 - params("").len();
    let padded = params(&"a".repeat(pad));
    assert_eq!(padded.len(), 10_000);
    let mut raw = Raw::connect(port).await;
    raw.send(&padded).await;
    let (tag, body) = raw.next().await.unwrap();
    assert_eq!(tag, b'R');
    assert_eq!(&body[0..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    drop(raw);
    lab_proxy_still_serves(pid).await;
}

/// A startup packet that announces 100 bytes, delivers 10 and ends: pghalo
/// has nothing sensible to answer and just closes, as PostgreSQL does.
#[tokio::test]
async fn truncated_startup_packet_is_dropped_without_an_answer() {
    let pid = lab_proxy_pid();
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&V3_0.to_be_bytes());
    bytes.extend_from_slice(b"us");
    assert_eq!(bytes.len(), 10);
    let mut raw = Raw::connect(lab_proxy_port()).await;
    raw.send(&bytes).await;
    raw.stream.shutdown().await.unwrap(); // half-close: we are done sending
    let msgs = raw.until_closed().await;
    assert!(msgs.is_empty(), "no answer expected, got {}", tags(&msgs));

    // The same, cut inside the length field itself.
    let mut raw = Raw::connect(lab_proxy_port()).await;
    raw.send(&[0, 0]).await;
    raw.stream.shutdown().await.unwrap();
    assert!(raw.until_closed().await.is_empty());

    // And a connection that opens and closes without a byte.
    let raw = Raw::connect(lab_proxy_port()).await;
    drop(raw);
    lab_proxy_still_serves(pid).await;
}

/// Bytes that are not a startup packet at all: each gets one FATAL with a
/// fitting SQLSTATE, then the connection is closed.
#[tokio::test]
async fn garbage_and_malformed_startup_packets_are_refused() {
    let pid = lab_proxy_pid();
    let port = lab_proxy_port();
    let mut bad_utf8 = startup_packet(V3_0, &[("user", "postgres"), ("database", "x")]);
    let at = bad_utf8.len() - 3;
    bad_utf8[at] = 0xff; // the database name's only byte
    let mut no_terminator = startup_packet(V3_0, &[("user", "postgres")]);
    no_terminator.pop();
    let len = no_terminator.len() as u32;
    no_terminator[0..4].copy_from_slice(&len.to_be_bytes());
    let mut short_cancel = 15u32.to_be_bytes().to_vec();
    short_cancel.extend_from_slice(&80877102u32.to_be_bytes());
    short_cancel.extend_from_slice(&[0, 0, 0, 1, 9, 9, 9]);
    let cases: Vec<(&str, Vec<u8>, ErrorSummary)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            // "GET " read as a big-endian length.
            fatal(
                "08P01",
                "startup packet of length 1195725856 exceeds the maximum 10000",
            ),
        ),
        (
            "a TLS ClientHello without SSLRequest",
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            fatal(
                "08P01",
                "startup packet of length 369295618 exceeds the maximum 10000",
            ),
        ),
        (
            "an unknown request code",
            {
                let mut b = 8u32.to_be_bytes().to_vec();
                b.extend_from_slice(&((1234u32 << 16) | 9999).to_be_bytes());
                b
            },
            fatal("08P01", "unknown startup request code 1234.9999"),
        ),
        (
            "a parameter list without its terminator",
            no_terminator,
            fatal(
                "08P01",
                "invalid startup packet layout: expected terminator as last byte",
            ),
        ),
        (
            "a database name that is not UTF-8",
            bad_utf8,
            fatal(
                "08P01",
                "startup packet: parameter value is not valid UTF-8",
            ),
        ),
        (
            "a cancel request with a 3-byte key",
            short_cancel,
            fatal("08P01", "invalid length 15 for CancelRequest"),
        ),
        (
            "no user name",
            startup_packet(V3_0, &[("database", "postgres")]),
            fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ),
        ),
        (
            "a replication connection",
            startup_packet(
                V3_0,
                &[
                    ("user", "postgres"),
                    ("database", "postgres"),
                    ("replication", "true"),
                ],
            ),
            fatal("0A000", "pghalo does not proxy replication connections"),
        ),
    ];
    for (what, bytes, expected) in cases {
        let msgs = answer_to(port, &bytes).await;
        assert_eq!(tags(&msgs), "E", "{what}: one ErrorResponse, then close");
        assert_eq!(error_of(&msgs[0].1), expected, "{what}");
    }

    // SSLRequest is answered 'N' (no TLS configured) once; a second one is a
    // protocol violation.
    let mut ssl = 8u32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&80877103u32.to_be_bytes());
    let mut raw = Raw::connect(port).await;
    raw.send(&ssl).await;
    let mut answer = [0u8; 1];
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    raw.send(&ssl).await;
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "E");
    assert_eq!(
        error_of(&msgs[0].1),
        fatal("08P01", "encryption requested twice")
    );
    lab_proxy_still_serves(pid).await;
}

/// Protocol 2.0 is gone from PostgreSQL 14 on: FATAL 0A000.
#[tokio::test]
async fn protocol_2_0_is_refused_with_0a000() {
    let pid = lab_proxy_pid();
    for (major, minor) in [(2u32, 0u32), (4, 0), (1, 0)] {
        let packet = startup_packet((major << 16) | minor, &[("user", "postgres")]);
        let msgs = answer_to(lab_proxy_port(), &packet).await;
        assert_eq!(tags(&msgs), "E", "protocol {major}.{minor}");
        let (severity, code, message) = error_of(&msgs[0].1);
        assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "0A000"));
        assert_eq!(
            message,
            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0")
        );
    }
    lab_proxy_still_serves(pid).await;
}

/// A newer 3.x minor version, or `_pq_.` options pghalo does not know, get
/// a NegotiateProtocolVersion ('v') and then the normal authentication
/// request, as PostgreSQL answers them; the session then works at 3.0.
#[tokio::test(flavor = "multi_thread")]
async fn newer_minor_versions_and_protocol_options_are_negotiated() {
    /// NegotiateProtocolVersion body: newest minor, count, option names.
    fn negotiate(minor: u32, options: &[&str]) -> Vec<u8> {
        let mut body = minor.to_be_bytes().to_vec();
        body.extend_from_slice(&(options.len() as u32).to_be_bytes());
        for o in options {
            body.extend_from_slice(o.as_bytes());
            body.push(0);
        }
        body
    }
    let base = [("user", "postgres"), ("database", "postgres")];
    let with_option = [
        ("user", "postgres"),
        ("_pq_.foo", "bar"),
        ("database", "postgres"),
    ];
    let cases: [(u32, Params, Vec<u8>); 3] = [
        (V3_0 | 1, &base, negotiate(0, &[])),
        (V3_0, &with_option, negotiate(0, &["_pq_.foo"])),
        (V3_0 | 2, &with_option, negotiate(0, &["_pq_.foo"])),
    ];
    // The lab's pghalo (SCRAM): 'v', then AuthenticationSASL.
    for (version, params, expected) in &cases {
        let mut raw = Raw::connect(lab_proxy_port()).await;
        raw.send(&startup_packet(*version, params)).await;
        assert_eq!(raw.next().await.unwrap(), (b'v', expected.clone()));
        let (tag, body) = raw.next().await.unwrap();
        assert_eq!(tag, b'R');
        assert_eq!(&body[0..4], &10i32.to_be_bytes(), "AuthenticationSASL");
        assert!(body[4..].starts_with(b"SCRAM-SHA-256\0"));
    }
    // A trusting pghalo: 'v', AuthenticationOk, and a working session in
    // which the _pq_ option never reached the server as a setting.
    let proxy = TrustProxy::start("negotiate", "", "session").await;
    for (version, params, expected) in &cases {
        let mut raw = Raw::connect(proxy.port()).await;
        raw.send(&startup_packet(*version, params)).await;
        assert_eq!(raw.next().await.unwrap(), (b'v', expected.clone()));
        let msgs = raw.until_ready().await;
        assert_eq!(msgs[0], (b'R', vec![0, 0, 0, 0]));
        let rows = raw.simple("SELECT current_setting('_pq_.foo', true)").await;
        assert_eq!(column_values(&rows), vec![None]);
        raw.send(&message(b'X', b"")).await;
        assert!(raw.until_closed().await.is_empty());
    }
    proxy.assert_free_and_serving().await;
}

/// Nonsense in the password exchange: FATAL 08P01, the connection closed,
/// the proxy unharmed.
#[tokio::test]
async fn garbage_in_the_password_exchange_gets_08p01() {
    let pid = lab_proxy_pid();
    let sasl_initial = |mechanism: &str, data: &[u8]| {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&(data.len() as i32).to_be_bytes());
        body.extend_from_slice(data);
        message(b'p', &body)
    };
    let mut huge = vec![b'p'];
    huge.extend_from_slice(&(1_000_000i32).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a Query instead of a SASL response",
            query(b"SELECT 1"),
            "08P01",
        ),
        ("a password message of 1 MB", huge, "08P01"),
        (
            "an unknown SASL mechanism",
            sasl_initial("SCRAM-SHA-1", b"n,,n=,r=abcdefghijkl"),
            "08P01",
        ),
        (
            "a malformed client-first-message",
            sasl_initial("SCRAM-SHA-256", b"garbage"),
            "08P01",
        ),
        (
            "channel binding the server never offered",
            sasl_initial(
                "SCRAM-SHA-256",
                b"p=tls-server-end-point,,n=,r=abcdefghijkl",
            ),
            "08P01",
        ),
        (
            "a SASL response whose length field lies",
            {
                let mut m = sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abcdefghijkl");
                let at = m.len() - 24;
                m[at..at + 4].copy_from_slice(&1000i32.to_be_bytes());
                m
            },
            "08P01",
        ),
    ];
    for (what, bytes, code) in cases {
        let mut raw = Raw::connect(lab_proxy_port()).await;
        raw.send(&postgres_startup()).await;
        let (tag, body) = raw.next().await.unwrap();
        assert_eq!(
            (tag, &body[0..4]),
            (b'R', &10i32.to_be_bytes()[..]),
            "{what}"
        );
        raw.send(&bytes).await;
        let msgs = raw.until_closed().await;
        assert_eq!(tags(&msgs), "E", "{what}");
        let (severity, got_code, message) = error_of(&msgs[0].1);
        assert_eq!(
            (severity.as_str(), got_code.as_str()),
            ("FATAL", code),
            "{what}: {message}"
        );
    }
    lab_proxy_still_serves(pid).await;
}

/// Startup requests the servers refuse come back as the server's own
/// error, and the failed login leaves no slot taken.
#[tokio::test(flavor = "multi_thread")]
async fn logins_the_server_refuses_pass_its_error_through() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("server-refuses-{mode}"), "", mode).await;
        let cases: [(Params, &str, &str); 3] = [
            (
                &[("user", "postgres"), ("database", "no_such_database")],
                "3D000",
                "database \"no_such_database\" does not exist",
            ),
            (
                &[
                    ("user", "postgres"),
                    ("database", "postgres"),
                    ("options", "-c no_such_setting=1"),
                ],
                "42704",
                "unrecognized configuration parameter \"no_such_setting\"",
            ),
            (
                &[
                    ("user", "postgres"),
                    ("database", "postgres"),
                    ("work_mem", "lots"),
                ],
                "22023",
                "invalid value for parameter \"work_mem\": \"lots\"",
            ),
        ];
        for (params, code, text) in cases {
            let mut raw = Raw::connect(proxy.port()).await;
            raw.send(&startup_packet(V3_0, params)).await;
            let msgs = raw.until_closed().await;
            assert_eq!(
                tags(&msgs),
                "RE",
                "AuthenticationOk, then the error: {params:?}"
            );
            assert_eq!(error_of(&msgs[1].1), fatal(code, text), "{params:?}");
            proxy.assert_free_and_serving().await;
        }
    }
}

// ---------------------------------------------------------------------------
// Slow and silent clients
// ---------------------------------------------------------------------------

/// Clients that connect and say nothing hold a client slot only until
/// authentication_timeout; while they hold both slots a real client is told
/// 53300, and afterwards it gets in.
#[tokio::test(flavor = "multi_thread")]
async fn silent_clients_are_closed_after_authentication_timeout_and_free_their_slots() {
    let proxy = TrustProxy::start(
        "silent",
        "authentication_timeout = \"1s\"\nmax_client_connections = 2",
        "session",
    )
    .await;
    let started = Instant::now();
    let mut silent_a = Raw::connect(proxy.port()).await;
    // This one stalls inside its startup packet: announced 100, sent 10.
    let mut silent_b = Raw::connect(proxy.port()).await;
    let mut partial = 100u32.to_be_bytes().to_vec();
    partial.extend_from_slice(&V3_0.to_be_bytes());
    partial.extend_from_slice(b"us");
    silent_b.send(&partial).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let err = pg_connect(&conninfo(proxy.port(), "postgres", "unused"))
        .await
        .expect_err("both client slots are taken");
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped socket");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.message(), "sorry, too many clients already");

    for raw in [&mut silent_a, &mut silent_b] {
        let msgs = raw.until_closed().await;
        let waited = started.elapsed();
        assert!(
            msgs.is_empty(),
            "a client that never sent its startup packet gets no answer, got {}",
            tags(&msgs)
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "closed after {waited:?}, authentication_timeout is 1s"
        );
    }
    // Both slots are free again: two real clients at once.
    let a = pg_connect(&conninfo(proxy.port(), "postgres", "unused"))
        .await
        .unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    drop(a);
    proxy.assert_free_and_serving().await;
}

/// A client that sends its startup packet and then stalls in the password
/// exchange is told FATAL 08P01 when authentication_timeout runs out.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_stalled_in_authentication_is_cut_off_at_the_timeout() {
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(
        lab,
        "stall",
        "authentication_timeout = \"1s\"\nmax_client_connections = 1",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let started = Instant::now();
    let mut raw = Raw::connect(config.port).await;
    raw.send(&postgres_startup()).await;
    let (tag, body) = raw.next().await.unwrap();
    assert_eq!((tag, &body[0..4]), (b'R', &10i32.to_be_bytes()[..]));
    let msgs = raw.until_closed().await;
    let waited = started.elapsed();
    assert_eq!(tags(&msgs), "E");
    assert_eq!(
        error_of(&msgs[0].1),
        fatal("08P01", "authentication timeout")
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "cut off after {waited:?}"
    );
    // Its one client slot is free again (the handler gives it back just
    // after closing the socket, so allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(2);
    let client = loop {
        match pg_connect(&conninfo(config.port, "postgres", &password())).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot was not freed: {e}"),
        }
    };
    client.batch_execute("SELECT 1").await.unwrap();
}

// ---------------------------------------------------------------------------
// Bad messages after authentication
// ---------------------------------------------------------------------------

/// A message type the protocol does not have reaches PostgreSQL, whose
/// FATAL 08P01 the client sees; the dead server connection is not reused.
async fn check_unknown_message_type(mode: &str) {
    let proxy = TrustProxy::start(&format!("unknown-type-{mode}"), "", mode).await;
    let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
    raw.send(&message(b'z', b"whatever")).await;
    let msgs = raw.until_closed().await;
    assert!(!msgs.is_empty() && msgs[0].0 == b'E', "got {}", tags(&msgs));
    assert_eq!(
        error_of(&msgs[0].1),
        fatal("08P01", "invalid frontend message type 122")
    );
    assert!(
        msgs.iter().all(|m| m.0 == b'E'),
        "only errors follow: {}",
        tags(&msgs)
    );
    proxy.assert_free_and_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_message_type_gets_postgresqls_fatal_in_session_mode() {
    check_unknown_message_type("session").await;
}

/// Under transaction pooling too: the unknown message must not be
/// forwarded with no reply expected (the connection would look clean and
/// go back to the pool while PostgreSQL's FATAL is on its way).
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_message_type_gets_postgresqls_fatal_in_transaction_mode() {
    check_unknown_message_type("transaction").await;
}

/// When the server ends a session with a FATAL (here pg_terminate_backend
/// during a query), that FATAL is the last thing the client hears, as it
/// would be directly: no second error from pghalo after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_fatal_is_the_last_word_the_client_hears() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("server-fatal-{mode}"), "", mode).await;
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        let sql = format!("SELECT pg_sleep(30) -- terminate me ({mode})");
        raw.send(&query(sql.as_bytes())).await;
        let direct = shared_lab().lab.connect("node0").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = direct
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
                    &[&sql],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the query never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let msgs = raw.until_closed().await;
        // RowDescription came before pg_sleep started.
        assert_eq!(tags(&msgs), "TE", "one FATAL, then the close");
        assert_eq!(
            error_of(&msgs[1].1),
            fatal(
                "57P01",
                "terminating connection due to administrator command"
            )
        );
        proxy.assert_free_and_serving().await;
    }
}

/// Lengths that cannot be right (below 4, above pghalo's 1 GiB limit) are
/// pghalo's own FATAL 08P01; a message cut short by a vanishing client
/// leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn lying_message_lengths_get_08p01_and_free_the_server_connection() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("lying-{mode}"), "", mode).await;
        for (len, what) in [
            (3i32, "invalid message length 3 for message type 'Q'"),
            (-1, "invalid message length -1 for message type 'Q'"),
            (
                0x7fff_ffff,
                "invalid message length 2147483647 for message type 'Q'",
            ),
        ] {
            let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
            let mut bytes = vec![b'Q'];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(b"SELECT 1\0");
            raw.send(&bytes).await;
            let msgs = raw.until_closed().await;
            assert_eq!(tags(&msgs), "E", "length {len}");
            assert_eq!(error_of(&msgs[0].1), fatal("08P01", what));
            proxy.assert_free_and_serving().await;
        }
        // Announces 1000 bytes, sends 10, vanishes: the server connection was
        // mid-message, so it is closed, not pooled.
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        let mut bytes = vec![b'Q'];
        bytes.extend_from_slice(&1000i32.to_be_bytes());
        bytes.extend_from_slice(b"SELECT 1\0x");
        raw.send(&bytes).await;
        drop(raw);
        proxy.assert_free_and_serving().await;
    }
}

/// Messages pghalo reads whole (Query and the extended-protocol requests)
/// whose body does not parse: a length shorter than the text (no NUL), a
/// NUL inside a Query, counts that promise more than the body holds. pghalo
/// refuses them itself with FATAL 08P01 before any byte reaches the server.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_refused_with_08p01() {
    let mut bind_short = b"\0\0\0\0\0\x05".to_vec(); // 5 parameters promised
    bind_short.extend_from_slice(&[0, 0, 0, 1]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a Query with a NUL inside",
            message(b'Q', b"SELECT 1\0SELECT 2\0"),
            "Query message has 9 unexpected trailing byte(s)",
        ),
        (
            "a Query whose length stops inside the text",
            {
                let mut b = vec![b'Q'];
                b.extend_from_slice(&8i32.to_be_bytes());
                b.extend_from_slice(b"SELECT 1\0");
                b
            },
            "Query message: query string has no NUL terminator",
        ),
        (
            "a Parse without terminators",
            message(b'P', b"stmt"),
            "Parse message: statement name has no NUL terminator",
        ),
        (
            "a Bind promising 5 parameters and sending none",
            message(b'B', &bind_short),
            "Bind message ends inside parameter value",
        ),
        (
            "a Describe of an unknown kind",
            message(b'D', b"Xname\0"),
            "Describe message: kind has invalid value 88",
        ),
        (
            "a Close cut short",
            message(b'C', b"S"),
            "Close message: name has no NUL terminator",
        ),
    ];
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("malformed-{mode}"), "", mode).await;
        for (what, bytes, expected) in &cases {
            let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
            raw.send(bytes).await;
            let msgs = raw.until_closed().await;
            assert_eq!(tags(&msgs), "E", "{what}");
            assert_eq!(error_of(&msgs[0].1), fatal("08P01", expected), "{what}");
            proxy.assert_free_and_serving().await;
        }
        // Execute is passed on unparsed: PostgreSQL judges it (ERROR, then
        // nothing until Sync) and the session goes on.
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        let mut bytes = message(b'E', b"\0\0\0");
        bytes.extend(message(b'S', b""));
        raw.send(&bytes).await;
        let msgs = raw.until_ready().await;
        assert_eq!(
            the_error(&msgs),
            (
                "ERROR".into(),
                "08P01".into(),
                "insufficient data left in message".into()
            )
        );
        assert_eq!(tags(&msgs), "EZ");
        let rows = raw.simple("SELECT 'still here'").await;
        assert_eq!(column_values(&rows), vec![Some("still here".into())]);
        drop(raw);
        proxy.assert_free_and_serving().await;
    }
}

/// A megabyte of SQL garbage: no quotes, no comment starters, no newline,
/// so no lexer finds an end to anything before the end.
fn garbage_megabyte() -> String {
    const ALPHABET: &[u8] = b"#%&()+,.:;<=>?@[]^{|}~ qzx";
    (0..1_000_000u32)
        .map(|i| ALPHABET[(i.wrapping_mul(2_654_435_761) >> 20) as usize % ALPHABET.len()] as char)
        .collect()
}

/// A megabyte of garbage is a syntax error; bytes that are not UTF-8 are
/// 22021; an empty query is EmptyQueryResponse. The session survives all.
async fn check_garbage_queries(mode: &str) {
    let proxy = TrustProxy::start(&format!("garbage-{mode}"), "", mode).await;
    let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;

    let msgs = raw.simple(&garbage_megabyte()).await;
    let (severity, code, _) = the_error(&msgs);
    assert_eq!((severity.as_str(), code.as_str()), ("ERROR", "42601"));

    raw.send(&query(b"SELECT 'caf\xe9'")).await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        the_error(&msgs),
        (
            "ERROR".into(),
            "22021".into(),
            "invalid byte sequence for encoding \"UTF8\": 0xe9 0x27".into()
        )
    );

    let msgs = raw.simple("").await;
    assert_eq!(tags(&msgs), "IZ", "EmptyQueryResponse, ReadyForQuery");

    // Inside a transaction the error aborts it; the session still works.
    let msgs = raw.simple("BEGIN; SELECT 'x\u{1}y'::int").await;
    assert_eq!(the_error(&msgs).1, "22P02");
    assert_eq!(msgs.last().unwrap(), &(b'Z', b"E".to_vec()));
    let msgs = raw.simple("ROLLBACK").await;
    assert_eq!(msgs.last().unwrap(), &(b'Z', b"I".to_vec()));
    let rows = raw
        .simple("SELECT length(repeat('y', 1000000))::text")
        .await;
    assert_eq!(column_values(&rows), vec![Some("1000000".into())]);
    raw.send(&message(b'X', b"")).await;
    assert!(raw.until_closed().await.is_empty());
    proxy.assert_free_and_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_queries_get_postgresqls_errors_and_the_session_goes_on_in_session_mode() {
    check_garbage_queries("session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_queries_get_postgresqls_errors_and_the_session_goes_on_in_transaction_mode() {
    check_garbage_queries("transaction").await;
}

/// With reads balanced per statement over the shared lab's three nodes,
/// text the classifier cannot read (a megabyte of garbage, bytes that are
/// not UTF-8 in a literal and in an identifier, an unterminated quote)
/// goes to the primary, which answers with PostgreSQL's own errors: the
/// standbys' error_cnt in SHOW POOL_BACKEND_STATS stays 0 while plain reads
/// do reach them.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_queries_under_load_balancing_get_the_primarys_errors() {
    let lab = &shared_lab().lab;
    let routing = format!(
        "\n[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"{}\"\n\
         sr_check_period = \"200ms\"\n\n[load_balance]\nstatement_level_load_balance = true\n",
        lab.secrets.pghalo
    );
    let proxy = TrustProxy::start("garbage-routed", &routing, "session").await;
    let all_up = proxy
        .daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.primary.is_some() && s.nodes.iter().all(|n| n.is_routable())
        })
        .await;
    assert!(all_up.is_ok(), "the monitor never saw every node up");
    let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;

    let msgs = raw.simple(&garbage_megabyte()).await;
    assert_eq!(the_error(&msgs).1, "42601");
    for (sql, code) in [
        (&b"SELECT 'caf\xe9'"[..], "22021"),
        (&b"SELECT * FROM \"caf\xe9\""[..], "22021"),
        (&b"SELECT 'unterminated"[..], "42601"),
    ] {
        raw.send(&query(sql)).await;
        let msgs = raw.until_ready().await;
        assert_eq!(the_error(&msgs).1, code, "{}", String::from_utf8_lossy(sql));
    }
    for _ in 0..60 {
        let msgs = raw.simple("SELECT 1").await;
        assert_eq!(column_values(&msgs), vec![Some("1".into())]);
    }
    let msgs = raw.simple("SHOW POOL_BACKEND_STATS").await;
    let rows: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter(|m| m.0 == b'D')
        .map(|m| {
            let body = &m.1;
            let count = u16::from_be_bytes([body[0], body[1]]);
            let mut at = 2;
            (0..count)
                .map(|_| {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    usize::try_from(len).ok().map(|len| {
                        at += len;
                        String::from_utf8(body[at - len..at].to_vec()).unwrap()
                    })
                })
                .collect()
        })
        .collect();
    // node_id, ..., select_cnt (5), ..., error_cnt (13)
    let field =
        |row: &[Option<String>], i: usize| -> u64 { row[i].as_deref().unwrap().parse().unwrap() };
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        field(&rows[0], 13) >= 4,
        "the primary answered the errors: {rows:?}"
    );
    for standby in &rows[1..] {
        assert_eq!(
            field(standby, 13),
            0,
            "an error came from a standby: {rows:?}"
        );
    }
    assert!(
        field(&rows[1], 5) + field(&rows[2], 5) > 0,
        "no read reached a standby: routing was off: {rows:?}"
    );
    raw.send(&message(b'X', b"")).await;
    assert!(raw.until_closed().await.is_empty());
}

/// Valid queries of every size go through, in both pooling modes.
async fn check_large_queries(mode: &str) {
    let proxy = TrustProxy::start(&format!("large-{mode}"), "", mode).await;
    let client = pg_connect(&conninfo(proxy.port(), "postgres", "unused"))
        .await
        .unwrap();
    for size in [1_000usize, 16_000, 17_000, 100_000, 1_000_000, 8_000_000] {
        let sql = format!("SELECT length('{}')", "x".repeat(size));
        let rows = tokio::time::timeout(Duration::from_secs(30), client.simple_query(&sql))
            .await
            .unwrap_or_else(|_| panic!("a {size}-byte query got no answer in 30 s ({mode})"))
            .unwrap();
        let lengths: Vec<Option<String>> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).map(str::to_string))
                }
                _ => None,
            })
            .collect();
        assert_eq!(lengths, vec![Some(size.to_string())]);
    }
    drop(client);
    proxy.assert_free_and_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_queries_complete_in_session_mode() {
    check_large_queries("session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_queries_complete_in_transaction_mode() {
    check_large_queries("transaction").await;
}

// ---------------------------------------------------------------------------
// Clients that vanish at the worst moment
// ---------------------------------------------------------------------------

/// COPY FROM STDIN, some rows sent, then the socket closes: the next client
/// gets a clean connection and none of the rows exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_mid_copy_leaves_no_trace() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("vanish-copy-{mode}"), "", mode).await;
        fresh_table("bad_input_copy", "x int, t text").await;
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        raw.send(&query(b"COPY bad_input_copy FROM STDIN")).await;
        let (tag, _) = raw.next().await.unwrap();
        assert_eq!(tag, b'G', "CopyInResponse");
        for i in 0..1000 {
            raw.send(&message(b'd', format!("{i}\trow {i}\n").as_bytes()))
                .await;
        }
        drop(raw);
        proxy.assert_free_and_serving().await;
        assert_eq!(count_rows("bad_input_copy").await, 0);

        // The same, in the middle of a CopyData message.
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        raw.send(&query(b"COPY bad_input_copy FROM STDIN")).await;
        assert_eq!(raw.next().await.unwrap().0, b'G');
        raw.send(&message(b'd', b"1\tcomplete\n")).await;
        let mut cut = message(b'd', b"2\tcut short\n");
        cut.truncate(8);
        raw.send(&cut).await;
        drop(raw);
        proxy.assert_free_and_serving().await;
        assert_eq!(count_rows("bad_input_copy").await, 0);

        // And a Terminate in the middle of the COPY.
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        raw.send(&query(b"COPY bad_input_copy FROM STDIN")).await;
        assert_eq!(raw.next().await.unwrap().0, b'G');
        raw.send(&message(b'd', b"3\tthen terminate\n")).await;
        raw.send(&message(b'X', b"")).await;
        raw.until_closed().await;
        proxy.assert_free_and_serving().await;
        assert_eq!(count_rows("bad_input_copy").await, 0);
    }
}

/// BEGIN, uncommitted rows, socket closed: the rows are rolled back and the
/// next client (same server process) finds no transaction open.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_in_an_open_transaction_leaves_no_trace() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("vanish-tx-{mode}"), "", mode).await;
        fresh_table("bad_input_tx", "x int").await;
        for ending in ["idle in transaction", "failed transaction", "mid-statement"] {
            let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
            let msgs = raw
                .simple("BEGIN; INSERT INTO bad_input_tx SELECT generate_series(1, 100)")
                .await;
            assert_eq!(msgs.last().unwrap(), &(b'Z', b"T".to_vec()));
            match ending {
                "failed transaction" => {
                    let msgs = raw.simple("SELECT 1/0").await;
                    assert_eq!(msgs.last().unwrap(), &(b'Z', b"E".to_vec()));
                }
                "mid-statement" => {
                    raw.send(&query(b"SELECT pg_sleep(0.5)")).await;
                }
                _ => {}
            }
            drop(raw);
            proxy.assert_free_and_serving().await;
            assert_eq!(count_rows("bad_input_tx").await, 0, "{ending}");
        }
    }
}

/// Parse/Bind/Execute of an INSERT without the Sync that would commit it,
/// then the client vanishes: the row must never be committed, by the reset
/// queries or anything else.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_before_sync_gets_nothing_committed() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("vanish-sync-{mode}"), "", mode).await;
        fresh_table("bad_input_sync", "x int").await;
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        let mut bytes = message(b'P', b"\0INSERT INTO bad_input_sync VALUES (42)\0\0\0");
        bytes.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        bytes.extend(message(b'E', b"\0\0\0\0\0"));
        bytes.extend(message(b'H', b"")); // Flush: answers, but no commit
        raw.send(&bytes).await;
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(raw.next().await.unwrap());
        }
        assert_eq!(
            tags(&seen),
            "12C",
            "ParseComplete, BindComplete, CommandComplete"
        );
        drop(raw);
        proxy.assert_free_and_serving().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count_rows("bad_input_sync").await, 0);
    }
}

/// A client that stops reading and closes while a large result streams:
/// the server connection was mid-reply, so it is closed, and the slot frees.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_mid_result_frees_the_server_connection() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("vanish-result-{mode}"), "", mode).await;
        let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
        raw.send(&query(
            b"SELECT g, repeat('z', 500) FROM generate_series(1, 2000000) g",
        ))
        .await;
        assert_eq!(raw.next().await.unwrap().0, b'T');
        assert_eq!(raw.next().await.unwrap().0, b'D');
        drop(raw);
        proxy.assert_free_and_serving().await;
    }
}

// ---------------------------------------------------------------------------
// Cancel requests
// ---------------------------------------------------------------------------

/// The server pid running `sql`, once it runs (PostgreSQL ignores a cancel
/// that arrives before the query).
async fn running_pid(sql: &str) -> i32 {
    let direct = shared_lab().lab.connect("node0").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = direct
            .query(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                &[&sql],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "{sql:?} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cancel with the wrong key, or for a pid pghalo never handed out, does
/// nothing and gets no answer; the right one cancels (so the test would see
/// a cancel that worked).
#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_a_wrong_key_or_unknown_pid_does_nothing() {
    for mode in MODES {
        eprintln!("pool mode: {mode}");
        let proxy = TrustProxy::start(&format!("cancel-{mode}"), "", mode).await;
        let (mut raw, pid, key) = Raw::login(proxy.port(), &postgres_startup()).await;

        let started = Instant::now();
        let sleeper = format!("SELECT pg_sleep(3) -- cancel test {mode}");
        raw.send(&query(sleeper.as_bytes())).await;
        let mut wrong_key = key;
        wrong_key[3] ^= 1;
        // The real server pid is not a valid pghalo pid either.
        let server_pid = running_pid(&sleeper).await;
        for (cancel_pid, cancel_key) in [
            (pid, wrong_key),
            (pid.wrapping_add(1), key),
            (0, key),
            (server_pid, key),
            (-1, [0; 4]),
        ] {
            let msgs = answer_to(proxy.port(), &cancel_request(cancel_pid, &cancel_key)).await;
            assert!(msgs.is_empty(), "a cancel request gets no answer");
        }
        let msgs = raw.until_ready().await;
        assert!(
            msgs.iter().all(|m| m.0 != b'E'),
            "the query must not be cancelled: {}",
            tags(&msgs)
        );
        assert_eq!(tags(&msgs), "TDCZ");
        assert!(started.elapsed() >= Duration::from_secs(3));

        // The right key cancels.
        let started = Instant::now();
        let long_sleeper = format!("SELECT pg_sleep(30) -- cancel test {mode}");
        raw.send(&query(long_sleeper.as_bytes())).await;
        running_pid(&long_sleeper).await;
        assert!(
            answer_to(proxy.port(), &cancel_request(pid, &key))
                .await
                .is_empty()
        );
        let msgs = raw.until_ready().await;
        assert_eq!(
            the_error(&msgs),
            (
                "ERROR".into(),
                "57014".into(),
                "canceling statement due to user request".into()
            )
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        raw.send(&message(b'X', b"")).await;
        raw.until_closed().await;
        proxy.assert_free_and_serving().await;
    }
}

/// Parse, Bind (no parameters, text results) and Execute of `sql` as the
/// unnamed statement and portal.
fn unnamed_run(sql: &str) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// A statement refused in transaction mode fails as it would have failed
/// in the server: what its pipeline segment did before it is rolled back
/// (a retry must not insert twice), and in a transaction block the block
/// is aborted (25P02 until ROLLBACK).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_statement_rolls_back_its_segment_and_aborts_its_block() {
    let proxy = TrustProxy::start("refused-rollback", "", "transaction").await;
    fresh_table("refused_rollback", "id int").await;
    let (mut raw, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;

    let mut pipeline = unnamed_run("INSERT INTO refused_rollback VALUES (1)");
    pipeline.extend(unnamed_run("CREATE TEMP TABLE refused_tmp (a int)"));
    pipeline.extend(message(b'S', b""));
    raw.send(&pipeline).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12CEZ");
    assert_eq!(the_error(&msgs).1, "0A000");
    assert_eq!(msgs.last().map(|m| m.1.clone()), Some(vec![b'I']));
    assert_eq!(
        count_rows("refused_rollback").await,
        0,
        "the INSERT before the refused statement was committed"
    );

    raw.simple("BEGIN").await;
    let msgs = raw.simple("CREATE TEMP TABLE refused_tmp (a int)").await;
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(the_error(&msgs).1, "0A000");
    assert_eq!(msgs.last().map(|m| m.1.clone()), Some(vec![b'E']));
    let msgs = raw.simple("SELECT 1").await;
    assert_eq!(the_error(&msgs).1, "25P02");
    let msgs = raw.simple("ROLLBACK").await;
    assert_eq!(tags(&msgs), "CZ");
    let msgs = raw.simple("INSERT INTO refused_rollback VALUES (2)").await;
    assert_eq!(tags(&msgs), "CZ");
    assert_eq!(count_rows("refused_rollback").await, 1);
    drop(raw);
    proxy.assert_free_and_serving().await;
}

/// A SET and the ROLLBACK of its block in one pipeline segment (no Sync
/// between them): the SET is gone, and is not replayed for its client on
/// its next server connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_rolled_back_in_its_own_segment_is_not_replayed() {
    let proxy = TrustProxy::start("pipelined-rollback", "", "transaction").await;
    let (mut setter, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
    let (mut other, _, _) = Raw::login(proxy.port(), &postgres_startup()).await;
    assert_eq!(tags(&setter.simple("BEGIN").await), "CZ");
    let mut segment = unnamed_run("SET work_mem = '9MB'");
    segment.extend(unnamed_run("ROLLBACK"));
    segment.extend(message(b'S', b""));
    setter.send(&segment).await;
    let msgs = setter.until_ready().await;
    assert_eq!(tags(&msgs), "12C12CZ");
    assert_eq!(msgs.last().map(|m| m.1.clone()), Some(vec![b'I']));
    // The other client takes the one server connection between the two.
    assert_eq!(tags(&other.simple("SELECT 1").await), "TDCZ");
    let shown = setter.simple("SHOW work_mem").await;
    assert_eq!(column_values(&shown), vec![Some("4MB".to_string())]);
    drop((setter, other));
    proxy.assert_free_and_serving().await;
}
