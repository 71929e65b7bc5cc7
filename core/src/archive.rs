//! The continuous archive's pure parts (DESIGN §13): segment names and headers, the scanner that
//! finds command boundaries in a replication stream (never inside `MULTI`/`EXEC`), the lookup
//! of an offset by time, and the search for commands.
//!
//! Offsets are the node's replication offsets. A segment holds the stream bytes after offset
//! `start` up to and including offset `end`; the next segment of the chain starts at `end`. A
//! base taken at offset `O` (the offset `+FULLRESYNC` announced) needs the bytes after `O`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{Codec, CodecChain};
use crate::ids::{ClusterId, ShardId};
use crate::keys::glob_match;
use crate::manifest::join_key;
use crate::resp::{Header, header};

/// The first line of every segment object (before its codecs are undone).
pub const SEGMENT_MAGIC: &[u8] = b"FLEETSNAP-SEGMENT 1\n";
/// The segment format this code writes and reads.
pub const SEGMENT_FORMAT: u32 = 1;
/// The largest header a reader accepts.
pub const MAX_HEADER: usize = 8 << 20;
/// The most stream bytes a reader accepts in one segment (a writer cuts far below this; one
/// command larger than its size cap makes a segment of its own).
pub const MAX_SEGMENT_STREAM: u64 = 1 << 30;
/// The most time samples a header may carry.
pub const MAX_SAMPLES: usize = 1 << 20;

/// What a segment says about itself: enough to list, order and check the archive from the
/// regions alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    /// [`SEGMENT_FORMAT`].
    pub format: u32,
    /// The cluster archived.
    pub cluster: ClusterId,
    /// The shard archived.
    pub shard: ShardId,
    /// The replication id the stream was on (the one after a promotion, once switched).
    pub replid: String,
    /// The offset before the first byte.
    pub start: u64,
    /// The offset after the last byte: a command boundary outside any transaction.
    pub end: u64,
    /// When the first byte was received (Unix ms).
    pub first_ms: i64,
    /// When the last byte was received (Unix ms).
    pub last_ms: i64,
    /// The logical database selected at `start`.
    pub db: u64,
    /// `(offset, unix ms)`: every command ending at or before `offset` (a command boundary)
    /// had been received by then. Ascending in both; the last is `(end, last_ms)`. Sampled at
    /// least every 100 ms while the stream flows.
    pub index: Vec<(u64, i64)>,
    /// sha256 of the stream bytes.
    pub sha256: String,
    /// The replication id the chain was on before this segment, when a promotion switched it
    /// at `start`.
    pub switched_from: Option<String>,
}

/// Why a segment or its name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SegmentError(pub String);

fn refuse(s: impl Into<String>) -> SegmentError {
    SegmentError(s.into())
}

/// Whether `s` is a replication id as Redis and Valkey write them: 40 hex digits.
pub fn is_replid(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The archive's directory of one shard inside a destination.
pub fn archive_dir(prefix: &str, cluster: &ClusterId, shard: &ShardId) -> String {
    join_key(prefix, &format!("{cluster}/archive/{shard}"))
}

/// Where a segment with this header and codec chain is stored, relative to the destination
/// root: `<cluster>/archive/<shard>/<replid>/<start>-<end>-<first_ms>-<last_ms>.seg<codecs>`,
/// offsets zero-padded to 20 digits so names sort in stream order; the times let a listing pick
/// segments by time without reading them.
pub fn segment_key(prefix: &str, h: &SegmentHeader, codecs: &CodecChain) -> String {
    format!(
        "{}/{}/{:020}-{:020}-{}-{}.seg{}",
        archive_dir(prefix, &h.cluster, &h.shard),
        h.replid,
        h.start,
        h.end,
        h.first_ms,
        h.last_ms,
        codecs.suffix()
    )
}

/// A segment as its stored name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentName {
    /// The full key.
    pub key: String,
    /// Replication id (its directory).
    pub replid: String,
    /// Offsets.
    pub start: u64,
    /// See [`SegmentHeader::end`].
    pub end: u64,
    /// Times (Unix ms).
    pub first_ms: i64,
    /// See [`SegmentHeader::last_ms`].
    pub last_ms: i64,
    /// The codecs its suffix names, to undo.
    pub codecs: CodecChain,
}

