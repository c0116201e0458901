//! Client authentication through pghalo against the real lab: every
//! pool_hba.conf method and rule kind, every pool_passwd entry kind, each in
//! an in-process pghalo of its own, with real clients (tokio-postgres, psql,
//! and raw sockets where the exact challenge matters). Whatever the method,
//! pghalo must still log in to the servers, and (DESIGN rule 7) no password,
//! hash or SCRAM proof may ever reach its log: every test ends by checking
//! the log this test binary captured.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{ProxyConfig, shared_lab, unique_dir};
use pghalo::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

const V3_0: u32 = 3 << 16;
/// Wrong passwords are passwords too (often a typo of the right one).
const WRONG_PASSWORD: &str = "Wr0ng-pghalo-test-passw0rd";
const AUTH_FAILED: &str = "28P01";
const HBA_REFUSED: &str = "28000";

/// Authentication request codes.
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;

// ---------------------------------------------------------------------------
// Log capture: every tracing event of this test binary, at every level.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one log subscriber");
        buffer
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&log_buffer().0.lock().unwrap()).into_owned()
}

/// Secrets met at run time (SCRAM proofs, md5 responses) to look for too.
fn extra_secrets() -> &'static Mutex<Vec<String>> {
    static EXTRA: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    EXTRA.get_or_init(|| Mutex::new(Vec::new()))
}

fn remember_secret(secret: impl Into<String>) {
    extra_secrets().lock().unwrap().push(secret.into());
}

/// Every password-equivalent string this binary knows of: the lab users'
/// passwords, the md5 role's password and hash, the wrong passwords tried,
/// the keys of the lab's SCRAM verifiers, and the proofs and md5 responses
/// the tests sent.
fn known_secrets() -> Vec<String> {
    let lab = &shared_lab().lab;
    let mut secrets: Vec<String> = lab
        .secrets
        .users()
        .iter()
        .map(|(_, pw)| pw.to_string())
        .collect();
    secrets.push(WRONG_PASSWORD.to_string());
    for (user, pw) in lab.secrets.users() {
        secrets.push(md5_hash(user, pw)[3..].to_string());
    }
    if let Some(pw) = MD5_ROLE.get() {
        secrets.push(pw.clone());
        secrets.push(md5_hash(MD5_USER, pw)[3..].to_string());
    }
    for line in lab_pool_passwd().lines() {
        // user:SCRAM-SHA-256$iter:salt$StoredKey:ServerKey
        if let Some((_, keys)) = line.rsplit_once('$') {
            secrets.extend(keys.split(':').map(str::to_string));
        }
    }
    secrets.extend(extra_secrets().lock().unwrap().iter().cloned());
    secrets
}

/// DESIGN rule 7: nothing password-like in anything logged so far.
async fn assert_logs_clean() {
    // Sessions ending in the background log last.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = logged();
    for secret in known_secrets() {
        assert!(secret.len() >= 8, "too short to look for: {}", secret.len());
        if let Some(at) = text.find(&secret) {
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = &text[start..text[at..].find('\n').map_or(text.len(), |i| at + i)];
            panic!(
                "a secret reached the log (shown redacted): {}",
                line.replace(&secret, "<SECRET>")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Lab facts and proxies
// ---------------------------------------------------------------------------

fn postgres_password() -> String {
    shared_lab().lab.secrets.postgres.clone()
}

fn lab_pool_passwd() -> String {
    std::fs::read_to_string(shared_lab().dir().join("pghalo0").join("pool_passwd")).unwrap()
}

/// The lab's own pool_passwd line (a SCRAM verifier equal to the server's)
/// for `user`.
fn lab_verifier_line(user: &str) -> String {
    lab_pool_passwd()
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap()
        .to_string()
}

fn md5_hash(user: &str, password: &str) -> String {
    pghalo_protocol::md5::hash_password(user, password.as_bytes())
}

/// An in-process pghalo in front of the shared lab.
struct Proxy {
    config: ProxyConfig,
    _daemon: Daemon,
}

impl Proxy {
    async fn start(tag: &str, listen_extra: &str, hba: &str, passwd: &str) -> Proxy {
        log_buffer();
        let config = ProxyConfig::write(
            &shared_lab().lab,
            tag,
            listen_extra,
            "checkout_timeout = \"10s\"",
            hba,
            Some(passwd),
        );
        let daemon = Daemon::start(&config.path())
            .await
            .unwrap_or_else(|e| panic!("starting pghalo with hba {hba:?}: {e}"));
        Proxy {
            config,
            _daemon: daemon,
        }
    }

    fn port(&self) -> u16 {
        self.config.port
    }
}

fn conn_string(port: u16, user: &str, password: &str, database: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={database} connect_timeout=10"
    )
}

async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    common::pg_connect(&conn_string(port, user, password, "postgres")).await
}

/// Logs in and proves the session reached the primary as `user`.
async fn assert_logs_in(port: u16, user: &str, password: &str) {
    let client = connect(port, user, password)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {}", describe(&e)));
    let row = client
        .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    assert!(!row.get::<_, bool>(1), "sessions go to the primary");
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// (severity, SQLSTATE, message) of a failed login.
async fn login_error(port: u16, user: &str, password: &str) -> (String, String, String) {
    login_error_db(port, user, password, "postgres").await
}

async fn login_error_db(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
) -> (String, String, String) {
    let err = common::pg_connect(&conn_string(port, user, password, database))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user}@{database} was let in"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {err}"));
    (
        db.severity().to_string(),
        db.code().code().to_string(),
        db.message().to_string(),
    )
}

