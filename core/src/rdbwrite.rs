//! Writing an RDB from `DUMP` payloads: what the `scan` source stores for servers that refuse
//! `SYNC`, `PSYNC` and `BGSAVE` (managed services). A `DUMP` payload is a value in RDB encoding
//! followed by the RDB version that wrote it and a CRC-64; the writer checks both, then lays the
//! value out as a key of an ordinary RDB file, which every restore path loads.

use crc_fast::{CrcAlgorithm, Digest};

const OPCODE_AUX: u8 = 0xfa;
const OPCODE_SELECTDB: u8 = 0xfe;
const OPCODE_EXPIRETIME_MS: u8 = 0xfc;
const OPCODE_EOF: u8 = 0xff;

/// Why a `DUMP` payload cannot become a key of the RDB.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    #[error("the DUMP payload of {key} is {len} bytes: too short to hold a value and its trailer")]
    Short { key: String, len: usize },
    #[error("the DUMP payload of {key} fails its CRC-64: the reply was damaged")]
    Checksum { key: String },
    #[error(
        "the DUMP payload of {key} is RDB version {version}, newer than the file's {file}: the server's version was misread"
    )]
    Newer {
        key: String,
        version: u16,
        file: u16,
    },
}

/// An RDB being written: bytes come out as they are made ([`RdbWriter::take`]), the CRC-64 over
/// all of them is kept for the trailer ([`RdbWriter::finish`]).
pub struct RdbWriter {
    version: u16,
    crc: Digest,
    out: Vec<u8>,
}

/// RDB length encoding: 6, 14, 32 or 64 bits.
fn put_len(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.push(0x40 | (len >> 8) as u8);
        out.push(len as u8);
    } else if len <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// `value` in the plainest RDB encodings, which every server since RDB 6 loads (a string;
/// `LIST`, `SET`, `HASH` as length-prefixed strings; `ZSET_2` with binary scores): a payload
/// `RESTORE` takes from a server whatever RDB version it reads. `None` for what these types
/// cannot hold: a stream, a hash field's expiry.
pub fn portable_payload(value: &crate::rdbread::Value) -> Option<Vec<u8>> {
    use crate::rdbread::Value;
    let mut out = Vec::new();
    match value {
        Value::String(s) => {
            out.push(0);
            put_string(&mut out, s);
        }
        Value::List(items) | Value::Set(items) => {
            out.push(if matches!(value, Value::List(_)) {
                1
            } else {
                2
            });
            put_len(&mut out, items.len() as u64);
            for i in items {
                put_string(&mut out, i);
            }
        }
        Value::ZSet(items) => {
            out.push(5);
            put_len(&mut out, items.len() as u64);
            for (m, score) in items {
                put_string(&mut out, m);
                out.extend_from_slice(&score.to_le_bytes());
            }
        }
        Value::Hash(fields) => {
            if fields.iter().any(|(_, _, at)| at.is_some()) {
                return None;
            }
            out.push(4);
            put_len(&mut out, fields.len() as u64);
            for (f, v, _) in fields {
                put_string(&mut out, f);
                put_string(&mut out, v);
            }
        }
        Value::Stream(_) => return None,
    }
    Some(out)
}

/// A printable name for a key in messages.
fn shown(key: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(key).chars().take(64).collect();
    format!("{s:?}")
}

impl RdbWriter {
    /// A file of RDB `version` with these aux fields.
    pub fn new(version: u16, aux: &[(&str, &str)]) -> Self {
        let mut out = crate::rdb::rdb_magic(version);
        for (k, v) in aux {
            out.push(OPCODE_AUX);
            put_string(&mut out, k.as_bytes());
            put_string(&mut out, v.as_bytes());
        }
        RdbWriter {
            version,
            crc: Digest::new(CrcAlgorithm::Crc64Redis),
            out,
        }
    }

    /// The keys that follow are of database `db`.
    pub fn select_db(&mut self, db: u64) {
        self.out.push(OPCODE_SELECTDB);
        put_len(&mut self.out, db);
    }