/// Reads a key listed under [`archive_dir`] as a segment name; `None` for a key that is not a
/// segment (a stray object is not an error), `Err` for one that claims to be and breaks the
/// rules (numbers out of order, an unknown codec).
pub fn parse_segment_key(dir: &str, key: &str) -> Option<Result<SegmentName, SegmentError>> {
    let rest = key.strip_prefix(dir)?.strip_prefix('/')?;
    let (replid, file) = rest.split_once('/')?;
    let (stem, suffix) = file.split_once(".seg")?;
    let parse = || -> Result<SegmentName, SegmentError> {
        if !is_replid(replid) {
            return Err(refuse(format!(
                "{key}: {replid:?} is not a replication id (40 hex digits)"
            )));
        }
        let parts: Vec<&str> = stem.split('-').collect();
        let nums: Vec<Option<i64>> = parts
            .iter()
            .map(|p| {
                (!p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse::<i64>().ok())
                    .flatten()
            })
            .collect();
        let [Some(start), Some(end), Some(first_ms), Some(last_ms)] = nums[..] else {
            return Err(refuse(format!(
                "{key}: a segment is named START-END-FIRSTMS-LASTMS.seg, in digits"
            )));
        };
        if end <= start || last_ms < first_ms {
            return Err(refuse(format!("{key}: its offsets or times run backwards")));
        }
        let mut codecs = Vec::new();
        for c in suffix.split('.').filter(|s| !s.is_empty()) {
            match c {
                "zst" if codecs.is_empty() => codecs.push(Codec::Zstd { level: 0 }),
                "age" if !codecs.contains(&Codec::Age) => codecs.push(Codec::Age),
                _ => {
                    return Err(refuse(format!(
                        "{key}: unknown codec suffix {suffix:?} (known: .zst, .age, .zst.age)"
                    )));
                }
            }
        }
        Ok(SegmentName {
            key: key.to_string(),
            replid: replid.to_string(),
            start: start as u64,
            end: end as u64,
            first_ms,
            last_ms,
            codecs: CodecChain(codecs),
        })
    };
    Some(parse())
}

impl SegmentHeader {
    /// Checks the header against itself and the stream bytes it describes.
    pub fn check(&self, stream: &[u8]) -> Result<(), SegmentError> {
        let at = format!("segment {}-{}", self.start, self.end);
        if self.format != SEGMENT_FORMAT {
            return Err(refuse(format!(
                "{at}: format {} (this build reads {SEGMENT_FORMAT}): use a newer fleetsnap",
                self.format
            )));
        }
        if !is_replid(&self.replid) || self.switched_from.as_deref().is_some_and(|r| !is_replid(r))
        {
            return Err(refuse(format!("{at}: a replication id is malformed")));
        }
        if self.end.checked_sub(self.start) != Some(stream.len() as u64) {
            return Err(refuse(format!(
                "{at}: {} stream bytes where its offsets say {}",
                stream.len(),
                self.end.saturating_sub(self.start)
            )));
        }
        if hex::encode(Sha256::digest(stream)) != self.sha256 {
            return Err(refuse(format!(
                "{at}: its stream does not match its sha256: the copy is damaged"
            )));
        }
        let mut last = (self.start, self.first_ms);
        for &(o, ms) in &self.index {
            if o < last.0 || o > self.end || ms < last.1 {
                return Err(refuse(format!("{at}: its time index runs backwards")));
            }
            last = (o, ms);
        }
        if self.index.last() != Some(&(self.end, self.last_ms)) {
            return Err(refuse(format!(
                "{at}: its time index does not end at its end"
            )));
        }
        Ok(())
    }
}

