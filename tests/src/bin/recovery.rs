//! `weir-recovery-bench`: the recovery benchmark of issues 4 and 11. The sensor-window job
//! with large state (100,000 sensors by default) and checkpoints every second; one injected
//! panic in the window operator after K readings, at several points; healed by a hot standby,
//! a warm standby, local recovery and a global rollback; and the failure-free run without and
//! with a hot standby. Prints, per configuration (medians over the points and
//! `WEIR_BENCH_REPS` repetitions, default 3):
//!
//! - output gap: from the last batch the window sent before the failure to the first new
//!   batch after it (the report's `output_gap_ms`): how long downstream got nothing new. It
//!   includes the window's own cadence: it emits when the watermark closes windows, here once
//!   per 100,000 readings (1 s of event time);
//! - caught up: from the failure until the failed subtask (or its promoted standby) had
//!   again received everything it had received when it failed (`caught_up_ms`);
//! - restart: from the failure until the subtask was running again (`duration_ms`; for a
//!   takeover, until the standby was promoted);
//! - first completed checkpoint after the failure (an exactly-once sink makes output visible
//!   when a checkpoint completes, so this bounds when new output is visible);
//! - wall time, CPU time (user + system) and peak RSS of the whole run (wait4's rusage).
//!
//! Every run's output is checked against the failure-free run's. The backoff before a restart
//! is 1 ms in every configuration: it is policy, not recovery cost.
//!
//! `cargo run --release -p weir-tests --bin weir-recovery-bench [-- RECORDS SENSORS]`;
//! `WEIR_BENCH_RATE=N` limits the source to N readings a second.

use std::process::Command;

use weir_tests::{run_measured, sensor_window_config_with, sorted_lines, sorted_sha256, weir_bin};

struct Sample {
    wall_ms: f64,
    cpu_s: f64,
    rss_mib: f64,
    gap_ms: f64,
    caught_up_ms: f64,
    restart_ms: f64,
    first_checkpoint_ms: f64,
    sha: String,
}

/// One configuration: how the window is protected, and whether it fails.
struct Setup {
    label: &'static str,
    /// Appended to the config.
    extra: &'static str,
    /// The report's `recovery` for the failure (none: no failure).
    recovery: Option<&'static str>,
}

const SETUPS: [Setup; 6] = [
    Setup { label: "no fault", extra: "", recovery: None },
    Setup { label: "no fault, hot standby", extra: "key_operator = \"windows\"\n", recovery: None },
    Setup { label: "hot standby", extra: "key_operator = \"windows\"\n", recovery: Some("failover") },
    Setup {
        label: "warm standby",
        extra: "[transforms.windows.standby]\nmode = \"warm\"\n",
        recovery: Some("failover"),
    },
    Setup { label: "local restart", extra: "", recovery: Some("local") },
    Setup { label: "global rollback", extra: "strategy = \"global\"\n", recovery: Some("global") },
];

fn run(records: u64, sensors: u64, setup: &Setup, fault: Option<u64>) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        sensor_window_config_with(dir.path(), records, 1000, rate(), &format!("sensors = {sensors}\n"));
    let mut text = std::fs::read_to_string(&config).expect("config");
    // `[recovery]` keys first, then any table the setup adds.
    let (recovery_keys, tables) = match setup.extra.find('[') {
        Some(at) => setup.extra.split_at(at),
        None => (setup.extra, ""),
    };
    text.push_str(&format!(
        "\n[supervision]\nbackoff_initial_ms = 1\n\n[recovery]\nbuffer_mb = 256\n{recovery_keys}\n{tables}"
    ));
    std::fs::write(&config, text).expect("config");
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(weir_bin());
    cmd.arg("run").arg(&config).arg("--report").arg(&report);
    if let Some(at) = fault {
        cmd.arg("--inject").arg(format!("panic:windows:{at}"));
    }
    let measured = run_measured(&mut cmd);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("report json");
    let (mut gap_ms, mut caught_up_ms, mut restart_ms, mut first_checkpoint_ms) =
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    if let Some(recovery) = setup.recovery {
        let restart = &report["restarts"][0];
        assert_eq!(restart["recovery"], recovery, "{report}");
        let at = restart["at_ms"].as_f64().expect("at_ms");
        gap_ms = restart["output_gap_ms"].as_f64().unwrap_or(f64::NAN);
        caught_up_ms = restart["caught_up_ms"].as_f64().unwrap_or(f64::NAN);
        restart_ms = restart["duration_ms"].as_f64().expect("duration_ms");
        first_checkpoint_ms = report["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .iter()
            .filter_map(|c| c["completed_ms"].as_f64())
            .find(|&t| t > at)
            .map_or(f64::NAN, |t| t - at);
    }
    let sha = sorted_sha256(&sorted_lines(&dir.path().join("out/windows.csv")));
    Sample {
        wall_ms: measured.seconds * 1000.0,
        cpu_s: measured.cpu_seconds,
        rss_mib: measured.peak_rss_mib,
        gap_ms,
        caught_up_ms,
        restart_ms,
        first_checkpoint_ms,
        sha,
    }
}

