//! `weir-recovery-bench`: the recovery benchmark of issue 4. The sensor-window job with large
//! state (100,000 sensors by default), checkpoints every second, and one injected panic in
//! the window operator after K readings; run once without the fault, once healed by local
//! recovery and once by a global rollback. Prints, per run (median of `WEIR_BENCH_REPS`,
//! default 3):
//!
//! - restart: from the failure until the restarted subtasks were restored and running (the
//!   report's `duration_ms`);
//! - first output: from the failure until the first checkpoint completed after it (sinks
//!   make output visible when a checkpoint completes);
//! - caught up: from the failure until the failed subtask had again received everything it
//!   had received when it failed (the replay is done);
//! - run delay: how much later the run finished than the failure-free run (noisy: the
//!   difference of two runs' wall times).
//!
//! Every run's output is checked against the failure-free run's. The backoff before a restart
//! is set to 1 ms in every configuration: it is policy, not recovery cost.
//!
//! `cargo run --release -p weir-tests --bin weir-recovery-bench [-- RECORDS SENSORS FAULT_AT PARALLELISM]`

use std::process::Command;
use std::time::Instant;

use weir_tests::{sensor_window_config_with, sorted_lines, sorted_sha256, weir_bin};

struct Sample {
    wall_ms: f64,
    restart_ms: f64,
    first_output_ms: f64,
    caught_up_ms: f64,
    sha: String,
}

fn run(records: u64, sensors: u64, parallelism: u64, recovery: &str, fault: Option<u64>) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        sensor_window_config_with(dir.path(), records, 1000, None, &format!("sensors = {sensors}\n"));
    let mut text = std::fs::read_to_string(&config).expect("config");
    text = text.replace("[sinks.out]", &format!("parallelism = {parallelism}\n\n[sinks.out]"));
    text.push_str(&format!(
        "\n[supervision]\nbackoff_initial_ms = 1\n\n[recovery]\nstrategy = \"{recovery}\"\nbuffer_mb = 256\n"
    ));
    std::fs::write(&config, text).expect("config");
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(weir_bin());
    cmd.arg("run").arg(&config).arg("--report").arg(&report);
    if let Some(at) = fault {
        cmd.arg("--inject").arg(format!("panic:windows:{at}"));
    }
    let started = Instant::now();
    let out = cmd.output().expect("running weir");
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "weir failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("report json");
    let (mut restart_ms, mut first_output_ms, mut caught_up_ms) = (0.0, 0.0, 0.0);
    if fault.is_some() {
        let restart = &report["restarts"][0];
        assert_eq!(restart["recovery"], recovery, "{report}");
        let at = restart["at_ms"].as_f64().expect("at_ms");
        restart_ms = restart["duration_ms"].as_f64().expect("duration_ms");
        caught_up_ms = restart["caught_up_ms"].as_f64().unwrap_or(f64::NAN);
        first_output_ms = report["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .iter()
            .filter_map(|c| c["completed_ms"].as_f64())
            .find(|&t| t > at)
            .map_or(f64::NAN, |t| t - at);
    }
    let sha = sorted_sha256(&sorted_lines(&dir.path().join("out/windows.csv")));
    Sample { wall_ms, restart_ms, first_output_ms, caught_up_ms, sha }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let records = args.first().copied().unwrap_or(8_000_000);
    let sensors = args.get(1).copied().unwrap_or(100_000);
    let fault_at = args.get(2).copied().unwrap_or(records / 2);
    let parallelism = args.get(3).copied().unwrap_or(1);
    let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!("weir: {}", weir_bin().display());
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "{records} readings, {sensors} sensors, window parallelism {parallelism}, panic after {fault_at} readings into window subtask 0, checkpoints every 1 s, {reps} reps (medians)"
    );
    println!();
    println!("| run | wall ms | restart ms | first output ms | caught up ms | run delay ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let runs = [
        ("no fault", "local", None),
        ("local recovery", "local", Some(fault_at)),
        ("global rollback", "global", Some(fault_at)),
    ];
    let mut samples: Vec<Vec<Sample>> = runs.iter().map(|_| Vec::new()).collect();
    for _ in 0..reps {
        for (k, &(_, recovery, fault)) in runs.iter().enumerate() {
            samples[k].push(run(records, sensors, parallelism, recovery, fault));
        }
    }
    let reference = samples[0][0].sha.clone();
    for s in samples.iter().flatten() {
        assert_eq!(s.sha, reference, "a run's output differs from the failure-free run's");
    }
    let baseline = median(samples[0].iter().map(|s| s.wall_ms).collect());
    let mut figures = Vec::new();
    for (k, &(label, _, fault)) in runs.iter().enumerate() {
        let wall = median(samples[k].iter().map(|s| s.wall_ms).collect());
        let restart = median(samples[k].iter().map(|s| s.restart_ms).collect());
        let first = median(samples[k].iter().map(|s| s.first_output_ms).collect());
        let caught_up = median(samples[k].iter().map(|s| s.caught_up_ms).collect());
        let delay = wall - baseline;
        figures.push((restart, first, caught_up));
        if fault.is_none() {
            println!("| {label} | {wall:.0} | - | - | - | - |");
        } else {
            println!("| {label} | {wall:.0} | {restart:.0} | {first:.0} | {caught_up:.0} | {delay:.0} |");
        }
    }
    let (l, g) = (figures[1], figures[2]);
    println!();
    println!(
        "global / local: restart {:.1}x, first output {:.1}x, caught up {:.1}x; outputs identical to the failure-free run",
        g.0 / l.0.max(1.0),
        g.1 / l.1.max(1.0),
        g.2 / l.2.max(1.0)
    );
}
