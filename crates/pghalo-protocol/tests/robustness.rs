//! Robustness without a fuzzer: every decoder is fed a few hundred thousand
//! pseudo-random and mutated-valid inputs from a fixed-seed PRNG, so CI
//! (which cannot run cargo-fuzz) still checks that nothing panics and that
//! what decodes re-encodes identically. The coverage-guided targets under
//! `fuzz/` run the same checks (`support/exercise.rs`).

#![allow(clippy::unwrap_used)]

mod support {
    pub mod exercise;
}

use bytes::BytesMut;
use pghalo_protocol::backend::{self, ErrorMessage, Severity, TransactionStatus};
use pghalo_protocol::frontend::{self, Target};
use pghalo_protocol::scram::{Nonce, ScramClient, ScramCredentials};
use pghalo_protocol::{CancelKey, ProtocolVersion, SqlState};
use support::exercise;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A byte biased towards the ones parsers branch on.
    fn interesting_byte(&mut self) -> u8 {
        const SPECIAL: &[u8] = b"\0\xff\x7f\x80,=SPnypcrsiveE\x01\x04";
        if self.below(2) == 0 {
            SPECIAL[self.below(SPECIAL.len())]
        } else {
            self.byte()
        }
    }

    /// A 32-bit length biased towards boundaries.
    fn interesting_len(&mut self) -> [u8; 4] {
        const LENS: &[i32] = &[
            0,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            12,
            16,
            255,
            256,
            10000,
            10001,
            -1,
            -2,
            i32::MAX,
            i32::MIN,
        ];
        let v = if self.below(2) == 0 {
            LENS[self.below(LENS.len())]
        } else {
            self.below(64) as i32
        };
        v.to_be_bytes()
    }
}

/// Valid encodings of every message kind the crate writes.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut add = |f: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        f(&mut b);
        out.push(b.to_vec());
    };
    add(&|b| frontend::write_query(b, "select 1; begin").unwrap());
    add(&|b| frontend::write_parse(b, "s1", "select $1, $2", &[23, 0]).unwrap());
    add(&|b| frontend::write_parse(b, "", "", &[]).unwrap());
    add(&|b| frontend::write_execute(b, "p", 10).unwrap());
    add(&|b| frontend::write_describe(b, Target::Portal, "p").unwrap());
    add(&|b| frontend::write_close(b, Target::Statement, "s1").unwrap());
    add(&|b| frontend::write_password(b, b"md5abcdef").unwrap());
    add(&|b| frontend::write_sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc").unwrap());
    add(&|b| frontend::write_sasl_response(b, b"c=biws,r=abc,p=xyz").unwrap());
    add(&|b| frontend::write_sync(b));
    add(&|b| frontend::write_terminate(b));
    add(&|b| {
        let mut body = BytesMut::new();
        body.extend_from_slice(b"portal\0stmt\0\x00\x01\x00\x00\x00\x02");
        body.extend_from_slice(b"\x00\x00\x00\x03abc\xff\xff\xff\xff\x00\x01\x00\x01");
        pghalo_protocol::Message::new(b'B', body.freeze())
            .encode(b)
            .unwrap();
    });
    let err = ErrorMessage::new(
        Severity::Error,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        "cannot execute INSERT",
    )
    .with_detail("standby")
    .with_hint("route to primary");
    add(&|b| backend::write_error_response(b, &err).unwrap());
    add(&|b| backend::write_notice_response(b, &err).unwrap());
    add(&|b| backend::write_ready_for_query(b, TransactionStatus::Failed));
    add(&|b| backend::write_authentication_ok(b));
    add(&|b| backend::write_authentication_md5_password(b, *b"salt"));
    add(&|b| {
        backend::write_authentication_sasl(b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]).unwrap()
    });
    add(&|b| backend::write_authentication_sasl_continue(b, b"r=abc,s=c2FsdA==,i=4096").unwrap());
    add(&|b| backend::write_authentication_sasl_final(b, b"v=abc").unwrap());
    add(&|b| backend::write_parameter_status(b, "client_encoding", "UTF8").unwrap());
    add(&|b| backend::write_backend_key_data(b, 1234, &CancelKey::new(vec![7u8; 32]).unwrap()));
    add(&|b| backend::write_row_description(b, &["a", "b", "c"]).unwrap());
    add(&|b| backend::write_data_row(b, &[Some("1"), None, Some("three")]).unwrap());
    add(&|b| backend::write_command_complete(b, "INSERT 0 1").unwrap());
    add(&|b| backend::write_negotiate_protocol_version(b, 0, &["_pq_.a"]).unwrap());
    add(&|b| backend::write_empty_query_response(b));
    out
}

fn valid_startup_packets() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = BytesMut::new();
    frontend::write_startup_message(
        &mut b,
        ProtocolVersion::V3_0,
        &[("user", "alice"), ("database", "db")],
    )
    .unwrap();
    out.push(b.to_vec());
    let mut b = BytesMut::new();
    frontend::write_startup_message(
        &mut b,
        ProtocolVersion::V3_2,
        &[("user", "u"), ("_pq_.x", "1")],
    )
    .unwrap();
    out.push(b.to_vec());
    let mut b = BytesMut::new();
    frontend::write_ssl_request(&mut b);
    frontend::write_gssenc_request(&mut b);
    out.push(b.to_vec());
    let mut b = BytesMut::new();
    frontend::write_cancel_request(&mut b, 42, &CancelKey::from_i32(99));
    out.push(b.to_vec());
    let mut b = BytesMut::new();
    frontend::write_cancel_request(&mut b, 42, &CancelKey::new(vec![1u8; 256]).unwrap());
    out.push(b.to_vec());
    out
}

