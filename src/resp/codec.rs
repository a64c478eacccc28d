//! RESP on the wire: requests in ([`RespCodec`] as a `Decoder`), replies out
//! ([`Value`], encoded in RESP2 or RESP3).
//!
//! A request is either a multibulk (`*<n>\r\n` then `n` times
//! `$<len>\r\n<bytes>\r\n`, what every client library sends) or an inline
//! command (one line of space-separated words, with `"..."` and `'...'`
//! quoting, what `telnet` and `redis-cli` piping send). Limits are checked on
//! the headers, before the bytes they announce are buffered:
//!
//! - a bulk string longer than the largest key or value is refused
//!   (Redis's `proto-max-bulk-len`);
//! - a multibulk of more than [`MAX_ARGS`] arguments is refused;
//! - a request whose bulk strings add up to more than the frame limit
//!   (`--max-frame`, 4 KiB before login) is refused;
//! - an inline line longer than [`MAX_INLINE`] is refused.
//!
//! A refusal is a protocol error: the stream is out of step, so the server
//! answers `-ERR Protocol error: ...` and closes this connection only.
//!
//! Arguments are parsed incrementally (the decoder keeps the ones already
//! read), so a request that arrives in many reads costs O(size), and each
//! argument is a slice of the read buffer, not a copy.
//!
//! The request parser is written here rather than taken from `redis-protocol`
//! (6.0, checked for this issue): that crate parses whole frames again on
//! every read, knows no inline commands, and has no limits to check before
//! buffering.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Most arguments in one multibulk request (Redis's limit too).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest `*<n>` or `$<len>` header line: room for any 64-bit number.
const MAX_HEADER: usize = 32;
/// Arguments reserved up front, whatever count a header claims.
const MAX_PREALLOCATED: usize = 64;

/// Why a request was refused: the message after `Protocol error: `.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("Protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn protocol<T>(message: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::Protocol(message.into()))
}

/// The size limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest bulk string: the larger of the key and value limits.
    pub max_bulk: usize,
    /// Most bytes of bulk strings in one request.
    pub max_request: usize,
}

/// Decodes requests, encodes replies. One per connection: it holds the
/// request being read and the protocol version replies are written in.
pub struct RespCodec {
    limits: RequestLimits,
    /// Arguments of the multibulk being read.
    args: Vec<Bytes>,
    /// Arguments the multibulk announced; 0 between requests.
    expected: usize,
    /// Length of the bulk string whose header was read, awaiting its bytes.
    bulk: Option<usize>,
    /// Bulk bytes announced so far in this request.
    announced: usize,
    /// Requests decoded so far: when it moves, one completed (read timeout).
    decoded: u64,
    /// 2 or 3, set by `HELLO`: how replies are encoded.
    pub proto: u8,
}

impl RespCodec {
    pub fn new(limits: RequestLimits) -> RespCodec {
        RespCodec {
            limits,
            args: Vec::new(),
            expected: 0,
            bulk: None,
            announced: 0,
            decoded: 0,
            proto: 2,
        }
    }

    /// Changes the limits for the next requests (smaller before login).
    pub fn set_limits(&mut self, limits: RequestLimits) {
        self.limits = limits;
    }

    /// Whether part of a multibulk has been read.
    pub fn in_request(&self) -> bool {
        self.expected > 0
    }

    pub fn requests_decoded(&self) -> u64 {
        self.decoded
    }

    fn finish(&mut self) -> Vec<Bytes> {
        self.expected = 0;
        self.announced = 0;
        self.decoded += 1;
        std::mem::take(&mut self.args)
    }

