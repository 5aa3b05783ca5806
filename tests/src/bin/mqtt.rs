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
//! each with and without `dedup_key`; the resident memory of an agent running one idle
//! MQTT pipeline (connected, nothing arriving); and end to end, `examples/mqtt-window.toml`
//! (MQTT in -> window -> MQTT out through the sink's outbox, exactly-once path on, both
//! QoS 1) with a consumer on `weir/out`:
//!
//! - messages per second from the first publish until the consumer has every window;
//! - latency per window from the publish of the reading that closes it (the first whose
//!   event time passes its end plus the allowed lateness) to the consumer's receipt of its
//!   row: p50 and p99, at the example's checkpoint interval (1000 ms) and at 100 ms (output
//!   leaves at the checkpoint that commits it), with the publisher flat out (a backlog
//!   forms) and paced at 10 000 msg/s (below capacity: the latency of a steady load).
//!
//! `cargo run --release -p weir-tests --bin weir-mqtt-bench [-- MESSAGES]` (default 200000).

use std::path::Path;
use std::time::{Duration, Instant};

use weir_tests::agent::{Agent, source_out};
use weir_tests::mosquitto::{
    Consumer, Mosquitto, create_session, mqtt_window_config, publish_all, publish_timed,
};

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

/// End to end: (msg/s, p50 ms, p99 ms) of `n` readings published as fast as one client
/// does or at `rate` a second, through the example with checkpoints every `interval_ms`. Reading i: sensor i % 1000, event time i / 10 ms (10 000 readings a
/// second of event time: 10 per sensor and window).
fn end_to_end(n: u64, interval_ms: u64, rate: Option<u64>) -> (f64, f64, f64) {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mqtt-window.toml");
    let text = std::fs::read_to_string(example).expect("examples/mqtt-window.toml");
    let text = text.replace("interval_ms = 1000", &format!("interval_ms = {interval_ms}"));
    std::fs::write(conf.join("e2e.toml"), text).unwrap();
    let (url, data) = (broker.url(), work.path().join("data").display().to_string());
    let consumer = Consumer::start(broker.port, "weir/out");
    let agent = Agent::start_with_env(&conf, &[("WEIR_MQTT_URL", &url), ("WEIR_DATA_DIR", &data)]);
    agent.wait_for_pipeline("e2e", "subscribed", |p| p["mqtt"][0]["subscribed"] == true);
    let reading = |i: u64| {
        let (sensor, ts, value) = (i % 1000, i / 10, ((i * 7919 + 13) % 10007) as f64 / 100.0);
        (
            format!("weir/in/s{sensor:04}"),
            format!(r#"{{"sensor": "s{sensor:04}", "ts": {ts}, "value": {value}}}"#).into_bytes(),
        )
    };
    // A last reading far ahead closes every window.
    let flush =
        ("weir/in/flush".to_owned(), br#"{"sensor": "flush", "ts": 1000000000, "value": 0}"#.to_vec());
    let times = publish_timed(broker.port, rate, (0..n).map(reading).chain(std::iter::once(flush)));
    let windows = (n / 10).div_ceil(1000) * 1000;
    agent.wait_for("every window at the consumer", |_| consumer.deduplicated().0.len() as u64 >= windows);
    let (rows, _) = consumer.deduplicated();
    let last = rows.iter().map(|r| r.at).max().unwrap();
    let rate = n as f64 / last.duration_since(times[0]).as_secs_f64();
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let row: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            let start = row["window_start"].as_u64()?;
            // The first reading with ts >= start + 1000 + 100 closes it (else the flush).
            let closing = ((start + 1100) * 10).min(n) as usize;
            Some(r.at.duration_since(times[closing]).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    (rate, at(0.5), at(0.99))
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
    println!("MQTT -> window -> MQTT (examples/mqtt-window.toml), {n} readings, a consumer on weir/out");
    println!("{:<36} {:>10} {:>10} {:>10}", "checkpoint interval, publishing", "msg/s", "p50 ms", "p99 ms");
    for (interval, rate) in [(1000, None), (100, None), (1000, Some(10_000)), (100, Some(10_000))] {
        let runs: Vec<(f64, f64, f64)> = (0..reps).map(|_| end_to_end(n, interval, rate)).collect();
        let how = rate.map_or("as fast as it can".to_owned(), |r| format!("{r} msg/s"));
        println!(
            "{:<36} {:>10.0} {:>10.0} {:>10.0}",
            format!("{interval} ms, {how}"),
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
            median(runs.iter().map(|r| r.2).collect())
        );
    }
    let _ = Duration::ZERO;
}