/// `WEIR_BENCH_RATE`: the source's readings per second (unset: as fast as it goes).
fn rate() -> Option<u64> {
    std::env::var("WEIR_BENCH_RATE").ok().and_then(|r| r.parse().ok())
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let records = args.first().copied().unwrap_or(8_000_000);
    let sensors = args.get(1).copied().unwrap_or(100_000);
    let points = [records * 2 / 5, records / 2, records * 3 / 5];
    let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!("weir: {}", weir_bin().display());
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "{records} readings, {sensors} sensors, source rate {}, a panic into the window after {points:?} readings, checkpoints every 1 s, {reps} reps (medians over points and reps)",
        rate().map_or("unlimited".to_owned(), |r| format!("{r}/s"))
    );
    println!();
    println!(
        "| run | output gap ms | caught up ms | restart ms | first checkpoint after ms | wall ms | CPU s | peak RSS MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut samples: Vec<Vec<Sample>> = SETUPS.iter().map(|_| Vec::new()).collect();
    // Interleaved: every configuration once per round, so drift hits them alike.
    for _ in 0..reps {
        for &at in &points {
            for (k, setup) in SETUPS.iter().enumerate() {
                let fault = setup.recovery.map(|_| at);
                if fault.is_none() && at != points[0] {
                    continue; // one failure-free run per round
                }
                samples[k].push(run(records, sensors, setup, fault));
            }
        }
    }
    let reference = samples[0][0].sha.clone();
    for s in samples.iter().flatten() {
        assert_eq!(s.sha, reference, "a run's output differs from the failure-free run's");
    }
    let mut gaps = Vec::new();
    let mut caught = Vec::new();
    for (k, setup) in SETUPS.iter().enumerate() {
        let s = &samples[k];
        let gap = median(s.iter().map(|s| s.gap_ms));
        gaps.push(gap);
        caught.push(median(s.iter().map(|s| s.caught_up_ms)));
        let show = |v: f64| if v.is_nan() { "-".to_owned() } else { format!("{v:.0}") };
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0} |",
            setup.label,
            show(gap),
            show(median(s.iter().map(|s| s.caught_up_ms))),
            show(median(s.iter().map(|s| s.restart_ms))),
            show(median(s.iter().map(|s| s.first_checkpoint_ms))),
            median(s.iter().map(|s| s.wall_ms)),
            median(s.iter().map(|s| s.cpu_s)),
            median(s.iter().map(|s| s.rss_mib)),
        );
    }
    let wall = |k: usize| median(samples[k].iter().map(|s| s.wall_ms));
    let rss = |k: usize| median(samples[k].iter().map(|s| s.rss_mib));
    println!();
    println!(
        "output gap, local restart / hot standby: {:.1}x; warm standby / hot: {:.1}x; caught up, local / hot: {:.0}x",
        gaps[4] / gaps[2].max(1.0),
        gaps[3] / gaps[2].max(1.0),
        caught[4] / caught[2].max(1.0)
    );
    println!(
        "failure-free with a hot standby: throughput {:.2} of without, peak RSS {:.2}x; outputs identical to the failure-free run",
        wall(0) / wall(1),
        rss(1) / rss(0)
    );
}