    /// Reads the rest of the multibulk being read, as far as `src` goes.
    fn multibulk(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, DecodeError> {
        while self.args.len() < self.expected {
            match self.bulk {
                None => {
                    let Some(line) = header_line(src)? else {
                        return Ok(None);
                    };
                    if line.first() != Some(&b'$') {
                        let got = line.first().map_or('?', |b| *b as char);
                        return protocol(format!("expected '$', got '{got}'"));
                    }
                    let len = parse_len(&line[1..])
                        .filter(|&n| n <= self.limits.max_bulk)
                        .ok_or_else(|| DecodeError::Protocol("invalid bulk length".into()))?;
                    self.announced += len;
                    if self.announced > self.limits.max_request {
                        return protocol(format!(
                            "request of more than {} bytes",
                            self.limits.max_request
                        ));
                    }
                    self.bulk = Some(len);
                }
                Some(len) => {
                    if src.len() < len + 2 {
                        return Ok(None);
                    }
                    if &src[len..len + 2] != b"\r\n" {
                        return protocol("bulk string not followed by CRLF");
                    }
                    let arg = src.split_to(len).freeze();
                    src.advance(2);
                    self.args.push(arg);
                    self.bulk = None;
                }
            }
        }
        Ok(Some(self.finish()))
    }
}

impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, DecodeError> {
        loop {
            if self.expected > 0 {
                return self.multibulk(src);
            }
            match src.first() {
                None => return Ok(None),
                Some(b'*') => {
                    let Some(line) = header_line(src)? else {
                        return Ok(None);
                    };
                    let n = match parse_signed(&line[1..]) {
                        Some(n) if n <= 0 => {
                            // `*0` and `*-1` are empty requests: skipped.
                            self.decoded += 1;
                            continue;
                        }
                        Some(n) if n as u64 <= MAX_ARGS as u64 => n as usize,
                        _ => return protocol("invalid multibulk length"),
                    };
                    self.expected = n;
                    self.args = Vec::with_capacity(n.min(MAX_PREALLOCATED));
                }
                Some(_) => {
                    let Some(end) = src.iter().position(|&b| b == b'\n') else {
                        if src.len() > MAX_INLINE {
                            return protocol("too big inline request");
                        }
                        return Ok(None);
                    };
                    if end > MAX_INLINE {
                        return protocol("too big inline request");
                    }
                    let line = src.split_to(end + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let args = split_inline(line)?;
                    self.decoded += 1;
                    if args.is_empty() {
                        continue;
                    }
                    return Ok(Some(args));
                }
            }
        }
    }
}

/// Takes one `\r\n`-terminated header line off `src` (without the `\r\n`),
/// if it is all there.
fn header_line(src: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
    let window = &src[..src.len().min(MAX_HEADER + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = src.split_to(end);
            src.advance(2);
            Ok(Some(line))
        }
        None if src.len() >= MAX_HEADER + 2 => protocol("too big header line"),
        None => Ok(None),
    }
}

/// A non-negative decimal without sign or leading junk.
fn parse_len(digits: &[u8]) -> Option<usize> {
    parse_signed(digits).and_then(|n| usize::try_from(n).ok())
}

fn parse_signed(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Splits an inline command into arguments as Redis does (`sdssplitargs`):
/// words separated by spaces; `"..."` with backslash escapes (`\n`, `\r`,
/// `\t`, `\b`, `\a`, `\xHH`, `\\`, `\"`); `'...'` with only `\'`.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, DecodeError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return protocol("unbalanced quotes in request");
                    };
                    i += 1;
                    if c == quote {
                        break;
                    }
                    if c != b'\\' || i == line.len() {
                        arg.push(c);
                        continue;
                    }
                    let escaped = line[i];
                    i += 1;
                    if quote == b'\'' {
                        if escaped != b'\'' {
                            arg.push(b'\\');
                        }
                        arg.push(escaped);
                        continue;
                    }
                    match escaped {
                        b'n' => arg.push(b'\n'),
                        b'r' => arg.push(b'\r'),
                        b't' => arg.push(b'\t'),
                        b'b' => arg.push(8),
                        b'a' => arg.push(7),
                        b'x' => match line.get(i..i + 2).and_then(hex_byte) {
                            Some(byte) => {
                                arg.push(byte);
                                i += 2;
                            }
                            None => arg.push(b'x'),
                        },
                        other => arg.push(other),
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return protocol("unbalanced quotes in request");
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
}

/// A reply, before it is encoded in the connection's protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`: a short status line.
    Simple(&'static str),
    /// `-ERR ...`: the first word is the error's kind (`ERR`, `NOAUTH`, ...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing array (EXEC of a transaction a watched key aborted): `*-1`
    /// in RESP2, `_` in RESP3.
    NilArray,
    Array(Vec<Value>),
    /// A map in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Value, Value)>),
    /// Text for humans (INFO): `=` with `txt:` in RESP3, a bulk string in RESP2.
    Verbatim(String),
    /// Out of band (a subscriber's messages): `>` in RESP3, an array in RESP2.
    Push(Vec<Value>),
    /// Several replies in a row for one request (SUBSCRIBE a b confirms each).
    Several(Vec<Value>),
}

impl Value {
    pub fn error(message: impl Into<String>) -> Value {
        Value::Error(message.into())
    }

    pub fn bulk(bytes: impl Into<Bytes>) -> Value {
        Value::Bulk(bytes.into())
    }

