//! `weir-bench`: the sensor-window benchmark. Runs the release `weir` binary on the workload
//! at 2 M and 20 M readings, with checkpoints every second and with periodic checkpoints off,
//! and with the source and the window at parallelism 2 (checkpoints every second), and in
//! the same run a bare single-threaded loop of the same computation; prints
//! readings/s, checkpoint overhead, peak RSS, and the ratio to the bare loop. Every Weir
//! run's output is checked against the workload's published checksum.
//!
//! Each configuration runs `WEIR_BENCH_REPS` times (default 3), interleaved; the table shows
//! the median wall time and the largest peak RSS.
//!
//! `cargo run --release -p weir-tests --bin weir-bench [-- RECORDS...]`

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use weir_tests::{
    Measured, run_measured, sensor_window_config_parallel, sorted_lines, sorted_sha256, weir_bin,
};

/// Published checksums (shared/workloads/sensor-window.md).
fn expected_sha(records: u64) -> Option<&'static str> {
    match records {
        20_000 => Some("82d7b3145d37aeeb5ce1112bd7e2bc6bf2216767fdc9415ae906c117a427d768"),
        200_000 => Some("00b943d3e2ff6c2f87b15bb4b6617e09a4bffc08a1a535a65e5c026fa8466b9b"),
        2_000_000 => Some("1d26a3b6a8eca068215cb4fd5f285eebabf94e342711d40e7647de00a386f4c5"),
        20_000_000 => Some("787bfb6542a1b56214f3c6b9ca314b9eb8d5557d0fc5a00a641f091c199a323b"),
        _ => None,
    }
}

/// Run `weir run CONFIG`, measured.
fn run_weir(config: &std::path::Path) -> Measured {
    run_measured(Command::new(weir_bin()).arg("run").arg(config))
}

/// The bare loop: the same computation, single-threaded, no framework, no checkpoints,
/// output formatted at the end. Returns the sorted lines' checksum.
fn bare_loop(records: u64) -> String {
    struct Acc {
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
    }
    let mut windows: HashMap<(u64, i64), Acc> = HashMap::with_capacity(1 << 16);
    for i in 0..records {
        let ts = (i / 100 + (i * 37) % 50) as i64;
        let v = ((i * 7919 + 13) % 10007) as f64 / 100.0;
        let a = windows.entry((i % 1000, ts - ts % 1000)).or_insert(Acc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
        a.count += 1;
        a.sum += v;
        a.min = a.min.min(v);
        a.max = a.max.max(v);
    }
    let mut lines: Vec<String> = windows
        .iter()
        .map(|(&(s, w), a)| {
            let mut l = String::new();
            let _ = write!(
                l,
                "s{s:04},{w},{},{:.3},{:.3},{:.3},{:.3}",
                a.count,
                a.sum,
                a.min,
                a.max,
                a.sum / a.count as f64
            );
            l
        })
        .collect();
    lines.sort();
    sorted_sha256(&lines)
}

fn main() {
    let sizes: Vec<u64> = {
        let args: Vec<u64> =
            std::env::args().skip(1).map(|a| a.parse().expect("RECORDS are numbers")).collect();
        if args.is_empty() { vec![2_000_000, 20_000_000] } else { args }
    };
    println!("weir: {}", weir_bin().display());
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!();
    println!("| readings | run | wall s | readings/s | peak RSS MiB | vs bare loop |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for &records in &sizes {
        let started = Instant::now();
        let bare_sha = bare_loop(records);
        let bare = started.elapsed().as_secs_f64();
        let bare_rate = records as f64 / bare;
        println!("| {records} | bare loop (1 thread) | {bare:.2} | {bare_rate:.0} | - | 1.00 |");
        if let Some(expected) = expected_sha(records) {
            assert_eq!(bare_sha, expected, "the bare loop's output is wrong");
        }
        let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
        // The overheads below compare the first two with the third.
        let runs = [
            ("weir, checkpoints every 1 s", 1000, 1),
            ("weir, checkpoints every 100 ms", 100, 1),
            ("weir, periodic checkpoints off", 0, 1),
            ("weir, parallelism 2 (source, window), checkpoints every 1 s", 1000, 2),
        ];
        let mut samples: Vec<Vec<Measured>> = runs.iter().map(|_| Vec::new()).collect();
        for _ in 0..reps {
            for (k, &(label, interval, parallelism)) in runs.iter().enumerate() {
                let dir = tempfile::tempdir().expect("tempdir");
                let config = sensor_window_config_parallel(dir.path(), records, interval, None, parallelism);
                let m = run_weir(&config);
                let lines = sorted_lines(&dir.path().join("out/windows.csv"));
                if let Some(expected) = expected_sha(records) {
                    assert_eq!(sorted_sha256(&lines), expected, "weir's output is wrong ({label})");
                }
                samples[k].push(m);
            }
        }
        let mut medians = Vec::new();
        for (k, &(label, _, _)) in runs.iter().enumerate() {
            let mut walls: Vec<f64> = samples[k].iter().map(|m| m.seconds).collect();
            walls.sort_by(f64::total_cmp);
            let wall = walls[walls.len() / 2];
            let rss = samples[k].iter().map(|m| m.peak_rss_mib).fold(0.0, f64::max);
            let rate = records as f64 / wall;
            medians.push(wall);
            println!("| {records} | {label} | {wall:.2} | {rate:.0} | {rss:.1} | {:.2} |", rate / bare_rate);
        }
        for (k, &(label, _, _)) in runs.iter().enumerate().take(2) {
            let overhead = (medians[k] / medians[2] - 1.0) * 100.0;
            println!("| {records} | overhead of {} | | {overhead:+.1} % | | |", &label[6..]);
        }
    }
}
