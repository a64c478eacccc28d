//! Arbitrary bodies decoded as requests and responses: must never panic, and
//! whatever decodes must encode back to the same bytes.
#![no_main]

use kvstore_client::{codec, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = codec::decode::<Request>(data) {
        assert_eq!(codec::encode(&request).unwrap(), data);
    }
    if let Ok(response) = codec::decode::<Response>(data) {
        assert_eq!(codec::encode(&response).unwrap(), data);
    }
});
