//! The MQTT sink: committed output leaves through an **outbox** in the pipeline's LMDB
//! ([`crate::log::outbox`]), the source of truth for what the broker still has to get.
//!
//! - Pre-commit is the sink's staging, as for every sink: output since the last barrier,
//!   staged at the barrier under its checkpoint.
//! - Commit (on the log's writer thread, [`Outbox::commit_ops`]) moves the staged output of
//!   the checkpoints it covers into the outbox, in the same transaction as the commit record:
//!   output is releasable exactly when it is committed.
//! - A publisher thread ([`Publisher`]) sends releasable messages in order, QoS 1, at most
//!   `max_inflight` unacknowledged; it deletes them only once the broker acknowledged them
//!   (PUBACK), and after any reconnect sends again from the oldest unacknowledged one. It
//!   makes a new client for every connection, so nothing of a lost connection's state
//!   (rumqttc's, which drops unacknowledged publishes on a reconnect) is trusted.
//! - Every message carries `pipeline`, `epoch`, `checkpoint` and `seq` as MQTT 5 user
//!   properties: (pipeline, checkpoint, seq) names one message for good (a message sent
//!   again carries the same values), so a consumer that de-duplicates by them sees each row
//!   once. Without that, the boundary with the consumer is at-least-once (as MQTT QoS 1 is).
//! - Store-and-forward: while the broker is away the outbox grows up to `max_outbox_mb`;
//!   then `on_full` says what happens ([`OnFull`]); every dropped message is counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::mqtt::Waker;
use crate::log::outbox::{ChunkInfo, Delivered, OutboxChunk};
use crate::log::{Log, WriteOp, Writer};
use crate::pipeline::spec::{MqttSinkSpec, OnFull};
use crate::protocol::{CheckpointId, ParticipantId};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Bytes an MQTT 5 PUBLISH adds to its payload besides the topic, at most: fixed header,
/// packet id, property lengths and the four user properties' names and values.
pub const PUBLISH_OVERHEAD: usize = 160;

/// The pipeline's backpressure: the sources stop reading while an outbox with `on_full =
/// "backpressure"` is over its limit, and go on when it drains.
#[derive(Default)]
pub struct Hold {
    full: std::sync::Mutex<BTreeSet<ParticipantId>>,
    wakers: std::sync::Mutex<HashMap<ParticipantId, Waker>>,
}

impl Hold {
    /// Whether the sources must wait.
    pub fn held(&self) -> bool {
        !self.full.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Have source `p`'s `waker` called when the hold is lifted (replacing an earlier one).
    pub fn set_waker(&self, p: ParticipantId, waker: Waker) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).insert(p, waker);
    }

    fn set(&self, p: ParticipantId, full: bool) {
        let lifted = {
            let mut set = self.full.lock().unwrap_or_else(|e| e.into_inner());
            let changed = if full { set.insert(p) } else { set.remove(&p) };
            changed && set.is_empty()
        };
        if lifted {
            let wakers: Vec<Waker> =
                self.wakers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            wakers.iter().for_each(|w| w());
        }
    }
}

/// What the publisher did, for the agent's metrics.
#[derive(Debug, Default)]
pub struct SinkStatus {
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Connections lost (or given up for want of progress).
    pub disconnects: AtomicU64,
    /// Messages sent (again after a reconnect included).
    pub published: AtomicU64,
    /// Messages the broker acknowledged.
    pub acknowledged: AtomicU64,
    /// Messages sent again after a reconnect.
    pub resent: AtomicU64,
    /// Messages dropped by `on_full` (never sent).
    pub dropped: AtomicU64,
    /// Acknowledgements with an error reason (the message is sent again later).
    pub refused: AtomicU64,
}

/// The outbox of one MQTT sink: what its commits put there and its publisher takes out.
#[cfg_attr(loom, allow(dead_code))] // the publisher is not built under loom
pub struct Outbox {
    log: Log,
    writer: Writer,
    participant: ParticipantId,
    /// The node's name, for messages.
    pub name: String,
    limit: u64,
    on_full: OnFull,
    max_message: usize,
    state: Mutex<OutboxState>,
    /// The publisher's wake-up (a commit made messages releasable).
    notify: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    hold: std::sync::Arc<Hold>,
    /// What it did.
    pub status: SinkStatus,
}