    /// One key from its `DUMP` payload, expiring at `expire_at_ms` (Unix ms) when it does.
    pub fn key(
        &mut self,
        key: &[u8],
        payload: &[u8],
        expire_at_ms: Option<i64>,
    ) -> Result<(), DumpError> {
        let len = payload.len();
        if len < 11 {
            return Err(DumpError::Short {
                key: shown(key),
                len,
            });
        }
        let (body, crc) = payload.split_at(len - 8);
        let want = u64::from_le_bytes(crc.try_into().expect("eight bytes"));
        if crc_fast::checksum(CrcAlgorithm::Crc64Redis, body) != want {
            return Err(DumpError::Checksum { key: shown(key) });
        }
        let version = u16::from_le_bytes([body[len - 10], body[len - 9]]);
        if version > self.version {
            return Err(DumpError::Newer {
                key: shown(key),
                version,
                file: self.version,
            });
        }
        if let Some(at) = expire_at_ms {
            self.out.push(OPCODE_EXPIRETIME_MS);
            self.out.extend_from_slice(&at.to_le_bytes());
        }
        // The type byte, the key, then the value as the payload encodes it.
        self.out.push(body[0]);
        put_string(&mut self.out, key);
        self.out.extend_from_slice(&body[1..len - 10]);
        Ok(())
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.out);
        self.crc.update(&bytes);
        bytes
    }

    /// The rest of the file: what is pending, the end mark and the CRC-64 of everything.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(OPCODE_EOF);
        let mut bytes = self.take();
        bytes.extend_from_slice(&self.crc.finalize().to_le_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each portable payload reads back as the value it was made from.
    #[test]
    fn portable_payloads_read_back_as_the_same_value() {
        use crate::rdbread::{Entry, Value};
        let values = [
            Value::String(vec![b'x'; 20_000]),
            Value::List(vec![b"a".to_vec(), Vec::new(), vec![b'z'; 70]]),
            Value::Set((0..300).map(|i| format!("m{i}").into_bytes()).collect()),
            Value::ZSet(vec![
                (b"inf".to_vec(), f64::INFINITY),
                (b"tenth".to_vec(), 0.1),
                (b"neg".to_vec(), -2.5),
            ]),
            Value::Hash(vec![(b"f".to_vec(), b"v".to_vec(), None)]),
        ];
        for v in values {
            let payload = portable_payload(&v).unwrap();
            let e = Entry {
                db: 0,
                key: b"k".to_vec(),
                expire_ms: None,
                idle: None,
                freq: None,
                payload,
                decoded: None,
            };
            assert_eq!(e.value().unwrap(), v);
        }
        assert!(
            portable_payload(&Value::Hash(vec![(b"f".to_vec(), b"v".to_vec(), Some(1))])).is_none()
        );
    }
    use crate::rdbread::{Item, RdbReader};

    /// A `DUMP` payload of a string value, as Redis 7.0 writes it.
    fn dump_of(value: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8];
        put_string(&mut p, value);
        p.extend_from_slice(&10u16.to_le_bytes());
        let crc = crc_fast::checksum(CrcAlgorithm::Crc64Redis, &p);
        p.extend_from_slice(&crc.to_le_bytes());
        p
    }

    #[test]
    fn payloads_become_an_rdb_that_verifies_and_reads_back() {
        let mut w = RdbWriter::new(10, &[("redis-ver", "7.0.15")]);
        let mut file = w.take();
        w.select_db(0);
        w.key(b"a", &dump_of(b"one"), None).unwrap();
        let long = vec![b'x'; 20_000];
        w.key(b"b", &dump_of(&long), Some(4_102_444_800_000))
            .unwrap();
        file.extend(w.take());
        w.select_db(3);
        w.key(b"c", &dump_of(b"three"), None).unwrap();
        file.extend(w.finish());

        let mut v = crate::RdbVerifier::new();
        v.update(&file).unwrap();
        v.finish().unwrap();
        let mut r = RdbReader::new(&file[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(item) = r.next_item().unwrap() {
            if let Item::Entry(e) = item {
                seen.push((e.db, e.key.clone(), e.expire_ms));
            }
        }
        assert_eq!(
            seen,
            vec![
                (0, b"a".to_vec(), None),
                (0, b"b".to_vec(), Some(4_102_444_800_000)),
                (3, b"c".to_vec(), None),
            ]
        );
    }

    #[test]
    fn damaged_short_and_newer_payloads_are_refused_by_key() {
        let mut w = RdbWriter::new(10, &[]);
        let mut bad = dump_of(b"v");
        bad[2] ^= 1;
        assert!(matches!(
            w.key(b"k", &bad, None),
            Err(DumpError::Checksum { .. })
        ));
        assert!(matches!(
            w.key(b"k", &[0, 1, 2], None),
            Err(DumpError::Short { .. })
        ));
        let mut newer = vec![0u8];
        put_string(&mut newer, b"v");
        newer.extend_from_slice(&12u16.to_le_bytes());
        let crc = crc_fast::checksum(CrcAlgorithm::Crc64Redis, &newer);
        newer.extend_from_slice(&crc.to_le_bytes());
        let e = w.key(b"k", &newer, None).unwrap_err();
        assert!(e.to_string().contains("RDB version 12"), "{e}");
    }
}
