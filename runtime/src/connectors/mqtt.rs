//! The MQTT source: an ingest thread that subscribes with QoS 1 in a persistent session
//! (`clean_session = false`, a stable client id, manual acknowledgements) and appends each
//! message to the source's write-ahead log ([`crate::log::wal`]) in group commits, telling
//! the broker it has a message (PUBACK, in arrival order) only once the commit is durable; and
//! a [`SourceReader`] that reads the WAL by position, as the file source reads its file.
//! A crash loses nothing: what was acknowledged is in the WAL, what was not the broker sends
//! again (then marked `dup`). A message sent again that is already in the WAL is recognised
//! by its `dedup_key` fields and acknowledged without being stored twice; without a
//! `dedup_key` the boundary with the broker is at-least-once. The WAL is truncated below the
//! position of each completed checkpoint; dedup keys are kept for `dedup_retention_ms`.
//!
//! The client is rumqttc's synchronous one, on the ingest thread: no async runtime, and never
//! an actor thread. rumqttc keeps nothing on disk and drops acknowledgements queued at a
//! disconnect; both are fine here, since the WAL is the record and the broker sends again
//! what was not acknowledged.

#[cfg(not(loom))]
use std::sync::atomic::AtomicBool;
#[cfg(not(loom))]
use std::thread::JoinHandle;
#[cfg(not(loom))]
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(not(loom))]
use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, RecvTimeoutError};

use super::file_source::{Decoder, json_record};
use super::{SourceError, SourceReader};
use crate::batch::{Batch, Column, Schema, SchemaRef};
use crate::log::wal::WalEntry;
use crate::log::{Log, WriteOp, Writer};
use crate::pipeline::spec::{MqttSourceSpec, PayloadFormat};
use crate::protocol::ParticipantId;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// Called when the WAL grew: the source actor reads again.
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A source subtask's WAL, shared by its ingest thread and its readers.
pub struct Wal {
    log: Log,
    writer: Writer,
    participant: ParticipantId,
    /// The index the next entry will get: everything below is durable.
    end: AtomicU64,
    retention_ms: u64,
    waker: Mutex<Option<Waker>>,
    /// Why the ingest thread stopped, if it failed (the log failed).
    failed: Mutex<Option<String>>,
    /// What it did, for the agent's metrics.
    pub status: MqttStatus,
}

/// The ingest thread's counters.
#[derive(Debug, Default)]
pub struct MqttStatus {
    /// Connected to the broker now.
    pub connected: crate::sync::atomic::AtomicBool,
    /// Its subscriptions were acknowledged (on this connection or an earlier one of the
    /// session): what is published to its topics from now on is kept for it.
    pub subscribed: crate::sync::atomic::AtomicBool,
    /// Connections lost.
    pub disconnects: AtomicU64,
    /// Messages written to the WAL.
    pub received: AtomicU64,
    /// Messages the broker sent again that the WAL had already.
    pub duplicates: AtomicU64,
    /// Payloads that did not decode into a record (skipped, each logged).
    pub bad_payloads: AtomicU64,
    /// The WAL position below which a completed checkpoint released it.
    pub released: AtomicU64,
}

impl Wal {
    /// The WAL of participant `p` in `log`.
    pub fn open(
        log: &Log,
        writer: &Writer,
        p: ParticipantId,
        retention_ms: u64,
    ) -> Result<Arc<Wal>, SourceError> {
        let end = log.wal_next(p).map_err(|e| SourceError(format!("write-ahead log: {e}")))?;
        Ok(Arc::new(Wal {
            log: log.clone(),
            writer: writer.clone(),
            participant: p,
            end: AtomicU64::new(end),
            retention_ms,
            waker: Mutex::new(None),
            failed: Mutex::new(None),
            status: MqttStatus::default(),
        }))
    }

    /// The index the next entry will get.
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    #[cfg(not(loom))]
    fn wake(&self) {
        if let Some(waker) = lock(&self.waker).clone() {
            waker();
        }
    }
}

#[cfg(not(loom))]
/// The ingest thread of one MQTT source subtask; stopped (with a clean disconnect) when
/// dropped.
pub struct Ingest {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[cfg(not(loom))]
impl Ingest {
    /// Connect as `client_id` and keep appending what arrives to `wal`.
    pub fn start(spec: &MqttSourceSpec, client_id: String, wal: Arc<Wal>) -> Ingest {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (spec, flag) = (spec.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("mqtt {client_id}"))
            .spawn(move || ingest(&spec, client_id, &wal, &flag))
            .expect("spawning the MQTT ingest thread");
        Ingest { stop, thread: Some(thread) }
    }
}

#[cfg(not(loom))]
impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(not(loom))]
/// An entry waiting for the next group commit: the message to acknowledge after it (none for
/// an idle tick), the entry, its dedup key.
type Pending = (Option<Publish>, WalEntry, Option<Vec<u8>>);

