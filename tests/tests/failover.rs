//! Hot and warm standby of the window operator, end to end (issue 11): the real `weir`
//! binary, a panic or a hang injected into the primary at several points, the output checked
//! against the independent reference and the run report's restart entry read.

use std::path::Path;

use weir_tests::*;

const RECORDS: u64 = 200_000;

/// The sensor-window job in `dir` with `extra` appended, `RECORDS` readings at `rate` a
/// second and a checkpoint every 20 ms.
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = sensor_window_config(dir, RECORDS, 20, Some(500_000));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    config
}

/// Run with `fault`, check the output equals the reference, return the single restart.
fn one_failover(extra: &str, fault: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), extra);
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), &[fault]);
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS), "{fault}");
    let report = report_of(&report);
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{fault}: no other subtask restarted: {report}");
    assert_eq!(report["escalation"], serde_json::Value::Null, "{fault}");
    restarts[0].clone()
}

/// The restart entry of a takeover: `failover` under epoch 1, the window's subtask alone,
/// the output gap measured and a new standby ready before the run ended.
fn assert_failover(restart: &serde_json::Value, reason: &str, fault: &str) {
    assert_eq!(restart["node"], "windows", "{fault}");
    assert_eq!(restart["reason"], reason, "{fault}: {restart}");
    assert_eq!(restart["recovery"], "failover", "{fault}: {restart}");
    assert_eq!(restart["epoch"], 1, "{fault}: {restart}");
    assert_eq!(restart["restarted"], serde_json::json!(["windows/0"]), "{fault}");
    assert!(restart["output_gap_ms"].is_u64(), "{fault}: output resumed: {restart}");
    assert!(restart["reprotected_ms"].is_u64(), "{fault}: a new standby took its place: {restart}");
}

/// Reference: issue 11, "A panic injected into the window operator at 5 points, with a hot
/// standby: output identical to the failure-free run, one restart with recovery =
/// "failover", no other subtask restarted, and a new standby started afterwards".
#[test]
fn a_panic_of_the_window_with_a_hot_standby_is_healed_by_a_takeover_at_five_points() {
    for at in [20_000, 50_000, 80_000, 110_000, 150_000] {
        let fault = format!("panic:windows:{at}");
        let restart = one_failover("[recovery]\nkey_operator = \"windows\"\n", &fault);
        assert_failover(&restart, "panic", &fault);
        assert_eq!(restart["message"], format!("injected fault panic:windows/0:{at}"));
    }
}

/// The same with a warm standby: it installs each completed checkpoint's snapshot and applies
/// the input since when it takes over.
#[test]
fn a_panic_of_the_window_with_a_warm_standby_is_healed_by_a_takeover_at_five_points() {
    for at in [20_000, 50_000, 80_000, 110_000, 150_000] {
        let fault = format!("panic:windows:{at}");
        let restart = one_failover("[transforms.windows.standby]\nmode = \"warm\"\n", &fault);
        assert_failover(&restart, "panic", &fault);
    }
}

/// A primary that stops making progress (its thread blocked for 3 s) is taken over once the
/// progress timeout passes; when it wakes up it has been replaced and has no effect: the
/// output is still exactly the reference. At the five points of the panic tests with a hot
/// standby, and once with a warm one.
#[test]
fn a_hung_window_is_taken_over_after_the_progress_timeout_and_has_no_effect_when_it_wakes() {
    let points = [20_000, 50_000, 80_000, 110_000, 150_000].map(|at| ("hot", at));
    for (mode, at) in points.into_iter().chain([("warm", 120_000)]) {
        let fault = format!("hang:windows:{at}");
        let extra = format!(
            "[recovery]\nprogress_timeout_ms = 200\n[transforms.windows.standby]\nmode = \"{mode}\"\n"
        );
        let restart = one_failover(&extra, &fault);
        assert_failover(&restart, "hung", &fault);
        assert_eq!(restart["message"], "no progress for 200 ms", "{mode}");
    }
}

