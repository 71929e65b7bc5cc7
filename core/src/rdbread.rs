//! Key-by-key RDB reader: walks an RDB stream one key at a time, keeping each value's serialized
//! bytes (what `RESTORE` takes) and decoding them on request into logical values, from which an
//! encoding-independent digest of a dataset is computed.
//!
//! It reads every type Redis 7 loads: strings (raw, integer, LZF), lists (linked, ziplist,
//! quicklist 1 and 2), sets (intset, listpack, table), sorted sets (text and binary scores,
//! ziplist, listpack), hashes (zipmap, ziplist, listpack, table, and the 7.4 field-expiry forms),
//! streams (listpacks 1–3 with consumer groups), function libraries, expiry, LRU and LFU fields.
//! A module value is an error that names the key and the module.

use std::io::{BufRead, BufReader, Read};

use crc_fast::{CrcAlgorithm, Digest as Crc};

use crate::rdb::MAX_RDB_VERSION;

/// Why an RDB stream could not be read key by key.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the RDB failed at byte {at}: {source}")]
    Io {
        at: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the RDB ends early, at byte {0}: it is truncated")]
    Truncated(u64),
    #[error("not an RDB snapshot: it does not start with the REDIS magic")]
    BadMagic,
    #[error(
        "RDB format version {0} is not supported (this fleetsnap reads 1 to {MAX_RDB_VERSION})"
    )]
    Version(u16),
    #[error("the RDB is corrupt at byte {at}: {what}")]
    Corrupt { at: u64, what: String },
    #[error(
        "key {key:?} (db {db}) holds a value of module type {module:?}, which fleetsnap cannot read: restore this shard with `replace` on a server that loads the module"
    )]
    Module {
        db: u64,
        key: String,
        module: String,
    },
    #[error(
        "RDB checksum mismatch: the trailer says {stored:016x} but the content hashes to {computed:016x}; the snapshot is corrupt"
    )]
    Checksum { stored: u64, computed: u64 },
    #[error(
        "{what} at byte {at} of this {format} file, which fleetsnap does not decode: keys from there on are not read (restore the set whole with `replace` or to a file, on a server of its version)"
    )]
    Unsupported {
        at: u64,
        format: String,
        what: String,
    },
}

type Result<T> = std::result::Result<T, ReadError>;

const OP_SLOT_IMPORT: u8 = 243;
const OP_SLOT_INFO: u8 = 244;
const OP_FUNCTION2: u8 = 245;
const OP_FUNCTION_PRE_GA: u8 = 246;
const OP_MODULE_AUX: u8 = 247;
const OP_IDLE: u8 = 248;
const OP_FREQ: u8 = 249;
const OP_AUX: u8 = 250;
const OP_RESIZEDB: u8 = 251;
const OP_EXPIRETIME_MS: u8 = 252;
const OP_EXPIRETIME: u8 = 253;
const OP_SELECTDB: u8 = 254;
const OP_EOF: u8 = 255;

/// RDB value type bytes.
pub mod types {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
    pub const HASH_METADATA_PRE_GA: u8 = 22;
    pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
    pub const HASH_METADATA: u8 = 24;
    pub const HASH_LISTPACK_EX: u8 = 25;
}
use types::*;

/// One key of the dataset, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The logical database.
    pub db: u64,
    /// The key.
    pub key: Vec<u8>,
    /// Absolute expiry in Unix milliseconds.
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds.
    pub idle: Option<u64>,
    /// LFU frequency.
    pub freq: Option<u8>,
    /// The value as serialized: its type byte then its encoding (empty from a `decoding` reader).
    pub payload: Vec<u8>,
    /// The value, decoded as it was read (from a `decoding` reader only).
    pub decoded: Option<Value>,
}

impl Entry {
    /// The value's RDB type byte.
    pub fn rdb_type(&self) -> u8 {
        self.payload.first().copied().unwrap_or(u8::MAX)
    }

    /// The key, printable.
    pub fn key_lossy(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The value decoded (from `decoded` when the reader already did).
    pub fn value(&self) -> Result<Value> {
        if let Some(v) = &self.decoded {
            return Ok(v.clone());
        }
        let mut s = Slice {
            buf: &self.payload[1..],
            pos: 0,
        };
        let v = walk(&mut s, self.payload[0], true)
            .map_err(|e| self.name_key(e))?
            .expect("decoding walks yield a value");
        Ok(v)
    }

    /// The payload `DUMP` would give for this value: what `RESTORE` takes. `version` is the RDB
    /// version to stamp, at most the target server's.
    pub fn dump_payload(&self, version: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 10);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&version.to_le_bytes());
        let crc = dump_crc(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn name_key(&self, e: ReadError) -> ReadError {
        match e {
            ReadError::Corrupt { at, what } => ReadError::Corrupt {
                at,
                what: format!("key {:?} (db {}): {what}", self.key_lossy(), self.db),
            },
            e => e,
        }
    }
}

/// The CRC-64 a `DUMP` payload ends with, over its value and version bytes.
pub fn dump_crc(value_and_version: &[u8]) -> u64 {
    let mut crc = Crc::new(CrcAlgorithm::Crc64Redis);
    crc.update(value_and_version);
    crc.finalize()
}

/// What the reader meets, in file order.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// An aux field (`redis-ver`, `repl-id`, …).
    Aux(String, String),
    /// A function library's code (`FUNCTION LOAD` takes it).
    Function(Vec<u8>),
    /// Module auxiliary data, skipped: the name of the module.
    ModuleAux(String),
    /// A key.
    Entry(Entry),
    /// A key holding a module value, skipped whole (from a reader told `skipping_modules`).
    Module {
        /// Its database.
        db: u64,
        /// The key, printable.
        key: String,
        /// The module type's name.
        module: String,
    },
}

/// A streaming, key-by-key RDB reader over any `Read`.
pub struct RdbReader<R: Read> {
    src: Stream<R>,
    version: u16,
    /// A `VALKEY` magic (Valkey 9 and later), whose types past 21 are not Redis's.
    valkey: bool,
    db: u64,
    done: bool,
    decode: bool,
    skip_modules: bool,
}

impl<R: Read> RdbReader<R> {
    /// Reads the header; the CRC-64 trailer is checked at the end.
    pub fn new(r: R) -> Result<Self> {
        Self::open(r, true)
    }

    /// For bytes whose checksum was verified on their way here (the snapshot pipeline's
    /// verifier, a restore's download): the trailer is read but not computed again.
    pub fn checked_elsewhere(r: R) -> Result<Self> {
        Self::open(r, false)
    }

    /// Decodes each value as it is read (into `Entry::decoded`) instead of keeping its bytes:
    /// one pass, for readers that want values rather than `RESTORE` payloads.
    pub fn decoding(mut self) -> Self {
        self.decode = true;
        self
    }

