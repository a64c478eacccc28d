//! Arbitrary bytes on the Redis-protocol port: the RESP request decoder cuts
//! them into argument lists, fed in two pieces as a socket might. Must never
//! panic, and never return an argument or a request over its limits.
#![no_main]

use bytes::BytesMut;
use kvstore::resp::codec::{RequestLimits, RespCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMITS: RequestLimits = RequestLimits {
    max_bulk: 1024,
    max_request: 4096,
};

fuzz_target!(|data: &[u8]| {
    let mut codec = RespCodec::new(LIMITS);
    let mut input = BytesMut::new();
    let (a, b) = data.split_at(data.len() / 2);
    for piece in [a, b] {
        input.extend_from_slice(piece);
        loop {
            match codec.decode(&mut input) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty());
                    // Inline lines are bounded by their own 64 KiB limit.
                    let total: usize = args.iter().map(|a| a.len()).sum();
                    assert!(total <= 64 * 1024);
                }
                Ok(None) => break,
                Err(_) => return, // the server closes the connection here
            }
        }
    }
});
