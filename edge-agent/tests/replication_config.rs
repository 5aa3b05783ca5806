//! `[replication]` in a pipeline and the agent's `node.toml` beside it, as `weir validate`
//! checks them: automatic failover needs three voters, and every mistake is one line.

use std::path::Path;
use std::process::{Command, Output};

const PIPELINE: &str = include_str!("configs/design-sensor-window.toml");

/// Two data agents and a witness, from a's side.
const NODE: &str = r#"name = "a"
listen = "127.0.0.1:7401"
cert = "certs/a.crt"
key = "certs/a.key"

[peers.b]
address = "127.0.0.1:7402"
cert = "certs/b.crt"

[peers.w]
address = "127.0.0.1:7403"
cert = "certs/w.crt"
role = "witness"
"#;

/// A folder holding `pipeline.toml` (the sensor-window job plus `replication`), `node.toml`
/// (if given) and empty certificate files.
fn folder(replication: &str, node: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("pipeline.toml"), format!("{PIPELINE}\n{replication}")).unwrap();
    if let Some(node) = node {
        std::fs::write(dir.path().join("node.toml"), node).unwrap();
    }
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for name in ["a.crt", "a.key", "b.crt", "w.crt"] {
        std::fs::write(dir.path().join("certs").join(name), "").unwrap();
    }
    dir
}

fn weir(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).current_dir(dir).output().expect("weir runs")
}

fn rejected(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr.trim_end().to_owned()
}

fn accepted(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn witness_failover_with_three_voters_validates() {
    let dir = folder("[replication]\nmode = \"sync\"\nfailover = \"witness\"\n", Some(NODE));
    accepted(&weir(&["validate", "pipeline.toml"], dir.path()));
    let out = accepted(&weir(&["validate", "node.toml"], dir.path()));
    assert_eq!(out.trim(), "node.toml: ok (agent a, voters a, b, w)");
}

#[test]
fn automatic_failover_with_two_voters_is_refused() {
    let two = NODE.split("[peers.w]").next().unwrap();
    let dir = folder("[replication]\nmode = \"sync\"\nfailover = \"witness\"\n", Some(two));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(
        line.starts_with("weir: config: replication.failover: failover = \"witness\" needs three voters, node.toml has 2 (a, b)"),
        "{line}"
    );
    assert!(line.ends_with("(line 31)"), "{line}");
    let dir = folder("[replication]\nfailover = \"auto\"\n", Some(two));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(line.contains("failover = \"auto\" needs three voters"), "{line}");
    // Unset, it is manual with two voters: valid.
    let dir = folder("[replication]\nmode = \"async\"\nmax_lag = 3\n", Some(two));
    accepted(&weir(&["validate", "pipeline.toml"], dir.path()));
}

#[test]
fn witness_failover_without_a_witness_is_refused() {
    let three_data = NODE.replace("role = \"witness\"\n", "");
    let dir = folder("[replication]\nfailover = \"witness\"\n", Some(&three_data));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(
        line.contains("failover = \"witness\" but node.toml has no peer with role = \"witness\""),
        "{line}"
    );
    let dir = folder("[replication]\nfailover = \"auto\"\n", Some(&three_data));
    accepted(&weir(&["validate", "pipeline.toml"], dir.path()));
}

#[test]
fn replication_without_node_toml_is_refused() {
    let dir = folder("[replication]\nmode = \"sync\"\n", None);
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(line.starts_with("weir: config: replication: needs the agent's settings in "), "{line}");
    assert!(line.contains("node.toml"), "{line}");
}

#[test]
fn replication_mistakes_name_their_key() {
    let dir = folder("[replication]\nmode = \"sync\"\nmax_lag = 3\n", Some(NODE));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert_eq!(
        line,
        "weir: config: replication.max_lag: max_lag applies to mode = \"async\" only (received and sync never lag) (line 31)"
    );
    let dir = folder("[replication]\nmode = \"synch\"\n", Some(NODE));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert_eq!(
        line,
        "weir: config: replication.mode: expected \"async\", \"received\" or \"sync\", found \"synch\" (line 30)"
    );
    let dir = folder("[replication]\nfailovr = \"manual\"\n", Some(NODE));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(line.contains("unknown key \"failovr\" (line 30), did you mean \"failover\"?"), "{line}");
}

#[test]
fn node_toml_mistakes_name_the_file_and_key() {
    let bad = NODE.replace("address = \"127.0.0.1:7402\"", "address = \"127.0.0.1\"");
    let dir = folder("", Some(&bad));
    let line = rejected(&weir(&["validate", "node.toml"], dir.path()));
    assert!(line.contains("node.toml: peers.b.address: expected host:port"), "{line}");
    assert!(line.ends_with("(line 7)"), "{line}");
    let bad = NODE.replace("[peers.b]", "[peers.a]");
    let dir = folder("", Some(&bad));
    let line = rejected(&weir(&["validate", "node.toml"], dir.path()));
    assert!(line.contains("peers.a: \"a\" is this agent's own name"), "{line}");
    let dir = folder("", Some(NODE));
    std::fs::remove_file(dir.path().join("certs/b.crt")).unwrap();
    let line = rejected(&weir(&["validate", "node.toml"], dir.path()));
    assert!(line.contains("peers.b.cert: cannot read"), "{line}");
    assert!(line.contains("make it with `weir cert`"), "{line}");
    // The pipeline's validation reports the node.toml mistake, in node.toml.
    let dir =
        folder("[replication]\n", Some(&NODE.replace("listen = \"127.0.0.1:7401\"", "listen = \"here\"")));
    let line = rejected(&weir(&["validate", "pipeline.toml"], dir.path()));
    assert!(line.contains("node.toml: listen: expected an address and port"), "{line}");
}

#[test]
fn weir_run_refuses_a_replicated_pipeline() {
    let dir = folder("[replication]\nfailover = \"witness\"\n", Some(NODE));
    let line = rejected(&weir(&["run", "pipeline.toml"], dir.path()));
    assert!(line.contains("runs under `weir agent` only"), "{line}");
    assert!(!dir.path().join("data").exists(), "nothing was written");
}