    /// Skips a module value in the self-describing format (type 7) and yields `Item::Module`
    /// for it, instead of stopping there: a census reads on past such keys, checking the rest.
    pub fn skipping_modules(mut self) -> Self {
        self.skip_modules = true;
        self
    }

    /// After `next_item` gave `None`: checks that nothing follows the end marker and its
    /// checksum. Redis stops loading at the marker, so bytes after it are keys it never loads.
    pub fn ensure_end(&mut self) -> Result<()> {
        let at = self.src.at;
        let mut extra = 0u64;
        loop {
            let n = match self.src.r.fill_buf() {
                Ok(b) => b.len(),
                Err(e) => return Err(self.src.io(e)),
            };
            if n == 0 {
                break;
            }
            extra += n as u64;
            self.src.r.consume(n);
        }
        if extra > 0 {
            return Err(ReadError::Corrupt {
                at,
                what: format!(
                    "the end marker is followed by {extra} more bytes: Redis stops loading at the marker and would drop what follows"
                ),
            });
        }
        Ok(())
    }

    fn open(r: R, check: bool) -> Result<Self> {
        let mut src = Stream {
            r: BufReader::with_capacity(1 << 20, r),
            at: 0,
            crc: check.then(|| Crc::new(CrcAlgorithm::Crc64Redis)),
            capture: None,
        };
        let mut head = [0u8; 9];
        src.fill(&mut head)?;
        let (valkey, version) = crate::rdb::magic_version(&head).ok_or(ReadError::BadMagic)?;
        if !crate::rdb::version_supported(valkey, version) {
            return Err(ReadError::Version(version));
        }
        Ok(Self {
            src,
            version,
            valkey,
            db: 0,
            done: false,
            decode: false,
            skip_modules: false,
        })
    }

    /// What a value's type byte `t` is where this reader does not decode it: a Valkey file's
    /// types past Redis 7.2's (22 is Valkey 9's hash with field expiries, not Redis's), and a
    /// type a Redis file newer than 12 brings.
    fn foreign_type(&self, t: u8) -> Option<String> {
        if self.valkey && t >= 22 {
            Some(if t == 22 {
                "a hash with field expiries (Valkey 9, type 22)".to_string()
            } else {
                format!("a value of Valkey type {t}")
            })
        } else if !self.valkey && self.version > 12 && t > HASH_LISTPACK_EX && t < OP_SLOT_IMPORT {
            Some(format!("a value of type {t}, new in RDB {}", self.version))
        } else {
            None
        }
    }

    fn unsupported(&self, what: &str) -> ReadError {
        ReadError::Unsupported {
            at: self.src.at,
            format: if self.valkey {
                format!("VALKEY{:03}", self.version)
            } else {
                format!("REDIS{:04}", self.version)
            },
            what: what.to_string(),
        }
    }

    /// The RDB format version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.src.at
    }

    /// The next item, or `None` after the EOF opcode and a matching checksum.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        let mut expire_ms = None;
        let mut idle = None;
        let mut freq = None;
        loop {
            let op = self.src.byte()?;
            match op {
                OP_EOF => {
                    self.done = true;
                    if self.version >= 5 {
                        let computed = self.src.crc.take().map(|c| c.finalize());
                        let mut t = [0u8; 8];
                        self.src.fill(&mut t)?;
                        let stored = u64::from_le_bytes(t);
                        if let Some(computed) = computed
                            && stored != 0
                            && stored != computed
                        {
                            return Err(ReadError::Checksum { stored, computed });
                        }
                    }
                    return Ok(None);
                }
                OP_SELECTDB => {
                    let db = self.src.len()?;
                    // Redis refuses a database at or past its `databases`, which is at most
                    // INT_MAX.
                    if db >= i32::MAX as u64 {
                        return Err(self.src.corrupt(&format!(
                            "SELECTDB {db}: no server has that many databases"
                        )));
                    }
                    self.db = db;
                }
                OP_RESIZEDB => {
                    self.src.len()?;
                    self.src.len()?;
                }
                OP_SLOT_INFO => {
                    for _ in 0..3 {
                        self.src.len()?;
                    }
                }
                OP_EXPIRETIME_MS => expire_ms = Some(self.src.i64_le()?),
                OP_EXPIRETIME => {
                    let mut b = [0u8; 4];
                    self.src.fill(&mut b)?;
                    expire_ms = Some(i32::from_le_bytes(b) as i64 * 1000);
                }
                OP_IDLE => idle = Some(self.src.len()?),
                OP_FREQ => freq = Some(self.src.byte()?),
                OP_AUX => {
                    let k = self.src.string()?;
                    let v = self.src.string()?;
                    return Ok(Some(Item::Aux(
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )));
                }
                OP_SLOT_IMPORT if self.valkey => {
                    return Err(self.unsupported("a slot import in progress (Valkey 9)"));
                }
                OP_FUNCTION2 => return Ok(Some(Item::Function(self.src.string()?))),
                OP_FUNCTION_PRE_GA => {
                    return Err(self.src.corrupt(
                        "function data of a Redis 7.0 release candidate, which Redis itself no longer loads",
                    ));
                }
                OP_MODULE_AUX => {
                    let id = self.src.len()?;
                    self.src.len()?; // when_opcode
                    self.src.len()?; // when
                    skip_module_value(&mut self.src)?;
                    return Ok(Some(Item::ModuleAux(module_name(id))));
                }
                t => {
                    let key = self.src.string()?;
                    if let Some(what) = self.foreign_type(t) {
                        return Err(self.unsupported(&format!(
                            "key {:?} (db {}) holds {what}",
                            String::from_utf8_lossy(&key),
                            self.db
                        )));
                    }
                    if t == MODULE_2 && self.skip_modules {
                        let id = self.src.len()?;
                        skip_module_value(&mut self.src)?;
                        return Ok(Some(Item::Module {
                            db: self.db,
                            key: String::from_utf8_lossy(&key).into_owned(),
                            module: module_name(id),
                        }));
                    }
                    if t == MODULE_PRE_GA || t == MODULE_2 {
                        let id = self.src.len()?;
                        return Err(ReadError::Module {
                            db: self.db,
                            key: String::from_utf8_lossy(&key).into_owned(),
                            module: module_name(id),
                        });
                    }
                    self.src.capture = (!self.decode).then(|| vec![t]);
                    let walked = walk(&mut self.src, t, self.decode);
                    let payload = self.src.capture.take().unwrap_or_default();
                    let decoded = walked.map_err(|e| match e {
                        ReadError::Corrupt { at, what } => ReadError::Corrupt {
                            at,
                            what: format!(
                                "key {:?} (db {}): {what}",
                                String::from_utf8_lossy(&key),
                                self.db
                            ),
                        },
                        e => e,
                    })?;
                    return Ok(Some(Item::Entry(Entry {
                        db: self.db,
                        key,
                        expire_ms,
                        idle,
                        freq,
                        payload,
                        decoded,
                    })));
                }
            }
        }
    }
}

