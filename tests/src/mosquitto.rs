//! A real mosquitto broker for the end-to-end tests: installed with apt-get when missing,
//! started on a free loopback port with its own config and persistence folder, stopped by
//! PID. The broker runs as the test's user (`user` is set to it), so its persistence folder
//! needs no other owner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

/// The mosquitto binary, installed (Debian's package) if it is not there.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let found = || {
                ["mosquitto", "/usr/sbin/mosquitto"].into_iter().map(PathBuf::from).find(|bin| {
                    Command::new(bin).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
                })
            };
            if let Some(bin) = found() {
                return bin;
            }
            let install = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install(&["install", "-y", "-q", "mosquitto"]) {
                install(&["update", "-q"]);
                install(&["install", "-y", "-q", "mosquitto"]);
            }
            found().expect(
                "mosquitto is not installed and `apt-get install mosquitto` failed (the MQTT tests need it)",
            )
        })
        .clone()
}

/// A running broker; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    crate::agent::free_addr().port()
}

impl Mosquitto {
    /// Start a broker with persistence (saved every second) and no limit on queued messages.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("a folder for the broker");
        let mut broker = Mosquitto { child: None, port: free_port(), dir };
        broker.restart();
        broker
    }

    fn config(&self) -> PathBuf {
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 1000\nuser {user}\nlog_dest stderr\n",
            port = self.port,
            dir = self.dir.path().display(),
        );
        let path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&path, text).expect("writing the broker config");
        path
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// (Re)start it on the same port and persistence folder, and wait until it accepts
    /// connections.
    pub fn restart(&mut self) {
        let config = self.config();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("the broker's log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("mosquitto exited ({status}): {}", self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "mosquitto did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kill it with `signal` and wait for it.
    pub fn kill(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
            let _ = child.wait();
        }
    }

    /// Send it `signal` without waiting for it (SIGSTOP: a broker that stalls).
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Have it save its state now (SIGUSR1) and wait until the save is on disk: a `kill -9`
    /// after this keeps the sessions and subscriptions it has.
    pub fn save(&self) {
        let db = self.dir.path().join("mosquitto.db");
        let _ = std::fs::remove_file(&db);
        self.signal(libc::SIGUSR1);
        // mosquitto writes a new file and renames it into place: once there, it is whole.
        let start = Instant::now();
        while !db.exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "mosquitto did not save: {}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its persistence folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Create the persistent session `client_id` subscribed to `topic` (QoS 1), so that the broker
/// keeps what is published for it before its client first connects.
pub fn create_session(port: u16, client_id: &str, topic: &str) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut connection) = Client::new(options, 10);
    client.subscribe(topic, QoS::AtLeastOnce).expect("subscribe request");
    let start = Instant::now();
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("creating session {client_id}: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no SUBACK");
    }
    client.disconnect().expect("disconnect request");
    for event in connection.iter() {
        if matches!(event, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
            break;
        }
    }
}

/// Publish `messages` (topic, payload) with QoS 1, at most `rate` a second if given, and
/// return once the broker acknowledged every one.
pub fn publish_all(port: u16, rate: Option<u64>, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
    publish_timed(port, rate, messages);
}

