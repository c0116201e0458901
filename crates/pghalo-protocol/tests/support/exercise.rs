//! Drives every decoder of pghalo-protocol with one input and checks that
//! whatever decodes re-encodes to the same bytes.
//!
//! Shared by `tests/robustness.rs` (pseudo-random inputs, runs in CI) and
//! the cargo-fuzz targets under `fuzz/` (coverage-guided, run by hand), so
//! both check the same properties. Any panic here, or in the library, is a
//! bug: a decoder must answer arbitrary bytes with `Ok` or a typed error.

// A failed unwrap here is a found bug, reported as a panic by design.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use pghalo_protocol::backend::{
    self, Authentication, BackendKeyData, BackendMessage, CommandComplete, DataRow, ErrorFields,
    NegotiateProtocolVersion, ParameterStatus, ReadyForQuery, RowDescription,
};
use pghalo_protocol::frontend::{
    self, Bind, CopyFail, Execute, FrontendMessage, Parse, PasswordMessage, Query,
    SaslInitialResponse, SaslResponse, TargetName,
};
use pghalo_protocol::scram::{self, Nonce, ScramServer, ScramVerifier};
use pghalo_protocol::{Decoder, Header, StartupPacket, Text};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn encoded(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn s(t: Text<'_>) -> Option<&str> {
    t.to_str().ok()
}

/// Runs every frontend parser on `body` and checks re-encoding.
pub fn frontend_body(body: &[u8]) {
    if let Ok(q) = Query::parse(body)
        && let Some(sql) = s(q.sql)
    {
        assert_eq!(
            encoded(|b| frontend::write_query(b, sql).unwrap()),
            msg(b'Q', body)
        );
    }
    if let Ok(p) = Parse::parse(body) {
        let oids: Vec<u32> = p.param_types.iter().collect();
        assert_eq!(oids.len(), p.param_types.len());
        if let (Some(name), Some(query)) = (s(p.name), s(p.query)) {
            let again = encoded(|b| frontend::write_parse(b, name, query, &oids).unwrap());
            assert_eq!(again, msg(b'P', body));
        }
    }
    if let Ok(bind) = Bind::parse(body) {
        assert_eq!(bind.params.iter().count(), bind.params.len());
        assert_eq!(bind.param_formats.iter().count(), bind.param_formats.len());
        assert_eq!(
            bind.result_formats.iter().count(),
            bind.result_formats.len()
        );
        if let Some(statement) = s(bind.statement) {
            let again = encoded(|b| bind.write_renamed(b, statement).unwrap());
            assert_eq!(again, msg(b'B', body));
        }
    }
    if let Ok(e) = Execute::parse(body)
        && let Some(portal) = s(e.portal)
    {
        let again = encoded(|b| frontend::write_execute(b, portal, e.max_rows).unwrap());
        assert_eq!(again, msg(b'E', body));
    }
    if let Ok(d) = TargetName::parse_describe(body)
        && let Some(name) = s(d.name)
    {
        let again = encoded(|b| frontend::write_describe(b, d.target, name).unwrap());
        assert_eq!(again, msg(b'D', body));
    }
    if let Ok(c) = TargetName::parse_close(body)
        && let Some(name) = s(c.name)
    {
        let again = encoded(|b| frontend::write_close(b, c.target, name).unwrap());
        assert_eq!(again, msg(b'C', body));
    }
    let _ = CopyFail::parse(body);
    if let Ok(p) = PasswordMessage::parse(body) {
        let again = encoded(|b| frontend::write_password(b, p.password).unwrap());
        assert_eq!(again, msg(b'p', body));
    }
    if let Ok(sasl) = SaslInitialResponse::parse(body)
        && let (Some(mechanism), Some(data)) = (s(sasl.mechanism), sasl.data)
    {
        let again = encoded(|b| frontend::write_sasl_initial_response(b, mechanism, data).unwrap());
        assert_eq!(again, msg(b'p', body));
    }
    if let Ok(r) = SaslResponse::parse(body) {
        let again = encoded(|b| frontend::write_sasl_response(b, r.data).unwrap());
        assert_eq!(again, msg(b'p', body));
    }
}

/// Runs every backend parser on `body` and checks re-encoding.
pub fn backend_body(body: &[u8]) {
    if let Ok(r) = ReadyForQuery::parse(body) {
        assert_eq!(
            encoded(|b| backend::write_ready_for_query(b, r.status)),
            msg(b'Z', body)
        );
    }
    for fields in [
        ErrorFields::parse_error(body),
        ErrorFields::parse_notice(body),
    ]
    .into_iter()
    .flatten()
    {
        // The fields account for every byte: code, value, NUL each,
        // plus the final terminator.
        let total: usize = fields.iter().map(|(_, v)| v.len() + 2).sum();
        assert_eq!(total + 1, body.len());
        let _ = (
            fields.severity(),
            fields.sqlstate(),
            fields.message(),
            fields.severity_level(),
        );
    }
    if let Ok(p) = ParameterStatus::parse(body)
        && let (Some(name), Some(value)) = (s(p.name), s(p.value))
    {
        let again = encoded(|b| backend::write_parameter_status(b, name, value).unwrap());
        assert_eq!(again, msg(b'S', body));
    }
    if let Ok(k) = BackendKeyData::parse(body) {
        let key = k.cancel_key().unwrap();
        let again = encoded(|b| backend::write_backend_key_data(b, k.pid, &key));
        assert_eq!(again, msg(b'K', body));
    }
    if let Ok(c) = CommandComplete::parse(body) {
        let _ = (c.command(), c.rows());
        if let Some(tag) = s(c.tag) {
            let again = encoded(|b| backend::write_command_complete(b, tag).unwrap());
            assert_eq!(again, msg(b'C', body));
        }
    }
    if let Ok(auth) = Authentication::parse(body) {
        let again = match auth {
            Authentication::Ok => Some(encoded(backend::write_authentication_ok)),
            Authentication::CleartextPassword => {
                Some(encoded(backend::write_authentication_cleartext_password))
            }
            Authentication::Md5Password { salt } => Some(encoded(|b| {
                backend::write_authentication_md5_password(b, salt)
            })),
            Authentication::Sasl { mechanisms } => {
                let names: Option<Vec<&str>> = mechanisms.iter().map(s).collect();
                names.map(|n| encoded(|b| backend::write_authentication_sasl(b, &n).unwrap()))
            }
            Authentication::SaslContinue { data } => Some(encoded(|b| {
                backend::write_authentication_sasl_continue(b, data).unwrap()
            })),
            Authentication::SaslFinal { data } => Some(encoded(|b| {
                backend::write_authentication_sasl_final(b, data).unwrap()
            })),
            Authentication::Unsupported(_) => None,
        };
        if let Some(again) = again {
            assert_eq!(again, msg(b'R', body));
        }
    }
    if let Ok(rd) = RowDescription::parse(body) {
        assert_eq!(rd.columns().count(), rd.len());
    }
    if let Ok(row) = DataRow::parse(body) {
        let values: Vec<Option<&[u8]>> = row.values().collect();
        assert_eq!(values.len(), row.len());
        let text: Option<Vec<Option<&str>>> = values
            .iter()
            .map(|v| match v {
                Some(v) => std::str::from_utf8(v).ok().map(Some),
                None => Some(None),
            })
            .collect();
        if let Some(text) = text {
            let again = encoded(|b| backend::write_data_row(b, &text).unwrap());
            assert_eq!(again, msg(b'D', body));
        }
    }
    if let Ok(n) = NegotiateProtocolVersion::parse(body) {
        let names: Option<Vec<&str>> = n.unrecognised().map(s).collect();
        if let (Ok(minor), Some(names)) = (u16::try_from(n.newest_minor), names) {
            let again =
                encoded(|b| backend::write_negotiate_protocol_version(b, minor, &names).unwrap());
            assert_eq!(again, msg(b'v', body));
        }
    }
}

/// Parses one message with both dispatchers and every parser; returns how
/// many dispatchers accepted it (for the caller's coverage checks).
pub fn any_message(tag: u8, body: &[u8]) -> usize {
    let front = FrontendMessage::parse(tag, body).is_ok();
    let back = BackendMessage::parse(tag, body).is_ok();
    frontend_body(body);
    backend_body(body);
    usize::from(front) + usize::from(back)
}

/// Feeds `stream` to a frame decoder in chunks of the given sizes (cycled),
/// parses every message, and checks that the frames are exactly the bytes
/// consumed. Returns the number of frames decoded.
pub fn frame_stream(stream: &[u8], chunks: &[usize], max_len: u32) -> usize {
    let mut frames = 0;
    let decoder = Decoder::new(max_len);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = Vec::with_capacity(stream.len());
    let mut chunk_sizes = chunks.iter().copied().cycle();
    while fed < stream.len() {
        let n = chunk_sizes
            .next()
            .unwrap_or(1)
            .max(1)
            .min(stream.len() - fed);
        buf.put_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let needed = decoder.needed(&buf);
            match decoder.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    assert_eq!(needed, Ok(0));
                    let header = frame.header();
                    assert!(header.len >= 4 && header.len <= max_len);
                    assert_eq!(frame.as_bytes().len(), header.frame_len());
                    assert_eq!(Header::parse(frame.as_bytes()), Ok(Some(header)));
                    consumed.extend_from_slice(frame.as_bytes());
                    let message = frame.into_message();
                    let mut again = BytesMut::new();
                    message.encode(&mut again).unwrap();
                    assert_eq!(&again[..], &consumed[consumed.len() - again.len()..]);
                    any_message(message.tag, &message.body);
                    frames += 1;
                }
                Ok(None) => {
                    assert!(matches!(needed, Ok(n) if n > 0));
                    break;
                }
                Err(e) => {
                    assert_eq!(needed, Err(e.clone()));
                    assert_eq!(e.sqlstate().code(), "08P01");
                    return frames;
                }
            }
        }
    }
    assert_eq!(&consumed[..], &stream[..consumed.len()]);
    assert_eq!(consumed.len() + buf.len(), stream.len());
    frames
}

