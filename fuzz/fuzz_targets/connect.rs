//! The Connect frame decoder and the line splitter on arbitrary bytes cut
//! at arbitrary places: no panic, no frame over the limit, and the same
//! frames whatever the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use e2b_wire::connect::{FrameDecoder, MAX_FRAME_LEN};
use sandstorm::lines::LineSplitter;

fn decode(data: &[u8], chunk: usize) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_FRAME_LEN);
                    frames.push((frame.flags, frame.payload.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (frames, false),
            }
        }
    }
    let clean = decoder.finish().is_ok();
    (frames, clean)
}

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let whole = decode(data, data.len());
    let chunked = decode(data, usize::from(chunk));
    assert_eq!(whole, chunked, "chunking changed the frames");

    let mut splitter = LineSplitter::new();
    let mut lines = Vec::new();
    for piece in data.chunks(usize::from(chunk).max(1)) {
        if let Ok(done) = splitter.push(piece) {
            lines.extend(done);
        }
    }
    lines.extend(splitter.finish());
    for line in &lines {
        assert!(!line.contains(&b'\n'));
    }
});