/// Without a standby, the same panic is a local restart, as before.
#[test]
fn without_a_standby_a_panic_of_the_window_is_a_local_restart() {
    let restart = one_failover("", "panic:windows:50000");
    assert_eq!(restart["recovery"], "local", "{restart}");
    assert_eq!(restart["epoch"], serde_json::Value::Null);
}

/// S11 across processes: the epoch a takeover granted is in the log before it is granted, so
/// after a `kill -9` the next run's takeover is granted the next epoch, never the same one
/// again; and the output is still exactly the reference.
#[test]
fn the_grant_of_a_takeover_survives_kill_9_and_the_next_takeover_is_granted_the_next_epoch() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config(dir.path(), RECORDS, 20, Some(100_000));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[recovery]\nkey_operator = \"windows\"\n");
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(weir_bin())
        .arg("run")
        .arg(&config)
        .args(["--inject", "panic:windows:20000"])
        .env("WEIR_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let took_over = stderr.lines().map_while(Result::ok).any(|line| line.contains("taking over as epoch 1"));
    assert!(took_over, "the first run took over");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), &["panic:windows:20000"]);
    let report = report_of(&report);
    let restarts = report["restarts"].as_array().unwrap();
    let failover = restarts.iter().find(|r| r["recovery"] == "failover").expect("a takeover");
    assert_eq!(failover["epoch"], 2, "{report}");
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS));
}

/// Two sources into one window: after a takeover the new primary takes its inputs in its own
/// order, so a woken old primary would produce other batches under the same sequence numbers.
/// Receivers refuse what it sends under its old epoch (S12): each (sensor, window) is still
/// there once, with its count, minimum and maximum (float sums depend on the order records
/// arrive in, even without faults).
#[test]
fn a_woken_primary_of_a_two_input_window_has_no_effect() {
    const CONFIG: &str = r#"
data_dir = "data"
[checkpoint]
interval_ms = 20
[recovery]
progress_timeout_ms = 200
key_operator = "windows"
[sources.a]
type = "generator"
shape = "sensors"
records = 150000
rate = 300000
[sources.b]
type = "generator"
shape = "sensors"
records = 100000
rate = 200000
[transforms.windows]
type = "window"
inputs = ["a", "b"]
key = "sensor"
time_field = "ts"
kind = "tumbling"
size_ms = 100
max_out_of_order_ms = 5000
aggregates = ["count", "sum(value)", "min(value)", "max(value)"]
[sinks.out]
type = "file"
inputs = ["windows"]
path = "out/windows.csv"
format = "csv"
"#;
    let run = |faults: &[&str]| run_order_independent(CONFIG, faults);
    let (reference, _) = run(&[]);
    let counted: u64 = reference.iter().map(|r| r.split(',').nth(2).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(counted, 250_000, "every reading in exactly one window");
    for fault in ["hang:windows:30000", "panic:windows:60000"] {
        let (rows, report) = run(&[fault]);
        assert_eq!(rows, reference, "{fault}");
        assert_eq!(report["restarts"][0]["recovery"], "failover", "{fault}: {report}");
        assert_eq!(report["restarts"].as_array().unwrap().len(), 1, "{fault}: {report}");
    }
}

/// A standby whose buffer queues gave up over `buffer_mb` could not serve its receivers from
/// their positions once promoted: it does not take over, and the primary restarts locally
/// (before, the takeover ended in a global rollback).
#[test]
fn a_standby_over_its_buffer_budget_leaves_the_failure_to_a_local_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config_with(dir.path(), 400_000, 10_000, None, "sensors = 100000\n");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[recovery]\nkey_operator = \"windows\"\nbuffer_mb = 1\n");
    std::fs::write(&config, text).unwrap();
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), &["panic:windows:300000"]);
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines_with(400_000, 100_000));
    let report = report_of(&report);
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{report}");
    assert_eq!(restarts[0]["recovery"], "local", "{report}");
}