/// Decodes startup packets from `stream` and checks re-encoding. Returns
/// the number of packets decoded.
pub fn startup_stream(stream: &[u8], chunk: usize) -> usize {
    let mut packets = 0;
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    while fed < stream.len() {
        let n = chunk.max(1).min(stream.len() - fed);
        buf.put_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match StartupPacket::decode(&mut buf) {
                Ok(Some(packet)) => {
                    let mut again = BytesMut::new();
                    match &packet {
                        StartupPacket::Startup(m) => {
                            m.encode(&mut again).unwrap();
                            let _ = (m.user(), m.database(), m.negotiation(0, &[]));
                            if let Some(n) = m.negotiation(2, &["_pq_.x"]) {
                                n.encode(&mut BytesMut::new()).unwrap();
                            }
                        }
                        StartupPacket::SslRequest => frontend::write_ssl_request(&mut again),
                        StartupPacket::GssEncRequest => frontend::write_gssenc_request(&mut again),
                        StartupPacket::CancelRequest { pid, key } => {
                            frontend::write_cancel_request(&mut again, *pid, key)
                        }
                    }
                    assert_eq!(&again[..], &stream[consumed..consumed + again.len()]);
                    assert_eq!(StartupPacket::parse(&again).as_ref(), Ok(&packet));
                    consumed += again.len();
                    packets += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.sqlstate();
                    return packets;
                }
            }
        }
    }
    packets
}