fn fatal(code: &str, message: &str) -> (String, String, String) {
    ("FATAL".into(), code.into(), message.into())
}

fn password_failed(user: &str) -> (String, String, String) {
    fatal(
        AUTH_FAILED,
        &format!("password authentication failed for user \"{user}\""),
    )
}

fn hba_rejects(host: &str, user: &str, database: &str) -> (String, String, String) {
    fatal(
        HBA_REFUSED,
        &format!(
            "pool_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", no encryption"
        ),
    )
}

fn no_hba_entry(host: &str, user: &str, database: &str) -> (String, String, String) {
    fatal(
        HBA_REFUSED,
        &format!(
            "no pool_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", no encryption"
        ),
    )
}

// ---------------------------------------------------------------------------
// Raw protocol: which challenge a startup packet gets
// ---------------------------------------------------------------------------

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = V3_0.to_be_bytes().to_vec();
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

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    match tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut header))
        .await
        .expect("no answer within 15 s")
    {
        Ok(_) => {}
        Err(_) => return None,
    }
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    Some((header[0], body))
}

fn error_fields(body: &[u8]) -> BTreeMap<char, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap();
        out.insert(
            code as char,
            String::from_utf8_lossy(&tail[..end]).into_owned(),
        );
        rest = &tail[end + 1..];
    }
    out
}

/// What pghalo (or a server) first answers a startup packet: the
/// authentication request code and its data, or the ErrorResponse's
/// (SQLSTATE, message) as Err.
async fn first_answer(
    port: u16,
    user: &str,
    database: &str,
) -> Result<(i32, Vec<u8>), (String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(&startup_packet(&[("user", user), ("database", database)]))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut stream).await.expect("an answer");
    match tag {
        b'R' => Ok((
            i32::from_be_bytes(body[0..4].try_into().unwrap()),
            body[4..].to_vec(),
        )),
        b'E' => {
            let f = error_fields(&body);
            Err((f[&'C'].clone(), f[&'M'].clone()))
        }
        other => panic!("unexpected first message {:?}", other as char),
    }
}

async fn auth_code(port: u16, user: &str, database: &str) -> i32 {
    first_answer(port, user, database)
        .await
        .unwrap_or_else(|e| panic!("{user}@{database} refused: {e:?}"))
        .0
}

/// A raw SCRAM-SHA-256 login; returns the proof sent and every message
/// after it up to ReadyForQuery or the connection's end.
async fn raw_scram_login(port: u16, user: &str, password: &str) -> (String, Vec<(u8, Vec<u8>)>) {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(&startup_packet(&[("user", user), ("database", "postgres")]))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut stream).await.unwrap();
    assert_eq!((tag, &body[0..4]), (b'R', &AUTH_SASL.to_be_bytes()[..]));
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
    initial.extend_from_slice(scram.message());
    stream.write_all(&message(b'p', &initial)).await.unwrap();
    let (tag, body) = read_message(&mut stream).await.unwrap();
    assert_eq!((tag, &body[0..4]), (b'R', &11i32.to_be_bytes()[..]));
    scram.update(&body[4..]).unwrap();
    let client_final = String::from_utf8(scram.message().to_vec()).unwrap();
    let proof = client_final.rsplit_once("p=").unwrap().1.to_string();
    stream
        .write_all(&message(b'p', client_final.as_bytes()))
        .await
        .unwrap();
    let mut after = Vec::new();
    while let Some(msg) = read_message(&mut stream).await {
        let done = msg.0 == b'Z';
        after.push(msg);
        if done {
            break;
        }
    }
    (proof, after)
}

