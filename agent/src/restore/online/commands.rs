//! Values written as commands, for a target that cannot read the backup's RDB version (an older
//! Redis, Valkey from Redis 7.4+, Redis from Valkey 9): each key is one call of a script loaded
//! on every primary, which leaves an existing key alone (answering `BUSYKEY`, as `RESTORE` does)
//! or replaces it, then writes the value with its type's own commands, in chunks, with its
//! fields' expiries and its own. What no command can express (a module's value, a hash field's
//! expiry on a server without HPEXPIREAT) is refused by key, and the rest goes on.

use fleetsnap_core::rdbread::{Entry, StreamId, StreamValue, Value};

use super::target::Target;
use crate::error::{Error, Result};
use crate::redis::Value as Reply;

/// The script. KEYS: the keys. ARGV[1]: `1` replaces existing keys, `0` leaves each (its
/// element of the reply is `BUSYKEY`, as `RESTORE` answers). Then, per key: its type, its
/// absolute expiry in ms or empty, how many arguments its value's main part takes and how many
/// follow that part (a hash's field expiries, a stream's last ID, groups and entries to delete),
/// then those arguments. The reply: one element per key.
pub(super) const SCRIPT: &str = r#"
local replace = ARGV[1] == '1'
local function chunks(k, cmd, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 511, to)
    redis.call(cmd, k, unpack(ARGV, i, j))
    i = j + 1
  end
