//! Streaming RDB verifier: checks the `REDIS` magic, the format version and the CRC-64 (Jones)
//! trailer while the bytes pass, holding back only the last nine bytes.

use crc_fast::{CrcAlgorithm, Digest};

/// The highest `REDIS` RDB format version this verifier accepts (Redis 7.4 to 8.2 write 12; a
/// 13 is read with 12's types, and a type byte it does not know stops the key census there).
pub const MAX_RDB_VERSION: u16 = 13;

/// The `VALKEY` RDB format versions read (Valkey 9 writes 80; Valkey's numbering leaves 12 to
/// 79 to Redis, whose types there mean other things).
pub const VALKEY_RDB_VERSIONS: std::ops::RangeInclusive<u16> = 80..=80;

/// An RDB file's magic and format version: `REDIS` and four digits, or (Valkey 9 and later)
/// `VALKEY` and three. `true` with a `VALKEY` magic.
pub fn magic_version(head: &[u8]) -> Option<(bool, u16)> {
    let (valkey, digits) = if let Some(d) = head.strip_prefix(b"VALKEY") {
        (true, d)
    } else {
        (false, head.strip_prefix(b"REDIS")?)
    };
    let want = if valkey { 3 } else { 4 };
    if digits.len() < want || !digits[..want].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = std::str::from_utf8(&digits[..want]).ok()?.parse().ok()?;
    Some((valkey, v))
}

/// Whether this reader takes RDB format `version` under its magic.
pub fn version_supported(valkey: bool, version: u16) -> bool {
    if valkey {
        VALKEY_RDB_VERSIONS.contains(&version)
    } else {
        (1..=MAX_RDB_VERSION).contains(&version)
    }
}

/// First RDB version with a CRC-64 trailer.
const FIRST_CHECKSUMMED_VERSION: u16 = 5;

const HEADER_LEN: usize = 9;
const TRAILER_LEN: usize = 9;
const OPCODE_EOF: u8 = 0xff;

/// Why a byte stream is not a valid RDB file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RdbError {
    #[error(
        "not an RDB snapshot: it does not start with the REDIS or VALKEY magic (first bytes {0:?})"
    )]
    BadMagic(String),
    #[error(
        "RDB format version {0} is not supported (this fleetsnap reads REDIS 1 to {MAX_RDB_VERSION} and VALKEY 80): upgrade fleetsnap"
    )]
    UnsupportedVersion(u16),
    #[error("RDB snapshot is truncated: {0} bytes is shorter than a header and trailer")]
    Truncated(u64),
    #[error(
        "RDB snapshot does not end with the EOF opcode: it is truncated or corrupt ({0} bytes read)"
    )]
    MissingEof(u64),
    #[error(
        "RDB checksum mismatch: the trailer says {stored:016x} but the content hashes to {computed:016x}; the snapshot is corrupt"
    )]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error(
        "the RDB's structure is broken ({0}): Redis would refuse to load it, so it is not stored as a backup; take the snapshot again, and check the node's memory and disk if it recurs"
    )]
    Structure(String),
}

/// What a successful verification learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdbSummary {
    /// The RDB format version from the header.
    pub version: u16,
    /// The CRC-64 trailer; `None` when the writer had checksums disabled (trailer 0) or the format
    /// predates checksums.
    pub checksum: Option<u64>,
    /// Total bytes verified.
    pub bytes: u64,
}

/// Feeds on RDB bytes in any chunking and verifies them at `finish`.
pub struct RdbVerifier {
    header: Vec<u8>,
    version: Option<u16>,
    crc: Digest,
    hold: Vec<u8>,
    total: u64,
}

impl Default for RdbVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl RdbVerifier {
    /// A verifier at the start of a stream.
    pub fn new() -> Self {
        Self {
            header: Vec::with_capacity(HEADER_LEN),
            version: None,
            crc: Digest::new(CrcAlgorithm::Crc64Redis),
            hold: Vec::with_capacity(2 * TRAILER_LEN),
            total: 0,
        }
    }

