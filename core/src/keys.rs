//! Key-level helpers shared by restores: the Redis Cluster hash slot of a key and Redis's glob
//! patterns (`--match`).

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its first non-empty `{hash tag}`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in data {
        crc ^= (*b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Whether `s` matches the glob `pattern` as `KEYS` and `SCAN MATCH` read it: `*`, `?`,
/// `[abc]`, `[^a-z]` and `\` escapes.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, string index it matched to).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, i));
                    p += 1;
                    continue;
                }
                b'?' if i < s.len() => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' if i < s.len() => {
                    if let Some((matched, next)) = class(pattern, p, s[i])
                        && matched
                    {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && i < s.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                c if c != b'*'
                    && c != b'?'
                    && c != b'['
                    && c != b'\\'
                    && i < s.len()
                    && c == s[i] =>
                {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the class opening at `pattern[open]`; gives the match and the index after
/// the class, or `None` for an unterminated class.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut k = open + 1;
    let negate = pattern.get(k) == Some(&b'^');
    if negate {
        k += 1;
    }
    let mut matched = false;
    while k < pattern.len() && pattern[k] != b']' {
        if pattern[k] == b'\\' && k + 1 < pattern.len() {
            matched |= pattern[k + 1] == c;
            k += 2;
        } else if k + 2 < pattern.len() && pattern[k + 1] == b'-' && pattern[k + 2] != b']' {
            let (a, b) = (
                pattern[k].min(pattern[k + 2]),
                pattern[k].max(pattern[k + 2]),
            );
            matched |= (a..=b).contains(&c);
            k += 3;
        } else {
            matched |= pattern[k] == c;
            k += 1;
        }
    }
    (k < pattern.len()).then_some((matched != negate, k + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn globs_match_like_keys() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("user:*", "user:1"));
        assert!(!m("user:*", "order:1"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*:*:end", "a:b:c:end"));
        assert!(!m("*:*:end", "a:end"));
    }
}
