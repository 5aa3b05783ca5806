//! End-to-end: a panic in a message handler outside operator code (an injected one, as a
//! subtask handles a flow-control credit) is caught and healed like a panic in an operator:
//! a transform restarts alone, a source rolls the pipeline back, and past the restart
//! intensity the run exits 1 with one line. Before handlers were guarded, such a panic ended
//! the subtask's actor quietly and the run waited forever, so every run here has a deadline.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weir_tests::*;

const RECORDS: u64 = 200_000;
/// Records per second: the run takes several checkpoints, so the panics come after some
/// completed (the window emits its first output, and gets its first credit, half-way).
const RATE: u64 = 1_000_000;
/// How long a run may take before the test gives up: a hang, not a slow machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// `weir run` on the sensor-window job in `dir`, with `extra` appended to its config and
/// `faults` injected; killed, and the test failed, if it has not exited within PATIENCE.
/// Returns how it exited, its stderr and its report (null if none was written).
fn run(dir: &Path, extra: &str, faults: &[&str]) -> (ExitStatus, String, serde_json::Value) {
    let config = sensor_window_config(dir, RECORDS, 20, Some(RATE));
    let text = std::fs::read_to_string(&config).unwrap() + extra;
    std::fs::write(&config, text).unwrap();
    let report = dir.join("report.json");
    let mut cmd = Command::new(weir_bin());
    cmd.arg("run").arg(&config).arg("--report").arg(&report).stderr(Stdio::piped());
    for fault in faults {
        cmd.arg("--inject").arg(fault);
    }
    let mut child = cmd.spawn().expect("weir starts");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{faults:?}: weir did not exit within {PATIENCE:?} (a hang):\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap();
    let report = std::fs::read_to_string(&report)
        .map_or(serde_json::Value::Null, |r| serde_json::from_str(&r).unwrap());
    (status, stderr, report)
}

/// A transform's credit handler panics: it restarts alone; a source's: the pipeline rolls
/// back. Either way the output is exactly the reference and the report says what happened.
/// (The source sends at least 49 batches of at most 4096 records, so its 20th credit comes.)
#[test]
fn a_panic_in_a_credit_handler_is_healed_with_the_exact_output() {
    for (fault, node, recovery, message) in [
        ("credit:windows:1", "windows", "local", "injected fault credit:windows/0:1"),
        ("credit:readings:20", "readings", "global", "injected fault credit:readings/0:20"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (status, stderr, report) = run(dir.path(), "", &[fault]);
        assert!(status.success(), "{fault}: {stderr}");
        assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS), "{fault}");
        assert_eq!(report["injections"], serde_json::json!([{"fault": fault, "fired": true}]), "{fault}");
        let restarts = report["restarts"].as_array().unwrap();
        assert_eq!(restarts.len(), 1, "{fault}: {report}");
        let restart = &restarts[0];
        assert_eq!(
            (&restart["node"], &restart["reason"], &restart["recovery"]),
            (&node.into(), &"panic".into(), &recovery.into()),
            "{fault}"
        );
        assert_eq!(restart["message"], message, "{fault}");
    }
}

/// With no restarts allowed, the same panic stops the run: exit 1, one line naming the
/// subtask and the panic.
#[test]
fn a_panic_in_a_credit_handler_past_the_restart_intensity_exits_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = run(dir.path(), "[supervision]\nmax_restarts = 0\n", &["credit:windows:1"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "weir: supervision: windows/0 failed after 0 global rollback(s) within 60000 ms (max_restarts = 0), \
         giving up; last failure (panic): injected fault credit:windows/0:1\n"
    );
}
