//! A varied dataset and a key-by-key comparison of two servers.

use anyhow::{bail, ensure};
use fleetsnap_agent::redis::{Connection, Value};

use crate::redis::RedisServer;

/// What to write.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Number of small string keys `k:N`.
    pub small_keys: usize,
    /// Size of the one large value (`big:value`).
    pub big_value_bytes: usize,
}

/// A new server (with `opts`) holding a dataset of `small_keys` small keys and one value of
/// `big_value_bytes`.
pub async fn filled_server(
    opts: crate::redis::RedisOptions,
    small_keys: usize,
    big_value_bytes: usize,
) -> anyhow::Result<RedisServer> {
    let server = RedisServer::start_with(opts).await?;
    write_dataset(
        &server,
        &Dataset {
            small_keys,
            big_value_bytes,
        },
    )
    .await?;
    Ok(server)
}

impl Default for Dataset {
    fn default() -> Self {
        Self {
            small_keys: 100_000,
            big_value_bytes: 11 * 1024 * 1024,
        }
    }
}

async fn pipeline(c: &mut Connection, commands: Vec<Vec<Vec<u8>>>) -> anyhow::Result<()> {
    for batch in commands.chunks(1000) {
        c.send_pipeline(batch).await?;
        for cmd in batch {
            if let Value::Error(e) = c.read_value().await? {
                bail!("{} failed: {e}", String::from_utf8_lossy(&cmd[0]));
            }
        }
    }
    Ok(())
}