/// A module type's name from its 64-bit id.
fn module_name(id: u64) -> String {
    const SET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = id >> 10;
    let mut name = [0u8; 9];
    for c in name.iter_mut().rev() {
        *c = SET[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// A module value in the self-describing format (opcode, value … until opcode 0).
fn skip_module_value<S: Src>(s: &mut S) -> Result<()> {
    loop {
        match s.len()? {
            0 => return Ok(()),
            1 | 2 => {
                s.len()?;
            }
            3 => s.skip(4)?,
            4 => s.skip(8)?,
            5 => s.skip_string()?,
            op => return Err(s.corrupt(&format!("unknown module value opcode {op}"))),
        }
    }
}

/// Where value bytes come from: a stream being read for the first time, or a payload in memory.
trait Src {
    fn byte(&mut self) -> Result<u8>;
    fn fill(&mut self, out: &mut [u8]) -> Result<()>;
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.fill(&mut v)?;
        Ok(v)
    }
    fn skip(&mut self, n: usize) -> Result<()>;
    fn at(&self) -> u64;

    fn corrupt(&self, what: &str) -> ReadError {
        ReadError::Corrupt {
            at: self.at(),
            what: what.to_string(),
        }
    }

    fn i64_le(&mut self) -> Result<i64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(i64::from_le_bytes(b))
    }

    /// A length, or the special encoding of a string (`Err(kind)` in the inner result).
    fn len_or_enc(&mut self) -> Result<std::result::Result<u64, u8>> {
        let b = self.byte()?;
        Ok(match b >> 6 {
            0 => Ok((b & 0x3f) as u64),
            1 => Ok((((b & 0x3f) as u64) << 8) | self.byte()? as u64),
            2 if b == 0x80 => {
                let mut x = [0u8; 4];
                self.fill(&mut x)?;
                Ok(u32::from_be_bytes(x) as u64)
            }
            2 if b == 0x81 => {
                let mut x = [0u8; 8];
                self.fill(&mut x)?;
                Ok(u64::from_be_bytes(x))
            }
            2 => return Err(self.corrupt(&format!("unknown length prefix {b:#04x}"))),
            _ => Err(b & 0x3f),
        })
    }

    fn len(&mut self) -> Result<u64> {
        match self.len_or_enc()? {
            Ok(n) => Ok(n),
            Err(e) => Err(self.corrupt(&format!("an encoded string ({e}) where a length belongs"))),
        }
    }

    /// A count of things that follow, bounded so a corrupt length cannot exhaust memory.
    fn count(&mut self) -> Result<usize> {
        let n = self.len()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n < 1 << 40)
            .ok_or_else(|| self.corrupt(&format!("implausible count {n}")))
    }

    fn string(&mut self) -> Result<Vec<u8>> {
        match self.len_or_enc()? {
            Ok(n) => {
                let n = self.bounded(n)?;
                self.take(n)
            }
            Err(0) => Ok((self.byte()? as i8).to_string().into_bytes()),
            Err(1) => {
                let mut b = [0u8; 2];
                self.fill(&mut b)?;
                Ok(i16::from_le_bytes(b).to_string().into_bytes())
            }
            Err(2) => {
                let mut b = [0u8; 4];
                self.fill(&mut b)?;
                Ok(i32::from_le_bytes(b).to_string().into_bytes())
            }
            Err(3) => {
                let clen = self.len()?;
                let len = self.len()?;
                let clen = self.bounded(clen)?;
                let len = self.bounded(len)?;
                let c = self.take(clen)?;
                lzf_decompress(&c, len)
                    .ok_or_else(|| self.corrupt("an LZF string does not decompress"))
            }
            Err(e) => Err(self.corrupt(&format!("unknown string encoding {e}"))),
        }
    }

    fn skip_string(&mut self) -> Result<()> {
        match self.len_or_enc()? {
            Ok(n) => {
                let n = self.bounded(n)?;
                self.skip(n)
            }
            Err(0) => self.skip(1),
            Err(1) => self.skip(2),
            Err(2) => self.skip(4),
            Err(3) => {
                let clen = self.len()?;
                self.len()?;
                let clen = self.bounded(clen)?;
                self.skip(clen)
            }
            Err(e) => Err(self.corrupt(&format!("unknown string encoding {e}"))),
        }
    }

    fn bounded(&self, n: u64) -> Result<usize> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= 1 << 36)
            .ok_or_else(|| self.corrupt(&format!("implausible string length {n}")))
    }
}

struct Stream<R: Read> {
    r: BufReader<R>,
    at: u64,
    crc: Option<Crc>,
    capture: Option<Vec<u8>>,
}

impl<R: Read> Stream<R> {
    fn io(&self, e: std::io::Error) -> ReadError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Truncated(self.at)
        } else {
            ReadError::Io {
                at: self.at,
                source: e,
            }
        }
    }
}

impl<R: Read> Src for Stream<R> {
    /// Grows the buffer as bytes arrive, so a corrupt length fails at the end of the data, not
    /// in one huge allocation.
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n.min(1 << 20));
        while v.len() < n {
            let start = v.len();
            v.resize(start + (n - start).min(1 << 20), 0);
            self.fill(&mut v[start..])?;
        }
        Ok(v)
    }

    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        if let Err(e) = self.r.read_exact(out) {
            return Err(self.io(e));
        }
        self.at += out.len() as u64;
        if let Some(c) = self.crc.as_mut() {
            c.update(out);
        }
        if let Some(c) = self.capture.as_mut() {
            c.extend_from_slice(out);
        }
        Ok(())
    }

    fn skip(&mut self, mut n: usize) -> Result<()> {
        while n > 0 {
            let buf = match self.r.fill_buf() {
                Ok(b) => b,
                Err(e) => return Err(self.io(e)),
            };
            if buf.is_empty() {
                return Err(ReadError::Truncated(self.at));
            }
            let k = buf.len().min(n);
            if let Some(c) = self.crc.as_mut() {
                c.update(&buf[..k]);
            }
            if let Some(c) = self.capture.as_mut() {
                c.extend_from_slice(&buf[..k]);
            }
            self.r.consume(k);
            self.at += k as u64;
            n -= k;
        }
        Ok(())
    }

    fn at(&self) -> u64 {
        self.at
    }
}