struct OutboxState {
    /// The chunks it holds (put by commits, possibly not durable yet), by checkpoint.
    chunks: BTreeMap<u64, ChunkInfo>,
    /// Everything before this is delivered (or dropped).
    delivered: Delivered,
    /// Bytes of messages in `chunks`.
    bytes: u64,
}

impl Outbox {
    /// The outbox of sink participant `p` (node `name`) in `log`, as the log holds it.
    pub fn open(
        log: &Log,
        writer: &Writer,
        p: ParticipantId,
        name: &str,
        spec: &MqttSinkSpec,
        hold: std::sync::Arc<Hold>,
    ) -> Result<Arc<Outbox>, String> {
        let delivered = log.outbox_delivered(p).map_err(|e| format!("outbox: {e}"))?;
        let index = log.outbox_index(p).map_err(|e| format!("outbox: {e}"))?;
        let bytes = index.iter().map(|c| c.bytes).sum();
        let outbox = Outbox {
            log: log.clone(),
            writer: writer.clone(),
            participant: p,
            name: name.to_owned(),
            limit: spec.max_outbox_bytes,
            on_full: spec.on_full,
            max_message: (spec.max_packet_size as usize).saturating_sub(
                PUBLISH_OVERHEAD
                    + spec.topic.len()
                    + if spec.stream.is_empty() { spec.client_id.len() } else { spec.stream.len() + 21 },
            ),
            state: Mutex::new(OutboxState {
                chunks: index.into_iter().map(|c| (c.checkpoint, c)).collect(),
                delivered,
                bytes,
            }),
            notify: std::sync::Mutex::new(None),
            hold,
            status: SinkStatus::default(),
        };
        outbox.update_hold(bytes);
        Ok(Arc::new(outbox))
    }

    fn update_hold(&self, bytes: u64) {
        if self.on_full == OnFull::Backpressure {
            self.hold.set(self.participant, bytes > self.limit);
        }
    }

    /// Bytes of messages waiting.
    pub fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// Chunks (commits with output) waiting.
    pub fn chunks(&self) -> usize {
        lock(&self.state).chunks.len()
    }

    /// How long the oldest waiting output has waited, in milliseconds (0: none waits).
    pub fn oldest_age_ms(&self) -> u64 {
        let state = lock(&self.state);
        state.chunks.values().next().map_or(0, |c| now_ms().saturating_sub(c.committed_ms))
    }

    /// The writes that put the staged output `staged` (checkpoint, its epoch stamp, lines) of
    /// a commit into the outbox: run by the commit, on the log's writer thread,
    /// and applied with its commit record. At the limit, `on_full` decides: backpressure
    /// puts it (and the sources wait), `drop_oldest` also writes the delivery position past
    /// the oldest chunks, `reject_new` leaves it out. A message larger than
    /// `max_packet_size` allows is an error: the broker would refuse it.
    pub fn commit_ops(&self, staged: Vec<(CheckpointId, u64, Vec<u8>)>) -> Result<Vec<WriteOp>, String> {
        let mut ops = Vec::new();
        let mut state = lock(&self.state);
        let committed_ms = now_ms();
        for (c, epoch, messages) in staged {
            if messages.is_empty() {
                continue;
            }
            let chunk = OutboxChunk { epoch, committed_ms, messages };
            let ranges = chunk.ranges();
            if let Some(r) = ranges.iter().find(|r| r.len() > self.max_message) {
                return Err(format!(
                    "a row of {} bytes is too large for max_packet_size (at most {} bytes of payload with this topic)",
                    r.len(),
                    self.max_message
                ));
            }
            let size = chunk.messages.len() as u64;
            if state.bytes + size > self.limit {
                match self.on_full {
                    OnFull::Backpressure => {}
                    OnFull::RejectNew => {
                        self.dropped(&format!("committed checkpoint {c}"), ranges.len() as u64);
                        continue;
                    }
                    OnFull::DropOldest => {
                        let mut to = None;
                        let mut dropped = 0u64;
                        while state.bytes + size > self.limit {
                            let Some((&oldest, &info)) = state.chunks.iter().next() else { break };
                            state.chunks.remove(&oldest);
                            state.bytes -= info.bytes;
                            let sent =
                                if state.delivered.checkpoint == oldest { state.delivered.index } else { 0 };
                            dropped += u64::from(info.messages.saturating_sub(sent));
                            to = Some(Delivered { checkpoint: oldest + 1, index: 0 });
                        }
                        if let Some(to) = to {
                            state.delivered = state.delivered.max(to);
                            ops.push(WriteOp::OutboxDeliver { participant: self.participant, to });
                            self.dropped(
                                &format!("the oldest output, through checkpoint {}", to.checkpoint - 1),
                                dropped,
                            );
                        }
                    }
                }
            }
            let info =
                ChunkInfo { checkpoint: c.0, bytes: size, messages: ranges.len() as u32, committed_ms };
            // A repair commit puts again what a commit whose record failed had put.
            if let Some(before) = state.chunks.insert(c.0, info) {
                state.bytes -= before.bytes;
            }
            state.bytes += size;
            ops.push(WriteOp::OutboxPut { participant: self.participant, checkpoint: c, chunk });
        }
        self.update_hold(state.bytes);
        Ok(ops)
    }

