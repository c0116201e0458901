//! Cross-checks against `postgres-protocol` (rust-postgres), an independent
//! implementation that talks to real PostgreSQL servers every day: the
//! same inputs must give the same bytes, and each side's SCRAM must accept
//! the other's.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pghalo_protocol::backend::{self, ErrorMessage, Severity, TransactionStatus};
use pghalo_protocol::frontend::{self, Target};
use pghalo_protocol::scram::{
    self, Nonce, ScramClient, ScramCredentials, ScramServer, ScramVerifier,
};
use pghalo_protocol::{CancelKey, Decoder, ProtocolVersion, SqlState};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message as PgMessage;
use postgres_protocol::message::frontend as pg;

fn ours(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn theirs(f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b).unwrap();
    b.to_vec()
}

#[test]
fn frontend_writers_match_postgres_protocol() {
    assert_eq!(
        ours(|b| frontend::write_query(b, "select 1").unwrap()),
        theirs(|b| pg::query("select 1", b))
    );
    assert_eq!(
        ours(|b| frontend::write_parse(b, "s", "select $1", &[23]).unwrap()),
        theirs(|b| pg::parse("s", "select $1", [23u32], b))
    );
    assert_eq!(
        ours(|b| frontend::write_execute(b, "p", 7).unwrap()),
        theirs(|b| pg::execute("p", 7, b))
    );
    assert_eq!(
        ours(|b| frontend::write_describe(b, Target::Statement, "s").unwrap()),
        theirs(|b| pg::describe(b'S', "s", b))
    );
    assert_eq!(
        ours(|b| frontend::write_close(b, Target::Portal, "p").unwrap()),
        theirs(|b| pg::close(b'P', "p", b))
    );
    assert_eq!(
        ours(|b| frontend::write_password(b, b"md5abc").unwrap()),
        theirs(|b| pg::password_message(b"md5abc", b))
    );
    assert_eq!(
        ours(|b| frontend::write_sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=x").unwrap()),
        theirs(|b| pg::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x", b))
    );
    assert_eq!(
        ours(|b| frontend::write_sasl_response(b, b"c=biws").unwrap()),
        theirs(|b| pg::sasl_response(b"c=biws", b))
    );
    assert_eq!(
        ours(|b| frontend::write_startup_message(
            b,
            ProtocolVersion::V3_0,
            &[("user", "u"), ("database", "d")]
        )
        .unwrap()),
        theirs(|b| pg::startup_message([("user", "u"), ("database", "d")], b))
    );
    assert_eq!(ours(frontend::write_ssl_request), ours(pg::ssl_request));
    assert_eq!(
        ours(|b| frontend::write_cancel_request(b, 42, &CancelKey::from_i32(-7))),
        ours(|b| pg::cancel_request(42, -7, b))
    );
    assert_eq!(ours(frontend::write_sync), ours(pg::sync));
    assert_eq!(ours(frontend::write_flush), ours(pg::flush));
    assert_eq!(ours(frontend::write_terminate), ours(pg::terminate));
}

#[test]
fn backend_writers_parse_with_postgres_protocol() {
    let mut buf = BytesMut::new();
    backend::write_authentication_sasl(&mut buf, &[scram::SCRAM_SHA_256]).unwrap();
    backend::write_authentication_md5_password(&mut buf, *b"salt");
    backend::write_authentication_ok(&mut buf);
    backend::write_parameter_status(&mut buf, "server_version", "17.2").unwrap();
    backend::write_backend_key_data(&mut buf, 99, &CancelKey::from_i32(12345));
    let err = ErrorMessage::new(
        Severity::Fatal,
        SqlState::CANNOT_CONNECT_NOW,
        "the database system is starting up",
    )
    .with_hint("wait");
    backend::write_error_response(&mut buf, &err).unwrap();
    backend::write_row_description(&mut buf, &["a", "b"]).unwrap();
    backend::write_data_row(&mut buf, &[Some("1"), None]).unwrap();
    backend::write_command_complete(&mut buf, "SHOW").unwrap();
    backend::write_empty_query_response(&mut buf);
    backend::write_ready_for_query(&mut buf, TransactionStatus::InTransaction);

    // Our decoder and theirs cut the same frames.
    let mut copy = buf.clone();
    let mut frames = 0;
    while Decoder::default().decode(&mut copy).unwrap().is_some() {
        frames += 1;
    }
    assert_eq!(frames, 11);

    let mut next = || PgMessage::parse(&mut buf).unwrap().unwrap();
    match next() {
        PgMessage::AuthenticationSasl(body) => {
            let mechanisms: Vec<String> = body
                .mechanisms()
                .map(|m| Ok(m.to_owned()))
                .collect()
                .unwrap();
            assert_eq!(mechanisms, vec!["SCRAM-SHA-256".to_owned()]);
        }
        _ => panic!("expected AuthenticationSASL"),
    }
    match next() {
        PgMessage::AuthenticationMd5Password(body) => assert_eq!(body.salt(), *b"salt"),
        _ => panic!("expected AuthenticationMD5Password"),
    }
    assert!(matches!(next(), PgMessage::AuthenticationOk));
    match next() {
        PgMessage::ParameterStatus(body) => {
            assert_eq!(body.name().unwrap(), "server_version");
            assert_eq!(body.value().unwrap(), "17.2");
        }
        _ => panic!("expected ParameterStatus"),
    }
    match next() {
        PgMessage::BackendKeyData(body) => {
            assert_eq!(body.process_id(), 99);
            assert_eq!(body.secret_key(), 12345);
        }
        _ => panic!("expected BackendKeyData"),
    }
    match next() {
        PgMessage::ErrorResponse(body) => {
            let fields: Vec<(u8, String)> = body
                .fields()
                .map(|f| {
                    Ok((
                        f.type_(),
                        String::from_utf8_lossy(f.value_bytes()).into_owned(),
                    ))
                })
                .collect()
                .unwrap();
            assert!(fields.contains(&(b'C', "57P03".to_owned())));
            assert!(fields.contains(&(b'H', "wait".to_owned())));
            assert!(fields.contains(&(b'V', "FATAL".to_owned())));
        }
        _ => panic!("expected ErrorResponse"),
    }
    match next() {
        PgMessage::RowDescription(body) => {
            let names: Vec<(String, u32)> = body
                .fields()
                .map(|f| Ok((f.name().to_owned(), f.type_oid())))
                .collect()
                .unwrap();
            assert_eq!(names, vec![("a".to_owned(), 25), ("b".to_owned(), 25)]);
        }
        _ => panic!("expected RowDescription"),
    }
    match next() {
        PgMessage::DataRow(body) => {
            let buffer = body.buffer();
            let values: Vec<Option<Vec<u8>>> = body
                .ranges()
                .map(|r| Ok(r.map(|r| buffer[r].to_vec())))
                .collect()
                .unwrap();
            assert_eq!(values, vec![Some(b"1".to_vec()), None]);
        }
        _ => panic!("expected DataRow"),
    }
    match next() {
        PgMessage::CommandComplete(body) => assert_eq!(body.tag().unwrap(), "SHOW"),
        _ => panic!("expected CommandComplete"),
    }
    assert!(matches!(next(), PgMessage::EmptyQueryResponse));
    match next() {
        PgMessage::ReadyForQuery(body) => assert_eq!(body.status(), b'T'),
        _ => panic!("expected ReadyForQuery"),
    }
    assert!(buf.is_empty());
}

#[test]
fn their_scram_client_against_our_server() {
    for cb in [false, true] {
        let verifier = ScramVerifier::generate(b"pencil").unwrap();
        let cert_hash = vec![0x5a; 32];
        let mut server = ScramServer::new(verifier, Nonce::random().unwrap());
        let (mechanism, binding) = if cb {
            server = server.with_channel_binding(cert_hash.clone());
            (
                scram::SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(cert_hash),
            )
        } else {
            (scram::SCRAM_SHA_256, ChannelBinding::unsupported())
        };
        let mut client = ScramSha256::new(b"pencil", binding);
        let (server, server_first) = server
            .handle_client_first(mechanism, client.message())
            .unwrap();
        client.update(&server_first).unwrap();
        let (auth, server_final) = server.handle_client_final(client.message()).unwrap();
        client.finish(&server_final).unwrap();
        assert_eq!(auth.client_key().as_bytes().len(), 32);
    }
}

#[test]
fn our_scram_client_against_their_password_hash() {
    // A verifier made by their code, as `ALTER ROLE ... PASSWORD` would
    // store it, parses and checks with ours.
    let stored = postgres_protocol::password::scram_sha_256(b"pencil");
    let verifier = ScramVerifier::parse(&stored).unwrap();
    assert_eq!(verifier.to_string(), stored);
    assert!(verifier.verify_password(b"pencil"));
    assert!(!verifier.verify_password(b"pencil2"));

    let server = ScramServer::new(verifier, Nonce::random().unwrap());
    let (client, first) = ScramClient::new(
        ScramCredentials::Password(b"pencil".to_vec()),
        Nonce::random().unwrap(),
    )
    .client_first();
    let (server, server_first) = server
        .handle_client_first(scram::SCRAM_SHA_256, &first)
        .unwrap();
    let (client, client_final) = client.handle_server_first(&server_first).unwrap();
    let (_, server_final) = server.handle_client_final(&client_final).unwrap();
    client.handle_server_final(&server_final).unwrap();
}

#[test]
fn saslprep_agrees_with_theirs() {
    // Their client normalises with SASLprep; our server must accept the
    // non-ASCII password it was made from.
    for password in [
        "I\u{2168}",
        "p\u{00a0}w",
        "pass\u{00ad}word",
        "\u{00e9}t\u{00e9}",
    ] {
        let verifier = ScramVerifier::generate(password.as_bytes()).unwrap();
        let server = ScramServer::new(verifier, Nonce::random().unwrap());
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, server_first) = server
            .handle_client_first(scram::SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&server_first).unwrap();
        let (_, server_final) = server.handle_client_final(client.message()).unwrap();
        client.finish(&server_final).unwrap();
    }
}

#[test]
fn md5_matches_theirs() {
    let salt = *b"\x01\x02\x03\x04";
    assert_eq!(
        pghalo_protocol::md5::client_response("alice", b"secret", salt),
        postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt)
    );
    assert_eq!(
        pghalo_protocol::md5::hash_password("alice", b"secret"),
        postgres_protocol::password::md5(b"secret", "alice")
    );
}