fn cmd(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// Writes strings (int, embstr, raw), hashes, lists, sets and sorted sets in their small and
/// large encodings, a stream with a consumer group and pending entries, keys with TTLs, one large
/// value and many small keys. Returns the number of keys written.
pub async fn write_dataset(server: &RedisServer, d: &Dataset) -> anyhow::Result<usize> {
    let mut c = server.conn().await?;
    let mut cmds = vec![
        cmd(&[b"SET", b"str:int", b"12345"]),
        cmd(&[b"SET", b"str:embstr", b"hello"]),
        cmd(&[b"SET", b"str:raw", &[b'r'; 200]]),
        cmd(&[b"SET", "str:utf8:ключ".as_bytes(), "значение ✓".as_bytes()]),
        cmd(&[b"SET", b"str:binary\x00\xff", b"\x00\x01\x02\xfe\xff"]),
        cmd(&[
            b"HSET",
            b"hash:small",
            b"a",
            b"1",
            b"b",
            b"2",
            b"c",
            b"three",
        ]),
        cmd(&[b"RPUSH", b"list:small", b"x", b"y", b"z", b"42"]),
        cmd(&[b"SADD", b"set:small", b"alpha", b"beta", b"gamma"]),
        cmd(&[
            b"ZADD",
            b"zset:small",
            b"1",
            b"one",
            b"2.5",
            b"two-and-a-half",
            b"-3",
            b"minus",
        ]),
        cmd(&[b"SET", b"big:value", &[]]),
    ];
    // A large value that does not compress to nothing.
    let big: Vec<u8> = (0..d.big_value_bytes)
        .map(|i| {
            if i % 3 == 0 {
                rand::random::<u8>()
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    cmds.last_mut().expect("pushed")[2] = big;
    for i in 0..1000 {
        cmds.push(cmd(&[
            b"HSET",
            b"hash:big",
            format!("field:{i}").as_bytes(),
            format!("value-{i}-{}", "v".repeat(i % 70)).as_bytes(),
        ]));
    }
    for i in 0..10_000 {
        cmds.push(cmd(&[
            b"RPUSH",
            b"list:big",
            format!("item-{i}").as_bytes(),
        ]));
    }
    for i in 0..200 {
        cmds.push(cmd(&[b"SADD", b"set:int", i.to_string().as_bytes()]));
    }
    for i in 0..5000 {
        cmds.push(cmd(&[
            b"SADD",
            b"set:big",
            format!("member-{i}").as_bytes(),
        ]));
    }
    for i in 0..2000 {
        cmds.push(cmd(&[
            b"ZADD",
            b"zset:big",
            format!("{}.5", i * 7 % 1000).as_bytes(),
            format!("m{i}").as_bytes(),
        ]));
    }
    for i in 0..1000 {
        cmds.push(cmd(&[
            b"XADD",
            b"stream:events",
            b"*",
            b"n",
            i.to_string().as_bytes(),
            b"kind",
            if i % 2 == 0 { b"even" } else { b"odd" },
        ]));
    }
    cmds.push(cmd(&[
        b"XGROUP",
        b"CREATE",
        b"stream:events",
        b"workers",
        b"0",
    ]));
    cmds.push(cmd(&[
        b"XREADGROUP",
        b"GROUP",
        b"workers",
        b"w1",
        b"COUNT",
        b"10",
        b"STREAMS",
        b"stream:events",
        b">",
    ]));
    for i in 0..100 {
        cmds.push(cmd(&[
            b"SET",
            format!("ttl:{i}").as_bytes(),
            b"expiring",
            b"EX",
            (3600 + i).to_string().as_bytes(),
        ]));
    }
    cmds.push(cmd(&[b"HSET", b"ttl:hash", b"f", b"v"]));
    cmds.push(cmd(&[b"PEXPIREAT", b"ttl:hash", b"4102444800000"]));
    for i in 0..d.small_keys {
        cmds.push(cmd(&[
            b"SET",
            format!("k:{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        ]));
    }
    pipeline(&mut c, cmds).await?;
    let Value::Int(n) = c.command(&[b"DBSIZE"]).await? else {
        bail!("DBSIZE failed")
    };
    Ok(n as usize)
}

/// Writes what `write_dataset` leaves out because a Redis Cluster cannot hold it or because it
/// is rare: keys in databases 0 and 3, list elements large enough for plain quicklist nodes,
/// 64-bit integers in an intset, long compressible strings (LZF in the RDB) and a function
/// library. Returns the library's name.
pub async fn write_extras(server: &RedisServer) -> anyhow::Result<&'static str> {
    let mut c = server.conn().await?;
    let big_elem = vec![b'p'; 20_000];
    let cmds = vec![
        cmd(&[b"SET", b"lzf:long", &b"abcdefgh".repeat(4096)]),
        cmd(&[b"RPUSH", b"list:plain", &big_elem, b"small", &big_elem]),
        cmd(&[b"SADD", b"set:int64", b"9000000000000", b"-9000000000000", b"7"]),
        cmd(&[b"SETRANGE", b"str:grown", b"0", b"grown by SETRANGE"]),
        cmd(&[
            b"FUNCTION",
            b"LOAD",
            b"#!lua name=fleetlib\nredis.register_function('fleet_echo', function(keys, args) return args[1] end)",
        ]),
        cmd(&[b"SELECT", b"3"]),
        cmd(&[b"SET", b"db3:key", b"in db three"]),
        cmd(&[b"HSET", b"db3:hash", b"f", b"v"]),
        cmd(&[b"SET", b"db3:ttl", b"x", b"PX", b"7200000"]),
        cmd(&[b"SELECT", b"0"]),
    ];
    pipeline(&mut c, cmds).await?;
    Ok("fleetlib")
}

async fn all_keys(c: &mut Connection) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    loop {
        let Value::Array(Some(r)) = c.command(&[b"SCAN", &cursor, b"COUNT", b"5000"]).await? else {
            bail!("SCAN failed")
        };
        let (Value::Bulk(Some(next)), Value::Array(Some(batch))) = (&r[0], &r[1]) else {
            bail!("SCAN reply malformed")
        };
        for k in batch {
            if let Value::Bulk(Some(k)) = k {
                keys.push(k.clone());
            }
        }
        if next == b"0" {
            break;
        }
        cursor = next.clone();
    }
    keys.sort();
    Ok(keys)
}

async fn replies(c: &mut Connection, commands: &[Vec<Vec<u8>>]) -> anyhow::Result<Vec<Value>> {
    c.send_pipeline(commands).await?;
    let mut out = Vec::with_capacity(commands.len());
    for _ in commands {
        out.push(c.read_value().await?);
    }
    Ok(out)
}

/// Asserts both servers hold the same keys with the same values (`DEBUG DIGEST-VALUE`, which is
/// independent of encodings) and the same expiry, and the same whole-dataset digest.
pub async fn assert_same_data(expected: &RedisServer, actual: &RedisServer) -> anyhow::Result<()> {
    let (mut a, mut b) = (expected.conn().await?, actual.conn().await?);
    let (dbs_a, dbs_b) = (dbs(&mut a).await?, dbs(&mut b).await?);
    ensure!(
        dbs_a == dbs_b,
        "databases with keys differ: {dbs_a:?} expected, {dbs_b:?} restored"
    );
    for db in dbs_a {
        let db = db.to_string();
        a.checked(&[b"SELECT", db.as_bytes()]).await?;
        b.checked(&[b"SELECT", db.as_bytes()]).await?;
        same_keys(std::slice::from_mut(&mut a), std::slice::from_mut(&mut b))
            .await
            .map_err(|e| e.context(format!("in db {db}")))?;
    }
    let (da, db) = (
        a.command(&[b"DEBUG", b"DIGEST"]).await?,
        b.command(&[b"DEBUG", b"DIGEST"]).await?,
    );
    ensure!(
        da == db,
        "dataset digest differs: {da:?} expected, {db:?} restored"
    );
    Ok(())
}

/// The databases that hold keys (`INFO keyspace`).
async fn dbs(c: &mut Connection) -> anyhow::Result<Vec<u64>> {
    let info = c.info("keyspace").await?;
    let mut dbs: Vec<u64> = info
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("db")?.parse().ok())
        .collect();
    dbs.sort();
    Ok(dbs)
}

/// Each side's keys with the index of the connection that holds them, in key order.
async fn keys_of(side: &mut [Connection]) -> anyhow::Result<Vec<(Vec<u8>, usize)>> {
    let mut keys = Vec::new();
    for (i, c) in side.iter_mut().enumerate() {
        keys.extend(all_keys(c).await?.into_iter().map(|k| (k, i)));
    }
    keys.sort();
    Ok(keys)
}

/// `head KEY` for each key on the connection that holds it, pipelined per connection; the
/// replies in the keys' order.
async fn per_key(
    side: &mut [Connection],
    keys: &[&(Vec<u8>, usize)],
    head: &[&[u8]],
) -> anyhow::Result<Vec<Value>> {
    let mut out = vec![Value::Bulk(None); keys.len()];
    for (i, c) in side.iter_mut().enumerate() {
        let mine: Vec<usize> = (0..keys.len()).filter(|k| keys[*k].1 == i).collect();
        let commands: Vec<Vec<Vec<u8>>> = mine
            .iter()
            .map(|k| {
                let mut cmd: Vec<Vec<u8>> = head.iter().map(|h| h.to_vec()).collect();
                cmd.push(keys[*k].0.clone());
                cmd
            })
            .collect();
        for (k, v) in mine.into_iter().zip(replies(c, &commands).await?) {
            out[k] = v;
        }
    }
    Ok(out)
}

/// The keys held by side `a` are exactly those held by side `b`, however each side spreads them
/// over its connections, with equal values (`DEBUG DIGEST-VALUE`, independent of encodings) and
/// expiry.
async fn same_keys(a: &mut [Connection], b: &mut [Connection]) -> anyhow::Result<()> {
    let (ka, kb) = (keys_of(a).await?, keys_of(b).await?);
    ensure!(
        ka.len() == kb.len(),
        "key count differs: {} expected, {} restored",
        ka.len(),
        kb.len()
    );
    if let Some(((x, _), (y, _))) = ka.iter().zip(&kb).find(|((x, _), (y, _))| x != y) {
        bail!(
            "key sets differ: expected {:?}, found {:?}",
            String::from_utf8_lossy(x),
            String::from_utf8_lossy(y)
        );
    }
    let pairs: Vec<_> = ka.iter().zip(&kb).collect();
    for chunk in pairs.chunks(500) {
        let (xa, xb): (Vec<_>, Vec<_>) = chunk.iter().copied().unzip();
        for (head, what) in [
            (&[&b"DEBUG"[..], b"DIGEST-VALUE"][..], "value"),
            (&[&b"PEXPIRETIME"[..]][..], "expiry"),
        ] {
            let (va, vb) = (per_key(a, &xa, head).await?, per_key(b, &xb, head).await?);
            for ((k, _), (x, y)) in xa.iter().zip(va.iter().zip(&vb)) {
                ensure!(
                    x == y,
                    "{what} of key {:?} differs: {x:?} expected, {y:?} restored",
                    String::from_utf8_lossy(k)
                );
            }
        }
    }
    Ok(())
}

/// Asserts that the keys held by `expected` (several servers: shards restored one by one, or a
/// cluster's primaries) are exactly those held by `actual`, however the keys are spread over the
/// servers of either side, with equal values and expiry. Database 0 only.
pub async fn assert_same_data_across(
    expected: &[&RedisServer],
    actual: &[&RedisServer],
) -> anyhow::Result<()> {
    let mut a = Vec::new();
    for s in expected {
        a.push(s.conn().await?);
    }
    let mut b = Vec::new();
    for s in actual {
        b.push(s.conn().await?);
    }
    same_keys(&mut a, &mut b).await
}