/// A segment's plain bytes: magic, header length, header JSON, stream.
pub fn encode_segment(h: &SegmentHeader, stream: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(h).expect("a header serialises");
    let mut out = Vec::with_capacity(SEGMENT_MAGIC.len() + 12 + head.len() + stream.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(format!("{}\n", head.len()).as_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(stream);
    out
}

/// Reads a segment's plain bytes back: the header, checked against the stream, and the stream.
pub fn decode_segment(bytes: &[u8]) -> Result<(SegmentHeader, &[u8]), SegmentError> {
    let rest = bytes
        .strip_prefix(SEGMENT_MAGIC)
        .ok_or_else(|| refuse("not a fleetsnap archive segment (no segment magic)"))?;
    let nl = rest
        .iter()
        .take(12)
        .position(|b| *b == b'\n')
        .ok_or_else(|| refuse("a segment header length is missing"))?;
    let len: usize = std::str::from_utf8(&rest[..nl])
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .filter(|n| *n <= MAX_HEADER)
        .ok_or_else(|| refuse("a segment header length is malformed or too large"))?;
    let rest = &rest[nl + 1..];
    if rest.len() < len {
        return Err(refuse("a segment ends inside its header"));
    }
    let (head, stream) = rest.split_at(len);
    let h: SegmentHeader = serde_json::from_slice(head)
        .map_err(|e| refuse(format!("a segment header is not valid: {e}")))?;
    if h.index.len() > MAX_SAMPLES {
        return Err(refuse("a segment header has too many time samples"));
    }
    h.check(stream)?;
    Ok((h, stream))
}

/// One complete command found by the [`Scanner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Offset before its first byte.
    pub start: u64,
    /// Offset after its last byte.
    pub end: u64,
    /// Its arguments (the name first).
    pub args: Vec<Vec<u8>>,
    /// Whether a cut may follow it: it is outside `MULTI` … `EXEC`.
    pub cuttable: bool,
}

impl Command {
    /// The command's name, upper-cased.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(self.args.first().map_or(&[][..], |a| a)).to_ascii_uppercase()
    }

    /// The command as text for a person: the name and up to three arguments, each cut to 64
    /// bytes, non-printable bytes escaped.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .args
            .iter()
            .take(4)
            .map(|a| {
                let cut = &a[..a.len().min(64)];
                let s: String = cut.escape_ascii().to_string();
                if a.len() > 64 { format!("{s}…") } else { s }
            })
            .collect();
        if self.args.len() > 4 {
            parts.push(format!("… ({} arguments)", self.args.len() - 1));
        }
        parts.join(" ")
    }
}

/// Finds commands in a replication stream as it arrives: where each ends, whether a cut may
/// follow it, and which database is selected. Holds no bytes: the caller keeps the stream and
/// passes it, from the scanner's position on, to [`Scanner::next`].
#[derive(Clone, Debug)]
pub struct Scanner {
    /// Offset of the next command's first byte.
    at: u64,
    in_multi: bool,
    db: u64,
    /// The last offset a cut may fall on.
    cuttable: u64,
    /// The database selected there.
    cuttable_db: u64,
}

impl Scanner {
    /// A scanner at `offset`, a command boundary outside a transaction, with `db` selected.
    pub fn new(offset: u64, db: u64) -> Self {
        Self {
            at: offset,
            in_multi: false,
            db,
            cuttable: offset,
            cuttable_db: db,
        }
    }

    /// Offset of the next command's first byte.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The database selected at [`Scanner::at`].
    pub fn db(&self) -> u64 {
        self.db
    }

    /// The last offset a cut may fall on.
    pub fn cuttable(&self) -> u64 {
        self.cuttable
    }

    /// The database selected at [`Scanner::cuttable`].
    pub fn cuttable_db(&self) -> u64 {
        self.cuttable_db
    }

