//! End-to-end with a real mosquitto: MQTT in -> window -> file out, run by `weir agent`,
//! killed with `kill -9` at seeded moments while messages arrive (once stopped with SIGTERM
//! instead), started again each time.
//! Every published reading is in the output exactly once (the windows equal a reference
//! computed here), although the broker sends again what was not acknowledged before each
//! kill: the source's write-ahead log holds what it acknowledged and its `dedup_key`
//! recognises what it is sent twice.

use std::path::Path;

use weir_tests::agent::{Agent, source_out};
use weir_tests::mosquitto::{
    Mosquitto, assert_same_windows, create_session, flush, messages, mqtt_window_config, publish_all, reading,
};
use weir_tests::reference_of;

/// The client id in the config; the source's session is this plus `-0` (its subtask).
const CLIENT: &str = "weir-test-source";

fn config(conf: &Path, work: &Path, url: &str, out_of_order_ms: u64) {
    let dedup = "dedup_key = [\"sensor\", \"ts\"]";
    mqtt_window_config(&conf.join("mqtt-window.toml"), work, url, CLIENT, dedup, (100, out_of_order_ms));
}

/// A broker, and a config folder with the job whose session exists at the broker (so that it
/// keeps everything published before the source first connects).
fn setup(out_of_order_ms: u64) -> (Mosquitto, tempfile::TempDir, std::path::PathBuf) {
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    config(&conf, work.path(), &broker.url(), out_of_order_ms);
    create_session(broker.port, &format!("{CLIENT}-0"), "weir/in/#");
    (broker, work, conf)
}

/// Wait until the output has the windows of readings `0..readings`, stop the agent (exit 0),
/// check them; the pipeline's status before the stop.
fn finish(agent: Agent, work: &Path, readings: u64) -> serde_json::Value {
    let expected = reference_of((0..readings).map(reading));
    let out = work.join("windows.csv");
    agent.wait_for("every window in the output", |_| weir_tests::sorted_lines(&out).len() >= expected.len());
    let p = agent.pipeline("mqtt-window").unwrap();
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_windows(&weir_tests::sorted_lines(&out), &expected);
    p
}