/// Connects from a chosen loopback source address (127.0.0.x), which hba
/// address rules see.
async fn connect_from(
    source: [u8; 4],
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = TcpStream::from_std(socket.into()).unwrap();
    let mut config = tokio_postgres::Config::new();
    config.user(user).password(password).dbname("postgres");
    let (client, connection) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn login_error_from(
    source: [u8; 4],
    port: u16,
    user: &str,
    password: &str,
) -> (String, String) {
    let err = connect_from(source, port, user, password)
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    (db.code().code().to_string(), db.message().to_string())
}

// ---------------------------------------------------------------------------
// A role whose password the servers store as md5
// ---------------------------------------------------------------------------

const MD5_USER: &str = "md5user";
static MD5_ROLE: OnceLock<String> = OnceLock::new();

/// Creates `md5user` on the primary with an md5-stored password, and lets
/// it (and the made-up `nosuch_md5`) log in to the primary with md5: the
/// lab's servers otherwise require SCRAM, which an md5-stored role cannot
/// do. Returns its password.
async fn md5_role() -> &'static str {
    static SETUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = SETUP.lock().await;
    if let Some(pw) = MD5_ROLE.get() {
        return pw;
    }
    use rand::Rng;
    let pw: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    let pw = format!("Md5{pw}");
    let lab = &shared_lab().lab;
    let direct = lab.connect("node0").await.unwrap();
    // Hashed here: no plain password travels in SQL.
    direct
        .batch_execute(&format!(
            "CREATE ROLE {MD5_USER} LOGIN PASSWORD '{}'",
            md5_hash(MD5_USER, &pw)
        ))
        .await
        .unwrap();
    let hba = lab.dir().join("node0").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all {MD5_USER} 127.0.0.1/32 md5\nhost all nosuch_md5 127.0.0.1/32 md5\n{old}"
        ),
    )
    .unwrap();
    direct
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let port = lab.node("node0").unwrap().port;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((AUTH_MD5, _)) = first_answer(port, MD5_USER, "postgres").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node0 never asked md5 of md5user"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    MD5_ROLE.get_or_init(|| pw)
}

// ---------------------------------------------------------------------------
// trust and reject
// ---------------------------------------------------------------------------

/// trust: AuthenticationOk at once, whatever password the client has; the
/// backend login uses the pool_passwd password.
#[tokio::test(flavor = "multi_thread")]
async fn trust_lets_the_client_in_without_a_password_exchange() {
    let proxy = Proxy::start(
        "trust",
        "",
        "host all all 127.0.0.1/32 trust\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        first_answer(proxy.port(), "postgres", "postgres").await,
        Ok((AUTH_OK, vec![]))
    );
    assert_logs_in(proxy.port(), "postgres", WRONG_PASSWORD).await;
    assert_logs_clean().await;
}

