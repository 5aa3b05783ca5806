//! End-to-end: `weir agent` runs every pipeline of a config folder, each isolated; serves
//! /metrics, /healthz, /readyz and /status; re-reads the folder on SIGHUP; stops every
//! pipeline at a checkpoint on SIGTERM (exit 0), and they resume when it starts again.
//! Every wait is on a condition read from the agent's own endpoint, never a sleep.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_edge_agent::agent::status;
use weir_tests::agent::{Agent, sample, sink_out, source_out};
use weir_tests::*;

/// A sensor-window pipeline `name` in `conf`, its data and output under `work/name`.
fn pipeline(conf: &Path, work: &Path, name: &str, records: u64, rate: Option<u64>) -> PathBuf {
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let text =
        std::fs::read_to_string(sensor_window_config(scratch.path(), records, 200, rate)).expect("config");
    let own = work.join(name);
    let text = text
        .replace("data_dir = \"data\"", &format!("data_dir = \"{}\"", own.join("data").display()))
        .replace("path = \"out/windows.csv\"", &format!("path = \"{}\"", own.join("windows.csv").display()));
    let path = conf.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// A pipeline `name` reading `input` (CSV, `schema`) through `transforms` (TOML tables whose
/// last one is `last`) into a CSV file `out.csv`, its files in `work/name`; `top` lines first.
fn file_pipeline(
    conf: &Path,
    work: &Path,
    name: &str,
    input: &str,
    (schema, transforms, last): (&str, &str, &str),
    top: &str,
) -> PathBuf {
    let own = work.join(name);
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("in.csv"), input).unwrap();
    let text = format!(
        r#"data_dir = "{data}"
{top}
[checkpoint]
interval_ms = 100
[sources.src]
type = "file"
path = "{input}"
format = "csv"
schema = {schema}
{transforms}
[sinks.out]
type = "file"
inputs = ["{last}"]
path = "{out}"
format = "csv"
"#,
        data = own.join("data").display(),
        input = own.join("in.csv").display(),
        out = own.join("out.csv").display()
    );
    std::fs::write(conf.join(format!("{name}.toml")), text).unwrap();
    own
}

