//! End-to-end: `--inject` cannot silently test nothing. A fault kind that cannot fire in its
//! node is refused before the run; one that did not fire by the end is reported, in the
//! JSON report and as a warning line; source snapshots and log writes take faults too.

use std::process::{Command, Output};

use weir_tests::*;

const RECORDS: u64 = 200_000;

fn weir(dir: &std::path::Path, faults: &[&str]) -> (Output, serde_json::Value) {
    weir_at(dir, None, faults)
}

fn weir_at(dir: &std::path::Path, rate: Option<u64>, faults: &[&str]) -> (Output, serde_json::Value) {
    let config = sensor_window_config(dir, RECORDS, 20, rate);
    let report = dir.join("report.json");
    let mut cmd = Command::new(weir_bin());
    cmd.arg("run").arg(&config).arg("--report").arg(&report);
    for fault in faults {
        cmd.arg("--inject").arg(fault);
    }
    let out = cmd.output().unwrap();
    let report = std::fs::read_to_string(&report)
        .map_or(serde_json::Value::Null, |r| serde_json::from_str(&r).unwrap());
    (out, report)
}

#[test]
fn a_commit_fault_outside_a_sink_is_refused_with_one_line_naming_kind_and_node() {
    for (fault, node) in
        [("commit:windows:1", "windows\" is a transform"), ("commit:readings/0:2", "readings\" is a source")]
    {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = weir(dir.path(), &[fault]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!("weir: --inject {fault}: commit faults fire only in sinks; \"{node}\n"),
            "{fault}"
        );
        assert!(!dir.path().join("data").exists(), "{fault}: refused, yet the run started");
    }
}

#[test]
fn a_fault_that_did_not_fire_is_reported_and_the_exact_run_still_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = weir(dir.path(), &["panic:windows:99999999", "panic:windows:1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS));
    assert_eq!(
        report["injections"],
        serde_json::json!([
            {"fault": "panic:windows:99999999", "fired": false},
            {"fault": "panic:windows:1000", "fired": true},
        ])
    );
    let warnings: Vec<_> = stderr.lines().filter(|l| l.starts_with("weir: warning: ")).collect();
    assert_eq!(
        warnings,
        ["weir: warning: --inject panic:windows:99999999 did not fire (the run ended first)"],
        "{stderr}"
    );
}

/// A source's snapshots are its log writes: a crash in one, or a failed write, rolls the
/// pipeline back (a source cannot restart alone), and the output is still exact. The source
/// is rate-limited so that the run takes several checkpoints.
#[test]
fn snapshot_and_write_error_faults_fire_in_a_source() {
    for (fault, reason) in [("snapshot:readings:2", "panic"), ("write-error:readings:3", "write_error")] {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = weir_at(dir.path(), Some(1_000_000), &[fault]);
        assert!(out.status.success(), "{fault}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS), "{fault}");
        assert_eq!(report["injections"], serde_json::json!([{"fault": fault, "fired": true}]), "{fault}");
        let restarts = report["restarts"].as_array().unwrap();
        assert_eq!(restarts.len(), 1, "{fault}: {report}");
        assert_eq!(
            (&restarts[0]["node"], &restarts[0]["reason"], &restarts[0]["recovery"]),
            (&"readings".into(), &reason.into(), &"global".into()),
            "{fault}"
        );
    }
}