struct Slice<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Src for Slice<'_> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(ReadError::Truncated(self.buf.len() as u64))?;
        let v = self.buf[self.pos..end].to_vec();
        self.pos = end;
        Ok(v)
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(ReadError::Truncated(self.pos as u64))?;
        self.pos += 1;
        Ok(b)
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        let end = self.pos.saturating_add(out.len());
        let src = self
            .buf
            .get(self.pos..end)
            .ok_or(ReadError::Truncated(self.buf.len() as u64))?;
        out.copy_from_slice(src);
        self.pos = end;
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        if self.pos.saturating_add(n) > self.buf.len() {
            return Err(ReadError::Truncated(self.buf.len() as u64));
        }
        self.pos += n;
        Ok(())
    }

    fn at(&self) -> u64 {
        self.pos as u64
    }
}

/// LZF decompression (the format Redis compresses long strings with).
fn lzf_decompress(input: &[u8], out_len: usize) -> Option<Vec<u8>> {
    // A back reference of three input bytes yields at most 264: no more is reserved than the
    // input could give, however large a length a corrupt string claims.
    let mut out = Vec::with_capacity(out_len.min(input.len().saturating_mul(90)).min(1 << 24));
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            out.extend_from_slice(input.get(i..i + run)?);
            i += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(i)? as usize;
                i += 1;
            }
            let back = ((ctrl & 0x1f) << 8) + *input.get(i)? as usize + 1;
            i += 1;
            let mut from = out.len().checked_sub(back)?;
            let mut left = len + 2;
            if out.len() + left > out_len {
                return None;
            }
            // A reference may overlap what it writes (a run repeating its last `back` bytes):
            // copy at most `back` bytes at a time, each chunk already written.
            while left > 0 {
                let n = left.min(out.len() - from);
                out.extend_from_within(from..from + n);
                from += n;
                left -= n;
            }
        }
        if out.len() > out_len {
            return None;
        }
    }
    (out.len() == out_len).then_some(out)
}

/// A stream ID.
pub type StreamId = (u64, u64);

/// A stream entry: its ID and field-value pairs.
pub type StreamEntry = (StreamId, Vec<(Vec<u8>, Vec<u8>)>);

/// A decoded value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, f64)>),
    /// Field, value and the field's expiry (Unix ms; Redis 7.4 hash field expiry).
    Hash(Vec<(Vec<u8>, Vec<u8>, Option<u64>)>),
    Stream(Box<StreamValue>),
}

/// A decoded stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamValue {
    /// Live entries in ID order.
    pub entries: Vec<StreamEntry>,
    /// The stream's length as stored.
    pub length: u64,
    /// The last ID ever added.
    pub last_id: StreamId,
    /// Consumer groups.
    pub groups: Vec<StreamGroup>,
}

/// A consumer group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamGroup {
    pub name: Vec<u8>,
    pub last_id: StreamId,
    /// Pending entries: ID and delivery count.
    pub pending: Vec<(StreamId, u64)>,
    /// Consumers and the IDs pending for each.
    pub consumers: Vec<(Vec<u8>, Vec<StreamId>)>,
}

/// Walks one value of type `t`; decodes it when `decode`, else only consumes its bytes.
fn walk<S: Src>(s: &mut S, t: u8, decode: bool) -> Result<Option<Value>> {
    macro_rules! str_ {
        () => {
            if decode {
                s.string()?
            } else {
                s.skip_string()?;
                Vec::new()
            }
        };
    }
    let v = match t {
        STRING => Value::String(str_!()),
        LIST | SET => {
            let n = s.count()?;
            let mut items = Vec::with_capacity(if decode { n.min(1 << 16) } else { 0 });
            for _ in 0..n {
                let x = str_!();
                if decode {
                    items.push(x);
                }
            }
            if t == LIST {
                Value::List(items)
            } else {
                Value::Set(items)
            }
        }
        ZSET | ZSET_2 => {
            let n = s.count()?;
            let mut items = Vec::new();
            for _ in 0..n {
                let m = str_!();
                let score = if t == ZSET_2 {
                    let mut b = [0u8; 8];
                    s.fill(&mut b)?;
                    f64::from_le_bytes(b)
                } else {
                    let l = s.byte()?;
                    match l {
                        253 => f64::NAN,
                        254 => f64::INFINITY,
                        255 => f64::NEG_INFINITY,
                        l => {
                            let b = s.take(l as usize)?;
                            parse_f64(&b)
                                .ok_or_else(|| s.corrupt("a sorted set score is not a number"))?
                        }
                    }
                };
                if decode {
                    items.push((m, score));
                }
            }
            Value::ZSet(items)
        }
        HASH => {
            let n = s.count()?;
            let mut items = Vec::new();
            for _ in 0..n {
                let f = str_!();
                let v = str_!();
                if decode {
                    items.push((f, v, None));
                }
            }
            Value::Hash(items)
        }
        HASH_METADATA | HASH_METADATA_PRE_GA => {
            let min = if t == HASH_METADATA {
                s.i64_le()? as u64
            } else {
                0
            };
            let n = s.count()?;
            let mut items = Vec::new();
            for _ in 0..n {
                let ttl = s.len()?;
                let f = str_!();
                let v = str_!();
                let at = match (ttl, t) {
                    (0, _) => None,
                    (ttl, HASH_METADATA) => Some(ttl.wrapping_add(min).wrapping_sub(1)),
                    (ttl, _) => Some(ttl),
                };
                if decode {
                    items.push((f, v, at));
                }
            }
            Value::Hash(items)
        }
        HASH_ZIPMAP
        | LIST_ZIPLIST
        | SET_INTSET
        | ZSET_ZIPLIST
        | HASH_ZIPLIST
        | HASH_LISTPACK
        | ZSET_LISTPACK
        | SET_LISTPACK
        | HASH_LISTPACK_EX
        | HASH_LISTPACK_EX_PRE_GA => {
            if t == HASH_LISTPACK_EX {
                s.skip(8)?;
            }
            if !decode {
                s.skip_string()?;
                return Ok(None);
            }
            let blob = s.string()?;
            let bad = |what: &str| s.corrupt(&format!("{what} ({} bytes)", blob.len()));
            match t {
                HASH_ZIPMAP => Value::Hash(
                    zipmap(&blob)
                        .ok_or_else(|| bad("a zipmap is damaged"))?
                        .into_iter()
                        .map(|(f, v)| (f, v, None))
                        .collect(),
                ),
                SET_INTSET => Value::Set(intset(&blob).ok_or_else(|| bad("an intset is damaged"))?),
                LIST_ZIPLIST | ZSET_ZIPLIST | HASH_ZIPLIST => {
                    let items = ziplist(&blob).ok_or_else(|| bad("a ziplist is damaged"))?;
                    from_flat(t, items).ok_or_else(|| bad("a ziplist has an odd element count"))?
                }
                _ => {
                    let items: Vec<Vec<u8>> = listpack(&blob)
                        .ok_or_else(|| bad("a listpack is damaged"))?
                        .into_iter()
                        .map(LpVal::into_bytes)
                        .collect();
                    from_flat(t, items)
                        .ok_or_else(|| bad("a listpack has the wrong element count"))?
                }
            }
        }
        LIST_QUICKLIST | LIST_QUICKLIST_2 => {
            let n = s.count()?;
            let mut items = Vec::new();
            for _ in 0..n {
                let container = if t == LIST_QUICKLIST_2 { s.len()? } else { 2 };
                if !decode {
                    s.skip_string()?;
                    continue;
                }
                let blob = s.string()?;
                match (t, container) {
                    (LIST_QUICKLIST_2, 1) => items.push(blob),
                    (LIST_QUICKLIST_2, 2) => items.extend(
                        listpack(&blob)
                            .ok_or_else(|| s.corrupt("a quicklist listpack is damaged"))?
                            .into_iter()
                            .map(LpVal::into_bytes),
                    ),
                    (LIST_QUICKLIST, _) => items.extend(
                        ziplist(&blob)
                            .ok_or_else(|| s.corrupt("a quicklist ziplist is damaged"))?,
                    ),
                    (_, c) => return Err(s.corrupt(&format!("unknown quicklist container {c}"))),
                }
            }
            Value::List(items)
        }
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => {
            return stream(s, t, decode).map(|v| v.map(|v| Value::Stream(Box::new(v))));
        }
        MODULE_PRE_GA | MODULE_2 => {
            return Err(s.corrupt("a module value (read it with `replace`)"));
        }
        t => return Err(s.corrupt(&format!("unknown value type {t}"))),
    };
    Ok(decode.then_some(v))
}