/// A pipeline whose run fails: a file source with a reading that is not a number.
fn failing_pipeline(conf: &Path, work: &Path, name: &str) {
    let shape = (r#"{ sensor = "string", v = "float" }"#, "", "src");
    file_pipeline(conf, work, name, "s1,1.5\ns2,not-a-number\n", shape, "");
}

#[test]
fn the_agent_runs_pipelines_apart_serves_their_status_and_stops_them_at_a_checkpoint() {
    const BOUNDED: u64 = 300_000;
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    // Runs until stopped (a billion readings at 20,000 a second).
    pipeline(&conf, work.path(), "steady", 1_000_000_000, Some(20_000));
    pipeline(&conf, work.path(), "bounded", BOUNDED, None);
    std::fs::write(conf.join("broken.toml"), "data_dir = [\n").unwrap();

    let agent = Agent::start(&conf);
    // The bounded pipeline finishes with exactly the reference output.
    let bounded = agent.wait_for_pipeline("bounded", "finished", |p| p["phase"] == "finished");
    let lines = sorted_lines(&work.path().join("bounded/windows.csv"));
    assert_eq!(lines, reference_lines(BOUNDED));
    assert_eq!(sink_out(&bounded), lines.len() as u64, "the status counts what was written");
    assert_eq!(source_out(&bounded), BOUNDED);
    // A broken config is reported, and stops nothing else.
    let broken = agent.pipeline("broken").expect("broken listed");
    assert_eq!(broken["phase"], "failed");
    assert!(broken["error"].as_str().unwrap().contains("broken.toml"), "{broken}");
    let steady = agent.wait_for_pipeline("steady", "two checkpoints", |p| {
        p["phase"] == "running" && p["last_checkpoint"].as_u64() >= Some(2)
    });

    // The endpoints.
    assert_eq!(status::get(agent.addr, "/healthz").unwrap().trim(), "ok");
    let not_ready = status::get(agent.addr, "/readyz").unwrap_err().to_string();
    assert!(not_ready.contains("503") && not_ready.contains("broken: failed"), "{not_ready}");
    let metrics = status::get(agent.addr, "/metrics").unwrap();
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text");
    let read =
        |m: &str| sample(m, r#"weir_records_out_total{pipeline="steady",node="readings",subtask="0"}"#);
    let before = read(&metrics).expect("steady's source counter");
    assert!(before >= source_out(&steady) as f64);
    assert_eq!(
        sample(&metrics, r#"weir_records_out_total{pipeline="bounded",node="out",subtask="0"}"#),
        Some(lines.len() as f64)
    );
    assert_eq!(sample(&metrics, r#"weir_pipeline_phase{pipeline="bounded",phase="finished"}"#), Some(1.0));
    assert!(sample(&metrics, r#"weir_checkpoints_completed_total{pipeline="steady"}"#) >= Some(2.0));
    // The counters move.
    agent.wait_for("steady's counter to move", |_| {
        status::get(agent.addr, "/metrics").ok().and_then(|m| read(&m)).is_some_and(|now| now > before)
    });
    let table =
        Command::new(weir_bin()).args(["status", "--http", &agent.addr.to_string()]).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.lines().any(|l| l.starts_with("steady") && l.contains("running")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("broken") && l.contains("failed")), "{table}");

    // SIGHUP: the removed pipeline goes, the added one starts, the unchanged run on.
    std::fs::remove_file(conf.join("broken.toml")).unwrap();
    pipeline(&conf, work.path(), "late", 50_000, None);
    let steady_before = source_out(&agent.pipeline("steady").unwrap());
    agent.signal(libc::SIGHUP);
    agent.wait_for_pipeline("late", "finished", |p| p["phase"] == "finished");
    assert_eq!(sorted_lines(&work.path().join("late/windows.csv")), reference_lines(50_000));
    let status = agent.wait_for("broken to go", |s| s["pipelines"].as_array().unwrap().len() == 3);
    let steady =
        status["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "steady").unwrap().clone();
    assert_eq!(steady["phase"], "running");
    assert!(source_out(&steady) >= steady_before, "steady was not restarted by the reload");
    assert_eq!(status::get(agent.addr, "/readyz").unwrap().trim(), "ready");

    // SIGTERM: every pipeline stops at a checkpoint, exit 0.
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("steady: SIGTERM: stopped at checkpoint"), "{stderr}");

    // Started again, the running one resumes from its checkpoint; the finished ones stay so.
    let agent = Agent::start(&conf);
    let steady = agent.wait_for_pipeline("steady", "running", |p| p["phase"] == "running");
    assert!(steady["restored_from"].as_u64() > Some(0), "{steady}");
    agent.wait_for_pipeline("bounded", "finished", |p| p["phase"] == "finished");
    assert_eq!(sorted_lines(&work.path().join("bounded/windows.csv")), reference_lines(BOUNDED));
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_failing_pipeline_is_started_again_and_the_others_run_on() {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    pipeline(&conf, work.path(), "steady", 1_000_000_000, Some(20_000));
    failing_pipeline(&conf, work.path(), "bad");
    let agent = Agent::start(&conf);
    // It fails, is retried after a backoff and fails again; each time it says why.
    let bad =
        agent.wait_for_pipeline("bad", "two failed runs", |p| p["retries"]["failures"].as_u64() >= Some(2));
    assert_eq!(bad["phase"], "failed");
    assert!(bad["error"].as_str().unwrap().contains("not-a-number"), "{bad}");
    // Meanwhile the other one runs and keeps completing checkpoints.
    let steady = agent.wait_for_pipeline("steady", "running", |p| p["phase"] == "running");
    let (checkpoint, read) = (steady["last_checkpoint"].as_u64().unwrap(), source_out(&steady));
    agent.wait_for_pipeline("steady", "progress", |p| {
        p["last_checkpoint"].as_u64() > Some(checkpoint) && source_out(p) > read
    });
    assert_eq!(steady["restarts"].as_array().unwrap().len(), 0);
    let metrics = status::get(agent.addr, "/metrics").unwrap();
    assert!(sample(&metrics, r#"weir_pipeline_failures_total{pipeline="bad"}"#) >= Some(2.0), "{metrics}");
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("bad: "), "each failure is on stderr: {stderr}");
}

/// (E) One pipeline panics again and again (faults injected into every run) until its
/// supervisor gives up, and the agent starts it again after a backoff, over and over; the
/// other pipeline of the agent is never restarted, completes its checkpoints meanwhile, and
/// its output is exact. Its rate is printed, not asserted (speed belongs in benchmarks).
#[test]
fn a_pipeline_panicking_until_escalation_does_not_disturb_the_other() {
    const STEADY: u64 = 600_000;
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    pipeline(&conf, work.path(), "steady", STEADY, Some(50_000));
    let crashing = pipeline(&conf, work.path(), "crashing", 1_000_000_000, Some(20_000));
    let text = std::fs::read_to_string(&crashing).unwrap();
    std::fs::write(&crashing, format!("{text}\n[supervision]\nmax_restarts = 1\n")).unwrap();
    let faults =
        ["crashing=panic:windows:1000", "crashing=panic:windows:3000", "crashing=panic:windows:6000"];
    let args: Vec<&str> = faults.iter().flat_map(|f| ["--inject", f]).collect();
    let started = std::time::Instant::now();
    let agent = Agent::start_with(&conf, &[], &args);
    let bad = agent
        .wait_for_pipeline("crashing", "two escalations", |p| p["retries"]["failures"].as_u64() >= Some(2));
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("supervision:") && error.contains("giving up"), "{bad}");
    assert!(error.contains("injected fault panic:windows"), "{bad}");
    let steady = agent.pipeline("steady").unwrap();
    assert_eq!(steady["phase"], "running", "the two overlapped: {steady}");
    let steady = agent.wait_for_pipeline("steady", "finished", |p| p["phase"] == "finished");
    let rate = STEADY as f64 / started.elapsed().as_secs_f64();
    assert_eq!(steady["restarts"].as_array().unwrap().len(), 0, "{steady}");
    assert_eq!(steady["retries"]["failures"], 0, "{steady}");
    assert_eq!(sorted_lines(&work.path().join("steady/windows.csv")), reference_lines(STEADY));
    let crashing = agent.pipeline("crashing").unwrap();
    eprintln!(
        "steady: {rate:.0} readings/s (its rate limit is 50000) while crashing failed {} times",
        crashing["retries"]["failures"]
    );
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A window's late records, the buffer queues and the LMDB map are in `/status` and
/// `/metrics`: a file of four readings, one of them late.
#[test]
fn late_records_and_the_logs_map_use_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let window = r#"[transforms.windows]
type = "window"
inputs = ["src"]
key = "sensor"
time_field = "ts"
kind = "tumbling"
size_ms = 1000
aggregates = ["count"]"#;
    let shape = (r#"{ sensor = "string", ts = "int", value = "float" }"#, window, "windows");
    let input = "s1,0,1.0\ns1,5000,2.0\ns1,10,3.0\ns1,20000,4.0\n";
    let own = file_pipeline(&conf, work.path(), "late", input, shape, "map_size_mb = 64");
    let agent = Agent::start(&conf);
    let p = agent.wait_for_pipeline("late", "finished", |p| p["phase"] == "finished");
    assert_eq!(sorted_lines(&own.join("out.csv")), ["s1,0,1", "s1,20000,1", "s1,5000,1"]);
    let windows = p["subtasks"].as_array().unwrap().iter().find(|s| s["node"] == "windows").unwrap();
    assert_eq!(windows["late_records"], 1, "{p}");
    assert_eq!(p["lmdb_map_bytes"], 64 << 20, "{p}");
    let used = p["lmdb_used_bytes"].as_u64().unwrap();
    assert!(used > 0 && used < 64 << 20, "{p}");
    let metrics = status::get(agent.addr, "/metrics").unwrap();
    let late = r#"weir_late_records_total{pipeline="late",node="windows",subtask="0"}"#;
    assert_eq!(sample(&metrics, late), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, r#"weir_lmdb_used_bytes{pipeline="late"}"#), Some(used as f64));
    let buffered = r#"weir_buffer_queue_bytes{pipeline="late",node="windows",subtask="0"}"#;
    assert!(sample(&metrics, buffered).is_some(), "{metrics}");
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// The systemd side (without systemd as PID 1 here): the agent started with a notify socket
/// and a watchdog, as systemd starts a `Type=notify` unit with `WatchdogSec`, sends
/// `READY=1` once its pipeline restored, `STATUS=` naming it and its checkpoint, and
/// `WATCHDOG=1` while it completes checkpoints. A real datagram socket stands for systemd.
#[test]
fn the_agent_notifies_systemd_ready_status_and_watchdog() {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    pipeline(&conf, work.path(), "steady", 1_000_000_000, Some(20_000));
    let socket_path = work.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let path = socket_path.display().to_string();
    let agent =
        Agent::start_with_env(&conf, &[("NOTIFY_SOCKET", path.as_str()), ("WATCHDOG_USEC", "2000000")]);
    let (mut ready, mut status, mut watchdog) = (false, String::new(), 0);
    let mut buf = [0u8; 4096];
    while !(ready && status.contains("checkpoint") && watchdog >= 2) {
        let n = socket.recv(&mut buf).expect("a notification within 60 s");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in message.lines() {
            match line {
                "READY=1" => ready = true,
                "WATCHDOG=1" => watchdog += 1,
                _ => {
                    if let Some(s) = line.strip_prefix("STATUS=") {
                        status = s.to_owned();
                    }
                }
            }
        }
    }
    assert!(status.contains("steady"), "{status}");
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_second_pipeline_on_the_same_data_dir_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let first = pipeline(&conf, work.path(), "first", 1_000_000_000, Some(1000));
    std::fs::copy(&first, conf.join("second.toml")).unwrap();
    let agent = Agent::start(&conf);
    let second = agent.wait_for_pipeline("second", "refused", |p| p["phase"] == "failed");
    let error = second["error"].as_str().unwrap();
    assert!(error.contains("already used by pipeline first"), "{error}");
    agent.wait_for_pipeline("first", "running", |p| p["phase"] == "running");
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
