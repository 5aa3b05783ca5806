//! `weir-mqtt-bench`: the MQTT source through a real mosquitto (installed if missing), into
//! the sensor-window job, run by `weir agent`, QoS 1, every message durable in the source's
//! write-ahead log before it is acknowledged. Prints, as medians over `WEIR_BENCH_REPS` (3):
//!
//! - backlog: MESSAGES published to the source's session while the agent is stopped, then
//!   the agent started: messages per second from its start until the source has read them all
//!   (connect, WAL group commits, acknowledgements, decoding, the window);
//! - live: the agent running and connected, MESSAGES published as fast as one rumqttc client
//!   publishes with QoS 1: messages per second from the first publish until the source has
//!   read them all (bounded by the publisher and the broker as much as by weir);
//!
//! each with and without `dedup_key`; and the resident memory of an agent running one idle
//! MQTT pipeline (connected, nothing arriving).
//!
//! `cargo run --release -p weir-tests --bin weir-mqtt-bench [-- MESSAGES]` (default 200000).

use std::path::Path;
use std::time::{Duration, Instant};

use weir_tests::agent::{Agent, source_out};
use weir_tests::mosquitto::{Mosquitto, create_session, mqtt_window_config, publish_all};

const CLIENT: &str = "weir-bench-source";

fn config(conf: &Path, work: &Path, url: &str, dedup: bool) {
    let dedup = if dedup { "dedup_key = [\"sensor\", \"ts\"]" } else { "" };
    mqtt_window_config(&conf.join("bench.toml"), work, url, CLIENT, dedup, (1000, 100));
}

/// Messages `from..from + n`: unique (sensor, ts) pairs, so `dedup_key` drops none.
fn messages(from: u64, n: u64) -> impl Iterator<Item = (String, Vec<u8>)> {
    (from..from + n).map(|i| {
        let (sensor, ts, value) = (i % 1000, i / 100, ((i * 7919 + 13) % 10007) as f64 / 100.0);
        (
            format!("weir/in/s{sensor:04}"),
            format!(r#"{{"sensor": "s{sensor:04}", "ts": {ts}, "value": {value}}}"#).into_bytes(),
        )
    })
}

fn read_all(agent: &Agent, n: u64) {
    agent.wait_for_pipeline("bench", "every message read", |p| source_out(p) >= n);
}

/// One run: (backlog msg/s, live msg/s).
fn run(n: u64, dedup: bool) -> (f64, f64) {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    config(&conf, work.path(), &broker.url(), dedup);
    create_session(broker.port, &format!("{CLIENT}-0"), "weir/in/#");
    publish_all(broker.port, None, messages(0, n));
    let started = Instant::now();
    let agent = Agent::start(&conf);
    read_all(&agent, n);
    let backlog = n as f64 / started.elapsed().as_secs_f64();
    // Live: the same again while it runs (its count goes on from n).
    let started = Instant::now();
    publish_all(broker.port, None, messages(n, n));
    read_all(&agent, 2 * n);
    let live = n as f64 / started.elapsed().as_secs_f64();
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    (backlog, live)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

fn idle_rss_mib() -> f64 {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    config(&conf, work.path(), &broker.url(), true);
    let agent = Agent::start(&conf);
    agent.wait_for_pipeline("bench", "connected", |p| p["mqtt"][0]["connected"] == true);
    // Idle: a few checkpoints with nothing arriving.
    let checkpoint = agent.pipeline("bench").unwrap()["last_checkpoint"].as_u64().unwrap_or(0);
    agent.wait_for_pipeline("bench", "three idle checkpoints", |p| {
        p["last_checkpoint"].as_u64() >= Some(checkpoint + 3)
    });
    let rss = rss_kib(agent.pid()) as f64 / 1024.0;
    let _ = agent.stop();
    rss
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!("MQTT -> window -> file, {n} messages, QoS 1, mosquitto on loopback, {reps} runs each");
    println!("{:<22} {:>14} {:>14}", "", "backlog msg/s", "live msg/s");
    for dedup in [false, true] {
        let runs: Vec<(f64, f64)> = (0..reps).map(|_| run(n, dedup)).collect();
        let label = if dedup { "with dedup_key" } else { "without dedup_key" };
        println!(
            "{label:<22} {:>14.0} {:>14.0}",
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect())
        );
    }
    let rss: Vec<f64> = (0..reps).map(|_| idle_rss_mib()).collect();
    println!("idle agent, one MQTT pipeline: RSS {:.1} MiB", median(rss));
    let _ = Duration::ZERO;
}
