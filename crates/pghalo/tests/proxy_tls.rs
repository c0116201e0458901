//! TLS through pghalo against real PostgreSQL: clients (psql, tokio-postgres
//! with rustls, raw sockets) to pghalo, and pghalo to the backends.
//!
//! One lab for the whole binary: node0 (primary) gets `ssl = on` with a
//! certificate from the test CA, node1 (a standby) stays without TLS, so
//! both `tls.backend` outcomes can be seen. Every certificate is made here
//! with rcgen; nothing is read from the machine.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pghalo::daemon::Daemon;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{TestLab, block_on, free_port, unique_dir, write_file};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

// ---------------------------------------------------------------------------
// Certificates

/// A certificate authority made for the test run.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A certificate and its key, in PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate valid for 127.0.0.1 (an IP SAN, what libpq's
    /// verify-full checks for an address) and localhost.
    fn server(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose Common Name is `cn`.
    fn client(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pghalo tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// Writes a file only its owner can read: libpq and PostgreSQL refuse
/// private keys that others can.
fn write_private(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Certificate files on disk, written with `Leaf::store`.
#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Leaf {
    fn store(&self, dir: &Path, name: &str) -> Files {
        let files = Files {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        write_file(&files.cert, &self.cert_pem);
        write_private(&files.key, &self.key_pem);
        files
    }
}

/// Everything the tests share: the lab, the CAs and the files made from
/// them.
struct Fixture {
    lab: TestLab,
    dir: PathBuf,
    /// Signs pghalo's and node0's certificates and the good client ones.
    ca: Ca,
    ca_file: PathBuf,
    /// A CA nobody configured trusts.
    other_ca: Ca,
    other_ca_file: PathBuf,
    /// pghalo's certificate, from `ca`.
    server: Files,
    /// CN=postgres, from `ca`.
    postgres: Files,
    postgres_leaf: Leaf,
    /// CN=alice, from `ca`.
    alice: Files,
    /// CN=postgres, but from `other_ca`.
    forged: Files,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let lab = TestLab::build("tls", |o| {
            o.backends = 2;
            o.proxies = 0;
        });
        // Inside the lab directory, so the reaper removes it with the lab.
        let dir = lab.dir().join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("pghalo test CA");
        let other_ca = Ca::new("some other CA");
        let ca_file = dir.join("ca.crt");
        write_file(&ca_file, &ca.pem);
        let other_ca_file = dir.join("other-ca.crt");
        write_file(&other_ca_file, &other_ca.pem);
        let postgres_leaf = ca.client("postgres");
        let fixture = Fixture {
            server: ca.server("pghalo").store(&dir, "server"),
            postgres: postgres_leaf.store(&dir, "postgres"),
            alice: ca.client("alice").store(&dir, "alice"),
            forged: other_ca.client("postgres").store(&dir, "forged"),
            postgres_leaf,
            lab,
            dir,
            ca,
            ca_file,
            other_ca,
            other_ca_file,
        };
        enable_ssl_on_node0(&fixture);
        fixture
    })
}

/// Gives node0 a certificate from the test CA and turns `ssl` on. The files
/// must belong to the server's user and be private, as PostgreSQL checks.
fn enable_ssl_on_node0(f: &Fixture) {
    use std::os::unix::fs::MetadataExt;
    let data_dir = f.lab.lab.layout.data_dir("node0");
    let owner = std::fs::metadata(&data_dir).unwrap();
    let leaf = f.ca.server("node0");
    for (name, text) in [
        ("server.crt", &leaf.cert_pem),
        ("server.key", &leaf.key_pem),
    ] {
        let path = data_dir.join(name);
        write_private(&path, text);
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let lab = f.lab.lab.clone();
    block_on(async move {
        let client = lab.connect("node0").await.unwrap();
        // Two statements: ALTER SYSTEM refuses to run in a transaction block.
        client
            .batch_execute("ALTER SYSTEM SET ssl = on")
            .await
            .unwrap();
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        // The reload is asynchronous: new sessions see it once it is done.
        for _ in 0..100 {
            let fresh = lab.connect("node0").await.unwrap();
            let ssl: String = fresh.query_one("SHOW ssl", &[]).await.unwrap().get(0);
            if ssl == "on" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node0 did not turn ssl on; see its log in the lab directory");
    });
}

fn password() -> String {
    fixture().lab.lab.secrets.postgres.clone()
}

// ---------------------------------------------------------------------------
// pghalo configurations

/// An in-process pghalo's files, in front of one node of the lab.
struct ProxyFiles {
    dir: PathBuf,
    port: u16,
}

impl ProxyFiles {
    /// `tls` is the whole `[tls]` section; `hba` the pool_hba.conf. The
    /// pool_passwd holds postgres's password in clear, which pghalo needs
    /// to log in to the SCRAM backends for `cert` clients, who send none.
    fn write(tag: &str, node: &str, hba: &str, tls: &str) -> ProxyFiles {
        let f = fixture();
        let dir = unique_dir(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let node_port = f.lab.lab.node(node).unwrap().port;
        let text = format!(
            "[listen]\nlisten_addresses = [\"127.0.0.1\"]\nport = {port}\nunix_socket_directories = [\"{dir}\"]\n\n\
             [auth]\npool_hba = \"pool_hba.conf\"\npool_passwd = \"pool_passwd\"\n\n\
             {tls}\n\n\
             [[backend]]\nname = \"{node}\"\nhost = \"127.0.0.1\"\nport = {node_port}\n",
            dir = dir.display()
        );
        write_file(&dir.join("pghalo.toml"), &text);
        write_file(&dir.join("pool_hba.conf"), hba);
        write_private(
            &dir.join("pool_passwd"),
            &format!("postgres:TEXT{}\n", password()),
        );
        ProxyFiles { dir, port }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("pghalo.toml")
    }

    fn unix_socket(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

impl Drop for ProxyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[tls]` with pghalo's certificate from the test CA, client certificates
/// checked against it when `client_ca` is set, and `extra` lines after.
fn tls_section(client_ca: bool, extra: &str) -> String {
    let f = fixture();
    let mut text = format!(
        "[tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        f.server.cert.display(),
        f.server.key.display()
    );
    if client_ca {
        text.push_str(&format!("ca_file = \"{}\"\n", f.ca_file.display()));
    }
    text.push_str(extra);
    text
}

const SCRAM_ANY_HOST: &str = "host all all 127.0.0.1/32 scram-sha-256\n";

// ---------------------------------------------------------------------------
// Clients

/// psql, with nothing from the environment or ~/.postgresql deciding the
/// outcome; Ok(stdout) or Err(stderr).
async fn psql(conninfo: String, sql: &'static str) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("psql")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .args(["-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(conninfo)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .unwrap()
}

fn libpq(port: u16, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres password={} connect_timeout=10 {extra}",
        password()
    )
}

fn libpq_with_cert(port: u16, files: &Files) -> String {
    libpq(
        port,
        &format!(
            "sslmode=require sslcert={} sslkey={}",
            files.cert.display(),
            files.key.display()
        ),
    )
}

/// tokio-postgres over rustls, trusting `roots`, presenting `cert` if given.
async fn tls_connect(
    conninfo: &str,
    roots: &[&CertificateDer<'static>],
    cert: Option<&Leaf>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = tokio_postgres::connect(conninfo, tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn tokio_info(port: u16, sslmode: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres password={} connect_timeout=10 sslmode={sslmode}",
        password()
    )
}

/// SQLSTATE and the whole text (message and detail) of a refusal.
fn refusal(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got {e:?}"));
    (
        db.code().code().to_string(),
        format!("{} {}", db.message(), db.detail().unwrap_or("")),
    )
}

/// A startup packet for user postgres, database postgres, protocol 3.0.
fn startup_packet() -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Everything the peer sends until it closes (or 5 s pass).
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    all
}

async fn ssl_answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) -> u8 {
    stream.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    answer[0]
}

// ---------------------------------------------------------------------------
// Client side

#[tokio::test(flavor = "multi_thread")]
async fn ssl_request_is_answered_by_what_is_configured() {
    let off = ProxyFiles::write("tls-off", "node0", SCRAM_ANY_HOST, "");
    let on = ProxyFiles::write("tls-on", "node0", SCRAM_ANY_HOST, &tls_section(false, ""));
    let _off_daemon = Daemon::start(&off.path()).await.unwrap();
    let _on_daemon = Daemon::start(&on.path()).await.unwrap();

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", off.port))
        .await
        .unwrap();
    assert_eq!(ssl_answer(&mut tcp).await, b'N', "TLS off: 'N'");
    // ...and the plain startup that follows still works.
    tcp.write_all(&startup_packet()).await.unwrap();
    let mut tag = [0u8; 1];
    tcp.read_exact(&mut tag).await.unwrap();
    assert_eq!(tag[0], b'R', "an authentication request follows");

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", on.port))
        .await
        .unwrap();
    assert_eq!(ssl_answer(&mut tcp).await, b'S', "TLS on: 'S'");
    // As in PostgreSQL, a Unix socket never carries TLS.
    let mut unix = tokio::net::UnixStream::connect(on.unix_socket())
        .await
        .unwrap();
    assert_eq!(ssl_answer(&mut unix).await, b'N', "Unix socket: 'N'");

    // libpq's own view: sslmode=require fails against 'N', works against 'S'.
    let err = psql(libpq(off.port, "sslmode=require"), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("does not support SSL"), "{err}");
    assert_eq!(
        psql(libpq(on.port, "sslmode=require"), "SELECT 1")
            .await
            .unwrap()
            .trim(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_connects_with_require_and_verify_full() {
    let f = fixture();
    let files = ProxyFiles::write("tls-psql", "node0", SCRAM_ANY_HOST, &tls_section(false, ""));
    let _daemon = Daemon::start(&files.path()).await.unwrap();

    let out = psql(libpq(files.port, "sslmode=require"), "\\conninfo")
        .await
        .unwrap();
    assert!(out.contains("SSL connection (protocol: TLSv1."), "{out}");

    let verify = format!("sslmode=verify-full sslrootcert={}", f.ca_file.display());
    let out = psql(
        libpq(files.port, &verify),
        "SELECT current_user, count(*) FROM generate_series(1, 1000)",
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "postgres|1000");

    // Another CA's root cannot vouch for pghalo's certificate.
    let wrong_root = format!(
        "sslmode=verify-full sslrootcert={}",
        f.other_ca_file.display()
    );
    let err = psql(libpq(files.port, &wrong_root), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostssl_refuses_plain_clients_and_hostnossl_refuses_tls_clients() {
    let f = fixture();
    let ssl_only = ProxyFiles::write(
        "tls-hostssl",
        "node0",
        "hostssl all all 127.0.0.1/32 scram-sha-256\n",
        &tls_section(false, ""),
    );
    let plain_only = ProxyFiles::write(
        "tls-hostnossl",
        "node0",
        "hostnossl all all 127.0.0.1/32 scram-sha-256\n",
        &tls_section(false, ""),
    );
    let _a = Daemon::start(&ssl_only.path()).await.unwrap();
    let _b = Daemon::start(&plain_only.path()).await.unwrap();

    // hostssl: TLS gets in, plain text does not.
    let client = tls_connect(&tokio_info(ssl_only.port, "require"), &[&f.ca.der], None)
        .await
        .unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let err = common::pg_connect(&tokio_info(ssl_only.port, "disable"))
        .await
        .err()
        .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "28000");
    assert!(
        text.contains("no pool_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption"),
        "{text}"
    );
    let err = psql(libpq(ssl_only.port, "sslmode=disable"), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("no pool_hba.conf entry"), "{err}");

    // hostnossl: the mirror image.
    let err = tls_connect(&tokio_info(plain_only.port, "require"), &[&f.ca.der], None)
        .await
        .err()
        .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "28000");
    assert!(text.contains("SSL encryption"), "{text}");
    let err = psql(libpq(plain_only.port, "sslmode=require"), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("no pool_hba.conf entry"), "{err}");
    let plain = common::pg_connect(&tokio_info(plain_only.port, "disable"))
        .await
        .unwrap();
    plain.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_auth_needs_a_certificate_naming_the_user() {
    let f = fixture();
    let files = ProxyFiles::write(
        "tls-cert",
        "node0",
        "hostssl all all 127.0.0.1/32 cert\n",
        &tls_section(true, ""),
    );
    let _daemon = Daemon::start(&files.path()).await.unwrap();

    // CN=postgres from the trusted CA: in, with no password to give.
    let info = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10 sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        files.port,
        f.ca_file.display(),
        f.postgres.cert.display(),
        f.postgres.key.display()
    );
    let out = psql(info, "SELECT current_user").await.unwrap();
    assert_eq!(out.trim(), "postgres");
    let client = tls_connect(
        &tokio_info(files.port, "require"),
        &[&f.ca.der],
        Some(&f.postgres_leaf),
    )
    .await
    .unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "postgres");

    // CN=alice may not log in as postgres.
    let err = psql(libpq_with_cert(files.port, &f.alice), "SELECT 1")
        .await
        .unwrap_err();
    assert!(
        err.contains("certificate authentication failed for user \"postgres\""),
        "{err}"
    );
    let alice = f.ca.client("alice");
    let err = tls_connect(
        &tokio_info(files.port, "require"),
        &[&f.ca.der],
        Some(&alice),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        refusal(&err),
        (
            "28000".to_string(),
            "certificate authentication failed for user \"postgres\" ".to_string()
        )
    );

    // No certificate at all.
    let err = tls_connect(&tokio_info(files.port, "require"), &[&f.ca.der], None)
        .await
        .err()
        .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "28000");
    assert!(
        text.contains("connection requires a valid client certificate"),
        "{text}"
    );

    // CN=postgres from a CA pghalo does not trust: the handshake fails.
    let err = psql(libpq_with_cert(files.port, &f.forged), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("ssl"), "{err}");
    let forged = f.other_ca.client("postgres");
    let err = tls_connect(
        &tokio_info(files.port, "require"),
        &[&f.ca.der],
        Some(&forged),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.as_db_error().is_none(),
        "a TLS failure, not a login one: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clientcert_options_apply_to_password_rules() {
    let f = fixture();
    let full = ProxyFiles::write(
        "tls-verify-full",
        "node0",
        "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n",
        &tls_section(true, ""),
    );
    let ca_only = ProxyFiles::write(
        "tls-verify-ca",
        "node0",
        "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        &tls_section(true, ""),
    );
    let no_ca = ProxyFiles::write(
        "tls-no-ca",
        "node0",
        "hostssl all all 127.0.0.1/32 cert\n",
        &tls_section(false, ""),
    );
    let _a = Daemon::start(&full.path()).await.unwrap();
    let _b = Daemon::start(&ca_only.path()).await.unwrap();
    let _c = Daemon::start(&no_ca.path()).await.unwrap();

    // verify-full: password and a certificate naming the user.
    assert!(
        psql(libpq_with_cert(full.port, &f.postgres), "SELECT 1")
            .await
            .is_ok()
    );
    let err = psql(libpq_with_cert(full.port, &f.alice), "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("certificate authentication failed"), "{err}");
    let err = psql(libpq(full.port, "sslmode=require"), "SELECT 1")
        .await
        .unwrap_err();
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );
    // The password still counts.
    let wrong = libpq_with_cert(full.port, &f.postgres).replace(&password(), "wrong");
    let err = psql(wrong, "SELECT 1").await.unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");

    // verify-ca: any certificate from the CA, whatever its name.
    assert!(
        psql(libpq_with_cert(ca_only.port, &f.alice), "SELECT 1")
            .await
            .is_ok()
    );
    let err = psql(libpq(ca_only.port, "sslmode=require"), "SELECT 1")
        .await
        .unwrap_err();
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );

    // Without tls.ca_file no certificate can be checked.
    let err = tls_connect(
        &tokio_info(no_ca.port, "require"),
        &[&f.ca.der],
        Some(&f.postgres_leaf),
    )
    .await
    .err()
    .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "F0000");
    assert!(
        text.contains(
            "client certificates can only be checked if a root certificate store is available"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_over_tls_runs_queries_and_large_results() {
    let f = fixture();
    let files = ProxyFiles::write(
        "tls-tokio",
        "node0",
        SCRAM_ANY_HOST,
        &tls_section(false, ""),
    );
    let _daemon = Daemon::start(&files.path()).await.unwrap();
    let info = tokio_info(files.port, "require");

    let client = tls_connect(&info, &[&f.ca.der], None).await.unwrap();
    let stmt = client
        .prepare("SELECT $1::int8 * 2, $2::text || '!'")
        .await
        .unwrap();
    for i in 0..100i64 {
        let row = client
            .query_one(&stmt, &[&i, &format!("n{i}")])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, String>(1)),
            (i * 2, format!("n{i}!"))
        );
    }
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");

    // 60 MB through pghalo's TLS: every byte, and the ReadyForQuery at the
    // end, must come out of the TLS buffers.
    let rows = client
        .simple_query("SELECT g, repeat('y', 200) FROM generate_series(1, 300000) g")
        .await
        .unwrap();
    let count = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(count, 300_000);

    // Large messages the other way, several clients at once.
    let mut tasks = Vec::new();
    for n in 0..4 {
        let info = info.clone();
        let root = f.ca.der.clone();
        tasks.push(tokio::spawn(async move {
            let client = tls_connect(&info, &[&root], None).await.unwrap();
            let big = "z".repeat(1_000_000 + n);
            for _ in 0..5 {
                let len: i32 = client
                    .query_one("SELECT length($1::text)", &[&big])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(len as usize, big.len());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A reader slower than the server keeps pghalo's socket to it full, so
/// TLS output queues inside pghalo; the tail of the result (its
/// ReadyForQuery) must still arrive once the reader catches up.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_tls_reader_gets_every_byte() {
    let f = fixture();
    let files = ProxyFiles::write(
        "tls-slow",
        "node0",
        "hostssl all all 127.0.0.1/32 trust\n",
        &tls_section(false, ""),
    );
    let _daemon = Daemon::start(&files.path()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.ca.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", files.port))
        .await
        .unwrap();
    assert_eq!(ssl_answer(&mut tcp).await, b'S');
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(&startup_packet()).await.unwrap();
    let until_ready = async |tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
                             pause: Duration| {
        let mut rows = 0usize;
        loop {
            let mut header = [0u8; 5];
            tls.read_exact(&mut header).await.unwrap();
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            tls.read_exact(&mut body).await.unwrap();
            match header[0] {
                b'Z' => return rows,
                b'E' => panic!("{}", String::from_utf8_lossy(&body)),
                b'D' => {
                    rows += 1;
                    if rows.is_multiple_of(64) {
                        tokio::time::sleep(pause).await;
                    }
                }
                _ => {}
            }
        }
    };
    until_ready(&mut tls, Duration::ZERO).await;
    let sql = b"SELECT repeat('y', 1000) FROM generate_series(1, 20000)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    query.extend_from_slice(sql);
    tls.write_all(&query).await.unwrap();
    // Let the server fill every buffer on the way before reading at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = tokio::time::timeout(
        Duration::from_secs(60),
        until_ready(&mut tls, Duration::from_millis(2)),
    )
    .await
    .expect("the end of the result never arrived");
    assert_eq!(rows, 20_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_sent_before_the_handshake_are_refused() {
    let files = ProxyFiles::write(
        "tls-inject",
        "node0",
        SCRAM_ANY_HOST,
        &tls_section(false, ""),
    );
    let _daemon = Daemon::start(&files.path()).await.unwrap();

    // The startup packet right behind the SSLRequest, unencrypted: what a
    // man in the middle would inject (CVE-2021-23214).
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", files.port))
        .await
        .unwrap();
    let mut both = SSL_REQUEST.to_vec();
    both.extend_from_slice(&startup_packet());
    tcp.write_all(&both).await.unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("C08P01"), "{text}");
    assert!(
        text.contains("received unencrypted data after SSL request"),
        "{text}"
    );

    // After 'S', plain text where the handshake belongs is never read as a
    // startup packet: the connection ends without an authentication request.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", files.port))
        .await
        .unwrap();
    assert_eq!(ssl_answer(&mut tcp).await, b'S');
    tcp.write_all(&startup_packet()).await.unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "only a TLS alert may follow, got {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_certificates_and_keeps_them_when_files_are_bad() {
    let f = fixture();
    let dir = unique_dir("tls-reload-pki");
    std::fs::create_dir_all(&dir).unwrap();
    let first = f.ca.server("pghalo").store(&dir, "server");
    let section = format!(
        "[tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        first.cert.display(),
        first.key.display()
    );
    let files = ProxyFiles::write("tls-reload", "node0", SCRAM_ANY_HOST, &section);
    let mut daemon = Daemon::start(&files.path()).await.unwrap();
    let info = tokio_info(files.port, "require");

    let before = tls_connect(&info, &[&f.ca.der], None).await.unwrap();
    before.batch_execute("SELECT 1").await.unwrap();

    // New files on disk change nothing until the reload...
    f.other_ca.server("pghalo").store(&dir, "server");
    tls_connect(&info, &[&f.ca.der], None).await.unwrap();
    // ...after which new handshakes use them.
    daemon.reload().unwrap();
    tls_connect(&info, &[&f.other_ca.der], None).await.unwrap();
    assert!(tls_connect(&info, &[&f.ca.der], None).await.is_err());
    // A session encrypted before the reload goes on.
    before.batch_execute("SELECT 2").await.unwrap();

    // A bad key is refused with its name, and the running certificate stays.
    write_private(
        &first.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let err = daemon.reload().unwrap_err().to_string();
    assert!(err.contains(&first.key.display().to_string()), "{err}");
    tls_connect(&info, &[&f.other_ca.der], None).await.unwrap();
    // So is a key that does not belong to the certificate.
    write_private(&first.key, &f.ca.server("x").key_pem);
    let err = daemon.reload().unwrap_err().to_string();
    assert!(err.starts_with("TLS: certificate "), "{err}");
    tls_connect(&info, &[&f.other_ca.der], None).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// pghalo to the backends

/// Whether the server connection behind `client` is encrypted, as the
/// server itself sees it.
async fn server_side_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_tls_encrypts_server_connections() {
    let f = fixture();
    let ca = f.ca_file.display();
    for tls in [
        format!("[tls]\nbackend = \"require\"\nbackend_ca_file = \"{ca}\"\n"),
        "[tls]\nbackend = \"require\"\n".to_string(),
        format!("[tls]\nbackend = \"prefer\"\nbackend_ca_file = \"{ca}\"\n"),
    ] {
        let files = ProxyFiles::write("tls-backend", "node0", SCRAM_ANY_HOST, &tls);
        let _daemon = Daemon::start(&files.path()).await.unwrap();
        let client = common::pg_connect(&tokio_info(files.port, "disable"))
            .await
            .unwrap_or_else(|e| panic!("{tls}: {e:?}"));
        assert!(server_side_ssl(&client).await, "{tls}");
    }
    // Without TLS asked for, none is used even though node0 offers it.
    let files = ProxyFiles::write("tls-backend-off", "node0", SCRAM_ANY_HOST, "");
    let _daemon = Daemon::start(&files.path()).await.unwrap();
    let client = common::pg_connect(&tokio_info(files.port, "disable"))
        .await
        .unwrap();
    assert!(!server_side_ssl(&client).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_tls_failures_are_clear() {
    let f = fixture();
    // A certificate from a CA pghalo was not told to trust.
    let wrong_ca = format!(
        "[tls]\nbackend = \"require\"\nbackend_ca_file = \"{}\"\n",
        f.other_ca_file.display()
    );
    let files = ProxyFiles::write("tls-backend-wrong-ca", "node0", SCRAM_ANY_HOST, &wrong_ca);
    let _daemon = Daemon::start(&files.path()).await.unwrap();
    let err = common::pg_connect(&tokio_info(files.port, "disable"))
        .await
        .err()
        .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "08006", "{text}");
    assert!(text.contains("TLS with 127.0.0.1:"), "{text}");
    assert!(text.contains("certificate"), "{text}");

    // node1 runs without TLS: require refuses it, prefer falls back.
    let require = ProxyFiles::write(
        "tls-backend-refused",
        "node1",
        SCRAM_ANY_HOST,
        "[tls]\nbackend = \"require\"\n",
    );
    let _r = Daemon::start(&require.path()).await.unwrap();
    let err = common::pg_connect(&tokio_info(require.port, "disable"))
        .await
        .err()
        .unwrap();
    let (code, text) = refusal(&err);
    assert_eq!(code, "08006", "{text}");
    assert!(
        text.contains("does not accept TLS connections, and tls.backend = require"),
        "{text}"
    );
    let prefer = ProxyFiles::write(
        "tls-backend-prefer",
        "node1",
        SCRAM_ANY_HOST,
        "[tls]\nbackend = \"prefer\"\n",
    );
    let _p = Daemon::start(&prefer.path()).await.unwrap();
    let client = common::pg_connect(&tokio_info(prefer.port, "disable"))
        .await
        .unwrap();
    assert!(!server_side_ssl(&client).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_files_stop_the_start() {
    let f = fixture();
    let missing = f.dir.join("missing.crt");
    let section = format!(
        "[tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        missing.display(),
        f.server.key.display()
    );
    let files = ProxyFiles::write("tls-missing", "node0", SCRAM_ANY_HOST, &section);
    let err = Daemon::start(&files.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!("TLS: cannot read {}", missing.display())),
        "{err}"
    );
    let section = format!(
        "[tls]\nbackend = \"require\"\nbackend_ca_file = \"{}\"\n",
        f.postgres.key.display()
    );
    let files = ProxyFiles::write("tls-bad-ca", "node0", SCRAM_ANY_HOST, &section);
    let err = Daemon::start(&files.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no certificate in it"), "{err}");
}