    /// The next complete command at the start of `buf` (the stream from [`Scanner::at`] on),
    /// `None` when `buf` holds only part of one, or the error when the bytes are not a command
    /// stream.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<Command>, SegmentError> {
        Ok(self.next_borrowed(buf)?.map(Command::from))
    }

    /// [`Scanner::next`] with the arguments left in `buf`.
    pub fn next_borrowed<'a>(
        &mut self,
        buf: &'a [u8],
    ) -> Result<Option<Borrowed<'a>>, SegmentError> {
        let Some((args, len)) = parse_command(buf)? else {
            return Ok(None);
        };
        let start = self.at;
        self.at += len as u64;
        let name = args.first().copied().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"MULTI") {
            self.in_multi = true;
        } else if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") {
            self.in_multi = false;
        } else if name.eq_ignore_ascii_case(b"SELECT")
            && let Some(db) = args
                .get(1)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse().ok())
        {
            self.db = db;
        }
        if !self.in_multi {
            self.cuttable = self.at;
            self.cuttable_db = self.db;
        }
        Ok(Some(Borrowed {
            start,
            end: self.at,
            args,
            cuttable: !self.in_multi,
        }))
    }
}

/// A command whose arguments are still in the stream's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Borrowed<'a> {
    /// Offset before its first byte.
    pub start: u64,
    /// Offset after its last byte.
    pub end: u64,
    /// Its arguments (the name first).
    pub args: Vec<&'a [u8]>,
    /// Whether a cut may follow it.
    pub cuttable: bool,
}

impl From<Borrowed<'_>> for Command {
    fn from(c: Borrowed<'_>) -> Command {
        Command {
            start: c.start,
            end: c.end,
            args: c.args.iter().map(|a| a.to_vec()).collect(),
            cuttable: c.cuttable,
        }
    }
}

impl Borrowed<'_> {
    /// Whether its name is `name` (ASCII, any case).
    pub fn is(&self, name: &str) -> bool {
        self.args
            .first()
            .is_some_and(|a| a.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// One command (`*N` then N bulk strings) from the start of `buf` and its length; `None` when
/// incomplete.
/// A command's arguments and the bytes it took.
type Parsed<'a> = (Vec<&'a [u8]>, usize);

fn parse_command(buf: &[u8]) -> Result<Option<Parsed<'_>>, SegmentError> {
    let mut i = 0;
    let Some(line) = next_line(buf, &mut i)? else {
        return Ok(None);
    };
    let bad = |what: &str| {
        refuse(format!(
            "the replication stream is not a command stream: {what}"
        ))
    };
    let n = match header(line) {
        Ok(Header::Array(Some(n))) if n > 0 => n as usize,
        _ => return Err(bad("a command does not start with *N")),
    };
    // Each argument takes six bytes at least: no more room is reserved than `buf` could fill.
    let mut args = Vec::with_capacity(n.min(buf.len() / 6 + 1));
    for _ in 0..n {
        let Some(line) = next_line(buf, &mut i)? else {
            return Ok(None);
        };
        let len = match header(line) {
            Ok(Header::Bulk(Some(len))) => len as usize,
            _ => return Err(bad("an argument is not a bulk string")),
        };
        let Some(end) = i.checked_add(len).filter(|e| e + 2 <= buf.len()) else {
            return Ok(None);
        };
        if &buf[end..end + 2] != b"\r\n" {
            return Err(bad("an argument is not followed by CRLF"));
        }
        args.push(&buf[i..end]);
        i = end + 2;
    }
    Ok(Some((args, i)))
}

fn next_line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, SegmentError> {
    let rest = &buf[*at..];
    let window = &rest[..rest.len().min(66)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            *at += end + 2;
            Ok(Some(&rest[..end]))
        }
        None if rest.len() >= 66 => Err(refuse(
            "the replication stream is not a command stream: a header line is too long",
        )),
        None => Ok(None),
    }
}

/// The commands of a whole segment's stream, from `start` with `db` selected.
pub fn commands(stream: &[u8], start: u64, db: u64) -> Result<Vec<Command>, SegmentError> {
    Ok(commands_borrowed(stream, start, db)?
        .into_iter()
        .map(Command::from)
        .collect())
}

/// [`commands`] with the arguments left in `stream`.
pub fn commands_borrowed(
    stream: &[u8],
    start: u64,
    db: u64,
) -> Result<Vec<Borrowed<'_>>, SegmentError> {
    scan(stream, start, db, u64::MAX).map(|(out, _)| out)
}

/// The database selected at `offset` (a command boundary) of a segment's stream that starts at
/// `start` with `db` selected; past its end, the one selected at its end.
pub fn db_at(stream: &[u8], start: u64, db: u64, offset: u64) -> Result<u64, SegmentError> {
    scan(stream, start, db, offset).map(|(_, db)| db)
}