/// Applies one to four random mutations.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.interesting_byte();
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                let extra: Vec<u8> = (0..rng.below(8)).map(|_| rng.interesting_byte()).collect();
                v.splice(i..i, extra);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let end = (i + rng.below(8)).min(v.len());
                v.drain(i..end);
            }
            5 if v.len() >= 4 => {
                // Overwrite a length-sized field with a boundary value.
                let i = rng.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&rng.interesting_len());
            }
            6 if !v.is_empty() => {
                // Duplicate a slice (repeats fields, NULs, whole messages).
                let i = rng.below(v.len());
                let end = (i + 1 + rng.below(16)).min(v.len());
                let piece = v[i..end].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            _ => v.push(rng.interesting_byte()),
        }
    }
    v
}

#[test]
fn message_bodies_from_valid_and_mutated_messages() {
    let corpus = valid_messages();
    // Every valid message decodes and round-trips.
    for m in &corpus {
        exercise::frame_stream(m, &[m.len()], u32::MAX);
        exercise::any_message(m[0], &m[5..]);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..150_000 {
        let base = &corpus[rng.below(corpus.len())];
        let body = mutate(&mut rng, &base[5..]);
        // Mostly the message's own tag, so mutants reach deep branches.
        let tag = if rng.below(4) == 0 {
            rng.interesting_byte()
        } else {
            base[0]
        };
        accepted += exercise::any_message(tag, &body);
    }
    for _ in 0..50_000 {
        let len = rng.below(24);
        let body: Vec<u8> = (0..len).map(|_| rng.interesting_byte()).collect();
        accepted += exercise::any_message(rng.interesting_byte(), &body);
    }
    // The inputs are close enough to valid that many still parse.
    assert!(accepted > 40_000, "only {accepted} accepted");
}

#[test]
fn frame_streams_in_random_chunks() {
    let corpus = valid_messages();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut frames = 0;
    for round in 0..20_000 {
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(6) {
            stream.extend_from_slice(&corpus[rng.below(corpus.len())]);
        }
        if round % 2 == 1 {
            stream = mutate(&mut rng, &stream);
        }
        if round % 7 == 0 {
            let n = rng.below(32);
            stream.extend(rng.bytes(n));
        }
        let chunks: Vec<usize> = (0..1 + rng.below(4)).map(|_| 1 + rng.below(40)).collect();
        let max_len = [u32::MAX, 1 << 30, 64, 16, 4][rng.below(5)];
        frames += exercise::frame_stream(&stream, &chunks, max_len);
    }
    assert!(frames > 20_000, "only {frames} frames");
}

#[test]
fn startup_packets_valid_mutated_and_random() {
    let corpus = valid_startup_packets();
    for p in &corpus {
        exercise::startup_stream(p, p.len());
    }
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut packets = 0;
    for round in 0..80_000 {
        let input = if round % 4 == 3 {
            let mut v = rng.interesting_len().to_vec();
            let n = rng.below(24);
            v.extend(rng.bytes(n));
            v
        } else {
            let i = rng.below(corpus.len());
            mutate(&mut rng, &corpus[i])
        };
        packets += exercise::startup_stream(&input, 1 + rng.below(input.len() + 1));
    }
    assert!(packets > 5_000, "only {packets} packets");
}

#[test]
fn scram_server_with_mutated_exchanges() {
    // One genuine exchange's client messages, mutated.
    let (client, first) = ScramClient::new(
        ScramCredentials::Password(b"pencil".to_vec()),
        Nonce::new("abcdef").unwrap(),
    )
    .client_first();
    let (_, final_) = client
        .handle_server_first(b"r=abcdeffuzzsrv,s=ZnV6eiBzYWx0,i=2")
        .unwrap();
    assert_eq!(exercise::scram_server(0, &first, &final_), 2);
    let firsts = [
        first.clone(),
        b"y,,n=user,r=abc,x=1".to_vec(),
        b"p=tls-server-end-point,,n=,r=abc".to_vec(),
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut steps = [0usize; 3];
    for round in 0..60_000 {
        let first = if round % 3 == 0 {
            firsts[rng.below(firsts.len())].clone()
        } else {
            let i = rng.below(firsts.len());
            mutate(&mut rng, &firsts[i])
        };
        let fin = mutate(&mut rng, &final_);
        steps[exercise::scram_server(rng.byte(), &first, &fin)] += 1;
    }
    assert!(steps[1] > 5_000, "{steps:?}");
    for _ in 0..20_000 {
        let text = mutate(&mut rng, b"SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        exercise::stored_secrets(&text);
        let text = mutate(&mut rng, b"md520c46e3762c864548e296b33c3406aa9");
        exercise::stored_secrets(&text);
    }
}