#[cfg(not(loom))]
/// Messages committed to the WAL in one transaction at most.
const GROUP: usize = 1024;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(not(loom))]
/// The dedup key of a JSON payload: the named fields' JSON text, joined by 0x1f; none if a
/// field is missing or the payload is not a JSON object.
fn dedup_of(payload: &[u8], fields: &[String]) -> Option<Vec<u8>> {
    if fields.is_empty() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let object = value.as_object()?;
    let mut key = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            key.push(0x1f);
        }
        key.extend_from_slice(object.get(field)?.to_string().as_bytes());
    }
    Some(key)
}

#[cfg(not(loom))]
fn ingest(spec: &MqttSourceSpec, client_id: String, wal: &Wal, stop: &AtomicBool) {
    let mut options = MqttOptions::new(client_id.clone(), spec.host.clone(), spec.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(spec.keep_alive_s))
        .set_max_packet_size(1 << 20, 1 << 20);
    // The request channel carries our acknowledgements: room for a whole in-flight window,
    // so acknowledging never waits for the event loop that sends them.
    let (client, mut connection) = Client::new(options, usize::from(spec.max_inflight) * 2 + 16);
    let mut pending: Vec<Pending> = Vec::new();
    let mut idle = (spec.idle.clone()).map(|(timeout_ms, field)| Idle {
        timeout_ms,
        field,
        seen: None,
        last_activity_ms: now_ms(),
    });
    // Durable messages whose acknowledgement did not fit the request channel yet.
    let mut acks: std::collections::VecDeque<Publish> = std::collections::VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let status = &wal.status;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        send_acks(&client, &mut acks);
        let busy = !pending.is_empty() || !acks.is_empty();
        let wait = if busy { Duration::from_millis(1) } else { Duration::from_millis(100) };
        match connection.recv_timeout(wait) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                status.connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                tracing::info!(
                    "{client_id}: connected to {}:{} (session present: {})",
                    spec.host,
                    spec.port,
                    ack.session_present
                );
                for topic in &spec.topics {
                    if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("{client_id}: subscribing to {topic}: {e}");
                    }
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                let entry = WalEntry {
                    topic: publish.topic.clone(),
                    arrival_ms: now_ms(),
                    payload: publish.payload.to_vec(),
                };
                let dedup = dedup_of(&entry.payload, &spec.dedup_key);
                if let Some(idle) = &mut idle {
                    idle.message(&entry.payload, entry.arrival_ms);
                }
                pending.push((Some(publish), entry, dedup));
                if pending.len() >= GROUP {
                    commit(wal, &mut acks, &mut pending);
                }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => status.subscribed.store(true, Ordering::Relaxed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                commit(wal, &mut acks, &mut pending);
                // Acknowledgements belong to the session's connection: the broker sends the
                // unacknowledged messages again on the next one (the WAL recognises them).
                acks.clear();
                if status.connected.swap(false, Ordering::Relaxed) {
                    status.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                let refused = matches!(e, ConnectionError::ConnectionRefused(_));
                tracing::warn!(
                    "{client_id}: {}:{}: {e}; retrying in {} ms",
                    spec.host,
                    spec.port,
                    backoff.as_millis()
                );
                sleep_unless(stop, backoff);
                backoff =
                    if refused { Duration::from_secs(5) } else { (backoff * 2).min(Duration::from_secs(2)) };
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(tick) = idle.as_mut().and_then(|i| i.tick(now_ms())) {
                    pending.push((None, tick, None));
                }
                commit(wal, &mut acks, &mut pending)
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if lock(&wal.failed).is_some() {
            return;
        }
    }
    commit(wal, &mut acks, &mut pending);
    // Let the acknowledgements and the disconnect go out.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while !acks.is_empty() && std::time::Instant::now() < deadline {
        send_acks(&client, &mut acks);
        if matches!(connection.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Disconnected)) {
            break;
        }
    }
    let _ = client.try_disconnect();
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
            Err(RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
}

#[cfg(not(loom))]
fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = std::time::Instant::now() + total;
    while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(until - std::time::Instant::now()));
    }
}