/// A small deterministic generator for the kill points (xorshift).
fn seeded(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

#[test]
fn mqtt_in_window_out_is_exact_across_kill_9_of_the_agent() {
    const READINGS: u64 = 20_000;
    let (broker, work, conf) = setup(100);
    let port = broker.port;
    let publisher =
        std::thread::spawn(move || publish_all(port, Some(5_000), messages(0..READINGS).chain(flush())));

    let seed = std::env::var("WEIR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    eprintln!("kill points from seed {seed} (rerun with WEIR_TEST_SEED={seed})");
    let mut kills = seeded(seed).map(|x| 1 + x % 2_000);
    let mut restored = Vec::new();
    for round in 0..4 {
        let agent = Agent::start(&conf);
        // Kill it once it has read a seeded number of readings in this run and completed two
        // checkpoints (so that output was committed and the next run restores one).
        let target = kills.next().unwrap();
        let p = agent.wait_for_pipeline("mqtt-window", &format!("round {round}: {target} readings"), |p| {
            let from = p["restored_from"].as_u64().unwrap_or(0);
            p["phase"] == "failed"
                || (source_out(p) >= target && p["last_checkpoint"].as_u64() >= Some(from + 2))
        });
        assert_ne!(p["phase"], "failed", "{p}\n{}", agent.stderr());
        restored.push(p["restored_from"].as_u64());
        if round == 2 {
            // One stop is graceful (SIGTERM, as systemctl stop): a final checkpoint, exit 0.
            let (code, stderr) = agent.stop();
            assert_eq!(code, Some(0), "{stderr}");
            assert!(stderr.contains("mqtt-window: SIGTERM: stopped at checkpoint"), "{stderr}");
        } else {
            agent.kill_9();
        }
    }
    // Every run after the first resumed from a checkpoint of the one before.
    assert!(restored[1..].iter().all(|r| r.is_some_and(|c| c > 0)), "{restored:?}");
    publisher.join().expect("the publisher");
    // The last run reads everything.
    finish(Agent::start(&conf), work.path(), READINGS);
}

/// A message sent twice (a bridge that retried, a publisher that restarted) is in the
/// output once: its `dedup_key` fields are in the WAL's keys.
#[test]
fn a_reading_published_twice_is_counted_once() {
    const READINGS: u64 = 3_000;
    let (broker, work, conf) = setup(100);
    let twice = (0..READINGS).flat_map(|i| messages(i..i + 1).chain(messages(i..i + 1)));
    publish_all(broker.port, None, twice.chain(flush()));
    let p = finish(Agent::start(&conf), work.path(), READINGS);
    assert_eq!(source_out(&p), READINGS + 1, "each reading read once: {p}");
}

/// The broker stops (and saves its sessions) while the source reads, and comes back: the
/// source reconnects into its session and nothing is lost or doubled.
#[test]
fn the_source_reconnects_after_the_broker_restarts_and_loses_nothing() {
    const READINGS: u64 = 10_000;
    // mosquitto 2.0.11 sends what was published after its restart before what it had queued
    // for the session before it (measured): a tight out-of-order bound would drop those as
    // late, and the sums' last digits follow the order of additions (see finish).
    let (mut broker, work, conf) = setup(10_000_000);
    publish_all(broker.port, None, messages(0..READINGS / 2));
    let agent = Agent::start(&conf);
    agent.wait_for_pipeline("mqtt-window", "the source connected", |p| p["mqtt"][0]["connected"] == true);
    broker.kill(libc::SIGTERM);
    agent.wait_for_pipeline("mqtt-window", "the source disconnected", |p| p["mqtt"][0]["connected"] == false);
    broker.restart();
    // Published while the source reconnects: its session keeps them.
    publish_all(broker.port, None, messages(READINGS / 2..READINGS).chain(flush()));
    let p = finish(agent, work.path(), READINGS);
    assert!(p["mqtt"][0]["disconnects"].as_u64() >= Some(1), "{p}");
    assert_eq!(p["mqtt"][0]["received"].as_u64(), Some(READINGS + 1), "{p}");
}

/// `idle_timeout_ms`: the topic falls silent after readings up to event time 1399, with no
/// flush; idle ticks in the WAL advance event time with the clock, so the last window closes
/// and every reading reaches the output, and the agent still stops exact.
#[test]
fn an_idle_timeout_closes_the_last_windows_of_a_silent_topic() {
    const READINGS: u64 = 7_000;
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let idle = "dedup_key = [\"sensor\", \"ts\"]\nidle_timeout_ms = 200\ntime_field = \"ts\"";
    mqtt_window_config(&conf.join("mqtt-window.toml"), work.path(), &broker.url(), CLIENT, idle, (100, 100));
    create_session(broker.port, &format!("{CLIENT}-0"), "weir/in/#");
    publish_all(broker.port, None, messages(0..READINGS));
    let p = finish(Agent::start(&conf), work.path(), READINGS);
    assert_eq!(p["mqtt"][0]["received"].as_u64(), Some(READINGS), "ticks are not messages: {p}");
}

// MQTT out: `examples/mqtt-window.toml` as written (the contract), its rows published from
// the sink's outbox; consumers de-duplicate by the user properties (pipeline, checkpoint,
// seq) and then see every window exactly once.

use weir_tests::mosquitto::{Consumer, Received};

/// The example's text; with `two_brokers`, its sink publishes to `${WEIR_SINK_URL}` instead
/// of `${WEIR_MQTT_URL}` (so that the sink's broker can stop alone).
fn example(two_brokers: bool) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mqtt-window.toml");
    let text = std::fs::read_to_string(path).expect("examples/mqtt-window.toml");
    if !two_brokers {
        return text;
    }
    let url = r#"url = "${WEIR_MQTT_URL:-mqtt://127.0.0.1:1883}""#;
    let sink = text.rfind(url).expect("the sink's url");
    assert!(text.find(url) < Some(sink), "the source's url comes first");
    format!("{}url = \"${{WEIR_SINK_URL}}\"{}", &text[..sink], &text[sink + url.len()..])
}

/// A config folder holding the example, and its data dir, in `work`.
fn example_folder(work: &Path, two_brokers: bool) -> std::path::PathBuf {
    let conf = work.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("mqtt-window.toml"), example(two_brokers)).unwrap();
    conf
}

/// The example's rows as the reference lines (`sensor,window_start,count,sum,min,max,mean`,
/// floats with 3 decimals), sorted.
fn rows(received: &[Received]) -> Vec<String> {
    let mut lines: Vec<String> = received
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).expect("a JSON row");
            if v["sensor"] == "flush" {
                return None;
            }
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
            Some(format!(
                "{},{},{},{:.3},{:.3},{:.3},{:.3}",
                v["sensor"].as_str().unwrap(),
                v["window_start"],
                v["count"],
                f("sum"),
                f("min"),
                f("max"),
                f("mean")
            ))
        })
        .collect();
    lines.sort();
    lines
}