end
local function stream(k, first, last)
  local i = first
  while i <= last do
    local n = tonumber(ARGV[i + 1])
    redis.call('XADD', k, ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
    i = i + 2 + n
  end
  local top = ARGV[i]
  if last < first then
    if top == '0-0' then
      redis.call('XGROUP', 'CREATE', k, 'fleetsnap-empty', '0', 'MKSTREAM')
      redis.call('XGROUP', 'DESTROY', k, 'fleetsnap-empty')
    else
      redis.call('XADD', k, top, 'f', 'v')
      redis.call('XDEL', k, top)
    end
  end
  redis.call('XSETID', k, top)
  local groups = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, groups do
    local g = ARGV[i]
    redis.call('XGROUP', 'CREATE', k, g, ARGV[i + 1])
    local consumers = tonumber(ARGV[i + 2])
    i = i + 3
    for _ = 1, consumers do
      local c = ARGV[i]
      redis.call('XGROUP', 'CREATECONSUMER', k, g, c)
      local pending = tonumber(ARGV[i + 1])
      i = i + 2
      for _ = 1, pending do
        redis.call('XCLAIM', k, g, c, '0', ARGV[i], 'FORCE', 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
        i = i + 2
      end
    end
  end
  for d = 1, tonumber(ARGV[i]) do
    redis.call('XDEL', k, ARGV[i + d])
  end
end
local out = {}
local o = 2
for n = 1, #KEYS do
  local k = KEYS[n]
  local kind, expiry = ARGV[o], ARGV[o + 1]
  local first = o + 4
  local last = first + tonumber(ARGV[o + 2]) - 1
  local stop = last + tonumber(ARGV[o + 3])
  o = stop + 1
  if not replace and redis.call('EXISTS', k) == 1 then
    out[n] = redis.error_reply('BUSYKEY Target key name already exists.')
  else
    if replace then
      redis.call('DEL', k)
    end
    if kind == 'string' then
      redis.call('SET', k, ARGV[first])
    elseif kind == 'list' then
      chunks(k, 'RPUSH', first, last)
    elseif kind == 'set' then
      chunks(k, 'SADD', first, last)
    elseif kind == 'zset' then
      chunks(k, 'ZADD', first, last)
    elseif kind == 'hash' then
      chunks(k, 'HSET', first, last)
      local i = last + 1
      while i < stop do
        redis.call('HPEXPIREAT', k, ARGV[i], 'FIELDS', 1, ARGV[i + 1])
        i = i + 2
      end
    elseif kind == 'stream' then
      stream(k, first, last)
    else
      return redis.error_reply('ERR fleetsnap: unknown value kind ' .. kind)
    end
    if expiry ~= '' then
      redis.call('PEXPIREAT', k, expiry)
    end
    out[n] = redis.status_reply('OK')
  end
end
return out
"#;

/// Loads the script on every primary of `t`: its values go as commands from now on.
pub(super) async fn load_script(t: &mut Target) -> Result<()> {
    for n in &mut t.nodes {
        let target = n.conn.target().clone();
        match n
            .conn
            .command(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()])
            .await?
        {
            Reply::Bulk(Some(sha)) => n.script = Some(sha),
            Reply::Error(e) => {
                return Err(Error::redis(
                    &target,
                    format!(
                        "refuses SCRIPT LOAD ({e}): values of a backup it cannot read as RDB are written by a script; grant the restore's user scripting (+script|load +evalsha), or restore into a server that reads the backup's RDB version"
                    ),
                ));
            }
            other => {
                return Err(Error::redis(
                    &target,
                    format!("answered SCRIPT LOAD with {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// A stream entry's fields and values.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn id(i: StreamId) -> Vec<u8> {
    format!("{}-{}", i.0, i.1).into_bytes()
}

fn count(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// A score as Redis parses it back to the same double (`inf`, `-inf`, shortest round trip).
fn score(s: f64) -> Vec<u8> {
    if s == f64::INFINITY {
        b"inf".to_vec()
    } else if s == f64::NEG_INFINITY {
        b"-inf".to_vec()
    } else {
        format!("{s}").into_bytes()
    }
}

/// The script's arguments after the first four for a stream: entries, then the last ID,
/// groups with their consumers and each one's pending entries, then the entries to delete
/// again. A pending entry deleted from the stream is added for a moment (XCLAIM takes only
/// entries the stream holds) and deleted once claimed, as it was. The count of the entries'
/// part is returned with them.
fn stream_args(s: &StreamValue) -> (usize, Vec<Vec<u8>>) {
    let live: std::collections::BTreeSet<StreamId> = s.entries.iter().map(|(i, _)| *i).collect();
    let gone: std::collections::BTreeSet<StreamId> = s
        .groups
        .iter()
        .flat_map(|g| g.pending.iter().map(|(i, _)| *i))
        .filter(|i| !live.contains(i) && *i != (0, 0))
        .collect();
    let placeholder = vec![(Vec::new(), Vec::new())];
    let mut all: Vec<(StreamId, &Fields)> = s
        .entries
        .iter()
        .map(|(i, f)| (*i, f))
        .chain(gone.iter().map(|i| (*i, &placeholder)))
        .collect();
    all.sort_by_key(|(i, _)| *i);
    let mut out = Vec::new();
    for (i, fields) in all {
        out.push(id(i));
        out.push(count(fields.len() * 2));
        for (f, v) in fields {
            out.push(f.clone());
            out.push(v.clone());
        }
    }
    let main = out.len();
    out.push(id(s.last_id));
    out.push(count(s.groups.len()));
    for g in &s.groups {
        out.push(g.name.clone());
        out.push(id(g.last_id));
        out.push(count(g.consumers.len()));
        for (name, ids) in &g.consumers {
            out.push(name.clone());
            out.push(count(ids.len()));
            for p in ids {
                let deliveries = g
                    .pending
                    .iter()
                    .find(|(x, _)| x == p)
                    .map_or(1, |(_, n)| *n);
                out.push(id(*p));
                out.push(deliveries.to_string().into_bytes());
            }
        }
    }
    out.push(count(gone.len()));
    out.extend(gone.iter().map(|i| id(*i)));
    (main, out)
}

/// The script's arguments for `e`, whose value is `value` (after the replace flag), or why it
/// cannot be written as commands into this target.
pub(super) fn key_args(
    e: &Entry,
    value: Value,
    field_expiry: bool,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let (kind, main, rest): (&[u8], usize, Vec<Vec<u8>>) = match value {
        Value::String(v) => (b"string", 1, vec![v]),
        Value::List(v) => (b"list", v.len(), v),
        Value::Set(v) => (b"set", v.len(), v),
        Value::ZSet(v) => {
            let args: Vec<Vec<u8>> = v.into_iter().flat_map(|(m, s)| [score(s), m]).collect();
            (b"zset", args.len(), args)
        }
        Value::Hash(v) => {
            let mut args = Vec::with_capacity(v.len() * 2);
            let mut expiries = Vec::new();
            for (f, val, at) in v {
                if let Some(at) = at {
                    expiries.push(at.to_string().into_bytes());
                    expiries.push(f.clone());
                }
                args.push(f);
                args.push(val);
            }
            if !expiries.is_empty() && !field_expiry {
                return Err(format!(
                    "its {} fields with an expiry need HPEXPIREAT, which the target lacks (Redis 7.4 or Valkey 9 has it)",
                    expiries.len() / 2
                ));
            }
            let main = args.len();
            args.extend(expiries);
            (b"hash", main, args)
        }
        Value::Stream(s) => {
            let (main, args) = stream_args(&s);
            (b"stream", main, args)
        }
    };
    let expiry = e
        .expire_ms
        .map(|t| t.max(1).to_string().into_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(4 + rest.len());
    out.push(kind.to_vec());
    out.push(expiry);
    out.push(count(main));
    out.push(count(rest.len() - main));
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_read_back_as_the_same_double() {
        for s in [
            0.1,
            -2.5,
            1e300,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
            3.0,
        ] {
            let text = String::from_utf8(score(s)).unwrap();
            let back: f64 = match text.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                t => t.parse().unwrap(),
            };
            assert_eq!(back, s, "{text}");
        }
    }

    fn entry(key: &str, payload: Vec<u8>, decoded: Option<Value>) -> Entry {
        Entry {
            db: 0,
            key: key.into(),
            expire_ms: None,
            idle: None,
            freq: None,
            payload,
            decoded,
        }
    }

    #[test]
    fn what_commands_cannot_write_is_refused_with_why() {
        // A module's value (type 7): it does not decode, which is the refusal's reason.
        let module = entry("m", vec![7, 0x81, 1, 2, 3], None);
        let why = module.value().unwrap_err().to_string();
        assert!(why.contains("module"), "{why}");
        // A hash with a field's expiry, into a server without HPEXPIREAT.
        let hash = entry(
            "h",
            vec![4],
            Some(Value::Hash(vec![
                (b"f".to_vec(), b"v".to_vec(), Some(4_102_444_800_000)),
                (b"g".to_vec(), b"w".to_vec(), None),
            ])),
        );
        let value = hash.value().unwrap();
        let why = key_args(&hash, value.clone(), false).unwrap_err();
        assert!(why.contains("HPEXPIREAT"), "{why}");
        // With it: the type, no expiry, 4 main arguments, then the field's expiry and name.
        let args = key_args(&hash, value, true).unwrap();
        let text: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            text,
            [
                "hash",
                "",
                "4",
                "2",
                "f",
                "v",
                "g",
                "w",
                "4102444800000",
                "f"
            ]
        );
    }
}