#[cfg(not(loom))]
/// Queue the acknowledgements in `acks` on the client's request channel, in order, as far as
/// it has room. Never waits: the event loop that empties the channel runs on this thread.
fn send_acks(client: &Client, acks: &mut std::collections::VecDeque<Publish>) {
    while let Some(publish) = acks.front() {
        if client.try_ack(publish).is_err() {
            return;
        }
        acks.pop_front();
    }
}

#[cfg(not(loom))]
/// Append `pending` to the WAL (durably), then queue an acknowledgement of each message to
/// the broker, in arrival order.
fn commit(wal: &Wal, acks: &mut std::collections::VecDeque<Publish>, pending: &mut Vec<Pending>) {
    if pending.is_empty() {
        return;
    }
    let entries: Vec<(WalEntry, Option<Vec<u8>>)> = pending
        .iter_mut()
        .map(|(_, entry, dedup)| (std::mem::replace(entry, empty_entry()), dedup.take()))
        .collect();
    let appended = match wal.writer.tap() {
        None => wal.log.wal_append(wal.participant, &entries).map_err(|e| e.to_string()),
        Some(tap) => shipped_append(wal, entries, &*tap),
    };
    match appended {
        Ok(appended) => {
            wal.end.store(appended.next, Ordering::Release);
            let ticks = pending.iter().filter(|(publish, _, _)| publish.is_none()).count();
            wal.status.received.fetch_add((appended.written - ticks) as u64, Ordering::Relaxed);
            wal.status.duplicates.fetch_add(appended.duplicates as u64, Ordering::Relaxed);
            acks.extend(pending.drain(..).filter_map(|(publish, _, _)| publish));
            wal.wake();
        }
        Err(e) => {
            // Nothing is acknowledged: the broker keeps the messages. The source fails.
            *lock(&wal.failed) = Some(format!("write-ahead log: {e}"));
            pending.clear();
            wal.wake();
        }
    }
}

#[cfg(not(loom))]
/// A replicated pipeline's append: through the log's writer (whose tap ships it), and once
/// the mode says the input is safe at the peer ([`crate::log::ship::Tap::input_durable`]).
fn shipped_append(
    wal: &Wal,
    entries: Vec<(WalEntry, Option<Vec<u8>>)>,
    tap: &dyn crate::log::ship::Tap,
) -> Result<crate::log::wal::Appended, String> {
    let (before, count) = (wal.end.load(Ordering::Acquire), entries.len());
    let (tx, rx) = std::sync::mpsc::channel();
    let append = crate::log::WriteOp::WalAppend { participant: wal.participant, entries };
    wal.writer.submit(
        vec![append],
        Box::new(move |result| {
            let _ = tx.send(result.map_err(|e| e.to_string()));
        }),
    );
    rx.recv().map_err(|_| "the log's writer stopped".to_owned())??;
    tap.input_durable()?;
    // Only this thread appends to this WAL: what it grew by is what was written.
    let next = wal.log.wal_next(wal.participant).map_err(|e| e.to_string())?;
    let written = (next - before) as usize;
    Ok(crate::log::wal::Appended { written, duplicates: count - written, next })
}

#[cfg(not(loom))]
fn empty_entry() -> WalEntry {
    WalEntry { topic: String::new(), arrival_ms: 0, payload: Vec::new() }
}

/// Under loom (`--cfg loom`, which compiles tokio's networking out) there is no client: no
/// loom test runs a pipeline.
#[cfg(loom)]
pub struct Ingest;

#[cfg(loom)]
impl Ingest {
    /// Nothing: see above.
    pub fn start(_: &MqttSourceSpec, _: String, _: Arc<Wal>) -> Ingest {
        Ingest
    }
}

/// The topic of an idle tick in the WAL: no MQTT topic holds a NUL character.
const IDLE_TICK: &str = "\0idle";

/// The event-time floor of an idle tick (none for a message).
fn idle_floor(entry: &WalEntry) -> Option<i64> {
    if entry.topic != IDLE_TICK {
        return None;
    }
    Some(i64::from_be_bytes(entry.payload.as_slice().try_into().ok()?))
}

/// The idle-tick state of an ingest thread: the largest event time seen and when the
/// latest message arrived; a tick is due after `timeout_ms` without a message or a tick.
#[cfg(not(loom))]
struct Idle {
    timeout_ms: u64,
    field: String,
    /// Largest event time seen, and the arrival of the latest message.
    seen: Option<(i64, u64)>,
    /// The latest message or tick.
    last_activity_ms: u64,
}

