//! Arbitrary bytes from the network: the frame codec (1 MiB limit) cuts them
//! into frames, and each frame is decoded as a request, as the server does.
//! Must never panic, and never hold more than the limit.
#![no_main]

use bytes::BytesMut;
use kvstore_client::{codec, Request};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut frames = codec::frame_codec(1 << 20);
    let mut input = BytesMut::new();
    // Feed in two pieces, as a socket might.
    let (a, b) = data.split_at(data.len() / 2);
    for piece in [a, b] {
        input.extend_from_slice(piece);
        loop {
            match frames.decode(&mut input) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= 1 << 20);
                    let _ = codec::decode::<Request>(&frame);
                }
                Ok(None) => break,
                Err(_) => return, // the server closes the connection here
            }
        }
    }
});
