//! The protocol core stays sans-IO (DESIGN.md §1, SPEC §1): no file in
//! `runtime/protocol/src/` names an I/O framework, a clock, randomness, threads, or a hash map
//! whose iteration order could leak into the order of actions. `.ci/run` also builds the core
//! that this crate has no dependencies at all.

use std::path::Path;

/// Forbidden in the core, with the reason each is forbidden.
const FORBIDDEN: &[(&str, &str)] = &[
    ("actix", "actor framework: the core is driven by actors, it does not contain them"),
    ("heed", "storage: durability is reported to the core, never performed by it"),
    ("tokio", "async runtime"),
    ("std::fs", "file I/O"),
    ("std::net", "network I/O"),
    ("std::thread", "threads"),
    ("std::time", "clocks: time is an input"),
    ("Instant", "clocks: time is an input"),
    ("SystemTime", "clocks: time is an input"),
    ("rand", "randomness: choices are inputs"),
    ("HashMap", "iteration order must be deterministic: use BTreeMap"),
    ("HashSet", "iteration order must be deterministic: use BTreeSet"),
    ("unsafe", "no unsafe code in the core"),
];

fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).filter(|w| !w.is_empty())
}

#[test]
fn protocol_core_names_no_io_clock_or_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("runtime/protocol/src exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in words(code) {
                for (name, why) in FORBIDDEN {
                    if word == *name || word.starts_with(&format!("{name}::")) {
                        found.push(format!("{}:{}: `{name}` ({why})", path.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(checked >= 5, "expected the protocol modules in {}", dir.display());
    assert!(found.is_empty(), "the protocol core must stay sans-IO:\n{}", found.join("\n"));
}