/// [`publish_all`], returning when each message was handed to the client (in order).
pub fn publish_timed(
    port: u16,
    rate: Option<u64>,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Vec<Instant> {
    let mut times = Vec::new();
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut options = MqttOptions::new(format!("weir-test-pub-{}", std::process::id()), "127.0.0.1", port);
    options.set_inflight(200).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 256);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let poller = std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let mut sent = 0u64;
    let began = Instant::now();
    for (topic, payload) in messages {
        times.push(Instant::now());
        client.publish(topic, QoS::AtLeastOnce, false, payload).expect("publish request");
        sent += 1;
        // Pace the workload: the next message is due at sent / rate seconds.
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let start = Instant::now();
    while acked.load(Ordering::Relaxed) < sent {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the broker acknowledged {} of {sent}",
            acked.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    client.disconnect().expect("disconnect request");
    poller.join().expect("the publisher's poller");
    times
}

/// The sensor-window job with an MQTT source (`readings`, topic filter `weir/in/#`, JSON
/// `{sensor, ts, value}`, client id `client`, `source_extra` lines added to its table) and a
/// file sink, its data and output (`windows.csv`) in `work`, written to `config`.
pub fn mqtt_window_config(
    config: &Path,
    work: &Path,
    url: &str,
    client: &str,
    source_extra: &str,
    (interval_ms, out_of_order_ms): (u64, u64),
) {
    let text = format!(
        r#"data_dir = "{data}"
[checkpoint]
interval_ms = {interval_ms}
[sources.readings]
type = "mqtt"
url = "{url}"
topics = ["weir/in/#"]
client_id = "{client}"
format = "json"
schema = {{ sensor = "string", ts = "int", value = "float" }}
{source_extra}
{window}"#,
        data = work.join("data").display(),
        window =
            crate::window_and_file_sink(out_of_order_ms, &work.join("windows.csv").display().to_string()),
    );
    std::fs::write(config, text).expect("writing the config");
}

/// A message an MQTT sink published, as a consumer got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its user properties `pipeline`, `epoch`, `checkpoint` and `seq` (empty if missing).
    pub pipeline: String,
    /// `epoch`.
    pub epoch: u64,
    /// `checkpoint`.
    pub checkpoint: u64,
    /// `seq`.
    pub seq: u64,
    /// Its payload.
    pub payload: String,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// What a consumer de-duplicates by: the message's (pipeline, checkpoint, seq).
    pub fn key(&self) -> (String, u64, u64) {
        (self.pipeline.clone(), self.checkpoint, self.seq)
    }
}

/// A consumer of `topic` (MQTT 5, QoS 1, a persistent session: it gets what was published
/// while it was away, also across a restart of the broker), collecting every message in the
/// order received; stopped when dropped.
pub struct Consumer {
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    /// Connect to the broker on `port`, subscribe to `topic`, and return once subscribed.
    pub fn start(port: u16, topic: &str) -> Consumer {
        use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet as P5};
        use rumqttc::v5::{Client as C5, Event as E5, MqttOptions as O5};
        use std::sync::atomic::Ordering;
        let mut options = O5::new(format!("weir-test-consumer-{}", free_port()), "127.0.0.1", port);
        let properties =
            ConnectProperties { session_expiry_interval: Some(3600), ..ConnectProperties::new() };
        options.set_clean_start(false).set_connect_properties(properties).set_max_packet_size(Some(1 << 20));
        let (client, mut connection) = C5::new(options, 64);
        let topic = topic.to_owned();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let (into, flag) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let client = client; // the event loop ends when every client is gone
            while !flag.load(Ordering::Relaxed) {
                match connection.recv_timeout(Duration::from_millis(50)) {
                    // Subscribed on every connection: a broker killed before it saved the
                    // session has forgotten it.
                    Ok(Ok(E5::Incoming(P5::ConnAck(_)))) => {
                        let _ = client.try_subscribe(topic.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
                    }
                    Ok(Ok(E5::Incoming(P5::SubAck(_)))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Ok(E5::Incoming(P5::Publish(p)))) => {
                        let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                        let prop = |name: &str| props.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                        let number = |name: &str| prop(name).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
                        let received = Received {
                            pipeline: prop("pipeline").unwrap_or_default(),
                            epoch: number("epoch"),
                            checkpoint: number("checkpoint"),
                            seq: number("seq"),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            at: Instant::now(),
                        };
                        into.lock().unwrap().push(received);
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    // The broker went away: the next poll reconnects into the session.
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed.recv_timeout(Duration::from_secs(30)).expect("the consumer's SUBACK");
        Consumer { got, stop, thread: Some(thread) }
    }

    /// Every message received so far, in order (duplicates included).
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The messages received so far, each (pipeline, checkpoint, seq) once, in the order of
    /// their first receipt; and how many were duplicates.
    pub fn deduplicated(&self) -> (Vec<Received>, usize) {
        let all = self.received();
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<Received> = all.iter().filter(|r| seen.insert(r.key())).cloned().collect();
        let duplicates = all.len() - unique.len();
        (unique, duplicates)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sensors of the test readings.
pub const SENSORS: u64 = 50;

/// Reading `i`: sensor, event time (4 ms apart per 20 readings: several 1 s windows), value.
pub fn reading(i: u64) -> (u64, i64, f64) {
    (i % SENSORS, (i / 5) as i64, ((i * 7919 + 13) % 10007) as f64 / 100.0)
}

/// Reading `i` as a JSON payload.
pub fn payload(i: u64) -> Vec<u8> {
    let (sensor, ts, value) = reading(i);
    format!(r#"{{"sensor": "s{sensor:04}", "ts": {ts}, "value": {value}}}"#).into_bytes()
}

/// Readings `range` as messages, one topic per sensor.
pub fn messages(range: std::ops::Range<u64>) -> impl Iterator<Item = (String, Vec<u8>)> {
    range.map(|i| (format!("weir/in/s{:04}", i % SENSORS), payload(i)))
}

/// The last message: its event time closes every window before it (its own stays open).
pub fn flush() -> std::iter::Once<(String, Vec<u8>)> {
    std::iter::once((
        "weir/in/flush".to_owned(),
        br#"{"sensor": "flush", "ts": 100000000, "value": 0}"#.to_vec(),
    ))
}

/// Output lines equal to `expected` but for the last digit of sums and means, which depend
/// on the order of additions: keys, counts, minima and maxima exactly, sums and means within
/// 0.002.
pub fn assert_same_windows(output: &[String], expected: &[String]) {
    assert_eq!(output.len(), expected.len(), "windows");
    for (o, e) in output.iter().zip(expected) {
        let (o, e): (Vec<&str>, Vec<&str>) = (o.split(',').collect(), e.split(',').collect());
        assert_eq!((o[0], o[1], o[2], o[4], o[5]), (e[0], e[1], e[2], e[4], e[5]), "{o:?} vs {e:?}");
        for i in [3, 6] {
            let (a, b): (f64, f64) = (o[i].parse().unwrap(), e[i].parse().unwrap());
            assert!((a - b).abs() <= 0.002, "{o:?} vs {e:?}");
        }
    }
}
