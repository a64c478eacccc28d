//! Checksummed records: the framing every file of the store is made of.
//!
//! ```text
//! +-------------+----------------+-------------------+
//! | len: u32 LE | crc32c: u32 LE | body: len bytes   |
//! +-------------+----------------+-------------------+
//! ```
//!
//! `crc32c` covers the four length bytes and the body, so a damaged length is
//! caught as surely as a damaged body. Readers never allocate from `len` before
//! checking that the file really holds that many bytes.

/// Bytes before a record's body.
pub const HEADER_LEN: usize = 8;

/// Appends one record holding `body` to `buf`.
pub fn append(buf: &mut Vec<u8>, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.extend_from_slice(body);
    seal(buf, start);
}

/// Fills in the length and checksum of a record whose body was written in place
/// after `HEADER_LEN` placeholder bytes starting at `start`.
pub fn seal(buf: &mut [u8], start: usize) {
    seal_with(buf, start, 0)
}

/// [`seal`] with a checksum seed. Log segments seed their records' checksums
/// with a secret random salt, so bytes a client wrote inside a value can never
/// pass for a record of the log (recovery looks for valid records after
/// damage; see `wal`). Seed 0 is the plain CRC32C.
pub fn seal_with(buf: &mut [u8], start: usize, seed: u32) {
    let len = (buf.len() - start - HEADER_LEN) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(seed, &buf[start..start + 4], &buf[start + HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(seed: u32, len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(seed, len), body)
}

/// What [`read`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole record whose checksum matches; the next one starts at `next`.
    Valid { body: &'a [u8], next: usize },
    /// Fewer bytes remain than the header, or than the length claims.
    Incomplete,
    /// The record is all there but its checksum does not match.
    Mismatch,
}

/// Reads the record that starts at `offset` of `data`.
pub fn read(data: &[u8], offset: usize) -> Read<'_> {
    read_with(data, offset, 0)
}

/// [`read`] for records sealed with [`seal_with`] and `seed`.
pub fn read_with(data: &[u8], offset: usize, seed: u32) -> Read<'_> {
    let Some(header) = data.get(offset..offset + HEADER_LEN) else {
        return Read::Incomplete;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = offset + HEADER_LEN;
    let Some(body) = data.get(start..start + len) else {
        return Read::Incomplete;
    };
    if checksum(seed, &header[..4], body) == stored {
        Read::Valid {
            body,
            next: start + len,
        }
    } else {
        Read::Mismatch
    }
}

/// Reads the header of a record from a stream: its body length and checksum,
/// for readers that cannot hold the whole file (snapshots).
pub fn parse_header(header: [u8; HEADER_LEN]) -> (usize, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

/// Whether `body` matches the checksum stored in `header`.
pub fn verify(header: [u8; HEADER_LEN], body: &[u8]) -> bool {
    let (_, crc) = parse_header(header);
    checksum(0, &header[..4], body) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        append(&mut buf, b"hello");
        assert_eq!(
            read(&buf, 0),
            Read::Valid {
                body: b"hello",
                next: buf.len()
            }
        );
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(read(&bad, 0), Read::Valid { .. }), "bit {bit}");
        }
    }

    #[test]
    fn a_cut_record_is_incomplete() {
        let mut buf = Vec::new();
        append(&mut buf, b"hello");
        for cut in 0..buf.len() {
            assert_eq!(read(&buf[..cut], 0), Read::Incomplete, "cut at {cut}");
        }
    }
}