#[cfg(not(loom))]
impl Idle {
    fn message(&mut self, payload: &[u8], arrival_ms: u64) {
        self.last_activity_ms = arrival_ms;
        let ts = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.as_object()?.get(&self.field)?.as_i64());
        let max = match (self.seen, ts) {
            (Some((max, _)), Some(ts)) => max.max(ts),
            (Some((max, _)), None) => max,
            (None, Some(ts)) => ts,
            (None, None) => return,
        };
        self.seen = Some((max, arrival_ms));
    }

    /// A tick if one is due at `now_ms`.
    fn tick(&mut self, now_ms: u64) -> Option<WalEntry> {
        let (max, arrived) = self.seen?;
        if now_ms.saturating_sub(self.last_activity_ms) < self.timeout_ms {
            return None;
        }
        self.last_activity_ms = now_ms;
        let floor = max.saturating_add(i64::try_from(now_ms.saturating_sub(arrived)).unwrap_or(i64::MAX));
        Some(WalEntry {
            topic: IDLE_TICK.to_owned(),
            arrival_ms: now_ms,
            payload: floor.to_be_bytes().to_vec(),
        })
    }
}

/// Reads a source subtask's WAL from a position (the index of the next entry).
pub struct MqttReader {
    spec: MqttSourceSpec,
    payload_schema: Schema,
    wal: Option<Arc<Wal>>,
    position: u64,
    seen: Vec<bool>,
    /// CSV payloads' parser.
    csv: Decoder,
    /// The node's name, for messages.
    name: String,
}

impl MqttReader {
    /// A reader of `wal` (none: only the schema is asked for).
    pub fn new(name: &str, spec: &MqttSourceSpec, wal: Option<Arc<Wal>>) -> MqttReader {
        let payload_schema = Schema::new(spec.schema.fields()[..spec.payload_fields].to_vec());
        MqttReader {
            spec: spec.clone(),
            payload_schema,
            wal,
            position: 0,
            seen: Vec::new(),
            csv: Decoder::new(crate::pipeline::spec::FileFormat::Csv),
            name: name.to_owned(),
        }
    }

    fn wal(&self) -> Result<&Arc<Wal>, SourceError> {
        let wal =
            self.wal.as_ref().ok_or_else(|| SourceError(format!("{}: no write-ahead log", self.name)))?;
        if let Some(failed) = lock(&wal.failed).clone() {
            return Err(SourceError(failed));
        }
        Ok(wal)
    }

    /// Append the record of `entry` to `batch`; false (and nothing appended) if its payload
    /// does not fit the schema.
    fn push(&mut self, index: u64, entry: &WalEntry, batch: &mut Batch) -> bool {
        let len = batch.len();
        let fields = self.spec.payload_fields;
        let columns = batch.columns_mut();
        let decoded = match self.spec.format {
            PayloadFormat::Json => {
                self.seen.clear();
                self.seen.resize(fields, false);
                // A JSON object may span lines; outside strings a line break is whitespace.
                if entry.payload.contains(&b'\n') {
                    let flat: Vec<u8> = entry
                        .payload
                        .iter()
                        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                        .collect();
                    json_record(&self.payload_schema, &mut columns[..fields], &mut self.seen, &flat)
                } else {
                    json_record(&self.payload_schema, &mut columns[..fields], &mut self.seen, &entry.payload)
                }
            }
            PayloadFormat::Csv => {
                self.csv.csv_message(&self.payload_schema, &mut columns[..fields], &entry.payload)
            }
            PayloadFormat::Raw => match (std::str::from_utf8(&entry.payload), &mut columns[0]) {
                (Ok(text), Column::Str(c)) => {
                    c.push(text);
                    Ok(())
                }
                (Err(_), _) => Err("the payload is not UTF-8".into()),
                (Ok(_), _) => Err("the payload field is not a string".into()),
            },
        };
        if let Err(problem) = decoded {
            for c in columns.iter_mut() {
                c.truncate(len);
            }
            if let Some(wal) = &self.wal {
                wal.status.bad_payloads.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(
                "{}: message {index} on topic {:?} skipped: {problem}",
                self.name,
                entry.topic.chars().take(200).collect::<String>()
            );
            return false;
        }
        let mut at = fields;
        if self.spec.topic_field.is_some() {
            if let Column::Str(c) = &mut columns[at] {
                c.push(&entry.topic);
            }
            at += 1;
        }
        if self.spec.arrival_field.is_some()
            && let Column::Int(c) = &mut columns[at]
        {
            c.push(i64::try_from(entry.arrival_ms).unwrap_or(i64::MAX));
        }
        batch.set_len(len + 1);
        true
    }
}

impl SourceReader for MqttReader {
    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    /// Up to `max` records from the WAL: entries whose payload does not decode are skipped
    /// (and counted), the same way every time they are read, so a re-read gives the same
    /// batches. Never the end: an MQTT source runs until it is stopped.
    fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        let wal = self.wal()?.clone();
        let mut batch = Batch::with_capacity(self.spec.schema.clone(), max.min(self.spec.batch_size));
        while batch.len() < max && self.position < wal.end.load(Ordering::Acquire) {
            let entries = (wal.log)
                .wal_read(wal.participant, self.position, max - batch.len())
                .map_err(|e| SourceError(format!("{}: write-ahead log: {e}", self.name)))?;
            let Some(&(first, _)) = entries.first() else { break };
            if first != self.position {
                return Err(SourceError(format!(
                    "{}: the write-ahead log has no entry {} (it starts at {first}): it was truncated too early",
                    self.name, self.position
                )));
            }
            for (index, entry) in &entries {
                if let Some(floor) = idle_floor(entry) {
                    // A tick ends the batch: records before it, then the floor alone.
                    if batch.is_empty() {
                        self.position = index + 1;
                        return Ok(Some(Batch::floor_only(self.spec.schema.clone(), floor)));
                    }
                    return Ok(Some(batch));
                }
                self.push(*index, entry, &mut batch);
                self.position = index + 1;
            }
        }
        Ok(Some(batch))
    }

