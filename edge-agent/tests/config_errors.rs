//! `weir validate` as a user runs it: a bad config exits with code 2 and prints exactly one
//! line on stderr, naming the key and its line; a good one exits with 0.

use std::path::Path;
use std::process::{Command, Output};

/// The sensor-window config of DESIGN.md section 8, line for line.
const SENSOR_WINDOW: &str = include_str!("configs/design-sensor-window.toml");

/// Variables the tests set; removed from the child's environment unless a test sets them.
const TEST_VARIABLES: &[&str] = &["WEIR_TEST_RECORDS", "WEIR_TEST_KIND", "WEIR_TEST_OUT"];

/// Runs `weir validate` on a file holding `config`, with `env` set.
fn validate(config: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, config).expect("the config is written");
    validate_path(&path, env)
}

fn validate_path(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.arg("validate").arg(path);
    for name in TEST_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("weir runs")
}

/// Asserts exit code 2 and that stderr is exactly the one line `weir: {message}`.
fn assert_rejected(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, [format!("weir: {message}")]);
}

fn assert_accepted(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
}

/// The sensor-window config with `from` replaced by `to`, which must occur in it.
fn edited(from: &str, to: &str) -> String {
    assert!(SENSOR_WINDOW.contains(from), "{from:?} is not in the config");
    SENSOR_WINDOW.replacen(from, to, 1)
}

#[test]
fn the_sensor_window_config_validates() {
    assert_accepted(&validate(SENSOR_WINDOW, &[]));
}

#[test]
fn unknown_key() {
    assert_rejected(
        &validate(&edited("size_ms = 1000", "sise_ms = 1000"), &[]),
        "config: transforms.windows: unknown key \"sise_ms\" (line 18), did you mean \"size_ms\"?",
    );
}

#[test]
fn unknown_input() {
    assert_rejected(
        &validate(&edited("inputs = [\"windows\"]", "inputs = [\"windowz\"]"), &[]),
        "config: sinks.out: unknown input \"windowz\" (line 24), did you mean \"windows\"?",
    );
}

#[test]
fn cycle() {
    let config = edited("inputs = [\"readings\"]", "inputs = [\"smoothed\"]").replacen(
        "[sinks.out]",
        "[transforms.smoothed]\ntype = \"filter\"\ninputs = [\"windows\"]\ncondition = \"count > 0\"\n\n[sinks.out]",
        1,
    );
    assert_rejected(&validate(&config, &[]), "config: cycle: windows -> smoothed -> windows");
}

#[test]
fn wrong_type_of_value() {
    assert_rejected(
        &validate(&edited("records = 2000000", "records = \"abc\""), &[]),
        "config: sources.readings.records: expected a positive integer, found \"abc\" (line 10)",
    );
}

#[test]
fn bad_enum_string() {
    assert_rejected(
        &validate(&edited("kind = \"tumbling\"", "kind = \"tumbeling\""), &[]),
        "config: transforms.windows.kind: expected \"tumbling\", \"hopping\" or \"session\", found \"tumbeling\" \
         (line 17)",
    );
}

#[test]
fn unknown_type() {
    assert_rejected(
        &validate(&edited("type = \"generator\"", "type = \"generater\""), &[]),
        "config: sources.readings.type: expected \"generator\", \"file\" or \"mqtt\", found \"generater\" (line 8)",
    );
}

#[test]
fn missing_required_key() {
    assert_rejected(
        &validate(&edited("time_field = \"ts\"\n", ""), &[]),
        "config: transforms.windows: missing required key \"time_field\" (line 12)",
    );
}

#[test]
fn operator_type_error() {
    assert_rejected(
        &validate(&edited("\"sum(value)\"", "\"sum(sensor)\""), &[]),
        "config: transforms.windows.aggregates: sum(sensor) is not defined for a string field (line 20)",
    );
}

#[test]
fn unset_variable() {
    assert_rejected(
        &validate(&edited("out/windows.csv", "${WEIR_TEST_OUT}/windows.csv"), &[]),
        "config: line 25: environment variable \"WEIR_TEST_OUT\" is not set",
    );
}