/// trust with only a SCRAM verifier: the client is in, but pghalo has
/// nothing a SCRAM server accepts, and says so with 28000.
#[tokio::test(flavor = "multi_thread")]
async fn trust_with_only_a_scram_verifier_cannot_reach_a_scram_server() {
    let proxy = Proxy::start(
        "trust-scram",
        "",
        "host all all 127.0.0.1/32 trust\n",
        &lab_pool_passwd(),
    )
    .await;
    let err = connect(proxy.port(), "postgres", "unused")
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(
        (db.severity(), db.code().code(), db.message()),
        (
            "FATAL",
            HBA_REFUSED,
            "pghalo could not get a server connection"
        )
    );
    assert!(
        db.detail().unwrap_or("").contains("SCRAM-SHA-256"),
        "the detail says why: {:?}",
        db.detail()
    );
    assert_logs_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_rule_refuses_with_28000() {
    let proxy = Proxy::start(
        "reject",
        "",
        "host all all 127.0.0.1/32 reject\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        login_error(proxy.port(), "postgres", &postgres_password()).await,
        hba_rejects("127.0.0.1", "postgres", "postgres")
    );
    assert_logs_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_matching_rule_refuses_with_28000() {
    let proxy = Proxy::start(
        "nomatch",
        "",
        "host otherdb all 127.0.0.1/32 trust\nhost all nobody 127.0.0.1/32 trust\nhost all all 10.0.0.0/8 trust\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        login_error(proxy.port(), "postgres", &postgres_password()).await,
        no_hba_entry("127.0.0.1", "postgres", "postgres")
    );
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// md5
// ---------------------------------------------------------------------------

/// md5 rule and md5 entry: the client answers an md5 challenge, and pghalo
/// logs in to an md5 server with nothing but the stored hash.
#[tokio::test(flavor = "multi_thread")]
async fn md5_rule_with_an_md5_entry_logs_in_with_the_stored_hash() {
    let pw = md5_role().await;
    let proxy = Proxy::start(
        "md5-md5",
        "",
        "host all all 127.0.0.1/32 md5\n",
        &format!("{MD5_USER}:{}\n", md5_hash(MD5_USER, pw)),
    )
    .await;
    assert_eq!(
        auth_code(proxy.port(), MD5_USER, "postgres").await,
        AUTH_MD5
    );
    assert_logs_in(proxy.port(), MD5_USER, pw).await;
    assert_eq!(
        login_error(proxy.port(), MD5_USER, WRONG_PASSWORD).await,
        password_failed(MD5_USER)
    );
    assert_logs_clean().await;
}

/// md5 rule and a clear password: md5 for the client, the password (hence
/// SCRAM) for the server.
#[tokio::test(flavor = "multi_thread")]
async fn md5_rule_with_a_plain_entry() {
    let proxy = Proxy::start(
        "md5-plain",
        "",
        "host all all 127.0.0.1/32 md5\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        auth_code(proxy.port(), "postgres", "postgres").await,
        AUTH_MD5
    );
    assert_logs_in(proxy.port(), "postgres", &postgres_password()).await;
    assert_eq!(
        login_error(proxy.port(), "postgres", WRONG_PASSWORD).await,
        password_failed("postgres")
    );
    assert_logs_clean().await;
}

/// md5 rule and a SCRAM entry: SCRAM is used, as PostgreSQL does, and the
/// keys from the client's exchange log pghalo in to the server.
#[tokio::test(flavor = "multi_thread")]
async fn md5_rule_with_a_scram_entry_uses_scram() {
    let proxy = Proxy::start(
        "md5-scram",
        "",
        "host all all 127.0.0.1/32 md5\n",
        &lab_pool_passwd(),
    )
    .await;
    let (code, data) = first_answer(proxy.port(), "postgres", "postgres")
        .await
        .unwrap();
    assert_eq!(
        (code, data.as_slice()),
        (AUTH_SASL, &b"SCRAM-SHA-256\0\0"[..])
    );
    assert_logs_in(proxy.port(), "postgres", &postgres_password()).await;
    assert_eq!(
        login_error(proxy.port(), "postgres", WRONG_PASSWORD).await,
        password_failed("postgres")
    );
    assert_logs_clean().await;
}

/// PostgreSQL (password_encryption = scram-sha-256, the default) answers an
/// unknown user on an md5 rule with a SCRAM challenge, like its SCRAM users,
/// so a prober cannot tell who exists. pghalo, whose users here all have
/// SCRAM entries, must not single the unknown user out with md5.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_on_an_md5_rule_is_challenged_like_postgresql_does() {
    md5_role().await;
    // The real server: an md5 rule for the made-up nosuch_md5.
    let node0 = shared_lab().lab.node("node0").unwrap().port;
    let server = first_answer(node0, "nosuch_md5", "postgres")
        .await
        .unwrap()
        .0;
    assert_eq!(
        server, AUTH_SASL,
        "PostgreSQL mocks SCRAM for unknown users"
    );

    let proxy = Proxy::start(
        "md5-unknown",
        "",
        "host all all 127.0.0.1/32 md5\n",
        &lab_pool_passwd(),
    )
    .await;
    let known = auth_code(proxy.port(), "postgres", "postgres").await;
    let unknown = auth_code(proxy.port(), "nosuch_md5", "postgres").await;
    assert_eq!(known, AUTH_SASL);
    assert_eq!(
        unknown, known,
        "an unknown user gets a different challenge than the known ones"
    );
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// password (cleartext)
// ---------------------------------------------------------------------------

/// The cleartext method checks the password against every entry kind, and
/// hands the password itself to the server login.
#[tokio::test(flavor = "multi_thread")]
async fn password_rule_checks_every_entry_kind() {
    let pw = postgres_password();
    let md5_pw = md5_role().await;
    assert!(
        !["md5", "AES", "TEXT", "SCRAM"]
            .iter()
            .any(|p| pw.starts_with(p)),
        "a bare clear password must not look like another entry kind"
    );
    let entries = [
        ("TEXT", format!("postgres:TEXT{pw}\n")),
        ("plain", format!("postgres:{pw}\n")),
        ("md5", format!("postgres:{}\n", md5_hash("postgres", &pw))),
        ("SCRAM", format!("{}\n", lab_verifier_line("postgres"))),
    ];
    for (kind, passwd) in entries {
        let proxy = Proxy::start(
            &format!("password-{kind}"),
            "",
            "host all all 127.0.0.1/32 password\n",
            &passwd,
        )
        .await;
        assert_eq!(
            auth_code(proxy.port(), "postgres", "postgres").await,
            AUTH_CLEARTEXT,
            "{kind}"
        );
        assert_logs_in(proxy.port(), "postgres", &pw).await;
        assert_eq!(
            login_error(proxy.port(), "postgres", WRONG_PASSWORD).await,
            password_failed("postgres"),
            "{kind}"
        );
    }
    // A role the server checks with md5: the clear password serves for the
    // server's md5 challenge too.
    let proxy = Proxy::start(
        "password-md5-server",
        "",
        "host all all 127.0.0.1/32 password\n",
        &format!("{MD5_USER}:{}\n", md5_hash(MD5_USER, md5_pw)),
    )
    .await;
    assert_logs_in(proxy.port(), MD5_USER, md5_pw).await;
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// scram-sha-256
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn scram_rule_with_scram_and_plain_entries() {
    let pw = postgres_password();
    for (kind, passwd) in [
        ("SCRAM", lab_pool_passwd()),
        ("TEXT", format!("postgres:TEXT{pw}\n")),
    ] {
        let proxy = Proxy::start(
            &format!("scram-{kind}"),
            "",
            "host all all 127.0.0.1/32 scram-sha-256\n",
            &passwd,
        )
        .await;
        let (code, data) = first_answer(proxy.port(), "postgres", "postgres")
            .await
            .unwrap();
        assert_eq!(
            (code, data.as_slice()),
            (AUTH_SASL, &b"SCRAM-SHA-256\0\0"[..])
        );
        assert_logs_in(proxy.port(), "postgres", &pw).await;
        assert_eq!(
            login_error(proxy.port(), "postgres", WRONG_PASSWORD).await,
            password_failed("postgres"),
            "{kind}"
        );
    }
    assert_logs_clean().await;
}

/// An md5 hash cannot answer SCRAM: on a scram-sha-256 rule such a user
/// always fails, right password or not, exactly like a wrong one
/// (PostgreSQL does the same for md5-stored roles).
#[tokio::test(flavor = "multi_thread")]
async fn scram_rule_with_an_md5_entry_always_fails_like_a_wrong_password() {
    let pw = md5_role().await;
    let proxy = Proxy::start(
        "scram-md5",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        &format!("{MD5_USER}:{}\n", md5_hash(MD5_USER, pw)),
    )
    .await;
    assert_eq!(
        auth_code(proxy.port(), MD5_USER, "postgres").await,
        AUTH_SASL
    );
    assert_eq!(
        login_error(proxy.port(), MD5_USER, pw).await,
        password_failed(MD5_USER)
    );
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// Failures that reveal nothing
// ---------------------------------------------------------------------------

/// For every password method, a wrong password and an unknown user get the
/// very same ErrorResponse (fields and all, the user name aside); under
/// SCRAM the unknown user even gets a plausible, stable salt.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_fail_identically() {
    let pw = postgres_password();
    for method in ["scram-sha-256", "md5", "password"] {
        let passwd = if method == "scram-sha-256" {
            lab_pool_passwd()
        } else {
            format!("postgres:TEXT{pw}\n")
        };
        let proxy = Proxy::start(
            &format!("identical-{method}"),
            "",
            &format!("host all all 127.0.0.1/32 {method}\n"),
            &passwd,
        )
        .await;
        let wrong = common::pg_connect(&conn_string(
            proxy.port(),
            "postgres",
            WRONG_PASSWORD,
            "postgres",
        ))
        .await
        .err()
        .unwrap();
        let unknown = common::pg_connect(&conn_string(
            proxy.port(),
            "nosuchuser",
            WRONG_PASSWORD,
            "postgres",
        ))
        .await
        .err()
        .unwrap();
        let shape = |e: &tokio_postgres::Error, user: &str| {
            let db = e.as_db_error().unwrap();
            (
                db.severity().to_string(),
                db.code().code().to_string(),
                db.message().replace(user, "USER"),
                db.detail().map(str::to_string),
                db.hint().map(str::to_string),
            )
        };
        assert_eq!(
            shape(&wrong, "postgres"),
            shape(&unknown, "nosuchuser"),
            "{method}"
        );
        assert_eq!(wrong.code().unwrap().code(), AUTH_FAILED, "{method}");
    }

    // The SCRAM mock: same iteration count and salt size as a real
    // verifier, and the same salt every time for the same unknown user.
    let proxy = Proxy::start(
        "identical-salt",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        &lab_pool_passwd(),
    )
    .await;
    let server_first = |user: &'static str| {
        let port = proxy.port();
        async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream
                .write_all(&startup_packet(&[("user", user), ("database", "postgres")]))
                .await
                .unwrap();
            read_message(&mut stream).await.unwrap();
            let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
            let mut initial = b"SCRAM-SHA-256\0".to_vec();
            initial.extend_from_slice(&(first.len() as i32).to_be_bytes());
            initial.extend_from_slice(first);
            stream.write_all(&message(b'p', &initial)).await.unwrap();
            let (tag, body) = read_message(&mut stream).await.unwrap();
            assert_eq!((tag, &body[0..4]), (b'R', &11i32.to_be_bytes()[..]));
            let text = String::from_utf8(body[4..].to_vec()).unwrap();
            let attrs: BTreeMap<String, String> = text
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            (attrs["s"].clone(), attrs["i"].clone())
        }
    };
    let (real_salt, real_iterations) = server_first("postgres").await;
    let (mock_salt, mock_iterations) = server_first("nosuchuser").await;
    let (again_salt, _) = server_first("nosuchuser").await;
    assert_eq!(mock_iterations, real_iterations);
    assert_eq!(mock_salt.len(), real_salt.len());
    assert_ne!(mock_salt, real_salt);
    assert_eq!(mock_salt, again_salt, "a prober sees a stable salt");
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// Rule matching
// ---------------------------------------------------------------------------

/// Database and user lists, regular expressions, sameuser, and the first
/// matching line winning over later ones.
#[tokio::test(flavor = "multi_thread")]
async fn database_and_user_lists_match_and_the_first_match_wins() {
    let hba = "\
# TYPE  DATABASE            USER              ADDRESS       METHOD
host    otherdb             postgres          127.0.0.1/32  reject
host    template1,postgres  pghalo,postgres   127.0.0.1/32  scram-sha-256
host    all                 /^regex_          127.0.0.1/32  reject
host    sameuser            all               127.0.0.1/32  password
host    all                 postgres          127.0.0.1/32  reject
host    all                 all               127.0.0.1/32  trust
";
    let proxy = Proxy::start("lists", "", hba, &lab_pool_passwd()).await;
    let port = proxy.port();
    let reject = |user: &str, db: &str| {
        Err((
            HBA_REFUSED.to_string(),
            hba_rejects("127.0.0.1", user, db).2,
        ))
    };
    type Expected = Result<i32, (String, String)>;
    let cases: Vec<(&str, &str, Expected)> = vec![
        ("postgres", "postgres", Ok(AUTH_SASL)),
        ("postgres", "template1", Ok(AUTH_SASL)),
        ("pghalo", "postgres", Ok(AUTH_SASL)),
        ("postgres", "otherdb", reject("postgres", "otherdb")),
        ("postgres", "pghalo_db", reject("postgres", "pghalo_db")),
        ("regex_user", "postgres", reject("regex_user", "postgres")),
        // The regex line comes before sameuser, so it wins.
        (
            "regex_user",
            "regex_user",
            reject("regex_user", "regex_user"),
        ),
        ("someone", "someone", Ok(AUTH_CLEARTEXT)),
        ("someone", "postgres", Ok(AUTH_OK)),
        ("repl", "template1", Ok(AUTH_OK)),
        ("xregex_user", "postgres", Ok(AUTH_OK)),
    ];
    for (user, db, expected) in cases {
        let got = first_answer(port, user, db).await.map(|(code, _)| code);
        assert_eq!(got, expected, "{user}@{db}");
    }
    // The lines chosen really authenticate.
    assert_logs_in(port, "postgres", &postgres_password()).await;
    assert_logs_in(port, "pghalo", &shared_lab().lab.secrets.pghalo).await;
    assert_eq!(
        login_error(port, "postgres", WRONG_PASSWORD).await,
        password_failed("postgres")
    );
    assert_logs_clean().await;
}

/// Without TLS, hostssl lines never match and hostnossl lines do.
#[tokio::test(flavor = "multi_thread")]
async fn hostssl_lines_never_match_plain_connections_and_hostnossl_lines_do() {
    let hba = "\
hostssl    all  all       127.0.0.1/32  trust
hostnossl  all  postgres  127.0.0.1/32  password
host       all  all       127.0.0.1/32  reject
";
    let proxy = Proxy::start(
        "hostssl",
        "",
        hba,
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        auth_code(proxy.port(), "postgres", "postgres").await,
        AUTH_CLEARTEXT
    );
    assert_logs_in(proxy.port(), "postgres", &postgres_password()).await;
    assert_eq!(
        login_error(proxy.port(), "pghalo", "whatever").await,
        hba_rejects("127.0.0.1", "pghalo", "postgres")
    );
    let only_ssl = Proxy::start(
        "hostssl-only",
        "",
        "hostssl all all 127.0.0.1/32 trust\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    assert_eq!(
        login_error(only_ssl.port(), "postgres", "whatever").await,
        no_hba_entry("127.0.0.1", "postgres", "postgres")
    );
    assert_logs_clean().await;
}

/// A directory for Unix sockets, short enough for sun_path.
fn socket_dir(tag: &str) -> std::path::PathBuf {
    let dir = unique_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_conn(dir: &Path, port: u16, user: &str, password: &str) -> String {
    format!(
        "host={} port={port} user={user} password={password} dbname=postgres connect_timeout=10",
        dir.display()
    )
}

/// `local` lines apply to Unix-socket clients and only to them; `host`
/// lines only to TCP clients.
#[tokio::test(flavor = "multi_thread")]
async fn local_rules_apply_to_unix_socket_clients_only() {
    let pw = postgres_password();
    let dir = socket_dir("sock");
    let listen = format!("unix_socket_directories = [\"{}\"]", dir.display());
    let proxy = Proxy::start(
        "local-trust",
        &listen,
        "local all all trust\nhost all all 127.0.0.1/32 reject\n",
        &format!("postgres:TEXT{pw}\n"),
    )
    .await;
    let port = proxy.port();
    let client = common::pg_connect(&unix_conn(&dir, port, "postgres", WRONG_PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("unix socket login: {}", describe(&e)));
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    // psql over the socket too.
    let out = std::process::Command::new("psql")
        .args(["-X", "-w", "-At", "-h"])
        .arg(&dir)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args([
            "-c",
            "SELECT 'via ' || coalesce(inet_client_addr()::text, 'unix')",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server sees pghalo's TCP connection, not the client's socket.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "via 127.0.0.1/32"
    );
    assert_eq!(
        login_error(port, "postgres", &pw).await,
        hba_rejects("127.0.0.1", "postgres", "postgres")
    );
    drop(proxy);

    // The other way round: local rejected, host trusted; and local with
    // SCRAM.
    let proxy = Proxy::start(
        "local-reject",
        &listen,
        "local all postgres scram-sha-256\nlocal all all reject\nhost all all 127.0.0.1/32 trust\n",
        &format!(
            "{}\npghalo:TEXT{}\n",
            lab_verifier_line("postgres"),
            shared_lab().lab.secrets.pghalo
        ),
    )
    .await;
    let port = proxy.port();
    let err = common::pg_connect(&unix_conn(&dir, port, "pghalo", "whatever"))
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!((db.severity(), db.code().code()), ("FATAL", HBA_REFUSED));
    assert!(
        db.message()
            .starts_with("pool_hba.conf rejects connection for ")
            && db
                .message()
                .contains("user \"pghalo\", database \"postgres\""),
        "{}",
        db.message()
    );
    let client = common::pg_connect(&unix_conn(&dir, port, "postgres", &pw))
        .await
        .unwrap_or_else(|e| panic!("unix SCRAM login: {}", describe(&e)));
    client.batch_execute("SELECT 1").await.unwrap();
    let err = common::pg_connect(&unix_conn(&dir, port, "postgres", WRONG_PASSWORD))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), AUTH_FAILED);
    assert_logs_in(port, "pghalo", "anything").await;
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    assert_logs_clean().await;
}

/// PostgreSQL (and pgpool) name a Unix-socket client `host "[local]"` in
/// both hba refusals, with the encryption state, like every other client.
#[tokio::test(flavor = "multi_thread")]
async fn local_refusals_use_postgresqls_wording() {
    let dir = socket_dir("sockword");
    let listen = format!("unix_socket_directories = [\"{}\"]", dir.display());
    let proxy = Proxy::start(
        "local-wording",
        &listen,
        "local all postgres reject\nlocal all pghalo trust\n",
        &format!("postgres:TEXT{}\n", postgres_password()),
    )
    .await;
    let refusal = |user: &'static str| {
        let info = unix_conn(&dir, proxy.port(), user, "whatever");
        async move {
            let err = common::pg_connect(&info).await.err().unwrap();
            let db = err.as_db_error().unwrap();
            (db.code().code().to_string(), db.message().to_string())
        }
    };
    assert_eq!(
        refusal("postgres").await,
        (
            HBA_REFUSED.to_string(),
            "pool_hba.conf rejects connection for host \"[local]\", user \"postgres\", database \"postgres\", no encryption".to_string()
        )
    );
    assert_eq!(
        refusal("nobody").await,
        (
            HBA_REFUSED.to_string(),
            "no pool_hba.conf entry for host \"[local]\", user \"nobody\", database \"postgres\", no encryption".to_string()
        )
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Address rules with a netmask column and with CIDR lengths match the
/// client's source address, and only it: 127.0.0.2/32 matches 127.0.0.2 and
/// not 127.0.0.1.
#[tokio::test(flavor = "multi_thread")]
async fn address_rules_match_the_client_source_address() {
    let pw = postgres_password();
    let hba = "\
host  all  all  127.0.0.2/32               reject
host  all  all  127.0.0.1  255.255.255.255 trust
host  all  all  127.0.0.4/31               scram-sha-256
host  all  all  127.0.0.0  255.255.255.248 password
";
    let proxy = Proxy::start("address", "", hba, &format!("postgres:TEXT{pw}\n")).await;
    let port = proxy.port();
    let query_from = |source: [u8; 4], password: &'static str| async move {
        let client = connect_from(source, port, "postgres", password)
            .await
            .unwrap_or_else(|e| panic!("from {source:?}: {}", describe(&e)));
        client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    // 127.0.0.1: trust (any password).
    assert_eq!(query_from([127, 0, 0, 1], WRONG_PASSWORD).await, "postgres");
    // 127.0.0.2: its own reject line.
    assert_eq!(
        login_error_from([127, 0, 0, 2], port, "postgres", &pw).await,
        (
            HBA_REFUSED.to_string(),
            hba_rejects("127.0.0.2", "postgres", "postgres").2
        )
    );
    // 127.0.0.3: the /29 netmask line, cleartext.
    assert_eq!(
        login_error_from([127, 0, 0, 3], port, "postgres", WRONG_PASSWORD).await,
        (AUTH_FAILED.to_string(), password_failed("postgres").2)
    );
    assert!(
        connect_from([127, 0, 0, 3], port, "postgres", &pw)
            .await
            .is_ok()
    );
    // 127.0.0.4 and .5: the /31 line, SCRAM.
    for source in [[127, 0, 0, 4], [127, 0, 0, 5]] {
        assert_eq!(
            login_error_from(source, port, "postgres", WRONG_PASSWORD).await,
            (AUTH_FAILED.to_string(), password_failed("postgres").2)
        );
        assert!(connect_from(source, port, "postgres", &pw).await.is_ok());
    }
    // 127.0.0.9: no line covers it.
    assert_eq!(
        login_error_from([127, 0, 0, 9], port, "postgres", &pw).await,
        (
            HBA_REFUSED.to_string(),
            no_hba_entry("127.0.0.9", "postgres", "postgres").2
        )
    );
    assert_logs_clean().await;
}

// ---------------------------------------------------------------------------
// DESIGN rule 7
// ---------------------------------------------------------------------------

/// Successful and failed logins of every method, raw and through real
/// clients; afterwards neither this process's log nor the lab's pghalo
/// process log holds a password, hash or SCRAM proof.
#[tokio::test(flavor = "multi_thread")]
async fn logs_never_contain_passwords_or_scram_proofs() {
    let pw = postgres_password();
    let md5_pw = md5_role().await;

    // SCRAM, raw, so the proofs are known.
    let proxy = Proxy::start(
        "logs-scram",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        &lab_pool_passwd(),
    )
    .await;
    let (proof, after) = raw_scram_login(proxy.port(), "postgres", &pw).await;
    remember_secret(proof);
    assert_eq!(after.last().map(|m| m.0), Some(b'Z'), "logged in");
    let (bad_proof, after) = raw_scram_login(proxy.port(), "postgres", WRONG_PASSWORD).await;
    remember_secret(bad_proof);
    assert_eq!(after.first().map(|m| m.0), Some(b'E'));
    let (unknown_proof, _) = raw_scram_login(proxy.port(), "nosuchuser", WRONG_PASSWORD).await;
    remember_secret(unknown_proof);

    // md5, raw, so the response is known.
    let proxy = Proxy::start(
        "logs-md5",
        "",
        "host all all 127.0.0.1/32 md5\n",
        &format!("{MD5_USER}:{}\n", md5_hash(MD5_USER, md5_pw)),
    )
    .await;
    for password in [md5_pw, WRONG_PASSWORD] {
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        stream
            .write_all(&startup_packet(&[
                ("user", MD5_USER),
                ("database", "postgres"),
            ]))
            .await
            .unwrap();
        let (_, body) = read_message(&mut stream).await.unwrap();
        assert_eq!(&body[0..4], &AUTH_MD5.to_be_bytes());
        let salt: [u8; 4] = body[4..8].try_into().unwrap();
        let response = pghalo_protocol::md5::client_response(MD5_USER, password.as_bytes(), salt);
        remember_secret(response[3..].to_string());
        let mut body = response.into_bytes();
        body.push(0);
        stream.write_all(&message(b'p', &body)).await.unwrap();
        let (tag, _) = read_message(&mut stream).await.unwrap();
        assert_eq!(tag, if password == md5_pw { b'R' } else { b'E' });
    }

    // Cleartext through a real client, right and wrong.
    let proxy = Proxy::start(
        "logs-password",
        "",
        "host all all 127.0.0.1/32 password\n",
        &format!("postgres:TEXT{pw}\n"),
    )
    .await;
    assert_logs_in(proxy.port(), "postgres", &pw).await;
    login_error(proxy.port(), "postgres", WRONG_PASSWORD).await;
    login_error(proxy.port(), "nosuchuser", WRONG_PASSWORD).await;

    // The capture works: the failures were logged, by user name.
    let text = logged();
    assert!(
        text.contains("authentication failed") && text.contains("nosuchuser"),
        "the failed logins should be in the log"
    );
    assert_logs_clean().await;

    // The lab's own pghalo process, logging to its file.
    let lab = &shared_lab().lab;
    let lab_port = lab.proxy("pghalo0").unwrap().port;
    assert_logs_in(lab_port, "postgres", &pw).await;
    login_error(lab_port, "postgres", WRONG_PASSWORD).await;
    let (proof, _) = raw_scram_login(lab_port, "postgres", &pw).await;
    remember_secret(proof);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = lab.dir().join("log").join("pghalo0.log");
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in known_secrets() {
        assert!(
            !text.contains(&secret),
            "a secret reached {}",
            file.display()
        );
    }
}