fn stream<S: Src>(s: &mut S, t: u8, decode: bool) -> Result<Option<StreamValue>> {
    let mut v = StreamValue::default();
    let nodes = s.count()?;
    for _ in 0..nodes {
        let master = if decode {
            s.string()?
        } else {
            s.skip_string()?;
            Vec::new()
        };
        if !decode {
            s.skip_string()?;
            continue;
        }
        if master.len() != 16 {
            return Err(s.corrupt("a stream node key is not a stream ID"));
        }
        let base = (
            u64::from_be_bytes(master[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(master[8..].try_into().expect("8 bytes")),
        );
        let lp = s.string()?;
        let items = listpack(&lp).ok_or_else(|| s.corrupt("a stream listpack is damaged"))?;
        stream_node(base, &items, &mut v.entries)
            .ok_or_else(|| s.corrupt("a stream listpack does not hold stream entries"))?;
    }
    v.length = s.len()?;
    v.last_id = (s.len()?, s.len()?);
    if t >= STREAM_LISTPACKS_2 {
        for _ in 0..5 {
            s.len()?; // first id, max deleted id, entries added
        }
    }
    let groups = s.count()?;
    for _ in 0..groups {
        let mut g = StreamGroup {
            name: str_or_skip(s, decode)?,
            last_id: (s.len()?, s.len()?),
            ..Default::default()
        };
        if t >= STREAM_LISTPACKS_2 {
            s.len()?; // entries read
        }
        let pel = s.count()?;
        for _ in 0..pel {
            let id = raw_id(s)?;
            s.skip(8)?; // delivery time
            let count = s.len()?;
            g.pending.push((id, count));
        }
        let consumers = s.count()?;
        for _ in 0..consumers {
            let name = str_or_skip(s, decode)?;
            s.skip(8)?; // seen time
            if t >= STREAM_LISTPACKS_3 {
                s.skip(8)?; // active time
            }
            let n = s.count()?;
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(raw_id(s)?);
            }
            g.consumers.push((name, ids));
        }
        v.groups.push(g);
    }
    Ok(decode.then_some(v))
}

fn str_or_skip<S: Src>(s: &mut S, decode: bool) -> Result<Vec<u8>> {
    if decode {
        s.string()
    } else {
        s.skip_string().map(|_| Vec::new())
    }
}

fn raw_id<S: Src>(s: &mut S) -> Result<StreamId> {
    let mut b = [0u8; 16];
    s.fill(&mut b)?;
    Ok((
        u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
    ))
}

/// The entries of one stream listpack node (master entry, then entries; see t_stream.c's layout).
fn stream_node(base: StreamId, items: &[LpVal], out: &mut Vec<StreamEntry>) -> Option<()> {
    let int = |i: usize| items.get(i).and_then(LpVal::as_int);
    let count = int(0)? as usize;
    let deleted = int(1)? as usize;
    let nfields = int(2)? as usize;
    let master_fields: Vec<Vec<u8>> = (0..nfields)
        .map(|k| items.get(3 + k).map(|v| v.clone().into_bytes()))
        .collect::<Option<_>>()?;
    let mut i = 3 + nfields + 1; // the master entry's terminating 0
    for _ in 0..count + deleted {
        let flags = int(i)?;
        let ms = int(i + 1)? as u64;
        let seq = int(i + 2)? as u64;
        i += 3;
        let mut fields = Vec::new();
        if flags & 2 != 0 {
            for f in &master_fields {
                fields.push((f.clone(), items.get(i)?.clone().into_bytes()));
                i += 1;
            }
        } else {
            let n = int(i)? as usize;
            i += 1;
            for _ in 0..n {
                fields.push((
                    items.get(i)?.clone().into_bytes(),
                    items.get(i + 1)?.clone().into_bytes(),
                ));
                i += 2;
            }
        }
        i += 1; // lp-count
        if flags & 1 == 0 {
            // Deltas from the master ID; the sequence delta may be negative.
            out.push(((base.0.wrapping_add(ms), base.1.wrapping_add(seq)), fields));
        }
    }
    (i == items.len()).then_some(())
}

fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    match s {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

/// Pairs or triples of a flat element list as the value of type `t`.
fn from_flat(t: u8, items: Vec<Vec<u8>>) -> Option<Value> {
    let width = match t {
        LIST_ZIPLIST | SET_LISTPACK => 1,
        HASH_LISTPACK_EX | HASH_LISTPACK_EX_PRE_GA => 3,
        _ => 2,
    };
    if !items.len().is_multiple_of(width) {
        return None;
    }
    match t {
        LIST_ZIPLIST => return Some(Value::List(items)),
        SET_LISTPACK => return Some(Value::Set(items)),
        _ => {}
    }
    let n = items.len() / width;
    let mut it = items.into_iter();
    // Whole groups only: the length was checked, so `next` never runs dry.
    let mut next = || it.next().unwrap_or_default();
    Some(match t {
        ZSET_ZIPLIST | ZSET_LISTPACK => Value::ZSet(
            (0..n)
                .map(|_| {
                    let m = next();
                    Some((m, parse_f64(&next())?))
                })
                .collect::<Option<_>>()?,
        ),
        HASH_ZIPLIST | HASH_LISTPACK => {
            Value::Hash((0..n).map(|_| (next(), next(), None)).collect())
        }
        HASH_LISTPACK_EX | HASH_LISTPACK_EX_PRE_GA => Value::Hash(
            (0..n)
                .map(|_| {
                    let (f, v) = (next(), next());
                    let ttl: u64 = std::str::from_utf8(&next()).ok()?.parse().ok()?;
                    Some((f, v, (ttl != 0).then_some(ttl)))
                })
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// A listpack element.
#[derive(Clone, Debug)]
enum LpVal {
    Int(i64),
    Str(Vec<u8>),
}

impl LpVal {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            LpVal::Int(i) => i.to_string().into_bytes(),
            LpVal::Str(s) => s,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            LpVal::Int(i) => Some(*i),
            LpVal::Str(s) => std::str::from_utf8(s).ok()?.parse().ok(),
        }
    }
}

fn listpack(b: &[u8]) -> Option<Vec<LpVal>> {
    let total = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if total != b.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 6;
    loop {
        let e = *b.get(i)?;
        if e == 0xff {
            return (i + 1 == b.len()).then_some(out);
        }
        let (v, n) = if e & 0x80 == 0 {
            (LpVal::Int((e & 0x7f) as i64), 1)
        } else if e & 0xc0 == 0x80 {
            let l = (e & 0x3f) as usize;
            (LpVal::Str(b.get(i + 1..i + 1 + l)?.to_vec()), 1 + l)
        } else if e & 0xe0 == 0xc0 {
            let raw = (((e & 0x1f) as u16) << 8) | *b.get(i + 1)? as u16;
            (LpVal::Int(((raw << 3) as i16 >> 3) as i64), 2)
        } else if e & 0xf0 == 0xe0 {
            let l = (((e & 0x0f) as usize) << 8) | *b.get(i + 1)? as usize;
            (LpVal::Str(b.get(i + 2..i + 2 + l)?.to_vec()), 2 + l)
        } else {
            let le = |k: usize| -> Option<Vec<u8>> { b.get(i + 1..i + 1 + k).map(<[u8]>::to_vec) };
            match e {
                0xf0 => {
                    let l = u32::from_le_bytes(le(4)?.try_into().ok()?) as usize;
                    (LpVal::Str(b.get(i + 5..i + 5 + l)?.to_vec()), 5 + l)
                }
                0xf1 => (
                    LpVal::Int(i16::from_le_bytes(le(2)?.try_into().ok()?) as i64),
                    3,
                ),
                0xf2 => {
                    let x = le(3)?;
                    let v = i32::from_le_bytes([0, x[0], x[1], x[2]]) >> 8;
                    (LpVal::Int(v as i64), 4)
                }
                0xf3 => (
                    LpVal::Int(i32::from_le_bytes(le(4)?.try_into().ok()?) as i64),
                    5,
                ),
                0xf4 => (LpVal::Int(i64::from_le_bytes(le(8)?.try_into().ok()?)), 9),
                _ => return None,
            }
        };
        let backlen = match n {
            0..128 => 1,
            128..16384 => 2,
            16384..2097152 => 3,
            2097152..268435456 => 4,
            _ => 5,
        };
        i += n + backlen;
        out.push(v);
    }
}

fn ziplist(b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let total = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if total != b.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 10;
    loop {
        if *b.get(i)? == 0xff {
            return (i + 1 == b.len()).then_some(out);
        }
        i += if b[i] == 0xfe { 5 } else { 1 };
        let e = *b.get(i)?;
        let get = |from: usize, k: usize| b.get(from..from + k);
        let (v, n): (Vec<u8>, usize) = match e >> 6 {
            0 => {
                let l = (e & 0x3f) as usize;
                (get(i + 1, l)?.to_vec(), 1 + l)
            }
            1 => {
                let l = (((e & 0x3f) as usize) << 8) | *b.get(i + 1)? as usize;
                (get(i + 2, l)?.to_vec(), 2 + l)
            }
            2 => {
                let l = u32::from_be_bytes(get(i + 1, 4)?.try_into().ok()?) as usize;
                (get(i + 5, l)?.to_vec(), 5 + l)
            }
            _ => {
                let int = |k: usize| get(i + 1, k);
                let (x, n) = match e {
                    0xc0 => (i16::from_le_bytes(int(2)?.try_into().ok()?) as i64, 3),
                    0xd0 => (i32::from_le_bytes(int(4)?.try_into().ok()?) as i64, 5),
                    0xe0 => (i64::from_le_bytes(int(8)?.try_into().ok()?), 9),
                    0xf0 => {
                        let x = int(3)?;
                        ((i32::from_le_bytes([0, x[0], x[1], x[2]]) >> 8) as i64, 4)
                    }
                    0xfe => (*int(1)?.first()? as i8 as i64, 2),
                    0xf1..=0xfd => ((e & 0x0f) as i64 - 1, 1),
                    _ => return None,
                };
                (x.to_string().into_bytes(), n)
            }
        };
        out.push(v);
        i += n;
    }
}

fn zipmap(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut i = 1;
    let len = |i: &mut usize| -> Option<usize> {
        let f = *b.get(*i)?;
        match f {
            0..=253 => {
                *i += 1;
                Some(f as usize)
            }
            254 => {
                let l = u32::from_le_bytes(b.get(*i + 1..*i + 5)?.try_into().ok()?) as usize;
                *i += 5;
                Some(l)
            }
            _ => None,
        }
    };
    loop {
        if *b.get(i)? == 0xff {
            return Some(out);
        }
        let kl = len(&mut i)?;
        let k = b.get(i..i + kl)?.to_vec();
        i += kl;
        let vl = len(&mut i)?;
        let free = *b.get(i)? as usize;
        i += 1;
        let v = b.get(i..i + vl)?.to_vec();
        i += vl + free;
        out.push((k, v));
    }
}

fn intset(b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let width = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let n = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    if !matches!(width, 2 | 4 | 8) || b.len() != 8 + width * n {
        return None;
    }
    Some(
        b[8..]
            .chunks(width)
            .map(|c| {
                let v = match width {
                    2 => i16::from_le_bytes([c[0], c[1]]) as i64,
                    4 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                    _ => i64::from_le_bytes(c.try_into().expect("8 bytes")),
                };
                v.to_string().into_bytes()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DatasetDigest;

    fn read_all(bytes: &[u8]) -> Result<Vec<Item>> {
        let mut r = RdbReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(i) = r.next_item()? {
            out.push(i);
        }
        Ok(out)
    }

    fn vector(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/rdb-vectors")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn entries(items: &[Item]) -> Vec<(String, Value)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Entry(e) => Some((e.key_lossy(), e.value().unwrap())),
                _ => None,
            })
            .collect()
    }

    fn strs(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// A file as the published formats lay it out: the magic, a `redis-ver` aux field,
    /// `SELECTDB 0`, `body` (type, key, value), EOF and the CRC-64 trailer.
    fn file(magic: &str, body: &[u8]) -> Vec<u8> {
        let mut out = magic.as_bytes().to_vec();
        out.extend_from_slice(&[OP_AUX, 9]);
        out.extend_from_slice(b"redis-ver");
        out.extend_from_slice(&[5]);
        out.extend_from_slice(b"9.0.0");
        out.extend_from_slice(&[OP_SELECTDB, 0]);
        out.extend_from_slice(body);
        out.push(OP_EOF);
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Redis, &out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `SET k v` and, after it, a value of type `t` under key `odd` (its bytes: `rest`).
    fn with_type(magic: &str, t: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![STRING, 1, b'k', 1, b'v', t, 3];
        body.extend_from_slice(b"odd");
        body.extend_from_slice(rest);
        file(magic, &body)
    }

    /// Valkey 9's files (`VALKEY080`): Redis 7.2's types decode as they are; type 22 (a hash
    /// with field expiries, not Redis 7.4's 22) and the slot-import opcode are refused by name,
    /// after the keys before them; `VALKEY` with a version of Redis's range, or past 80, is not
    /// read. The verifier takes the same files.
    #[test]
    fn valkey_9_files_decode_or_refuse_by_key() {
        let plain = file("VALKEY080", &[STRING, 1, b'k', 1, b'v']);
        let items = read_all(&plain).unwrap();
        assert_eq!(
            entries(&items),
            vec![("k".into(), Value::String(b"v".to_vec()))]
        );
        assert_eq!(RdbReader::new(&plain[..]).unwrap().version(), 80);
        let mut v = crate::rdb::RdbVerifier::new();
        v.update(&plain).unwrap();
        assert_eq!(v.finish().unwrap().version, 80);

        let hash2 = with_type("VALKEY080", 22, &[1, 1, b'f', 1, b'v']);
        let mut r = RdbReader::new(&hash2[..]).unwrap();
        assert!(matches!(r.next_item(), Ok(Some(Item::Aux(..)))));
        assert!(matches!(r.next_item(), Ok(Some(Item::Entry(_)))));
        let e = r.next_item().unwrap_err();
        assert!(matches!(e, ReadError::Unsupported { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("\"odd\"") && text.contains("type 22") && text.contains("VALKEY080"),
            "{text}"
        );

        let import = file("VALKEY080", &[OP_SLOT_IMPORT, 0]);
        let e = read_all(&import).unwrap_err();
        assert!(e.to_string().contains("slot import"), "{e}");

        for bad in ["VALKEY011", "VALKEY081", "VALKEY999"] {
            let f = file(bad, &[]);
            assert!(matches!(read_all(&f), Err(ReadError::Version(_))), "{bad}");
            let mut v = crate::rdb::RdbVerifier::new();
            let refused = v.update(&f).and_then(|()| v.finish().map(drop));
            assert!(refused.is_err(), "{bad}");
        }
    }

    /// Redis's 13: the types of 12 decode; one past them is refused by key, not taken for
    /// corruption; in a 12 file the same byte is corruption. 14 is not read.
    #[test]
    fn a_redis_13_file_decodes_what_12_has_and_refuses_new_types_by_key() {
        let plain = file("REDIS0013", &[STRING, 1, b'k', 1, b'v']);
        assert_eq!(entries(&read_all(&plain).unwrap()).len(), 1);
        let newer = with_type("REDIS0013", 26, &[0]);
        let e = read_all(&newer).unwrap_err();
        assert!(matches!(e, ReadError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("type 26, new in RDB 13"), "{e}");
        let old = with_type("REDIS0012", 26, &[0]);
        assert!(matches!(read_all(&old), Err(ReadError::Corrupt { .. })));
        // Redis 7.4's 22 in a REDIS file is Redis's hash with field expiries, read as such.
        let redis22 = with_type("REDIS0012", 22, &[1, 1, b'f', 1, b'v', 0]);
        assert!(!matches!(
            read_all(&redis22),
            Err(ReadError::Unsupported { .. })
        ));
        assert!(matches!(
            read_all(&file("REDIS0014", &[])),
            Err(ReadError::Version(14))
        ));
    }

    #[test]
    fn lzf_round_trip_of_a_back_reference() {
        // Literal "abc" then a back reference of length 6 at distance 3: "abcabcabc".
        let c = [2, b'a', b'b', b'c', (4 << 5), 2];
        assert_eq!(lzf_decompress(&c, 9).unwrap(), b"abcabcabc");
        assert!(lzf_decompress(&c, 8).is_none());
        assert!(lzf_decompress(&[2, b'a'], 3).is_none());
    }

    /// The chunked copy of back references gives what a byte-at-a-time copy gives, on streams
    /// with every distance and length, overlapping or not.
    #[test]
    fn lzf_back_references_copy_as_byte_by_byte_would() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..300 {
            let (mut stream, mut want) = (Vec::new(), Vec::<u8>::new());
            for _ in 0..40 {
                if want.is_empty() || next(3) == 0 {
                    let run = 1 + next(32);
                    stream.push((run - 1) as u8);
                    for _ in 0..run {
                        let b = next(256) as u8;
                        stream.push(b);
                        want.push(b);
                    }
                } else {
                    let back = 1 + next(want.len().min(8192));
                    let len = 3 + next(262);
                    let code = len - 2;
                    let hi = ((back - 1) >> 8) as u8;
                    if code < 7 {
                        stream.push(((code as u8) << 5) | hi);
                    } else {
                        stream.push((7 << 5) | hi);
                        stream.push((code - 7) as u8);
                    }
                    stream.push(((back - 1) & 0xff) as u8);
                    let start = want.len() - back;
                    for k in 0..len {
                        let b = want[start + k];
                        want.push(b);
                    }
                }
            }
            assert_eq!(
                lzf_decompress(&stream, want.len()).as_deref(),
                Some(&want[..])
            );
            assert!(lzf_decompress(&stream, want.len() - 1).is_none());
        }
    }

    #[test]
    fn old_encodings_decode() {
        let items = read_all(&vector("encodings.rdb")).unwrap();
        let all = entries(&items);
        let get = |k: &str| all.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(all.len(), 13, "{all:?}");
        assert_eq!(
            get("compressible").map(
                |v| matches!(v, Value::String(s) if s.len() > 100 && s.iter().all(|c| *c == b'a'))
            ),
            Some(true)
        );
        assert_eq!(get("number"), Some(Value::String(b"10".to_vec())));
        match get("list_zipped").unwrap() {
            Value::List(l) => assert_eq!(
                l,
                strs(&["1", "2", "3", "a", "b", "c", "100000", "6000000000"])
            ),
            v => panic!("{v:?}"),
        }
        match get("set_zipped_1").unwrap() {
            Value::Set(mut s) => {
                s.sort();
                assert_eq!(s, strs(&["1", "2", "3", "4"]));
            }
            v => panic!("{v:?}"),
        }
        match get("hash_zipped").unwrap() {
            Value::Hash(h) => assert_eq!(
                h.into_iter().map(|(f, v, _)| (f, v)).collect::<Vec<_>>(),
                vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"2".to_vec()),
                    (b"c".to_vec(), b"3".to_vec())
                ]
            ),
            v => panic!("{v:?}"),
        }
        match get("zset_zipped").unwrap() {
            Value::ZSet(z) => assert_eq!(
                z,
                vec![
                    (b"a".to_vec(), 1.0),
                    (b"b".to_vec(), 2.0),
                    (b"c".to_vec(), 3.0)
                ]
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn every_vector_reads_or_is_refused() {
        for ok in [
            "hash-zipmap.rdb",
            "hash-ziplist.rdb",
            "list-quicklist.rdb",
            "zset-ziplist.rdb",
            "scriptbackup.rdb",
        ] {
            let items = read_all(&vector(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
            for (k, _) in entries(&items) {
                assert!(!k.is_empty(), "{ok}");
            }
        }
        let items = read_all(&vector("hash-zipmap.rdb")).unwrap();
        match &entries(&items)[0].1 {
            Value::Hash(h) => assert_eq!(h.len(), 2, "{h:?}"),
            v => panic!("{v:?}"),
        }
        let bad = read_all(&vector("corrupt_ziplist.rdb")).and_then(|items| {
            items
                .iter()
                .filter_map(|i| match i {
                    Item::Entry(e) => Some(e.value()),
                    _ => None,
                })
                .collect::<Result<Vec<_>>>()
        });
        assert!(bad.is_err(), "a damaged ziplist must not decode");
    }

    #[test]
    fn truncation_and_checksum_damage_are_named() {
        let good = vector("hash-ziplist.rdb");
        for cut in [5, 12, good.len() / 2, good.len() - 3] {
            match read_all(&good[..cut]) {
                Err(ReadError::Truncated(_) | ReadError::BadMagic) => {}
                r => panic!("cut at {cut}: {r:?}"),
            }
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 12] ^= 0x01; // inside the body, before EOF and the trailer
        assert!(read_all(&bad).is_err());
    }

    #[test]
    fn a_decoding_reader_gives_the_values_the_payloads_hold() {
        let bytes = vector("list-quicklist.rdb");
        let mut plain = RdbReader::new(&bytes[..]).unwrap();
        let mut one_pass = RdbReader::new(&bytes[..]).unwrap().decoding();
        let mut n = 0;
        while let Some(a) = plain.next_item().unwrap() {
            let b = one_pass.next_item().unwrap().unwrap();
            if let (Item::Entry(a), Item::Entry(b)) = (a, b) {
                assert!(b.payload.is_empty());
                assert_eq!(Some(a.value().unwrap()), b.decoded);
                n += 1;
            }
        }
        assert!(n > 0);
        assert!(one_pass.next_item().unwrap().is_none());
    }

    #[test]
    fn only_a_checking_reader_computes_the_trailer() {
        let mut bad = vector("hash-ziplist.rdb");
        let n = bad.len();
        bad[n - 1] ^= 0x01; // the trailer itself
        let read = |r: &mut RdbReader<&[u8]>| -> Result<()> {
            while r.next_item()?.is_some() {}
            Ok(())
        };
        assert!(matches!(
            read(&mut RdbReader::new(&bad[..]).unwrap()),
            Err(ReadError::Checksum { .. })
        ));
        read(&mut RdbReader::checked_elsewhere(&bad[..]).unwrap()).unwrap();
    }

    #[test]
    fn damaged_bytes_anywhere_give_errors_not_panics() {
        // Checksums off in this file, so every damaged value reaches the decoder.
        let good = vector("encodings.rdb");
        for at in 9..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                if let Ok(items) = read_all(&bad) {
                    for i in items {
                        if let Item::Entry(e) = i {
                            let _ = e.value();
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dump_payload_carries_version_and_checksum() {
        let e = Entry {
            db: 0,
            key: b"k".to_vec(),
            expire_ms: None,
            idle: None,
            freq: None,
            payload: vec![0, 3, b'a', b'b', b'c'],
            decoded: None,
        };
        let p = e.dump_payload(10);
        assert_eq!(&p[..5], &e.payload[..]);
        assert_eq!(&p[5..7], &[10, 0]);
        let mut crc = Crc::new(CrcAlgorithm::Crc64Redis);
        crc.update(&p[..7]);
        assert_eq!(&p[7..], &crc.finalize().to_le_bytes());
    }

    #[test]
    fn module_names_decode() {
        // "MyType123" encoded as in RedisModule_CreateDataType, version 0.
        let set = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for c in b"MyType123" {
            id = (id << 6) | set.iter().position(|x| x == c).unwrap() as u64;
        }
        assert_eq!(module_name(id << 10), "MyType123");
    }

    #[test]
    fn digests_ignore_order_and_encoding() {
        let e = |key: &str| Entry {
            db: 0,
            key: key.as_bytes().to_vec(),
            expire_ms: None,
            idle: None,
            freq: None,
            payload: vec![0],
            decoded: None,
        };
        let mut a = DatasetDigest::default();
        a.add(&e("x"), &Value::Set(strs(&["1", "2"])));
        a.add(&e("y"), &Value::String(b"v".to_vec()));
        let mut b = DatasetDigest::default();
        b.add(&e("y"), &Value::String(b"v".to_vec()));
        b.add(&e("x"), &Value::Set(strs(&["2", "1"])));
        assert_eq!(a.finish(), b.finish());
        let mut c = DatasetDigest::default();
        c.add(&e("y"), &Value::String(b"w".to_vec()));
        c.add(&e("x"), &Value::Set(strs(&["2", "1"])));
        assert_ne!(a.finish(), c.finish());
        assert_eq!(a.finish()[0].keys, 2);
    }
}
