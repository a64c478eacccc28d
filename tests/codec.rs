//! The codec: round trips of every message, and hostile bytes that must be
//! refused without allocating what their length fields claim.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use kvstore_client::{codec, Command, Reply, Request, Response};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Records the largest single allocation made by the current thread, so a
/// test can prove that a claimed length was not trusted.
struct Watermark;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watermark {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watermark = Watermark;

/// Runs `f` and returns the largest allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (bytes(), bytes()).prop_map(|(key, value)| Command::Set { key, value }),
        bytes().prop_map(|key| Command::Get { key }),
        bytes().prop_map(|key| Command::Delete { key }),
        proptest::collection::vec((bytes(), bytes()), 0..8)
            .prop_map(|items| Command::BulkSet { items }),
        bytes().prop_map(|key| Command::Exists { key }),
        (bytes(), proptest::option::of(bytes()), any::<u32>()).prop_map(
            |(prefix, start_after, limit)| Command::Keys {
                prefix,
                start_after,
                limit
            }
        ),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Ok),
        proptest::option::of(bytes()).prop_map(Reply::Value),
        any::<bool>().prop_map(Reply::Bool),
        (proptest::collection::vec(bytes(), 0..8), any::<bool>())
            .prop_map(|(keys, more)| Reply::Keys { keys, more }),
        (any::<u32>(), ".{0,30}").prop_map(|(code, message)| Reply::Error { code, message }),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(id in any::<u64>(), command in command()) {
        let request = Request { id, command };
        let body = codec::encode(&request).unwrap();
        prop_assert_eq!(codec::decode::<Request>(&body).unwrap(), request);
    }

    #[test]
    fn every_response_round_trips(id in any::<u64>(), reply in reply()) {
        let response = Response { id, reply };
        let body = codec::encode(&response).unwrap();
        prop_assert_eq!(codec::decode::<Response>(&body).unwrap(), response);
    }

    /// Arbitrary bytes never panic the decoder and never make it allocate
    /// much more than they are long.
    #[test]
    fn arbitrary_bodies_are_refused_or_decoded_without_large_allocations(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let largest = largest_allocation(|| { let _ = codec::decode::<Request>(&body); });
        prop_assert!(largest < 64 * 1024, "allocated {} bytes for a {}-byte body", largest, body.len());
    }

    /// A request cut anywhere is refused.
    #[test]
    fn every_truncated_request_is_refused(command in command(), cut in any::<prop::sample::Index>()) {
        let body = codec::encode(&Request { id: 1, command }).unwrap();
        let cut = cut.index(body.len());
        prop_assert!(codec::decode::<Request>(&body[..cut]).is_err());
    }
}

fn body_claiming(tag: u32, claim: u64) -> Vec<u8> {
    let mut body = 9u64.to_le_bytes().to_vec();
    body.extend_from_slice(&tag.to_le_bytes());
    body.extend_from_slice(&claim.to_le_bytes());
    body
}

#[test]
fn claimed_lengths_are_checked_before_allocating() {
    for claim in [u32::MAX as u64, 1 << 31, 1 << 40, u64::MAX] {
        // A key (Get) and an item count (BulkSet) that claim far more than the body has.
        for tag in [1u32, 3] {
            let body = body_claiming(tag, claim);
            let largest = largest_allocation(|| {
                assert!(
                    codec::decode::<Request>(&body).is_err(),
                    "tag {tag} claim {claim}"
                );
            });
            assert!(
                largest < 64 * 1024,
                "tag {tag}, claim {claim}: allocated {largest} bytes"
            );
        }
    }
}

#[test]
fn unknown_tags_trailing_bytes_and_garbage_are_refused() {
    let mut body = codec::encode(&Request {
        id: 1,
        command: Command::Get {
            key: Bytes::from_static(b"k"),
        },
    })
    .unwrap();
    let mut unknown = body.clone();
    unknown[8] = 7; // no Command variant 7... yet
    unknown[9..12].fill(0);
    assert!(codec::decode::<Request>(&unknown).is_err());
    body.push(0);
    assert!(matches!(
        codec::decode::<Request>(&body),
        Err(kvstore_client::Error::TrailingBytes(1))
    ));
    assert!(codec::decode::<Request>(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
    assert!(codec::decode::<Request>(b"").is_err());
}

#[test]
fn a_length_prefix_over_the_limit_is_refused_before_the_body_arrives() {
    let mut frames = codec::frame_codec(1024);
    // 4 GiB - 1 claimed, nothing behind it.
    let mut input = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    let largest = largest_allocation(|| {
        let err = frames.decode(&mut input).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    });
    assert!(largest < 64 * 1024, "allocated {largest} bytes");
    // Just over the limit is refused too; exactly the limit is waited for.
    let mut frames = codec::frame_codec(1024);
    assert!(frames
        .decode(&mut BytesMut::from(&1025u32.to_be_bytes()[..]))
        .is_err());
    let mut frames = codec::frame_codec(1024);
    assert!(frames
        .decode(&mut BytesMut::from(&1024u32.to_be_bytes()[..]))
        .unwrap()
        .is_none());
}

#[test]
fn a_truncated_frame_waits_for_the_rest() {
    let body = codec::encode(&Request {
        id: 1,
        command: Command::Get {
            key: Bytes::from_static(b"k"),
        },
    })
    .unwrap();
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    let mut frames = codec::frame_codec(1024);
    let mut input = BytesMut::new();
    for &byte in &framed[..framed.len() - 1] {
        input.extend_from_slice(&[byte]);
        assert!(frames.decode(&mut input).unwrap().is_none());
    }
    input.extend_from_slice(&framed[framed.len() - 1..]);
    assert_eq!(
        frames.decode(&mut input).unwrap().unwrap().as_ref(),
        body.as_slice()
    );
}