/// The commands of `stream` that end at or before `upto`, and the database selected after them.
fn scan(
    stream: &[u8],
    start: u64,
    db: u64,
    upto: u64,
) -> Result<(Vec<Borrowed<'_>>, u64), SegmentError> {
    let mut s = Scanner::new(start, db);
    let mut out = Vec::new();
    let mut i = 0;
    while i < stream.len() && s.at() < upto {
        match s.next_borrowed(&stream[i..])? {
            Some(c) => {
                i += (c.end - c.start) as usize;
                out.push(c);
            }
            None => return Err(refuse("a segment ends inside a command")),
        }
    }
    Ok((out, s.db()))
}

/// When the command that ends at `end` had been received: the first sample at or after it.
pub fn stamp_of(index: &[(u64, i64)], end: u64) -> Option<i64> {
    let i = index.partition_point(|(o, _)| *o < end);
    index.get(i).map(|(_, ms)| *ms)
}

/// The last offset received at or before `ms` among `index`'s samples: `None` when the first
/// sample is later.
pub fn offset_at(index: &[(u64, i64)], ms: i64) -> Option<u64> {
    let i = index.partition_point(|(_, t)| *t <= ms);
    i.checked_sub(1).map(|i| index[i].0)
}

/// A command name as `find` takes it (FLUSHALL, FLUSHDB, DEL, …), upper-cased; a name Redis
/// could not have is refused.
pub fn command_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"|_-".contains(&b));
    if ok {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "{s:?} is not a command name: write one as Redis names it, e.g. FLUSHALL, FLUSHDB, DEL"
        ))
    }
}

/// Which commands `find` looks for: names (upper-case) and, optionally, a key pattern that the
/// first key argument must match.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Command names, upper-case (`FLUSHALL`, `DEL`, …).
    pub names: Vec<String>,
    /// A glob the command's first argument after the name must match.
    pub key: Option<Vec<u8>>,
}

impl Wanted {
    /// Whether `c` is one of these.
    pub fn matches(&self, c: &Command) -> bool {
        let name = c.name();
        self.names.contains(&name)
            && match &self.key {
                None => true,
                Some(p) => c.args.iter().skip(1).any(|a| glob_match(p, a)),
            }
    }
}

/// An exact point: every primary of a cluster paused for writes at once, each one's offset read
/// while paused, then released. Restoring every shard to its offset gives the cluster as it was
/// at one instant, with no write in flight between shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactPoint {
    /// [`SEGMENT_FORMAT`].
    pub format: u32,
    /// The cluster.
    pub cluster: ClusterId,
    /// When the primaries were paused (Unix ms).
    pub at_ms: i64,
    /// How long writes were paused (µs).
    pub pause_us: u64,
    /// Each shard's replication id and offset while paused.
    pub shards: Vec<PointShard>,
}

/// One chain of a shard's archive as the regions hold it: a base and the segments that follow
/// it without a break. The coordinators keep these in their replicated catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveChain {
    /// The base's backup id.
    pub base: String,
    /// When the base was taken (Unix ms).
    pub base_at_ms: i64,
    /// The replication offset the base is at.
    pub base_offset: u64,
    /// The replication ids the chain passes through, in order (more than one after a
    /// promotion).
    pub replids: Vec<String>,
    /// The offset its last segment ends at.
    pub end_offset: u64,
    /// The latest time it restores to (Unix ms).
    pub end_ms: i64,
}

/// A cluster's archive in the coordinators' replicated catalog, as an agent last read it from
/// the regions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveCatalog {
    /// When the regions were read (Unix ms).
    pub scanned_at_ms: i64,
    /// Per shard, its chains, oldest base first.
    pub shards: std::collections::BTreeMap<String, Vec<ArchiveChain>>,
}

/// One shard of an [`ExactPoint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointShard {
    /// The shard.
    pub shard: ShardId,
    /// Its primary's replication id.
    pub replid: String,
    /// Its primary's offset.
    pub offset: u64,
}

