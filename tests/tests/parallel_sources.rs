//! End-to-end: sources with `parallelism = 2` split their input over two subtasks and the
//! pipeline's output is exactly that of `parallelism = 1`, also after a `kill -9` and a rerun.

use std::path::{Path, PathBuf};

use weir_tests::*;

#[test]
fn a_generator_with_parallelism_2_gives_exactly_the_parallelism_1_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config_parallel(dir.path(), 200_000, 100, None, 2);
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), &[]);
    let lines = sorted_lines(&dir.path().join("out/windows.csv"));
    assert_eq!(lines, reference_lines(200_000));
    assert_eq!(sorted_sha256(&lines), "00b943d3e2ff6c2f87b15bb4b6617e09a4bffc08a1a535a65e5c026fa8466b9b");
    let report = report_of(&report);
    assert_eq!(report["nodes"][0]["records_out"], 200_000, "every reading read once");
}

#[test]
fn a_generator_with_parallelism_2_killed_mid_run_resumes_to_exactly_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config_parallel(dir.path(), 400_000, 100, Some(200_000), 2);
    let reported = kill_9_after_a_checkpoint(&config, 2).expect("a checkpoint was reported complete");
    let report = dir.path().join("report.json");
    run_ok(&config, Some(&report), &[]);
    let restored = report_of(&report)["restored_from"].as_u64().expect("the rerun resumed");
    assert!(restored >= reported, "reported {reported} complete, but the rerun restored {restored}");
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(400_000));
}

/// A file source → keyed window → file sink pipeline at `parallelism` (source and window).
/// The aggregates are exact whatever the order records of one key arrive in from the two
/// source subtasks (float sums would round differently).
fn file_window(dir: &Path, parallelism: usize, out: &str) -> PathBuf {
    let text = format!(
        r#"data_dir = "data-{out}"
[checkpoint]
interval_ms = 50
[sources.src]
type = "file"
path = "in.csv"
format = "csv"
schema = {{ sensor = "string", ts = "int", value = "float", n = "int" }}
batch_size = 500
parallelism = {parallelism}
[transforms.windows]
type = "window"
inputs = ["src"]
key = "sensor"
time_field = "ts"
kind = "tumbling"
size_ms = 1000
max_out_of_order_ms = 100
aggregates = ["count", "sum(n)", "min(value)", "max(value)", "min(ts)"]
parallelism = {parallelism}
[sinks.out]
type = "file"
inputs = ["windows"]
path = "{out}"
format = "csv"
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The sensor readings as CSV, some sensor names quoted with a comma and a line break in
/// them, and blank lines here and there.
fn write_readings(path: &Path, records: u64) {
    let mut text = String::new();
    for i in 0..records {
        let (ts, value) = ((i / 100 + (i * 37) % 50) as i64, ((i * 7919 + 13) % 10007) as f64 / 100.0);
        let sensor = i % 500;
        if sensor % 7 == 0 {
            text.push_str(&format!("\"s,{sensor}\nx\",{ts},{value},{i}\n"));
        } else {
            text.push_str(&format!("s{sensor},{ts},{value},{i}\r\n"));
        }
        if i % 1000 == 999 {
            text.push('\n');
        }
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_file_source_with_parallelism_2_gives_exactly_the_parallelism_1_output() {
    let dir = tempfile::tempdir().unwrap();
    write_readings(&dir.path().join("in.csv"), 150_000);
    let (report_one, report_two) = (dir.path().join("one.json"), dir.path().join("two.json"));
    run_ok(&file_window(dir.path(), 1, "one.csv"), Some(&report_one), &[]);
    run_ok(&file_window(dir.path(), 2, "two.csv"), Some(&report_two), &[]);
    let one = sorted_lines(&dir.path().join("one.csv"));
    assert!(one.len() > 1000, "{} lines", one.len());
    assert!(sorted_lines(&dir.path().join("two.csv")) == one, "parallelism 2 differs from parallelism 1");
    for report in [report_one, report_two] {
        let nodes = &report_of(&report)["nodes"];
        assert_eq!(nodes[0]["records_out"], 150_000, "every record read once");
        assert_eq!(nodes[1]["records_out"], nodes[2]["records_in"]);
    }
    // 500 sensors, event times 0 to 1548 ms: two windows each.
    assert_eq!(report_of(&dir.path().join("one.json"))["nodes"][1]["records_out"], 1000);
}

#[test]
fn a_file_source_with_parallelism_2_killed_mid_run_resumes_to_exactly_the_output() {
    let dir = tempfile::tempdir().unwrap();
    write_readings(&dir.path().join("in.csv"), 600_000);
    run_ok(&file_window(dir.path(), 1, "one.csv"), None, &[]);
    let config = file_window(dir.path(), 2, "two.csv");
    let killed = kill_9_after_a_checkpoint(&config, 1).is_some();
    eprintln!("first run: {}", if killed { "killed after a checkpoint" } else { "finished" });
    run_ok(&config, None, &[]);
    let one = sorted_lines(&dir.path().join("one.csv"));
    assert!(sorted_lines(&dir.path().join("two.csv")) == one, "not exactly the parallelism 1 output");
}