    fn dropped(&self, what: &str, messages: u64) {
        self.status.dropped.fetch_add(messages, Ordering::Relaxed);
        tracing::warn!(
            "{}: the outbox is full ({} MiB): {messages} messages of {what} dropped (on_full)",
            self.name,
            self.limit >> 20
        );
    }

    /// Wake the publisher: a commit is durable.
    pub fn notify(&self) {
        if let Some(tx) = self.notify.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.try_send(());
        }
    }

    /// Where delivery stands.
    #[cfg_attr(loom, allow(dead_code))]
    fn delivered(&self) -> Delivered {
        lock(&self.state).delivered
    }

    /// Record (durably, through the writer) that everything before `to` is delivered; then
    /// `done` with whether it was written.
    #[cfg_attr(loom, allow(dead_code))]
    fn deliver(self: &Arc<Self>, to: Delivered, done: Box<dyn FnOnce(bool) + Send>) {
        let op = WriteOp::OutboxDeliver { participant: self.participant, to };
        let outbox = self.clone();
        self.writer.submit(
            vec![op],
            Box::new(move |r| match r {
                Ok(()) => {
                    let bytes = {
                        let mut state = lock(&outbox.state);
                        state.delivered = state.delivered.max(to);
                        let kept = state.chunks.split_off(&to.checkpoint);
                        let gone: u64 = state.chunks.values().map(|c| c.bytes).sum();
                        state.chunks = kept;
                        state.bytes -= gone;
                        state.bytes
                    };
                    outbox.update_hold(bytes);
                    done(true);
                }
                Err(e) => {
                    tracing::warn!("{}: recording delivered output: {e}", outbox.name);
                    done(false);
                }
            }),
        );
    }
}

#[cfg(not(loom))]
pub use publisher::Publisher;

/// Under loom (`--cfg loom`, which compiles tokio's networking out) there is no client: no
/// loom test runs a pipeline.
#[cfg(loom)]
pub struct Publisher;

#[cfg(loom)]
impl Publisher {
    /// Nothing: see above.
    pub fn start(_: &MqttSinkSpec, _: String, _: String, _: Arc<Outbox>) -> Publisher {
        Publisher
    }
}