fn verifier() -> &'static ScramVerifier {
    static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
    // Two iterations keep the fuzzer fast; the exchange does not depend on
    // the count.
    VERIFIER.get_or_init(|| ScramVerifier::from_password(b"pencil", b"fuzz salt", 2))
}

/// Runs the SCRAM server state machine on a client-first and client-final
/// message. `mode` picks the mechanism and whether channel binding is on.
/// Returns how many steps succeeded (0, 1 or 2).
pub fn scram_server(mode: u8, client_first: &[u8], client_final: &[u8]) -> usize {
    let mut server = ScramServer::new(verifier().clone(), Nonce::new("fuzzsrv").unwrap());
    if mode & 1 == 1 {
        server = server.with_channel_binding(vec![0xab; 32]);
    }
    let mechanism = if mode & 2 == 2 {
        scram::SCRAM_SHA_256_PLUS
    } else {
        scram::SCRAM_SHA_256
    };
    let Ok((state, server_first)) = server.handle_client_first(mechanism, client_first) else {
        return 0;
    };
    let server_first = String::from_utf8(server_first).unwrap();
    assert!(server_first.starts_with("r="));
    assert!(server_first.contains("fuzzsrv,s="));
    if let Ok((auth, server_final)) = state.handle_client_final(client_final) {
        // Only a real proof gets here: the fuzzer would have to invert
        // SHA-256. Check the token is coherent anyway.
        assert!(server_final.starts_with(b"v="));
        assert_eq!(auth.verifier(), verifier());
        return 2;
    }
    1
}

/// Parses stored secrets of both kinds.
pub fn stored_secrets(text: &[u8]) {
    if let Ok(text) = std::str::from_utf8(text) {
        if let Ok(v) = ScramVerifier::parse(text) {
            assert_eq!(ScramVerifier::parse(&v.to_string()), Ok(v));
        }
        let _ = pghalo_protocol::md5::Md5Secret::parse_stored(text);
    }
}