/// Wait until the consumer has (after de-duplication) every window of readings
/// `0..readings`; check them against the reference and that no window came twice under two
/// keys. The de-duplicated messages and the number of duplicates.
fn consumed_exactly(agent: &Agent, consumer: &Consumer, readings: u64) -> (Vec<Received>, usize) {
    let expected = reference_of((0..readings).map(reading));
    agent.wait_for("every window at the consumer", |_| {
        rows(&consumer.deduplicated().0).len() >= expected.len()
    });
    let (unique, duplicates) = consumer.deduplicated();
    assert_same_windows(&rows(&unique), &expected);
    assert!(unique.iter().all(|r| !r.pipeline.is_empty() && r.checkpoint != u64::MAX && r.seq != u64::MAX));
    (unique, duplicates)
}

/// (A, D) The example, its agent killed with `kill -9` at seeded moments and once stopped
/// with SIGTERM while readings arrive: after de-duplication by the user properties the
/// consumer has every window once, equal to the reference.
#[test]
fn the_mqtt_example_is_exact_downstream_across_kill_9_and_sigterm() {
    const READINGS: u64 = 20_000;
    let broker = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let conf = example_folder(work.path(), false);
    let (url, data) = (broker.url(), work.path().join("data").display().to_string());
    let env = [("WEIR_MQTT_URL", url.as_str()), ("WEIR_DATA_DIR", data.as_str())];
    let consumer = Consumer::start(broker.port, "weir/out");
    // The source's session exists once it has subscribed; from then on the broker keeps
    // what is published for it, also while the agent is down.
    let agent = Agent::start_with_env(&conf, &env);
    agent.wait_for_pipeline("mqtt-window", "subscribed", |p| p["mqtt"][0]["subscribed"] == true);
    let port = broker.port;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = done.clone();
    let publisher = std::thread::spawn(move || {
        publish_all(port, Some(2_500), messages(0..READINGS).chain(flush()));
        published.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let seed = std::env::var("WEIR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    eprintln!("kill points from seed {seed} (rerun with WEIR_TEST_SEED={seed})");
    let mut kills = seeded(seed).map(|x| 1 + x % 1_500);
    let mut agent = Some(agent);
    for round in 0..4 {
        let a = agent.take().unwrap_or_else(|| Agent::start_with_env(&conf, &env));
        let target = kills.next().unwrap();
        // Killed once it read a seeded number of readings (or all there were) and completed
        // two checkpoints: output was committed, some of it published, some maybe not.
        let p = a.wait_for_pipeline("mqtt-window", &format!("round {round}: {target} readings"), |p| {
            let from = p["restored_from"].as_u64().unwrap_or(0);
            let read = source_out(p) >= target || done.load(std::sync::atomic::Ordering::Relaxed);
            p["phase"] == "failed" || (read && p["last_checkpoint"].as_u64() >= Some(from + 2))
        });
        assert_ne!(p["phase"], "failed", "{p}\n{}", a.stderr());
        if round == 2 {
            let (code, stderr) = a.stop();
            assert_eq!(code, Some(0), "{stderr}");
        } else {
            a.kill_9();
        }
    }
    publisher.join().expect("the publisher");
    let agent = Agent::start_with_env(&conf, &env);
    let (unique, duplicates) = consumed_exactly(&agent, &consumer, READINGS);
    eprintln!("{} windows, {duplicates} duplicates dropped by the consumer", unique.len());
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// The example with its sink on a broker of its own, a consumer there, and its agent, once
/// its source has subscribed: (source's broker, sink's broker, work folder, consumer, agent).
fn two_brokers() -> (Mosquitto, Mosquitto, tempfile::TempDir, Consumer, Agent) {
    let (source, sink) = (Mosquitto::start(), Mosquitto::start());
    let work = tempfile::tempdir().unwrap();
    let conf = example_folder(work.path(), true);
    let (url, sink_url) = (source.url(), sink.url());
    let data = work.path().join("data").display().to_string();
    let env =
        [("WEIR_MQTT_URL", url.as_str()), ("WEIR_SINK_URL", sink_url.as_str()), ("WEIR_DATA_DIR", &data)];
    let consumer = Consumer::start(sink.port, "weir/out");
    let agent = Agent::start_with_env(&conf, &env);
    agent.wait_for_pipeline("mqtt-window", "subscribed", |p| p["mqtt"][0]["subscribed"] == true);
    (source, sink, work, consumer, agent)
}

/// (B, F) The sink's broker stops for 10 s while readings keep arriving at the source's: the
/// outbox keeps the committed output, and once the broker is back delivers all of it, in
/// commit order, and drains. Meanwhile the metrics move and in the end agree with the
/// status and the consumer.
#[test]
fn the_outbox_keeps_output_while_the_sinks_broker_is_down_and_delivers_it_in_order() {
    const READINGS: u64 = 10_000;
    let (source, mut sink, _work, consumer, agent) = two_brokers();
    let port = source.port;
    let publisher =
        std::thread::spawn(move || publish_all(port, Some(700), messages(0..READINGS).chain(flush())));
    let acknowledged = |agent: &Agent| {
        let text = weir_edge_agent::agent::status::get(agent.addr, "/metrics").expect("/metrics");
        weir_tests::agent::sample(
            &text,
            "weir_mqtt_sink_acknowledged_total{pipeline=\"mqtt-window\",node=\"out\"}",
        )
        .unwrap_or(0.0)
    };
    let p = agent.wait_for_pipeline("mqtt-window", "output acknowledged", |p| {
        p["mqtt_sinks"][0]["acknowledged"].as_u64() > Some(0)
    });
    let first = acknowledged(&agent);
    assert!(first > 0.0, "{p}");
    sink.kill(libc::SIGTERM);
    agent.wait_for_pipeline("mqtt-window", "the sink disconnected", |p| {
        p["mqtt_sinks"][0]["connected"] == false
    });
    // The scenario (not a race): the broker is away for 10 s while commits go on.
    std::thread::sleep(std::time::Duration::from_secs(10));
    let p = agent.pipeline("mqtt-window").unwrap();
    assert!(p["mqtt_sinks"][0]["outbox_bytes"].as_u64() > Some(0), "the outbox kept the output: {p}");
    sink.restart();
    let (unique, duplicates) = consumed_exactly(&agent, &consumer, READINGS);
    publisher.join().expect("the publisher");
    // In commit order: the (checkpoint, seq) of first receipts only grow.
    let order: Vec<(u64, u64)> = unique.iter().map(|r| (r.checkpoint, r.seq)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    let p = agent.wait_for_pipeline("mqtt-window", "the outbox drained", |p| {
        p["mqtt_sinks"][0]["outbox_bytes"] == 0
            && p["mqtt_sinks"][0]["acknowledged"].as_u64() >= Some(unique.len() as u64)
    });
    let s = &p["mqtt_sinks"][0];
    assert!(s["disconnects"].as_u64() >= Some(1), "{p}");
    assert_eq!(s["dropped"], 0, "{p}");
    // Every row was acknowledged once at least; what came twice to the consumer was sent
    // again by the sink (a PUBACK lost with the broker) or by the restarted broker itself
    // (the consumer's own acknowledgements it had not saved).
    let acknowledged_now = s["acknowledged"].as_u64().unwrap();
    assert!(acknowledged_now >= unique.len() as u64, "{p}");
    assert!(s["published"].as_u64() >= Some(acknowledged_now), "{p}");
    let received = consumer.received().len() as u64;
    assert_eq!(duplicates as u64, received - unique.len() as u64);
    // The metrics moved and agree with the status.
    assert!(acknowledged(&agent) > first);
    assert_eq!(acknowledged(&agent) as u64, acknowledged_now);
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// (C) The sink's broker stalls (SIGSTOP) with messages in flight, then is killed
/// (`kill -9`) and started again: what it had not acknowledged is sent again, and the
/// consumer has every window.
#[test]
fn the_sink_sends_again_what_a_killed_broker_had_not_acknowledged() {
    // Half of them close the first windows (5 000 readings a second of event time).
    const READINGS: u64 = 16_000;
    let (source, mut sink, _work, consumer, agent) = two_brokers();
    // Killed, the sink's broker must not forget the consumer's subscription (the sink may
    // publish again before the consumer has subscribed again): saved before the kill.
    sink.save();
    sink.signal(libc::SIGSTOP);
    publish_all(source.port, None, messages(0..READINGS / 2));
    // Sent to the stalled broker, never acknowledged.
    agent.wait_for_pipeline("mqtt-window", "messages in flight", |p| {
        p["mqtt_sinks"][0]["published"].as_u64() > Some(0) && p["mqtt_sinks"][0]["acknowledged"] == 0
    });
    sink.kill(libc::SIGKILL);
    publish_all(source.port, None, messages(READINGS / 2..READINGS).chain(flush()));
    sink.restart();
    let (unique, _) = consumed_exactly(&agent, &consumer, READINGS);
    let p = agent
        .wait_for_pipeline("mqtt-window", "the outbox drained", |p| p["mqtt_sinks"][0]["outbox_bytes"] == 0);
    assert!(p["mqtt_sinks"][0]["disconnects"].as_u64() >= Some(1), "{p}");
    assert!(p["mqtt_sinks"][0]["resent"].as_u64() > Some(0), "what was in flight was sent again: {p}");
    assert!(!unique.is_empty());
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