    /// The RDB version, once the header has been seen.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Feeds the next bytes. Fails early on a bad header.
    pub fn update(&mut self, data: &[u8]) -> Result<(), RdbError> {
        self.total += data.len() as u64;
        if self.version.is_none() {
            let take = (HEADER_LEN - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            if self.header.len() == HEADER_LEN {
                self.version = Some(parse_header(&self.header)?);
            } else if !b"REDIS".starts_with(&self.header[..self.header.len().min(5)])
                && !b"VALKEY".starts_with(&self.header[..self.header.len().min(6)])
            {
                return Err(RdbError::BadMagic(printable(&self.header)));
            }
        }
        if data.len() >= TRAILER_LEN {
            self.crc.update(&self.hold);
            self.crc.update(&data[..data.len() - TRAILER_LEN]);
            self.hold.clear();
            self.hold
                .extend_from_slice(&data[data.len() - TRAILER_LEN..]);
        } else {
            self.hold.extend_from_slice(data);
            if self.hold.len() > TRAILER_LEN {
                let excess = self.hold.len() - TRAILER_LEN;
                self.crc.update(&self.hold[..excess]);
                self.hold.drain(..excess);
            }
        }
        Ok(())
    }

    /// Checks the trailer once the stream has ended.
    pub fn finish(mut self) -> Result<RdbSummary, RdbError> {
        let version = match self.version {
            Some(v) => v,
            None if self.header.is_empty() || b"REDIS".starts_with(&self.header) => {
                return Err(RdbError::Truncated(self.total));
            }
            None => return Err(RdbError::BadMagic(printable(&self.header))),
        };
        if self.total < (HEADER_LEN + TRAILER_LEN) as u64 && version >= FIRST_CHECKSUMMED_VERSION {
            return Err(RdbError::Truncated(self.total));
        }
        if version < FIRST_CHECKSUMMED_VERSION {
            return if self.hold.last() == Some(&OPCODE_EOF) {
                Ok(RdbSummary {
                    version,
                    checksum: None,
                    bytes: self.total,
                })
            } else {
                Err(RdbError::MissingEof(self.total))
            };
        }
        if self.hold[0] != OPCODE_EOF {
            return Err(RdbError::MissingEof(self.total));
        }
        self.crc.update(&self.hold[..1]);
        let stored = u64::from_le_bytes(self.hold[1..].try_into().expect("eight bytes"));
        if stored == 0 {
            return Ok(RdbSummary {
                version,
                checksum: None,
                bytes: self.total,
            });
        }
        let computed = self.crc.finalize();
        if computed != stored {
            return Err(RdbError::ChecksumMismatch { stored, computed });
        }
        Ok(RdbSummary {
            version,
            checksum: Some(stored),
            bytes: self.total,
        })
    }
}

fn parse_header(header: &[u8]) -> Result<u16, RdbError> {
    let (valkey, version) =
        magic_version(header).ok_or_else(|| RdbError::BadMagic(printable(header)))?;
    if !version_supported(valkey, version) {
        return Err(RdbError::UnsupportedVersion(version));
    }
    Ok(version)
}

fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The nine bytes an RDB of `version` starts with: `REDIS0011`, or `VALKEY080` from 80 on.
pub fn rdb_magic(version: u16) -> Vec<u8> {
    if VALKEY_RDB_VERSIONS.contains(&version) {
        format!("VALKEY{version:03}").into_bytes()
    } else {
        format!("REDIS{version:04}").into_bytes()
    }
}

/// Builds a valid empty RDB of the given version (header, EOF opcode, CRC-64 trailer).
///
/// Used where a snapshot has no RDB part, e.g. an AOF whose base is plain commands: the stored
/// RDB is then empty and the commands travel as the tail.
pub fn empty_rdb(version: u16) -> Vec<u8> {
    let mut out = rdb_magic(version);
    out.push(OPCODE_EOF);
    let crc = crc_fast::checksum(CrcAlgorithm::Crc64Redis, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The aux fields at the start of an RDB (`redis-ver`, `repl-stream-db`, …) that lie whole
/// within `head`, in order. Stops at the first other opcode, at an LZF-compressed string or at the
/// end of `head`.
pub fn leading_aux(head: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if head.len() < HEADER_LEN || &head[..5] != b"REDIS" {
        return out;
    }
    let mut at = HEADER_LEN;
    while head.get(at) == Some(&OPCODE_AUX) {
        let Some((key, next)) = rdb_string(head, at + 1) else {
            break;
        };
        let Some((value, next)) = rdb_string(head, next) else {
            break;
        };
        out.push((key, value));
        at = next;
    }
    out
}

const OPCODE_AUX: u8 = 0xfa;

/// An RDB string at `at` (length-prefixed or an integer encoding), and where the next item starts.
fn rdb_string(b: &[u8], at: usize) -> Option<(String, usize)> {
    let first = *b.get(at)?;
    let (len, body) = match first >> 6 {
        0 => (u64::from(first & 0x3f), at + 1),
        1 => (
            (u64::from(first & 0x3f) << 8) | u64::from(*b.get(at + 1)?),
            at + 2,
        ),
        2 if first == 0x80 => (
            u64::from(u32::from_be_bytes(b.get(at + 1..at + 5)?.try_into().ok()?)),
            at + 5,
        ),
        2 if first == 0x81 => (
            u64::from_be_bytes(b.get(at + 1..at + 9)?.try_into().ok()?),
            at + 9,
        ),
        3 => {
            let (value, width) = match first & 0x3f {
                0 => (i64::from(*b.get(at + 1)? as i8), 1),
                1 => (
                    i64::from(i16::from_le_bytes(b.get(at + 1..at + 3)?.try_into().ok()?)),
                    2,
                ),
                2 => (
                    i64::from(i32::from_le_bytes(b.get(at + 1..at + 5)?.try_into().ok()?)),
                    4,
                ),
                _ => return None,
            };
            return Some((value.to_string(), at + 1 + width));
        }
        _ => return None,
    };
    let end = body.checked_add(usize::try_from(len).ok()?)?;
    Some((String::from_utf8_lossy(b.get(body..end)?).into_owned(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_in_chunks(data: &[u8], chunk: usize) -> Result<RdbSummary, RdbError> {
        let mut v = RdbVerifier::new();
        for c in data.chunks(chunk.max(1)) {
            v.update(c)?;
        }
        v.finish()
    }

    fn sample() -> Vec<u8> {
        // An empty database with one aux field, as Redis writes it.
        let mut body = b"REDIS0010".to_vec();
        body.extend_from_slice(&[0xfa, 0x09]);
        body.extend_from_slice(b"redis-ver");
        body.extend_from_slice(&[0x06]);
        body.extend_from_slice(b"7.0.15");
        body.push(OPCODE_EOF);
        let crc = crc_fast::checksum(CrcAlgorithm::Crc64Redis, &body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn accepts_any_chunking() {
        let data = sample();
        for chunk in [1, 2, 5, 8, 9, 10, 17, data.len()] {
            let s = verify_in_chunks(&data, chunk).unwrap();
            assert_eq!(s.version, 10);
            assert!(s.checksum.is_some());
            assert_eq!(s.bytes, data.len() as u64);
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let data = sample();
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x10;
            assert!(verify_in_chunks(&bad, 3).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn refuses_truncation_garbage_and_future_versions() {
        let data = sample();
        assert!(matches!(
            verify_in_chunks(&data[..data.len() - 1], 4),
            Err(RdbError::MissingEof(_) | RdbError::ChecksumMismatch { .. })
        ));
        assert_eq!(verify_in_chunks(b"REDI", 2), Err(RdbError::Truncated(4)));
        assert!(matches!(
            verify_in_chunks(b"*1\r\n$4\r\nPING\r\n", 3),
            Err(RdbError::BadMagic(_))
        ));
        assert_eq!(
            verify_in_chunks(b"REDIS0099\xff00000000", 64),
            Err(RdbError::UnsupportedVersion(99))
        );
    }

    #[test]
    fn zero_trailer_means_checksums_off() {
        let mut data = sample();
        let n = data.len();
        data[n - 8..].fill(0);
        assert_eq!(verify_in_chunks(&data, 7).unwrap().checksum, None);
    }

    #[test]
    fn leading_aux_fields_are_read() {
        let mut head = sample();
        assert_eq!(
            leading_aux(&head),
            vec![("redis-ver".to_string(), "7.0.15".to_string())]
        );
        // repl-stream-db 3 as Redis writes it: an 8-bit integer encoding.
        head.truncate(head.len() - 9);
        head.extend_from_slice(&[0xfa, 0x0e]);
        head.extend_from_slice(b"repl-stream-db");
        head.extend_from_slice(&[0xc0, 0x03]);
        let aux = leading_aux(&head);
        assert_eq!(aux[1], ("repl-stream-db".to_string(), "3".to_string()));
        // Cut anywhere: only whole fields come back.
        for n in 0..head.len() {
            assert!(leading_aux(&head[..n]).len() <= 2);
        }
        assert!(leading_aux(b"*1\r\n$4\r\nPING\r\n").is_empty());
    }

    #[test]
    fn empty_rdb_verifies() {
        let s = verify_in_chunks(&empty_rdb(11), 4).unwrap();
        assert_eq!(s.version, 11);
    }
}
