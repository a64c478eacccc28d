//! Bytes to messages and back: the frame codec and the bincode configuration.
//!
//! bincode is wrapped here once. Everything that reads or writes a body goes
//! through [`encode`] and [`decode`], so the byte format cannot drift between
//! the server, the clients and the tests.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::Error;

/// The hard ceiling on any frame body, whatever a flag says (1 GiB): the
/// decoder's limit, so no length inside a body can claim more than this.
pub const HARD_MAX_FRAME: usize = 1 << 30;

/// The bincode 1.x byte format: little-endian, fixed-width integers, `u32`
/// enum tags, `u64` lengths, with a decode limit.
pub const CONFIG: Configuration<LittleEndian, Fixint, Limit<HARD_MAX_FRAME>> =
    bincode::config::legacy().with_limit::<HARD_MAX_FRAME>();

/// The frame codec: a 4-byte big-endian length, then the body. A length above
/// `max_frame` is an error before any of the body is buffered.
pub fn frame_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encodes a message body (without the length prefix).
///
/// ```
/// use kvstore_client::{codec, Command, Request};
/// let body = codec::encode(&Request { id: 2, command: Command::Get { key: "k".into() } }).unwrap();
/// assert_eq!(body, [2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'k']);
/// ```
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(message, CONFIG).map_err(|e| Error::Encode(e.to_string()))
}

/// Encodes a message body at the end of `buf`, without an intermediate
/// buffer (the log writer appends many records to one batch buffer).
pub fn encode_into<T: Serialize>(message: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
    bincode::serde::encode_into_std_write(message, buf, CONFIG)
        .map(|_| ())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a whole body. Byte strings are checked against the body's real
/// length before they are copied (see `wire_bytes`), and leftover bytes are an
/// error.
///
/// ```
/// use kvstore_client::{codec, Reply, Response};
/// let body = [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1];
/// assert_eq!(codec::decode::<Response>(&body).unwrap(), Response { id: 1, reply: Reply::Bool(true) });
/// // A byte string that claims more bytes than the body holds is refused.
/// assert!(codec::decode::<Response>(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 255, 0, 0, 0, 0, 0, 0, 0]).is_err());
/// ```
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    let (message, used) = bincode::serde::borrow_decode_from_slice(body, CONFIG)
        .map_err(|e| Error::Malformed(e.to_string()))?;
    match body.len() - used {
        0 => Ok(message),
        extra => Err(Error::TrailingBytes(extra)),
    }
}

/// The request id of a body that may not decode as a whole: its first 8 bytes,
/// so that an error reply can still name the request it answers.
pub fn peek_id(body: &[u8]) -> Option<u64> {
    body.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}
