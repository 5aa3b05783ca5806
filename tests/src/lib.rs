//! Support for the end-to-end tests and the benchmark: find the `weir` binary, write a
//! pipeline config, compute the sensor-window reference independently, compare outputs.

pub mod agent;
pub mod fuzzing;
pub mod mosquitto;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The `weir` binary of this build (`WEIR_BIN` overrides). `cargo test --workspace` builds
/// it; a test run of this package alone does not, so a missing or stale binary (older than
/// a source file of the runtime or the agent) stops the test with the command that fixes it.
pub fn weir_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("weir");
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_owned();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["runtime/src", "runtime/protocol/src", "edge-agent/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if built.is_none() || newest.is_some_and(|n| Some(n) > built) {
        panic!(
            "{} is missing or older than the sources: run `cargo build -p weir-edge-agent --profile {}` \
             (or `cargo test --workspace`, which builds it)",
            bin.display(),
            if profile == "debug" { "dev" } else { &profile }
        );
    }
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() { newest_mtime(&path) } else { e.metadata().and_then(|m| m.modified()).ok() }
        })
        .max()
}

/// Run `weir run CONFIG` with `faults` injected (`--inject`), and `--report FILE` if given;
/// fail the test unless it exits 0.
pub fn run_ok(config: &Path, report: Option<&Path>, faults: &[&str]) {
    let mut cmd = std::process::Command::new(weir_bin());
    cmd.arg("run").arg(config);
    if let Some(r) = report {
        cmd.arg("--report").arg(r);
    }
    for f in faults {
        cmd.args(["--inject", f]);
    }
    let out = cmd.output().expect("weir runs");
    assert!(out.status.success(), "{faults:?}: weir run failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// What [`run_measured`] measured of one run.
pub struct Measured {
    /// Wall time.
    pub seconds: f64,
    /// Peak resident set size.
    pub peak_rss_mib: f64,
    /// User and system CPU time.
    pub cpu_seconds: f64,
}

/// Run `cmd` (a `weir` command) to its end, failing unless it exits 0, and measure its wall
/// time, CPU time and peak RSS (wait4's rusage: the child's own).
#[allow(unsafe_code)] // wait4 is the one call that reports a child's own peak RSS
pub fn run_measured(cmd: &mut std::process::Command) -> Measured {
    let started = std::time::Instant::now();
    let child = cmd.spawn().expect("starting weir");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; the pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(waited, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "weir run failed (status {status})");
    std::mem::forget(child); // already reaped by wait4
    let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        seconds,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        cpu_seconds: time(usage.ru_utime) + time(usage.ru_stime),
    }
}

/// Run the window job `config` (TOML text, its sink writing `out/windows.csv` with
/// `count, sum, min, max` aggregates) in a new folder with `faults`; the output rows reduced
/// to what does not depend on the order records arrive in (sensor, window, count, min, max:
/// float sums differ in the last digits when several inputs interleave differently), sorted,
/// and the report.
pub fn run_order_independent(config: &str, faults: &[&str]) -> (Vec<String>, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, config).expect("writing the config");
    let report = dir.path().join("report.json");
    run_ok(&path, Some(&report), faults);
    let rows = sorted_lines(&dir.path().join("out/windows.csv"))
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("{},{},{},{},{}", f[0], f[1], f[2], f[4], f[5])
        })
        .collect();
    (rows, report_of(&report))
}

/// The run report at `path`.
pub fn report_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("a report")).expect("a JSON report")
}

/// A sensor-window pipeline config in `dir`, reading `records` readings.
pub fn sensor_window_config(dir: &Path, records: u64, interval_ms: u64, rate: Option<u64>) -> PathBuf {
    sensor_window_config_with(dir, records, interval_ms, rate, "")
}

