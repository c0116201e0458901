//! Arbitrary client-first and client-final messages through the SCRAM
//! server state machine (with and without channel binding), plus the
//! stored-secret parsers.
//!
//! Input layout: byte 0 is the mode, byte 1 the length of client-first;
//! client-final is the rest. A small dictionary of SCRAM attributes in
//! `scram_server.dict` helps the fuzzer reach the final step.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/pghalo-protocol/tests/support/exercise.rs"]
mod exercise;

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, first_len], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(first_len).min(rest.len());
    let (first, last) = rest.split_at(split);
    exercise::scram_server(mode, first, last);
    exercise::stored_secrets(rest);
});