/// Where exact points are kept: `<cluster>/archive-points/<at_ms>.json` (beside the shards'
/// archives, not inside them).
pub fn point_key(prefix: &str, cluster: &ClusterId, at_ms: i64) -> String {
    join_key(
        prefix,
        &format!("{cluster}/archive-points/{at_ms:013}.json"),
    )
}

impl ExactPoint {
    /// Reads a point, checking it against itself.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SegmentError> {
        let p: ExactPoint = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("an exact point is not valid: {e}")))?;
        if p.format != SEGMENT_FORMAT {
            return Err(refuse(format!(
                "an exact point of format {} (this build reads {SEGMENT_FORMAT})",
                p.format
            )));
        }
        if p.shards.is_empty() || p.shards.iter().any(|s| !is_replid(&s.replid)) {
            return Err(refuse(
                "an exact point names no shard or a malformed replication id",
            ));
        }
        Ok(p)
    }
}

/// Time ranges (Unix ms, inclusive) merged where they overlap or touch, sorted.
pub fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.retain(|(a, b)| a <= b);
    ranges.sort();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The times every one of `sets` covers: a cluster's restorable stretches from its shards'.
pub fn intersect_ranges(sets: &[Vec<(i64, i64)>]) -> Vec<(i64, i64)> {
    let Some((first, rest)) = sets.split_first() else {
        return Vec::new();
    };
    let mut acc = merge_ranges(first.clone());
    for set in rest {
        let set = merge_ranges(set.clone());
        let mut out = Vec::new();
        for &(a, b) in &acc {
            for &(c, d) in &set {
                let (lo, hi) = (a.max(c), b.min(d));
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
        }
        acc = merge_ranges(out);
    }
    acc
}

/// The holes between merged ranges: `(end of one, start of the next)`.
pub fn gaps_between(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    ranges.windows(2).map(|w| (w[0].1, w[1].0)).collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn command_names_are_upper_cased_and_checked() {
        assert_eq!(command_name("flushall").as_deref(), Ok("FLUSHALL"));
        assert_eq!(command_name("client|kill").as_deref(), Ok("CLIENT|KILL"));
        for bad in ["", "FLUSH ALL", "del\r\n", &"X".repeat(65)] {
            assert!(command_name(bad).is_err(), "{bad:?}");
        }
    }

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    fn header_for(stream: &[u8], start: u64) -> SegmentHeader {
        let end = start + stream.len() as u64;
        SegmentHeader {
            format: SEGMENT_FORMAT,
            cluster: ClusterId::new("orders").unwrap(),
            shard: ShardId::new("s0").unwrap(),
            replid: "a".repeat(40),
            start,
            end,
            first_ms: 1000,
            last_ms: 1200,
            db: 0,
            index: vec![(start + 10, 1100), (end, 1200)],
            sha256: hex::encode(Sha256::digest(stream)),
            switched_from: None,
        }
    }

    #[test]
    fn a_segment_round_trips_and_a_flipped_byte_is_refused() {
        let stream = [cmd(&["SET", "a", "1"]), cmd(&["DEL", "a"])].concat();
        let h = header_for(&stream, 100);
        let bytes = encode_segment(&h, &stream);
        let (back, s) = decode_segment(&bytes).unwrap();
        assert_eq!((back, s), (h.clone(), &stream[..]));
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_segment(&bad).unwrap_err().0.contains("sha256"));
        assert!(decode_segment(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_segment(b"FLEETSNAP-SEGMENT 1\n99999999999\n").is_err());
        for cut in 0..bytes.len().min(400) {
            let _ = decode_segment(&bytes[..cut]);
        }
    }

    #[test]
    fn names_sort_in_stream_order_and_bad_ones_are_refused() {
        let stream = cmd(&["PING"]);
        let h = header_for(&stream, 7);
        let codecs = CodecChain(vec![Codec::Zstd { level: 3 }, Codec::Age]);
        let key = segment_key("p", &h, &codecs);
        let dir = archive_dir("p", &h.cluster, &h.shard);
        assert_eq!(
            key,
            format!(
                "p/orders/archive/s0/{}/00000000000000000007-00000000000000000021-1000-1200.seg.zst.age",
                "a".repeat(40)
            )
        );
        let n = parse_segment_key(&dir, &key).unwrap().unwrap();
        assert_eq!((n.start, n.end, n.first_ms, n.last_ms), (7, 21, 1000, 1200));
        assert!(n.codecs.encrypted());
        assert!(parse_segment_key(&dir, "p/orders/archive/s0/notes.txt").is_none());
        for bad in [
            format!("{dir}/{}/9-7-1-2.seg", "a".repeat(40)),
            format!("{dir}/../x/1-7-1-2.seg"),
            format!("{dir}/{}/1-7-1-2.seg.gz", "a".repeat(40)),
            format!("{dir}/{}/1-7-+1-2.seg", "a".repeat(40)),
        ] {
            assert!(parse_segment_key(&dir, &bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_scanner_never_cuts_inside_a_transaction_and_follows_select() {
        let parts = [
            cmd(&["SELECT", "3"]),
            cmd(&["MULTI"]),
            cmd(&["INCR", "a"]),
            cmd(&["INCR", "b"]),
            cmd(&["EXEC"]),
            cmd(&["FLUSHALL"]),
        ];
        let stream = parts.concat();
        let mut s = Scanner::new(50, 0);
        let mut i = 0;
        let mut cuts = Vec::new();
        // Fed one byte more at a time, as a socket might deliver it.
        for upto in 0..=stream.len() {
            while let Some(c) = s.next(&stream[i..upto]).unwrap() {
                i += (c.end - c.start) as usize;
                cuts.push((c.name(), c.cuttable, s.db()));
            }
        }
        assert_eq!(
            cuts,
            vec![
                ("SELECT".into(), true, 3),
                ("MULTI".into(), false, 3),
                ("INCR".into(), false, 3),
                ("INCR".into(), false, 3),
                ("EXEC".into(), true, 3),
                ("FLUSHALL".into(), true, 3),
            ]
        );
        assert_eq!(s.cuttable(), 50 + stream.len() as u64);
        assert!(Scanner::new(0, 0).next(b"+OK\r\n").is_err());
        assert!(Scanner::new(0, 0).next(b"*1\r\n:1\r\n").is_err());
        assert!(Scanner::new(0, 0).next(&[b'*'; 100]).is_err());
    }

    #[test]
    fn offsets_are_found_by_time() {
        let index = [(10, 100), (20, 150), (30, 150), (40, 300)];
        assert_eq!(offset_at(&index, 99), None);
        assert_eq!(offset_at(&index, 100), Some(10));
        assert_eq!(offset_at(&index, 200), Some(30));
        assert_eq!(offset_at(&index, 1000), Some(40));
        assert_eq!(stamp_of(&index, 15), Some(150));
        assert_eq!(stamp_of(&index, 40), Some(300));
        assert_eq!(stamp_of(&index, 41), None);
    }

    #[test]
    fn find_matches_names_and_key_patterns() {
        let stream = [
            cmd(&["SET", "user:1", "x"]),
            cmd(&["DEL", "user:1", "order:9"]),
        ]
        .concat();
        let found = commands(&stream, 0, 0).unwrap();
        let w = Wanted {
            names: vec!["DEL".into()],
            key: Some(b"order:*".to_vec()),
        };
        let hits: Vec<_> = found.iter().filter(|c| w.matches(c)).collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].display(), "DEL user:1 order:9");
    }

    #[test]
    fn a_cluster_restores_only_where_every_shard_does() {
        let a = vec![(0, 10), (20, 30)];
        let b = vec![(5, 25)];
        assert_eq!(intersect_ranges(&[a.clone(), b]), vec![(5, 10), (20, 25)]);
        assert_eq!(
            merge_ranges(vec![(3, 5), (0, 2), (2, 4), (9, 8)]),
            vec![(0, 5)]
        );
        assert_eq!(gaps_between(&merge_ranges(a)), vec![(10, 20)]);
        assert!(intersect_ranges(&[]).is_empty());
    }
}
