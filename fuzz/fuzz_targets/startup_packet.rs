//! Arbitrary bytes through the startup-phase packet decoder, in chunks of
//! the size byte 0 gives; every decoded packet must re-encode to the bytes
//! it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/pghalo-protocol/tests/support/exercise.rs"]
mod exercise;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    exercise::startup_stream(stream, usize::from(chunk) + 1);
    let _ = pghalo_protocol::StartupPacket::parse(stream);
});
