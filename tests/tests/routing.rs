//! Routing survives recovery: a keyless node feeding a node of another parallelism spreads
//! its batches round-robin, and after a local restart it must send each replayed batch to the
//! channel it went to before, under the same sequence number (issue 10: the router was not
//! restored, so replayed batches went to the other channel and windows came out wrong with
//! exit 0).

use weir_tests::{reference_lines, report_of, run_ok, sorted_lines};

/// Readings the generator sends.
const RECORDS: u64 = 400_000;

/// generator -> filter (p=1, keyless) -> map (p=2: round-robin) -> window (p=2, by key: hash)
/// -> file sink; checkpoints every 20 ms, so a restart restores a checkpoint and replays.
const CONFIG: &str = r#"
data_dir = "data"
[checkpoint]
interval_ms = 20
[sources.readings]
type = "generator"
shape = "sensors"
records = 400000
[transforms.hot]
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
key = "sensor"
time_field = "ts"
kind = "tumbling"
size_ms = 1000
max_out_of_order_ms = 100
aggregates = ["count", "sum(value)", "min(value)", "max(value)", "mean(value)"]
[sinks.out]
type = "file"
inputs = ["windows"]
path = "out/windows.csv"
format = "csv"
float_precision = 3
"#;

/// Run the pipeline with `faults`; return the sorted output lines and the report.
fn run(faults: &[&str]) -> (Vec<String>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routing.toml");
    std::fs::write(&config, CONFIG).unwrap();
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
    for at in [12_345, 150_001, 300_001] {
        let fault = format!("panic:hot:{at}");
        let (lines, report) = run(&[&fault]);
        let restarts = report["restarts"].as_array().unwrap();
        assert_eq!(restarts.len(), 1, "{fault}: {report}");
        assert_eq!(restarts[0]["node"], "hot", "{fault}: {report}");
        assert_eq!(restarts[0]["recovery"], "local", "{fault}: {report}");
        assert_matches_reference(&lines, &reference, &fault);
    }
}