#[test]
fn variables_and_defaults() {
    let config = edited("records = 2000000", "records = ${WEIR_TEST_RECORDS:-0}")
        .replacen("kind = \"tumbling\"", "kind = \"${WEIR_TEST_KIND:-tumbling}\"", 1)
        .replacen("out/windows.csv", "${WEIR_TEST_OUT}/windows.csv", 1);
    let out = [("WEIR_TEST_OUT", "/tmp/weir-out")];

    // The defaults are used when a variable is unset: records = 0 is refused, which proves it.
    assert_rejected(
        &validate(&config, &out),
        "config: sources.readings.records: expected a positive integer, found 0 (line 10)",
    );
    // A set variable wins over its default.
    assert_accepted(&validate(&config, &[out[0], ("WEIR_TEST_RECORDS", "5")]));
    assert_rejected(
        &validate(&config, &[out[0], ("WEIR_TEST_RECORDS", "5"), ("WEIR_TEST_KIND", "tumbeling")]),
        "config: transforms.windows.kind: expected \"tumbling\", \"hopping\" or \"session\", found \"tumbeling\" \
         (line 17)",
    );
}

#[test]
fn invalid_toml() {
    assert_rejected(
        &validate(&edited("time_field = \"ts\"", "time_field = \"ts"), &[]),
        "config: line 16: invalid TOML: invalid basic string, expected `\"`",
    );
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("missing.toml");
    assert_rejected(
        &validate_path(&path, &[]),
        &format!("config: cannot read {}: No such file or directory", path.display()),
    );
}

/// `weir run` on `config` exits 2 with `message` as its one line, before it creates the data
/// directory or any output.
fn assert_run_refuses(config: &str, message: &str) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, config).expect("the config is written");
    let output = Command::new(env!("CARGO_BIN_EXE_weir")).arg("run").arg(&path).output().expect("weir runs");
    assert_rejected(&output, message);
    assert!(!dir.path().join("data").exists() && !dir.path().join("out").exists());
}

#[test]
fn too_many_hopping_windows_per_record() {
    let config =
        edited("kind = \"tumbling\"\nsize_ms = 1000", "kind = \"hopping\"\nsize_ms = 200000\nhop_ms = 1");
    let message = "config: transforms.windows.hop_ms: size_ms = 200000 and hop_ms = 1 put each record in 200000 \
                   windows, more than the 1000 allowed; raise hop_ms to at least 200 (line 19)";
    assert_rejected(&validate(&config, &[]), message);

    // `run` refuses it the same way, before it starts (it used to abort every checkpoint).
    assert_run_refuses(&config, message);

    assert_accepted(&validate(&config.replace("hop_ms = 1\n", "hop_ms = 200\n"), &[]));
}

#[test]
fn file_sink_mode_and_allow_symlink() {
    assert_rejected(
        &validate(&edited("float_precision = 3", "float_precision = 3\nmode = \"0660x\""), &[]),
        "config: sinks.out.mode: expected an octal mode such as \"0640\", found \"0660x\" (line 28)",
    );
    assert_rejected(
        &validate(&edited("float_precision = 3", "float_precision = 3\nallow_symlinks = true"), &[]),
        "config: sinks.out: unknown key \"allow_symlinks\" (line 28), did you mean \"allow_symlink\"?",
    );
    assert_accepted(&validate(&edited("float_precision = 3", "mode = \"0640\"\nallow_symlink = true"), &[]));
}

// Each subtask of a window without a key would see part of the records and emit its own
// partial row for the same window (exit 0 with wrong output): refused before anything runs.
#[test]
fn a_window_without_a_key_must_run_as_one_subtask() {
    let config = edited("key = \"sensor\"", "parallelism = 2");
    let message = "config: transforms.windows.parallelism: a window without a key must have parallelism = 1 \
                   (each subtask would emit a partial window), found 2: add key = \"FIELD\" to window per key, \
                   or set parallelism = 1 (line 15)";
    assert_rejected(&validate(&config, &[]), message);

    assert_run_refuses(&config, message);

    assert_accepted(&validate(&edited("key = \"sensor\"", "key = \"sensor\"\nparallelism = 2"), &[]));
    assert_accepted(&validate(&edited("key = \"sensor\"", "parallelism = 1"), &[]));
}
