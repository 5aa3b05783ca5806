//! Routing survives recovery: a keyless node feeding a node of another parallelism spreads
//! its batches round-robin, and after a local restart it must send each replayed batch to the
//! channel it went to before, under the same sequence number (issue 10: the router was not
//! restored, so replayed batches went to the other channel and windows came out wrong with
//! exit 0).

use weir_tests::{reference_lines, report_of, run_ok, sensor_window_config, sorted_lines};

/// Readings the generator sends.
const RECORDS: u64 = 400_000;

/// The sensor-window job with a keyless filter (p=1) and a map (p=2: round-robin) before
/// the window (p=2, by key: hash); checkpoints every 20 ms, so a restart restores a
/// checkpoint and replays.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    // At a million readings a second (0.4 s in all), checkpoints complete before most of the
    // injected failures, so the restarted filter restores one and replays past it.
    let path = sensor_window_config(dir, RECORDS, 20, Some(1_000_000));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[transforms.windows]\ntype = \"window\"\ninputs = [\"readings\"]\n",
        r#"[transforms.hot]
type = "filter"
inputs = ["readings"]
condition = "value >= 0.0"
[transforms.shaped]
type = "map"
inputs = ["hot"]
parallelism = 2
select = ["sensor", "ts", "value"]
[transforms.windows]
type = "window"
inputs = ["shaped"]
parallelism = 2
"#,
    );
    assert!(text.contains("[transforms.shaped]"), "the sensor-window config changed shape");
    std::fs::write(&path, text).unwrap();
    path
}

/// Run the pipeline with `faults`; return the sorted output lines and the report.
fn run(faults: &[&str]) -> (Vec<String>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), faults);
    (sorted_lines(&dir.path().join("out/windows.csv")), report_of(&report))
}

/// `actual` is the reference row for row: the key, window, count, minimum and maximum
/// exactly; the sum and the mean within the last printed digit, because the window takes its
/// two inputs in an order that varies between runs and float addition is not associative.
fn assert_matches_reference(actual: &[String], reference: &[String], what: &str) {
    assert_eq!(actual.len(), reference.len(), "{what}: number of rows");
    for (a, r) in actual.iter().zip(reference) {
        let (a, r): (Vec<&str>, Vec<&str>) = (a.split(',').collect(), r.split(',').collect());
        let exact = [0, 1, 2, 4, 5];
        assert_eq!(exact.map(|i| a[i]), exact.map(|i| r[i]), "{what}: {a:?} vs the reference {r:?}");
        for i in [3, 6] {
            let (x, y): (f64, f64) = (a[i].parse().unwrap(), r[i].parse().unwrap());
            assert!((x - y).abs() <= 0.0015, "{what}: column {i}: {a:?} vs the reference {r:?}");
        }
    }
}

#[test]
fn a_round_robin_sender_restarted_locally_sends_each_replayed_batch_where_it_went_before() {
    let reference = reference_lines(RECORDS);
    let (lines, _) = run(&[]);
    assert_matches_reference(&lines, &reference, "no fault");
    // A wrong router shows only when the restored checkpoint and the failure fall on batch
    // counts of the right parities (a replayed batch sent to the other channel under a
    // sequence number applied there is dropped, so what is within both channels' high-water
    // marks still comes out once): ten failure points make a miss unlikely.
    for at in [12_345, 77_777, 101_010, 150_001, 176_543, 222_223, 251_001, 277_777, 300_001, 345_679] {
        let fault = format!("panic:hot:{at}");
        let (lines, report) = run(&[&fault]);
        let restarts = report["restarts"].as_array().unwrap();
        assert_eq!(restarts.len(), 1, "{fault}: {report}");
        assert_eq!(restarts[0]["node"], "hot", "{fault}: {report}");
        assert_eq!(restarts[0]["recovery"], "local", "{fault}: {report}");
        if at >= 77_777 {
            // Restored from a checkpoint: the router's place there is not its first channel's.
            assert!(restarts[0]["restored_from"].is_u64(), "{fault}: {report}");
        }
        assert_matches_reference(&lines, &reference, &fault);
    }
}
