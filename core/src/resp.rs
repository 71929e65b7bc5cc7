//! RESP2, as Redis speaks it and as the replication stream and AOF files carry commands: replies
//! parsed from bytes, and command streams split into commands. Everything here reads untrusted
//! bytes: every count and length is checked against a limit and against the bytes there are
//! before anything is allocated for it, and nesting is bounded.

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` for the null array.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The reply as text, for simple and bulk strings and integers.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

/// The longest line (a simple string, an error, a header) read before it is refused.
pub const MAX_LINE: usize = 1 << 20;
/// The largest bulk string: Redis's own `proto-max-bulk-len` default.
pub const MAX_BULK: u64 = 512 << 20;
/// The most elements of one array.
pub const MAX_ARRAY: u64 = 1 << 24;
/// The deepest nesting of arrays.
pub const MAX_DEPTH: usize = 32;

/// Bytes that are not RESP, or that break a limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("protocol error: {0}")]
pub struct RespError(pub String);

fn bad(what: impl Into<String>) -> RespError {
    RespError(what.into())
}

/// A header line's number: optional `-`, 1 to 19 digits.
pub fn parse_number(digits: &[u8]) -> Result<i64, RespError> {
    let (neg, d) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if d.is_empty() || d.len() > 18 || !d.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!(
            "bad integer {:?}",
            String::from_utf8_lossy(&digits[..digits.len().min(40)])
        )));
    }
    let n = d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0'));
    Ok(if neg { -n } else { n })
}

/// What a header says about the value it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// `+`, `-` or `:`: the line is the whole value.
    Line,
    /// `$n`: n bytes and CRLF follow; `None` for the null bulk string.
    Bulk(Option<u64>),
    /// `*n`: n values follow; `None` for the null array.
    Array(Option<u64>),
}

/// Reads a header line (without its line ending), checking it against the limits.
pub fn header(line: &[u8]) -> Result<Header, RespError> {
    let Some((&kind, rest)) = line.split_first() else {
        return Err(bad("an empty line where a reply belongs"));
    };
    let count = |limit: u64, what: &str| -> Result<Option<u64>, RespError> {
        match parse_number(rest)? {
            -1 => Ok(None),
            n if n < 0 => Err(bad(format!("negative {what} {n}"))),
            n if n as u64 > limit => Err(bad(format!("{what} {n} is over the limit of {limit}"))),
            n => Ok(Some(n as u64)),
        }
    };
    match kind {
        b'+' | b'-' => Ok(Header::Line),
        b':' => parse_number(rest).map(|_| Header::Line),
        b'$' => count(MAX_BULK, "bulk length").map(Header::Bulk),
        b'*' => count(MAX_ARRAY, "array length").map(Header::Array),
        _ => Err(bad(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line[..line.len().min(60)])
        ))),
    }
}

/// Parses one reply from the start of `buf`: the value and the bytes it took, `None` when
/// `buf` holds only part of it (read more and call again), or the error.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    let mut at = 0;
    Ok(value(buf, &mut at, 0)?.map(|v| (v, at)))
}

/// The line at `*at` without its CRLF; `None` when it has not all arrived.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, RespError> {
    let rest = &buf[*at..];
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            *at += end + 2;
            Ok(Some(&rest[..end]))
        }
        None if rest.len() > MAX_LINE => Err(bad(format!("a line longer than {MAX_LINE} bytes"))),
        None => Ok(None),
    }
}

fn value(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, RespError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("arrays nested deeper than {MAX_DEPTH}")));
    }
    let Some(l) = line(buf, at)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&l[1..]).into_owned();
    match header(l)? {
        Header::Line => Ok(Some(match l[0] {
            b'+' => Value::Simple(text()),
            b'-' => Value::Error(text()),
            _ => Value::Int(parse_number(&l[1..])?),
        })),
        Header::Bulk(None) => Ok(Some(Value::Bulk(None))),
        Header::Bulk(Some(n)) => {
            let n = n as usize;
            let Some(end) = at.checked_add(n).filter(|e| e + 2 <= buf.len()) else {
                return Ok(None);
            };
            if &buf[end..end + 2] != b"\r\n" {
                return Err(bad("a bulk string not followed by CRLF"));
            }
            let v = buf[*at..end].to_vec();
            *at = end + 2;
            Ok(Some(Value::Bulk(Some(v))))
        }
        Header::Array(None) => Ok(Some(Value::Array(None))),
        Header::Array(Some(n)) => {
            // Each element takes three bytes at least (":0\r\n" is four); no more room is
            // reserved than the bytes at hand could fill.
            let mut items = Vec::with_capacity((n as usize).min((buf.len() - *at) / 3));
            for _ in 0..n {
                match value(buf, at, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(Some(items))))
        }
    }
}

/// Splits a RESP command stream (a replication stream's tail, an AOF) held whole into commands,
/// each an array of bulk strings; `None` when it is not one (or ends inside a command). The same
/// reading as [`CommandReader`]'s.
pub fn parse_commands(b: &[u8]) -> Option<Vec<Vec<Vec<u8>>>> {
    let mut r = CommandReader::new(b);
    let mut out = Vec::new();
    while let Some(c) = r.next_command().ok()? {
        out.push(c);
    }
    Some(out)
}

/// Why [`CommandReader`] stopped.
#[derive(Debug)]
pub enum StreamError {
    /// Reading failed.
    Io(std::io::Error),
    /// The bytes are not a command stream: what was wrong.
    Bad(&'static str),
}

/// The longest argument a command stream may hold (Redis's `proto-max-bulk-len` default).
pub const MAX_STREAM_ARG: usize = 512 << 20;
/// The most arguments one command may have (Redis's own limit per multibulk).
pub const MAX_STREAM_ARGS: usize = 1 << 20;

/// A command stream (a tail, an AOF's incremental file) read one command at a time: memory holds
/// one command, and an argument's buffer grows only as its bytes arrive, so a length the stream
/// does not hold allocates nothing.
pub struct CommandReader<R> {
    r: R,
}

impl<R: std::io::BufRead> CommandReader<R> {
    /// Reads from `r`.
    pub fn new(r: R) -> Self {
        Self { r }
    }

    /// One header line (`*N`, `$LEN`): its kind and number; `None` at the end of the stream.
    fn header(&mut self) -> Result<Option<(u8, i64)>, StreamError> {
        use std::io::{BufRead, Read};
        let mut line = Vec::new();
        // A kind byte, 18 digits and a sign at most, CRLF.
        let n = (&mut self.r)
            .take(24)
            .read_until(b'\n', &mut line)
            .map_err(StreamError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        let body = line
            .strip_suffix(b"\r\n")
            .ok_or(StreamError::Bad("a header line does not end in CRLF"))?;
        let (&kind, digits) = body
            .split_first()
            .ok_or(StreamError::Bad("an empty header line"))?;
        let n = parse_number(digits).map_err(|_| StreamError::Bad("a header's number is bad"))?;
        Ok(Some((kind, n)))
    }

    /// The next command; `None` at the end of the stream.
    pub fn next_command(&mut self) -> Result<Option<Vec<Vec<u8>>>, StreamError> {
        use std::io::Read;
        loop {
            let Some((kind, n)) = self.header()? else {
                return Ok(None);
            };
            if kind != b'*' || n < 0 || n as usize > MAX_STREAM_ARGS {
                return Err(StreamError::Bad("a command does not start with *N"));
            }
            let mut args = Vec::with_capacity((n as usize).min(64));
            for _ in 0..n {
                let (kind, len) = self
                    .header()?
                    .ok_or(StreamError::Bad("the stream ends inside a command"))?;
                if kind != b'$' || len < 0 || len as usize > MAX_STREAM_ARG {
                    return Err(StreamError::Bad("an argument is not a bulk string"));
                }
                let len = len as usize;
                let mut arg = Vec::new();
                (&mut self.r)
                    .take(len as u64 + 2)
                    .read_to_end(&mut arg)
                    .map_err(StreamError::Io)?;
                if arg.len() != len + 2 || !arg.ends_with(b"\r\n") {
                    return Err(StreamError::Bad("an argument is cut short"));
                }
                arg.truncate(len);
                args.push(arg);
            }
            if !args.is_empty() {
                return Ok(Some(args));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command of `bytes` through [`CommandReader`].
    fn read_all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, StreamError> {
        // Three bytes a read: headers and arguments cut across reads.
        let mut r = CommandReader::new(std::io::BufReader::with_capacity(3, bytes));
        let mut out = Vec::new();
        while let Some(c) = r.next_command()? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn a_stream_reads_one_command_at_a_time_as_it_splits_whole() {
        let stream =
            b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*0\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        let args = |a: &[&str]| a.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            read_all(stream).unwrap(),
            vec![args(&["SELECT", "0"]), args(&["SET", "k", ""])]
        );
        assert!(read_all(b"").unwrap().is_empty());
        for bad in [
            &b"+OK\r\n"[..],
            b"*1\r\n$3\r\nSE",
            b"*1\r\n$3\r\nSETxx",
            b"*2\r\n$3\r\nSET\r\n",
            b"*1\r\n:3\r\n",
            b"*-1\r\n",
            b"*+1\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            // A length the stream does not hold is refused without allocating it.
            b"*1\r\n$536870912\r\nabc\r\n",
            b"*1\r\n$1\r\n",
            b"*1\n$1\r\nx\r\n",
        ] {
            assert!(read_all(bad).is_err(), "{bad:?}");
            assert_eq!(parse_commands(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let all = b"*3\r\n+OK\r\n$3\r\nfoo\r\n*2\r\n:-7\r\n$-1\r\n";
        let (v, n) = parse(all).unwrap().unwrap();
        assert_eq!(n, all.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Simple("OK".into()),
                Value::Bulk(Some(b"foo".to_vec())),
                Value::Array(Some(vec![Value::Int(-7), Value::Bulk(None)])),
            ]))
        );
        for cut in 0..all.len() {
            assert_eq!(parse(&all[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(b"-ERR x\r\n").unwrap().unwrap().0,
            Value::Error("ERR x".into())
        );
    }

    #[test]
    fn limits_hold_before_anything_is_allocated() {
        for bad in [
            &b"$99999999999999\r\n"[..],
            b"*99999999999\r\n",
            b"$-2\r\n",
            b":12a\r\n",
            b"?\r\n",
            b"$3\r\nfooXY",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // An array announcing millions of elements with a few bytes at hand reserves little.
        assert_eq!(parse(b"*16000000\r\n:1\r\n"), Ok(None));
        let deep = b"*1\r\n".repeat(40);
        assert!(parse(&deep).is_err());
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long).is_err());
    }

    #[test]
    fn command_streams_split_into_commands() {
        let t = b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv\n\r\n";
        let c = parse_commands(t).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1][2], b"v\n");
        for bad in [
            &b"*2\r\n$3\r\nSET\r\n"[..],
            b"+OK\r\n",
            b"*99999999999999999\r\n",
            b"*1\r\n$18446744073709551615\r\nx",
            b"*1\r\n$3\r\nabcXY",
        ] {
            assert!(
                parse_commands(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