    pub fn text(text: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Bytes the encoded reply takes, roughly (for output limits).
    pub fn approx_len(&self) -> usize {
        match self {
            Value::Bulk(b) => b.len() + 16,
            Value::Array(items) | Value::Push(items) | Value::Several(items) => {
                16 + items.iter().map(Value::approx_len).sum::<usize>()
            }
            Value::Map(pairs) => {
                16 + pairs
                    .iter()
                    .map(|(k, v)| k.approx_len() + v.approx_len())
                    .sum::<usize>()
            }
            Value::Verbatim(s) | Value::Error(s) => s.len() + 16,
            _ => 24,
        }
    }

    /// Appends the encoding in protocol version `proto` (2 or 3).
    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => {
                // A line break inside would end the error early.
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean);
            }
            Value::Int(n) => number(out, b':', *n),
            Value::Bulk(b) => {
                number(out, b'$', b.len() as i64);
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Value::Nil | Value::NilArray if proto >= 3 => out.put_slice(b"_\r\n"),
            Value::Nil => out.put_slice(b"$-1\r\n"),
            Value::NilArray => out.put_slice(b"*-1\r\n"),
            Value::Array(items) => {
                number(out, b'*', items.len() as i64);
                for item in items {
                    item.encode(proto, out);
                }
            }
            Value::Push(items) => {
                let kind = if proto >= 3 { b'>' } else { b'*' };
                number(out, kind, items.len() as i64);
                for item in items {
                    item.encode(proto, out);
                }
            }
            Value::Several(replies) => {
                for reply in replies {
                    reply.encode(proto, out);
                }
            }
            Value::Map(pairs) => {
                if proto >= 3 {
                    number(out, b'%', pairs.len() as i64);
                } else {
                    number(out, b'*', (pairs.len() * 2) as i64);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Value::Verbatim(text) if proto >= 3 => {
                number(out, b'=', (text.len() + 4) as i64);
                out.put_slice(b"txt:");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Value::Verbatim(text) => Value::text(text).encode(proto, out),
        }
    }
}

/// `kind`, the number in decimal, CRLF; formatted straight into the buffer.
fn number(out: &mut BytesMut, kind: u8, n: i64) {
    use std::io::Write;
    out.put_u8(kind);
    let _ = write!((&mut *out).writer(), "{n}");
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

impl Encoder<Value> for RespCodec {
    type Error = std::io::Error;

    fn encode(&mut self, value: Value, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        value.encode(self.proto, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_bulk: 16,
        max_request: 40,
    };

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, String> {
        let mut codec = RespCodec::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(args)) => out.push(args),
                Ok(None) => return Ok(out),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn words(args: &[&str]) -> Vec<Bytes> {
        args.iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[test]
    fn multibulk_and_inline_requests_decode_alike() {
        let got = decode_all(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nSET k \"a b\\x41\\n\" 'it\\'s'\r\n\r\nPING\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                words(&["SET", "k", ""]),
                words(&["SET", "k", "a bA\n", "it's"]),
                words(&["PING"]),
            ]
        );
    }

    #[test]
    fn a_request_split_anywhere_decodes_the_same() {
        let wire = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..wire.len() {
            let mut codec = RespCodec::new(LIMITS);
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(words(&["GET", "hello"]))
            );
        }
    }

    #[test]
    fn limits_are_checked_on_the_headers() {
        for (input, error) in [
            (&b"*2\r\n$17\r\n"[..], "invalid bulk length"),
            (b"*2\r\n$-1\r\n", "invalid bulk length"),
            (b"*1048577\r\n", "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (
                b"*3\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n",
                "request of more than 40 bytes",
            ),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$1\r\nab\r\n", "bulk string not followed by CRLF"),
            (b"SET k \"open\r\n", "unbalanced quotes"),
            (
                b"*111111111111111111111111111111111111",
                "too big header line",
            ),
        ] {
            let got = decode_all(input).unwrap_err();
            assert!(got.contains(error), "{input:?}: {got}");
        }
        let long_inline = vec![b'a'; MAX_INLINE + 1];
        assert!(decode_all(&long_inline)
            .unwrap_err()
            .contains("too big inline request"));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder, and feeding them one
        /// byte at a time gives the same requests as feeding them at once
        /// (up to the first protocol error).
        #[test]
        fn any_bytes_decode_the_same_however_they_arrive(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'*'), proptest::strategy::Just(b'$'),
                    proptest::strategy::Just(b'\r'), proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'"'), proptest::strategy::Just(b' '),
                    b'0'..=b'9', proptest::arbitrary::any::<u8>(),
                ],
                0..200,
            )
        ) {
            let whole = decode_all(&input);
            let mut codec = RespCodec::new(LIMITS);
            let mut buf = BytesMut::new();
            let mut pieces = Vec::new();
            let mut failed = None;
            'feed: for byte in &input {
                buf.extend_from_slice(&[*byte]);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(args)) => pieces.push(args),
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break 'feed;
                        }
                    }
                }
            }
            match (whole, failed) {
                (Ok(requests), None) => proptest::prop_assert_eq!(requests, pieces),
                (Err(a), Some(b)) => proptest::prop_assert_eq!(a, b),
                (whole, failed) => proptest::prop_assert!(
                    false,
                    "at once: {:?}; byte by byte: {:?} then {:?}",
                    whole,
                    pieces,
                    failed
                ),
            }
        }
    }

    #[test]
    fn replies_encode_in_both_protocol_versions() {
        let value = Value::Array(vec![
            Value::Simple("OK"),
            Value::Int(-3),
            Value::bulk("hi"),
            Value::Nil,
            Value::Map(vec![(Value::text("k"), Value::Int(1))]),
            Value::error("ERR bad\r\nthing"),
        ]);
        let mut two = BytesMut::new();
        value.encode(2, &mut two);
        assert_eq!(
            &two[..],
            b"*6\r\n+OK\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n$1\r\nk\r\n:1\r\n-ERR bad  thing\r\n"
        );
        let mut three = BytesMut::new();
        value.encode(3, &mut three);
        assert_eq!(
            &three[..],
            b"*6\r\n+OK\r\n:-3\r\n$2\r\nhi\r\n_\r\n%1\r\n$1\r\nk\r\n:1\r\n-ERR bad  thing\r\n"
        );
    }
}
