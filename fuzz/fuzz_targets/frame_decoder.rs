//! Arbitrary bytes, in arbitrary chunk splits, through the frame decoder;
//! every decoded body through every message parser, with re-encoding
//! checks (see `exercise.rs`).
//!
//! Input layout: byte 0 picks the maximum length, bytes 1..4 the chunk
//! sizes (cycled), the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/pghalo-protocol/tests/support/exercise.rs"]
mod exercise;

fuzz_target!(|data: &[u8]| {
    let Some((&[max, a, b, c], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_len = match max % 4 {
        0 => u32::MAX,
        1 => 1 << 30,
        2 => 4 + u32::from(max),
        _ => 10000,
    };
    let chunks = [usize::from(a) + 1, usize::from(b) + 1, usize::from(c) + 1];
    exercise::frame_stream(stream, &chunks, max_len);
    // The same bytes taken as one body of every kind.
    if let Some((&tag, body)) = stream.split_first() {
        exercise::any_message(tag, body);
    }
});