#[cfg(not(loom))]
mod publisher {
    use std::collections::VecDeque;
    use std::ops::Range;
    use std::sync::atomic::AtomicBool as StdAtomicBool;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use rumqttc::Outgoing;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, PublishProperties};
    use rumqttc::v5::{Client, Connection, Event, MqttOptions, RecvTimeoutError};

    use super::{Arc, Delivered, MqttSinkSpec, Ordering, Outbox};

    /// The publisher thread of one MQTT sink; stopped when dropped (after a short wait for
    /// the acknowledgements of what is in flight: what is not acknowledged stays in the
    /// outbox for the next start).
    pub struct Publisher {
        stop: std::sync::Arc<StdAtomicBool>,
        outbox: Arc<Outbox>,
        thread: Option<JoinHandle<()>>,
    }

    impl Publisher {
        /// Connect as `client_id` and keep delivering what `outbox` releases, each message
        /// with `stream` as its `pipeline` property.
        pub fn start(
            spec: &MqttSinkSpec,
            client_id: String,
            stream: String,
            outbox: Arc<Outbox>,
        ) -> Publisher {
            let stop = std::sync::Arc::new(StdAtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            *outbox.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            let (spec, flag, ob) = (spec.clone(), stop.clone(), outbox.clone());
            let thread = std::thread::Builder::new()
                .name(format!("mqtt {client_id}"))
                .spawn(move || publish(&spec, (&client_id, &stream), &ob, &flag, &rx))
                .expect("spawning the MQTT publisher thread");
            Publisher { stop, outbox, thread: Some(thread) }
        }
    }

    impl Drop for Publisher {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.outbox.notify();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// A chunk being sent.
    struct Loaded {
        checkpoint: u64,
        epoch: u64,
        data: Bytes,
        ranges: Vec<Range<usize>>,
    }

    /// A message sent and not yet acknowledged.
    struct InFlight {
        at: Delivered,
        pkid: Option<u16>,
        acked: bool,
    }

    /// Why a connection ended.
    enum End {
        Stop,
        Lost,
    }

    fn publish(
        spec: &MqttSinkSpec,
        (client_id, stream): (&str, &str),
        outbox: &Arc<Outbox>,
        stop: &StdAtomicBool,
        notify: &std::sync::mpsc::Receiver<()>,
    ) {
        let mut backoff = Duration::from_millis(100);
        // The furthest position sent so far: what is sent again below it is a resend.
        let mut sent_high = outbox.delivered();
        loop {
            let mut session = Session::new(spec, (client_id, stream), outbox, &mut sent_high);
            let end = session.run(stop, notify);
            let connected = session.connected;
            drop(session);
            if outbox.status.connected.swap(false, Ordering::Relaxed) {
                outbox.status.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            if let End::Stop = end {
                return;
            }
            if connected {
                backoff = Duration::from_millis(100);
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = notify.recv_timeout(until - Instant::now());
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection: a new client, sending from the oldest unacknowledged message.
    struct Session<'a> {
        spec: &'a MqttSinkSpec,
        name: &'a str,
        stream: &'a str,
        outbox: &'a Arc<Outbox>,
        client: Client,
        connection: Connection,
        connected: bool,
        cursor: Delivered,
        chunk: Option<Loaded>,
        inflight: VecDeque<InFlight>,
        /// In flight without their packet id yet (rumqttc names it when it sends).
        unnamed: usize,
        sent_high: &'a mut Delivered,
        /// The delivery position last written (or being written).
        recorded: Delivered,
        recording: std::sync::Arc<StdAtomicBool>,
        last_progress: Instant,
    }

    impl<'a> Session<'a> {
        fn new(
            spec: &'a MqttSinkSpec,
            (client_id, stream): (&'a str, &'a str),
            outbox: &'a Arc<Outbox>,
            sent_high: &'a mut Delivered,
        ) -> Session<'a> {
            let mut options = MqttOptions::new(client_id, spec.host.clone(), spec.port);
            options
                .set_clean_start(true)
                .set_keep_alive(Duration::from_secs(spec.keep_alive_s))
                .set_max_packet_size(Some(spec.max_packet_size))
                .set_outgoing_inflight_upper_limit(spec.max_inflight);
            let (client, connection) = Client::new(options, usize::from(spec.max_inflight) + 16);
            let cursor = outbox.delivered();
            Session {
                spec,
                name: &outbox.name,
                stream,
                outbox,
                client,
                connection,
                connected: false,
                cursor,
                chunk: None,
                inflight: VecDeque::new(),
                unnamed: 0,
                sent_high,
                recorded: cursor,
                recording: std::sync::Arc::new(StdAtomicBool::new(false)),
                last_progress: Instant::now(),
            }
        }

        fn run(&mut self, stop: &StdAtomicBool, notify: &std::sync::mpsc::Receiver<()>) -> End {
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    self.finish();
                    return End::Stop;
                }
                if self.connected
                    && let Err(e) = self.send()
                {
                    tracing::error!("{}: {e}", self.name);
                    return End::Lost;
                }
                let idle = self.connected && self.inflight.is_empty();
                if idle {
                    // Nothing to send or to wait for: until a commit, or a keep-alive's due.
                    let _ = notify.recv_timeout(Duration::from_millis(250));
                }
                let wait = if idle { Duration::from_millis(1) } else { Duration::from_millis(20) };
                match self.poll(wait) {
                    Ok(()) => {}
                    Err(()) => return End::Lost,
                }
                self.record();
                if !self.inflight.is_empty()
                    && self.last_progress.elapsed() > Duration::from_millis(self.spec.progress_timeout_ms)
                {
                    tracing::warn!(
                        "{}: {}:{} acknowledged nothing for {} ms with {} messages in flight; reconnecting",
                        self.name,
                        self.spec.host,
                        self.spec.port,
                        self.spec.progress_timeout_ms,
                        self.inflight.len()
                    );
                    return End::Lost;
                }
            }
        }

        /// Send what the outbox releases, in order, while the in-flight window and the
        /// client's channel have room.
        fn send(&mut self) -> Result<(), String> {
            while self.inflight.len() < usize::from(self.spec.max_inflight) {
                if !self.advance()? {
                    return Ok(());
                }
                let chunk = self.chunk.as_ref().expect("advance loaded it");
                let index = self.cursor.index as usize;
                let payload = chunk.data.slice(chunk.ranges[index].clone());
                let properties = PublishProperties {
                    user_properties: vec![
                        ("pipeline".into(), self.stream.to_owned()),
                        ("epoch".into(), chunk.epoch.to_string()),
                        ("checkpoint".into(), chunk.checkpoint.to_string()),
                        ("seq".into(), index.to_string()),
                    ],
                    ..Default::default()
                };
                if self
                    .client
                    .try_publish_with_properties(
                        self.spec.topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        payload,
                        properties,
                    )
                    .is_err()
                {
                    return Ok(()); // the channel is full: the event loop empties it
                }
                if self.inflight.is_empty() {
                    self.last_progress = Instant::now();
                }
                let at = self.cursor;
                self.inflight.push_back(InFlight { at, pkid: None, acked: false });
                self.unnamed += 1;
                let status = &self.outbox.status;
                status.published.fetch_add(1, Ordering::Relaxed);
                if at < *self.sent_high {
                    status.resent.fetch_add(1, Ordering::Relaxed);
                } else {
                    *self.sent_high = Delivered { checkpoint: at.checkpoint, index: at.index + 1 };
                }
                self.cursor.index += 1;
            }
            Ok(())
        }

        /// Load the chunk holding the message at the cursor (moving the cursor past chunks
        /// sent whole, and past output dropped meanwhile); false when everything is sent.
        fn advance(&mut self) -> Result<bool, String> {
            loop {
                let delivered = self.outbox.delivered();
                if self.cursor < delivered {
                    self.cursor = delivered; // dropped by on_full while it waited
                }
                let fits = |c: &Loaded, at: Delivered| {
                    c.checkpoint == at.checkpoint && (at.index as usize) < c.ranges.len()
                };
                if self.chunk.as_ref().is_some_and(|c| fits(c, self.cursor)) {
                    return Ok(true);
                }
                if let Some(c) = &self.chunk
                    && c.checkpoint == self.cursor.checkpoint
                {
                    self.cursor = Delivered { checkpoint: c.checkpoint + 1, index: 0 };
                }
                let found = (self.outbox.log)
                    .outbox_chunk(self.outbox.participant, self.cursor.checkpoint)
                    .map_err(|e| e.to_string())?;
                let Some((checkpoint, chunk)) = found else {
                    self.chunk = None;
                    return Ok(false);
                };
                if checkpoint != self.cursor.checkpoint {
                    self.cursor = Delivered { checkpoint, index: 0 };
                }
                let ranges = chunk.ranges();
                self.chunk = Some(Loaded {
                    checkpoint,
                    epoch: chunk.epoch,
                    data: Bytes::from(chunk.messages),
                    ranges,
                });
                if self.chunk.as_ref().is_some_and(|c| fits(c, self.cursor)) {
                    return Ok(true);
                }
                // An empty chunk, or one wholly sent: on to the next.
                self.cursor = Delivered { checkpoint: checkpoint + 1, index: 0 };
            }
        }

        /// Drive the connection for up to `wait`: its events until none is ready.
        fn poll(&mut self, mut wait: Duration) -> Result<(), ()> {
            loop {
                match self.connection.recv_timeout(wait) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        if ack.code != ConnectReturnCode::Success {
                            tracing::warn!(
                                "{}: {}:{} refused the connection: {:?}",
                                self.name,
                                self.spec.host,
                                self.spec.port,
                                ack.code
                            );
                            return Err(());
                        }
                        tracing::info!("{}: connected to {}:{}", self.name, self.spec.host, self.spec.port);
                        self.connected = true;
                        self.outbox.status.connected.store(true, Ordering::Relaxed);
                    }
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        let first_unnamed = self.inflight.len() - self.unnamed;
                        if let Some(m) = self.inflight.get_mut(first_unnamed) {
                            m.pkid = Some(pkid);
                            self.unnamed -= 1;
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        let ok =
                            matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                        let Some(m) = self.inflight.iter_mut().find(|m| m.pkid == Some(ack.pkid) && !m.acked)
                        else {
                            continue;
                        };
                        if !ok {
                            self.outbox.status.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                "{}: the broker refused message {} of checkpoint {}: {:?}; sending again after a reconnect",
                                self.name,
                                m.at.index,
                                m.at.checkpoint,
                                ack.reason
                            );
                            return Err(());
                        }
                        m.acked = true;
                        self.last_progress = Instant::now();
                        self.outbox.status.acknowledged.fetch_add(1, Ordering::Relaxed);
                        while self.inflight.front().is_some_and(|m| m.acked) {
                            self.inflight.pop_front();
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(
                            "{}: {}:{}: {e}; {} messages in flight are sent again after a reconnect",
                            self.name,
                            self.spec.host,
                            self.spec.port,
                            self.inflight.len()
                        );
                        return Err(());
                    }
                    Err(RecvTimeoutError::Timeout) => return Ok(()),
                    Err(RecvTimeoutError::Disconnected) => return Err(()),
                }
                wait = Duration::from_millis(1);
            }
        }

        /// Everything before the first unacknowledged message (or the cursor) is delivered:
        /// record it, one write at a time.
        fn record(&mut self) {
            let to = self.inflight.front().map_or(self.cursor, |m| m.at);
            if to <= self.recorded || self.recording.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            self.recorded = to;
            self.recording.store(true, std::sync::atomic::Ordering::Release);
            let recording = self.recording.clone();
            self.outbox
                .deliver(to, Box::new(move |_| recording.store(false, std::sync::atomic::Ordering::Release)));
        }

        /// Stopping: send nothing new, wait a little for what is in flight, record it.
        fn finish(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.connected && !self.inflight.is_empty() && Instant::now() < deadline {
                if self.poll(Duration::from_millis(10)).is_err() {
                    break;
                }
            }
            let to = self.inflight.front().map_or(self.cursor, |m| m.at);
            if to > self.recorded {
                let (tx, rx) = std::sync::mpsc::channel();
                self.outbox.deliver(
                    to,
                    Box::new(move |_| {
                        let _ = tx.send(());
                    }),
                );
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
            let _ = self.client.try_disconnect();
            let _ = self.connection.recv_timeout(Duration::from_millis(100));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::pipeline::spec::{FileFormat, OutputFormat};

    fn spec(max_outbox_bytes: u64, on_full: OnFull) -> MqttSinkSpec {
        MqttSinkSpec {
            host: "127.0.0.1".into(),
            port: 1,
            topic: "t".into(),
            client_id: "c".into(),
            stream: String::new(),
            format: OutputFormat { encoding: FileFormat::JsonLines, float_precision: None },
            keep_alive_s: 10,
            max_inflight: 10,
            max_outbox_bytes,
            on_full,
            max_packet_size: 1024,
            progress_timeout_ms: 1000,
        }
    }

    /// An outbox of `limit` bytes in a fresh log; `commit` applies a commit's writes as the
    /// writer thread would (a chunk of 11 bytes: 2 messages).
    fn outbox(limit: u64, on_full: OnFull) -> (tempfile::TempDir, Log, std::sync::Arc<Hold>, Arc<Outbox>) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 24).unwrap();
        let writer = Writer::start(log.clone());
        let hold = std::sync::Arc::new(Hold::default());
        let outbox = Outbox::open(&log, &writer, 0, "out", &spec(limit, on_full), hold.clone()).unwrap();
        (dir, log, hold, outbox)
    }

    fn commit(log: &Log, outbox: &Outbox, c: u64) {
        let ops = outbox.commit_ops(vec![(CheckpointId(c), 3, b"{\"a\":1}\n{}\n".to_vec())]).unwrap();
        log.write_now(&ops).unwrap();
    }

    fn held_chunks(log: &Log) -> Vec<u64> {
        log.outbox_index(0).unwrap().iter().map(|c| c.checkpoint).collect()
    }

    #[test]
    fn a_chunk_is_split_into_its_messages() {
        let chunk = OutboxChunk { epoch: 1, committed_ms: 0, messages: b"{\"a\":1}\n{}\n".to_vec() };
        let ranges = chunk.ranges();
        assert_eq!(ranges, [0..7, 8..10]);
    }

    #[test]
    fn reject_new_drops_what_does_not_fit_and_counts_it() {
        let (_dir, log, hold, outbox) = outbox(25, OnFull::RejectNew);
        for c in 1..=3 {
            commit(&log, &outbox, c);
        }
        assert_eq!(held_chunks(&log), [1, 2]);
        assert_eq!((outbox.bytes(), outbox.status.dropped.load(Ordering::Relaxed)), (22, 2));
        assert!(!hold.held());
    }

    #[test]
    fn drop_oldest_makes_room_and_moves_delivery_past_it() {
        let (_dir, log, _hold, outbox) = outbox(25, OnFull::DropOldest);
        for c in 1..=4 {
            commit(&log, &outbox, c);
        }
        assert_eq!(held_chunks(&log), [3, 4]);
        assert_eq!(log.outbox_delivered(0).unwrap(), Delivered { checkpoint: 3, index: 0 });
        assert_eq!(outbox.status.dropped.load(Ordering::Relaxed), 4);
        // Delivery never goes back.
        log.write_now(&[WriteOp::OutboxDeliver {
            participant: 0,
            to: Delivered { checkpoint: 2, index: 1 },
        }])
        .unwrap();
        assert_eq!(log.outbox_delivered(0).unwrap(), Delivered { checkpoint: 3, index: 0 });
    }

    #[test]
    fn backpressure_holds_the_sources_until_delivery_drains_it() {
        let (_dir, log, hold, outbox) = outbox(25, OnFull::Backpressure);
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        hold.set_waker(
            7,
            std::sync::Arc::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        for c in 1..=3 {
            commit(&log, &outbox, c);
        }
        assert_eq!(held_chunks(&log), [1, 2, 3], "nothing dropped");
        assert!(hold.held());
        let (tx, rx) = std::sync::mpsc::channel();
        outbox.deliver(Delivered { checkpoint: 2, index: 0 }, Box::new(move |ok| tx.send(ok).unwrap()));
        assert!(rx.recv().unwrap());
        assert_eq!((held_chunks(&log), outbox.bytes()), (vec![2, 3], 22));
        assert!(!hold.held());
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_row_larger_than_the_packet_allows_is_an_error() {
        let (_dir, _log, _hold, outbox) = outbox(1 << 20, OnFull::Backpressure);
        let row = [vec![b'x'; 2000], b"\n".to_vec()].concat();
        let e = outbox.commit_ops(vec![(CheckpointId(1), 0, row)]).unwrap_err();
        assert!(e.contains("a row of 2000 bytes is too large for max_packet_size"), "{e}");
    }
}
