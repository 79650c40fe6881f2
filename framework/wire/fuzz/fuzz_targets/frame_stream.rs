//! A byte stream cut into frames and opened as authenticated frames.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_wire::channel::Opener;
use palisade_wire::frame::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let decoder = FrameDecoder::new(64 * 1024);
    let mut opener = Opener::new(&[9; 32]);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(payload)) = decoder.decode(&mut buf) {
        assert!(payload.len() <= 64 * 1024);
        if opener.open(payload).is_err() {
            break;
        }
    }
});
