//! docs/configuration.md against the config types: every section lists exactly the keys its type
//! accepts, and every config type has a section.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserialize, Visitor};

/// A deserializer that only asks a struct for its field names (what serde's derive hands
/// `deserialize_struct`), then stops.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names read")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0.extend_from_slice(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The keys a config type accepts.
fn keys<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut fields = Vec::new();
    let _ = T::deserialize(FieldNames(&mut fields));
    assert!(
        !fields.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    fields.into_iter().map(str::to_string).collect()
}

/// Per `<!-- struct: NAME -->` marker, the `` `key` `` cells of the table that follows it.
fn documented(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("<!-- struct: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            assert!(
                out.insert(name.to_string(), BTreeSet::new()).is_none(),
                "{name} twice"
            );
            current = Some(name.to_string());
        } else if line.starts_with("## ") {
            current = None;
        } else if let Some(name) = &current
            && let Some(cell) = line.strip_prefix("| `")
            && let Some((key, _)) = cell.split_once("` |")
        {
            out.get_mut(name).unwrap().insert(key.to_string());
        }
    }
    out
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_binaries_accept() {
    use fleetsnap_agent::config as agent;
    use fleetsnap_coordinator::config as coordinator;
    use fleetsnap_core::{policy, retention};

    let types: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("coordinator::Config", keys::<coordinator::Config>()),
        ("coordinator::Member", keys::<coordinator::Member>()),
        (
            "coordinator::RaftSettings",
            keys::<coordinator::RaftSettings>(),
        ),
        (
            "coordinator::JobSettings",
            keys::<coordinator::JobSettings>(),
        ),
        ("agent::AgentConfig", keys::<agent::AgentConfig>()),
        ("agent::InstanceConfig", keys::<agent::InstanceConfig>()),
        ("agent::SnapshotSettings", keys::<agent::SnapshotSettings>()),
        ("agent::RestoreSettings", keys::<agent::RestoreSettings>()),
        (
            "agent::DrillSettings",
            keys::<fleetsnap_agent::restore::DrillSettings>(),
        ),
        ("proto::TlsFiles", keys::<fleetsnap_proto::tls::TlsFiles>()),
        (
            "telemetry::TelemetryConfig",
            keys::<fleetsnap_telemetry::TelemetryConfig>(),
        ),
        ("core::Policy", keys::<policy::Policy>()),
        ("core::Destination", keys::<policy::Destination>()),
        ("core::Retention", keys::<retention::Retention>()),
        ("core::ObjectLock", keys::<policy::ObjectLock>()),
        ("core::DrillPolicy", keys::<policy::DrillPolicy>()),
        ("core::ArchivePolicy", keys::<policy::ArchivePolicy>()),
    ]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let docs = documented(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(
        docs.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        types.keys().copied().collect::<BTreeSet<_>>(),
        "sections of docs/configuration.md against the config types"
    );
    for (name, accepted) in &types {
        let listed = &docs[*name];
        let missing: Vec<_> = accepted.difference(listed).collect();
        let extra: Vec<_> = listed.difference(accepted).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/configuration.md, {name}: keys not documented {missing:?}, documented keys \
             that do not exist {extra:?}"
        );
    }
}

/// Every path ARCHITECTURE.md names in backticks exists. A name with a `/` is read from the
/// repository's root, or from the folder the map is in (the last folder it named); a bare file
/// name from that folder, its `src/`, or a folder above it.
#[test]
fn architecture_names_only_paths_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let looks_like_path = |t: &str| {
        !t.is_empty()
            && !t.starts_with('/')
            && !t.starts_with('.')
            && !t.contains("//")
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            && (t.ends_with('/')
                || [".rs", ".md", ".sh", ".toml", ".py", ".proto"]
                    .iter()
                    .any(|e| t.ends_with(e)))
    };
    let mut base = root.clone();
    let mut missing = Vec::new();
    let mut checked = 0;
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 || !looks_like_path(part) {
            continue;
        }
        checked += 1;
        let mut found = None;
        if part.contains('/') {
            for start in [root.clone(), base.clone()] {
                if start.join(part).exists() {
                    found = Some(start.join(part));
                    break;
                }
            }
        }
        if found.is_none() {
            let mut dir = base.clone();
            loop {
                if let Some(p) = [dir.join(part), dir.join("src").join(part)]
                    .into_iter()
                    .find(|p| p.exists())
                {
                    found = Some(p);
                    break;
                }
                if dir == root || !dir.pop() {
                    break;
                }
            }
        }
        match found {
            Some(p) if p.is_dir() => base = p,
            Some(_) => {}
            None => missing.push(part.to_string()),
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths found: has the map's format changed?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

/// Every repository path the docs and the README name in backticks (`agent/src/…`,
/// `scripts/…`) exists.
#[test]
fn the_docs_name_only_paths_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let tops = [
        "agent/",
        "bench/",
        "chaos-tests/",
        "cli/",
        "coordinator/",
        "core/",
        "deploy/",
        "docs/",
        "fuzz/",
        "proto/",
        "scripts/",
        "telemetry/",
        "testkit/",
    ];
    let mut pages = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    let mut missing = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for (i, part) in text.split('`').enumerate() {
            let path_like = part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            // `fuzz/corpus/TARGET`: a placeholder, not a path.
            let placeholder = part.split('/').any(|seg| {
                !seg.is_empty() && seg.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            });
            if i % 2 == 1
                && path_like
                && !placeholder
                && tops.iter().any(|t| part.starts_with(t))
                && !root.join(part).exists()
            {
                missing.push(format!("{}: {part}", page.display()));
            }
        }
    }
    assert!(missing.is_empty(), "paths that do not exist: {missing:#?}");
}