/// The same with extra settings for the source table (e.g. `sensors = 100000`).
pub fn sensor_window_config_with(
    dir: &Path,
    records: u64,
    interval_ms: u64,
    rate: Option<u64>,
    source_extra: &str,
) -> PathBuf {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default() + source_extra;
    let text = format!(
        r#"data_dir = "data"
map_size_mb = ${{WEIR_TEST_MAP_MB:-1024}}
[checkpoint]
interval_ms = {interval_ms}
mode = "exactly_once"
[sources.readings]
type = "generator"
shape = "sensors"
records = {records}
{rate}
{window}"#,
        window = window_and_file_sink(100, "out/windows.csv")
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// The sensor-window job's window (`windows`, reading `readings`, out-of-order bound
/// `out_of_order_ms`) and its file sink (`out`, CSV at `path`), as TOML.
pub fn window_and_file_sink(out_of_order_ms: u64, path: &str) -> String {
    format!(
        r#"[transforms.windows]
type = "window"
inputs = ["readings"]
key = "sensor"
time_field = "ts"
kind = "tumbling"
size_ms = 1000
max_out_of_order_ms = {out_of_order_ms}
aggregates = ["count", "sum(value)", "min(value)", "max(value)", "mean(value)"]
[sinks.out]
type = "file"
inputs = ["windows"]
path = "{path}"
format = "csv"
float_precision = 3
"#
    )
}

/// The sensor-window config with the source and the window at `parallelism`.
pub fn sensor_window_config_parallel(
    dir: &Path,
    records: u64,
    interval_ms: u64,
    rate: Option<u64>,
    parallelism: usize,
) -> PathBuf {
    let config =
        sensor_window_config_with(dir, records, interval_ms, rate, &format!("parallelism = {parallelism}\n"));
    let text = std::fs::read_to_string(&config).expect("reading the config");
    let text =
        text.replace("key = \"sensor\"\n", &format!("key = \"sensor\"\nparallelism = {parallelism}\n"));
    std::fs::write(&config, text).expect("writing the config");
    config
}

/// The sensor-window output for `records` readings, computed here without Weir: the sorted
/// CSV lines (shared/workloads/sensor-window.md).
pub fn reference_lines(records: u64) -> Vec<String> {
    reference_lines_with(records, 1000)
}

/// The same for `sensors` sensors.
pub fn reference_lines_with(records: u64, sensors: u64) -> Vec<String> {
    reference_of((0..records).map(|i| {
        let ts = (i / 100 + (i * 37) % 50) as i64;
        let v = ((i * 7919 + 13) % 10007) as f64 / 100.0;
        (i % sensors, ts, v)
    }))
}

/// The sensor-window output (1000 ms tumbling windows per sensor, the five aggregates, CSV
/// with three decimals) of `readings` (sensor number, event time, value), summed in the
/// order given: the sorted CSV lines.
pub fn reference_of(readings: impl Iterator<Item = (u64, i64, f64)>) -> Vec<String> {
    let mut acc: BTreeMap<(u64, i64), (u64, f64, f64, f64)> = BTreeMap::new();
    for (sensor, ts, v) in readings {
        let a = acc.entry((sensor, ts - ts % 1000)).or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        a.0 += 1;
        a.1 += v;
        a.2 = a.2.min(v);
        a.3 = a.3.max(v);
    }
    let mut lines: Vec<String> = acc
        .iter()
        .map(|(&(s, w), &(c, sum, min, max))| {
            let mut line = String::new();
            let _ = write!(line, "s{s:04},{w},{c},{sum:.3},{min:.3},{max:.3},{:.3}", sum / c as f64);
            line
        })
        .collect();
    lines.sort();
    lines
}

/// The lines of a file, sorted (missing file: none).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> =
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The workload's checksum: sha256 of the sorted lines joined with `\n`, with a final `\n`.
pub fn sorted_sha256(lines: &[String]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The sum of the `count` column of sensor-window output lines.
pub fn sum_of_counts(lines: &[String]) -> u64 {
    lines
        .iter()
        .map(|l| l.split(',').nth(2).and_then(|c| c.parse::<u64>().ok()).expect("a count column"))
        .sum()
}

/// Run `weir run CONFIG` and `kill -9` it right after it reports checkpoint `at_least` (or a
/// later one) complete, from the coordinator's debug log. Returns the checkpoint reported, or
/// `None` if the run ended first.
pub fn kill_9_after_a_checkpoint(config: &Path, at_least: u64) -> Option<u64> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(weir_bin())
        .arg("run")
        .arg(config)
        .env("WEIR_LOG", "weir_runtime::actors::coordinator=debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut reported = None;
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        let id = line
            .strip_suffix(" complete")
            .and_then(|l| l.rfind("checkpoint ").map(|pos| &l[pos + 11..]))
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id.filter(|&id| id >= at_least) {
            child.kill().expect("kill -9"); // right after the report
            reported = Some(id);
            break;
        }
    }
    let _ = child.wait();
    reported
}
