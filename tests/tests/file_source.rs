//! End-to-end: the `file` source read by the `weir` binary. A last line without a newline
//! is a record, quoted CSV (Weir's own output included) reads back as written, numbers that
//! do not fit their type stop the run with one located line, and an input that shrank or was
//! replaced since the last checkpoint stops a resumed run instead of ending it early.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::{kill_9_after_a_checkpoint, weir_bin};

/// A pipeline `src` (a file source) -> `pass` (a map that changes nothing)
/// -> `out` (a file sink), written into `dir`.
fn config(dir: &Path, input: &str, format: &str, schema: &str, out: &str, out_format: &str) -> PathBuf {
    let text = format!(
        r#"data_dir = "data"
[checkpoint]
interval_ms = 20
[sources.src]
type = "file"
path = "{input}"
format = "{format}"
schema = {{ {schema} }}
batch_size = 100
[transforms.pass]
type = "map"
inputs = ["src"]
[sinks.out]
type = "file"
inputs = ["pass"]
path = "{out}"
format = "{out_format}"
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Run `weir run config`: the exit code and stderr.
fn run(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(weir_bin()).arg("run").arg(config).output().expect("weir runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn run_ok(config: &Path) {
    let (code, stderr) = run(config);
    assert_eq!(code, Some(0), "weir run failed: {stderr}");
}

/// Run, expecting exit 1 and exactly one line on stderr; the line.
fn run_fails(config: &Path) -> String {
    let (code, stderr) = run(config);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const SENSOR: &str = r#"sensor = "string", v = "float""#;

#[test]
fn a_last_line_without_a_newline_is_read() {
    let cases = [
        ("one.csv", "csv", "a,1.5"),
        ("two.csv", "csv", "a,1.5\r\nb,2.5"),
        ("one.jsonl", "json", r#"{"sensor":"a","v":1.5}"#),
        ("two.jsonl", "json", "{\"sensor\":\"a\",\"v\":1.5}\n{\"sensor\":\"b\",\"v\":2.5}"),
    ];
    for (input, format, text) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(input), text).unwrap();
        let config = config(dir.path(), input, format, SENSOR, "out.csv", "csv");
        run_ok(&config);
        let expected = if text.contains("b") { "a,1.5\nb,2.5\n" } else { "a,1.5\n" };
        assert_eq!(read(&dir.path().join("out.csv")), expected, "{input}");
    }
}

#[test]
fn quoted_csv_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\"a,b\",1\r\n\"say \"\"hi\"\"\",2\r\nplain,\"3\"\r\n\" padded \",4\r\n";
    std::fs::write(dir.path().join("in.csv"), text).unwrap();
    run_ok(&config(dir.path(), "in.csv", "csv", SENSOR, "out.jsonl", "json"));
    assert_eq!(
        read(&dir.path().join("out.jsonl")),
        concat!(
            r#"{"sensor":"a,b","v":1.0}"#,
            "\n",
            r#"{"sensor":"say \"hi\"","v":2.0}"#,
            "\n",
            r#"{"sensor":"plain","v":3.0}"#,
            "\n",
            r#"{"sensor":" padded ","v":4.0}"#,
            "\n"
        )
    );
}

/// JSON in -> Weir's CSV -> read back by Weir -> JSON and CSV again: the same records.
#[test]
fn weirs_own_csv_output_reads_back_as_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let strings = ["plain", "a,b", "say \"hi\"", "\"", ",,", "", " padded ", "ünï,cödé", "x\ty"];
    let mut input = String::new();
    for (i, s) in strings.iter().enumerate() {
        let n = [i64::MIN, -1, 0, i64::MAX][i % 4];
        let x = [0.1, -2.5e-300, 1e300, 12345.678][i % 4];
        let record = serde_json::json!({ "name": s, "n": n, "x": x, "ok": i % 2 == 0 });
        input.push_str(&format!("{record}\n"));
    }
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();
    let schema = r#"name = "string", n = "int", x = "float", ok = "bool""#;
    run_ok(&config(dir.path(), "in.jsonl", "json", schema, "first.csv", "csv"));
    let first = read(&dir.path().join("first.csv"));
    assert!(first.contains("\"say \"\"hi\"\"\""), "the encoder quoted: {first}");

    std::fs::create_dir(dir.path().join("again")).unwrap();
    std::fs::write(dir.path().join("again/in.csv"), &first).unwrap();
    run_ok(&config(&dir.path().join("again"), "in.csv", "csv", schema, "back.jsonl", "json"));
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let back = read(&dir.path().join("again/back.jsonl"));
    assert_eq!(parse(&back), parse(&input));

    std::fs::create_dir(dir.path().join("third")).unwrap();
    std::fs::write(dir.path().join("third/in.csv"), &first).unwrap();
    run_ok(&config(&dir.path().join("third"), "in.csv", "csv", schema, "second.csv", "csv"));
    assert_eq!(read(&dir.path().join("third/second.csv")), first);
}

#[test]
fn non_finite_and_overflowing_numbers_stop_the_run_with_one_line() {
    let schema = r#"sensor = "string", v = "float", n = "int""#;
    let cases = [
        ("csv", "c,1e400,1", "field \"v\" is out of range for float: 1e400"),
        ("csv", "c,-1e400,1", "field \"v\" is out of range for float: -1e400"),
        ("csv", "c,NaN,1", "field \"v\" should be a finite float, found \"NaN\""),
        ("csv", "c,inf,1", "field \"v\" should be a finite float, found \"inf\""),
        ("csv", "c,-Infinity,1", "field \"v\" should be a finite float, found \"-Infinity\""),
        ("csv", "c,1,9223372036854775808", "field \"n\" is out of range for int: 9223372036854775808"),
        (
            "json",
            r#"{"sensor":"c","v":1e400,"n":1}"#,
            "field \"v\" is out of range for float: the number does not fit a 64-bit float",
        ),
        (
            "json",
            r#"{"sensor":"c","v":1,"n":9223372036854775808}"#,
            "field \"n\" is out of range for int: 9223372036854775808",
        ),
        ("json", r#"{"sensor":"c","v":NaN,"n":1}"#, "invalid JSON at column 19: expected value"),
        ("json", r#"{"sensor":"c","v":Infinity,"n":1}"#, "invalid JSON at column 19: expected value"),
    ];
    for (format, bad, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (input, good) = match format {
            "csv" => ("in.csv", "a,1.5,1\nb,2.5,2\n"),
            _ => ("in.jsonl", "{\"sensor\":\"a\",\"v\":1.5,\"n\":1}\n{\"sensor\":\"b\",\"v\":2.5,\"n\":2}\n"),
        };
        let path = dir.path().join(input);
        std::fs::write(&path, format!("{good}{bad}\n")).unwrap();
        let line = run_fails(&config(dir.path(), input, format, schema, "out.csv", "csv"));
        assert_eq!(line, format!("weir: run failed: src: {} line 3: {message}", path.display()), "{bad}");
        assert_eq!(read(&dir.path().join("out.csv")), "", "{bad}: nothing committed");
    }
}

/// The first run reads the whole file and its last checkpoint holds the position at its end;
/// every later run restores that checkpoint and seeks the source there (a finished source
/// is sought too, before it is known to be finished), so a rerun with a changed input
/// exercises the same seek as a resume after `kill -9`.
#[test]
fn an_input_truncated_or_replaced_since_the_last_checkpoint_stops_the_resumed_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let text: String = (0..5000).map(|i| format!("s{:04},{i}.25\n", i % 100)).collect();
    std::fs::write(&path, &text).unwrap();
    let config = config(dir.path(), "in.csv", "csv", SENSOR, "out.csv", "csv");
    run_ok(&config);
    let out = dir.path().join("out.csv");
    assert_eq!(read(&out), text);
    let len = text.len();

    std::fs::write(&path, &text[..len / 10]).unwrap();
    assert_eq!(
        run_fails(&config),
        format!(
            "weir: run failed: src: {} is shorter ({} bytes) than the position of the last checkpoint \
             ({len} bytes); it was truncated or replaced",
            path.display(),
            len / 10
        )
    );

    // The same length, other values: a different file.
    std::fs::write(&path, text.replace(".25", ".75")).unwrap();
    assert_eq!(
        run_fails(&config),
        format!(
            "weir: run failed: src: {} differs from the file read before the last checkpoint (the 4096 \
             bytes before its position, {len}, changed); it was replaced or rewritten",
            path.display()
        )
    );

    // The original back: the finished run stays finished, its output unchanged.
    std::fs::write(&path, &text).unwrap();
    run_ok(&config);
    assert_eq!(read(&out), text);
}

/// Killed mid-run (when a checkpoint has completed, if the run has not finished by then),
/// the rerun resumes from the checkpoint's position: every record exactly once, in order.
#[test]
fn a_run_killed_mid_file_resumes_at_its_position_with_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let records = 300_000;
    let text: String =
        (0..records).map(|i| format!("{{\"sensor\":\"s{:04}\",\"v\":{i}.5}}\n", i % 1000)).collect();
    std::fs::write(&path, &text).unwrap();
    let config = config(dir.path(), "in.jsonl", "json", SENSOR, "out.csv", "csv");
    let killed = kill_9_after_a_checkpoint(&config, 1).is_some();
    eprintln!("first run: {}", if killed { "killed after a checkpoint" } else { "finished" });
    run_ok(&config);
    let expected: String = (0..records).map(|i| format!("s{:04},{i}.5\n", i % 1000)).collect();
    assert!(read(&dir.path().join("out.csv")) == expected, "not every record exactly once, in order");
}