    /// As reading, counting an idle tick as one item (as the source actor does).
    fn skip(&mut self, n: usize) -> Result<usize, SourceError> {
        Ok(self.next_batch(n)?.map_or(0, |b| crate::actors::source::items(&b)))
    }

    fn position(&self) -> Vec<u8> {
        self.position.to_be_bytes().to_vec()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let bytes: [u8; 8] = position.try_into().map_err(|_| {
            SourceError(format!("{}: a position of {} bytes, not 8", self.name, position.len()))
        })?;
        self.position = u64::from_be_bytes(bytes);
        Ok(())
    }

    fn ready(&self) -> bool {
        self.wal
            .as_ref()
            .is_some_and(|w| w.end.load(Ordering::Acquire) > self.position || lock(&w.failed).is_some())
    }

    fn release(&mut self, position: &[u8]) {
        let (Some(wal), Ok(bytes)) = (&self.wal, <[u8; 8]>::try_from(position)) else { return };
        let below = u64::from_be_bytes(bytes);
        wal.status.released.fetch_max(below, Ordering::Relaxed);
        let op = WriteOp::WalTruncate {
            participant: wal.participant,
            below,
            keys_before_ms: now_ms().saturating_sub(wal.retention_ms),
        };
        let name = self.name.clone();
        wal.writer.submit(
            vec![op],
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!("{name}: truncating the write-ahead log: {e}");
                }
            }),
        );
    }

    fn set_waker(&mut self, waker: Waker) {
        if let Some(wal) = &self.wal {
            *lock(&wal.waker) = Some(waker);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::batch::{DataType, Field, Value};

    fn spec(format: PayloadFormat) -> MqttSourceSpec {
        let fields = vec![Field::new("sensor", DataType::Str), Field::new("value", DataType::Float)];
        let mut all = fields.clone();
        all.push(Field::new("topic", DataType::Str));
        MqttSourceSpec {
            host: "127.0.0.1".into(),
            port: 1,
            topics: vec!["#".into()],
            client_id: String::new(),
            format,
            schema: Arc::new(Schema::new(all)),
            payload_fields: fields.len(),
            topic_field: Some("topic".into()),
            arrival_field: None,
            dedup_key: Vec::new(),
            dedup_retention_ms: 1000,
            batch_size: 100,
            keep_alive_s: 10,
            max_inflight: 10,
            idle: None,
        }
    }

    /// The records a reader of `format` makes of `payloads` (each on topic `t/N`), read twice
    /// from the start (a re-read gives the same), and the bad payloads counted.
    fn read(format: PayloadFormat, payloads: &[&str]) -> (Vec<Vec<Value>>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 24).unwrap();
        let writer = Writer::start(log.clone());
        let entries: Vec<(WalEntry, Option<Vec<u8>>)> = (payloads.iter().enumerate())
            .map(|(i, p)| {
                (WalEntry { topic: format!("t/{i}"), arrival_ms: 0, payload: p.as_bytes().to_vec() }, None)
            })
            .collect();
        log.wal_append(0, &entries).unwrap();
        let wal = Wal::open(&log, &writer, 0, 1000).unwrap();
        let mut reader = MqttReader::new("m", &spec(format), Some(wal.clone()));
        let rows = |reader: &mut MqttReader| {
            let batch = reader.next_batch(100).unwrap().unwrap();
            (0..batch.len()).map(|r| batch.row(r)).collect::<Vec<_>>()
        };
        let first = rows(&mut reader);
        reader.seek(&0u64.to_be_bytes()).unwrap();
        assert_eq!(rows(&mut reader), first, "a re-read gives the same records");
        (first, wal.status.bad_payloads.load(Ordering::Relaxed) / 2)
    }

    #[test]
    fn csv_payloads_are_one_record_each_and_bad_ones_are_skipped_and_counted() {
        let payloads = ["s1,1.5", "\"s,2\",2.5\n", "s3", "s4,x", "s5,1,2", "a,1\nb,2", "", "s6,6"];
        let (rows, bad) = read(PayloadFormat::Csv, &payloads);
        let s = |v: &str| Value::Str(v.into());
        assert_eq!(
            rows,
            [
                vec![s("s1"), Value::Float(1.5), s("t/0")],
                vec![s("s,2"), Value::Float(2.5), s("t/1")],
                vec![s("s6"), Value::Float(6.0), s("t/7")],
            ]
        );
        assert_eq!(bad, 5);
    }

    /// An idle tick in the WAL ends the batch before it and is read alone as an event-time
    /// floor, counted as one item; a re-read from the start gives the same batches.
    #[test]
    fn an_idle_tick_is_read_as_a_floor_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 24).unwrap();
        let writer = Writer::start(log.clone());
        let message = |s: &str| WalEntry {
            topic: "t".into(),
            arrival_ms: 0,
            payload: format!(r#"{{"sensor": "{s}", "value": 1}}"#).into_bytes(),
        };
        let tick =
            WalEntry { topic: IDLE_TICK.into(), arrival_ms: 0, payload: 2500i64.to_be_bytes().to_vec() };
        let entries = [message("a"), message("b"), tick, message("c")];
        log.wal_append(0, &entries.map(|e| (e, None))).unwrap();
        let wal = Wal::open(&log, &writer, 0, 1000).unwrap();
        let mut reader = MqttReader::new("m", &spec(PayloadFormat::Json), Some(wal));
        let reads = |reader: &mut MqttReader| {
            let mut out = Vec::new();
            while reader.position < 4 {
                let b = reader.next_batch(100).unwrap().unwrap();
                out.push((b.len(), b.event_time_floor(), crate::actors::source::items(&b)));
            }
            out
        };
        let first = reads(&mut reader);
        assert_eq!(first, [(2, None, 2), (0, Some(2500), 1), (1, None, 1)]);
        reader.seek(&0u64.to_be_bytes()).unwrap();
        assert_eq!(reads(&mut reader), first);
        reader.seek(&2u64.to_be_bytes()).unwrap();
        assert_eq!(reader.skip(5).unwrap(), 1, "the tick alone, as one item");
    }

    #[test]
    fn idle_ticks_follow_the_largest_event_time_with_the_clock() {
        let mut idle = Idle { timeout_ms: 100, field: "ts".into(), seen: None, last_activity_ms: 0 };
        assert!(idle.tick(1_000).is_none(), "no event time seen yet");
        idle.message(br#"{"ts": 500}"#, 1_000);
        idle.message(br#"{"ts": 400}"#, 1_050);
        assert!(idle.tick(1_100).is_none(), "a message 50 ms ago");
        let tick = idle.tick(1_150).unwrap();
        assert_eq!(idle_floor(&tick), Some(600), "500 + the 100 ms since the latest message");
        assert!(idle.tick(1_200).is_none(), "a tick 50 ms ago");
        assert_eq!(idle.tick(1_250).and_then(|t| idle_floor(&t)), Some(700));
    }

    #[test]
    fn json_payloads_fill_the_schema_and_add_the_topic() {
        let (rows, bad) =
            read(PayloadFormat::Json, &[r#"{"sensor": "a", "value": 1}"#, "{", r#"{"value": 2}"#]);
        assert_eq!(rows, [vec![Value::Str("a".into()), Value::Float(1.0), Value::Str("t/0".into())]]);
        assert_eq!(bad, 2);
    }
}
