//! The actix shells around the protocol core: each turns messages into `handle_*` calls on
//! its core, drains the core's actions and carries them out (send, write, commit). Protocol
//! decisions live in `crate::protocol`, never here.
//!
//! - [`source::SourceActor`]: one source subtask (a [`crate::connectors::SourceReader`]).
//! - [`task::TaskActor`]: one transform or sink subtask (an operator or a sink writer).
//! - [`coordinator::CoordinatorActor`]: the checkpoint coordinator, its timers and the end of
//!   the run.
//!
//! Data moves in batches on channels with sequence numbers. Flow control is by credit: a
//! sender may have at most [`CREDIT`] sequenced items in flight on a channel; the receiver
//! returns a credit when it has processed one, and withholds credits while its own outputs
//! are congested, so a slow sink slows its sources instead of filling memory.

pub mod coordinator;
pub mod shared;
pub mod source;
pub mod task;

pub use shared::{Counters, Failure, FailureReason, Fatal, Guarded, Watch, panic_message};

use std::collections::VecDeque;

use crate::sync::Arc;

use actix::prelude::*;

use crate::batch::{Batch, Column};
use crate::pipeline::faults::FaultKind;
use crate::protocol::buffer::{BufferQueue, Buffered, ReplayGap};
use crate::protocol::{CheckpointId, ParticipantId, Seq};

/// Sequenced items a sender may have in flight on one channel.
pub const CREDIT: u32 = 8;

/// What a sequenced item carries: records, or the end of the sender's input. Records are
/// shared (`Arc`) between the receiver and the sender's buffer queue, never copied.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Records.
    Data(Arc<Batch>),
    /// The sender will send no more records (it may still send barriers).
    End,
}

/// An item on a channel.
#[derive(Debug)]
pub enum Item {
    /// A sequenced item.
    Batch {
        /// Its sequence number on the channel.
        seq: Seq,
        /// What it carries.
        payload: Payload,
    },
    /// A checkpoint barrier.
    Barrier(CheckpointId),
}

/// Upstream to downstream: an item on input `input` of the receiver.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The receiver's input index.
    pub input: usize,
    /// The receiver's incarnation the sender knows of: a restarted receiver drops what was
    /// sent to its previous incarnation (the replay sends it again, in order).
    pub incarnation: u32,
    /// The item.
    pub item: Item,
}

/// Restarted receiver to upstream: send output channel `output` again from just after
/// sequence number `from_seq` (the receiver restored checkpoint `restored`), then go on live,
/// tagging everything with `incarnation`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resume {
    /// The sender's output channel.
    pub output: usize,
    /// The receiver's restored position on that channel.
    pub from_seq: Seq,
    /// The checkpoint the receiver restored (0: none).
    pub restored: CheckpointId,
    /// The receiver's new incarnation.
    pub incarnation: u32,
}

/// Downstream to upstream: `n` more sequenced items may be sent on output channel `output`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Credit {
    /// The sender's output channel index.
    pub output: usize,
    /// How many.
    pub n: u32,
}

/// Coordinator to every participant: `c` is complete.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Complete(pub CheckpointId);

/// Coordinator to every participant: `c` is aborted.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Abort(pub CheckpointId);

/// How a node's output is spread over the subtasks of one downstream node.
#[derive(Clone, Debug)]
pub enum Partition {
    /// Every batch to the one channel of the group.
    Forward,
    /// Records by a hash of this field, the same key always to the same channel.
    Hash(String),
    /// Whole batches in turn to each channel.
    RoundRobin,
}

/// One output channel of a subtask.
pub struct OutChannel {
    to: Recipient<Deliver>,
    /// Input index at the receiver.
    input: usize,
    seq: Seq,
    credit: u32,
    queue: VecDeque<Item>,
    /// The receiver's incarnation.
    incarnation: u32,
    /// What was sent since the latest completed checkpoint (transforms; sources re-read).
    buffer: Option<BufferQueue<Payload>>,
    /// A source re-reads for this channel: live items are not queued (the re-read produces
    /// them in order).
    pub(crate) replaying: bool,
}

impl OutChannel {
    /// A channel to `to`, arriving there as input `input`, whose last sequence number was
    /// `seq` in the snapshot of `restored` (or 0 and none). With `buffered`, it keeps a
    /// buffer queue for replays.
    pub fn new(
        to: Recipient<Deliver>,
        input: usize,
        seq: Seq,
        restored: CheckpointId,
        buffered: bool,
    ) -> OutChannel {
        OutChannel {
            to,
            input,
            seq,
            credit: CREDIT,
            queue: VecDeque::new(),
            incarnation: 0,
            buffer: buffered.then(|| BufferQueue::new(restored, seq)),
            replaying: false,
        }
    }

    fn push(&mut self, item: Item) {
        if let Some(buffer) = &mut self.buffer {
            match &item {
                Item::Batch { seq, payload } => buffer.push_batch(*seq, payload.clone()),
                Item::Barrier(c) => buffer.push_barrier(*c),
            }
        }
        if self.replaying {
            return;
        }
        self.queue.push_back(item);
        self.flush();
    }

    /// Queue an item produced by a re-read replay (bypasses `replaying`).
    pub(crate) fn push_replayed(&mut self, item: Item) {
        self.queue.push_back(item);
        self.flush();
    }

    /// Last sequence number sent.
    pub(crate) fn seq(&self) -> Seq {
        self.seq
    }

    /// Items queued, not yet sent.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The receiver restarted: forget what is in flight to its previous incarnation.
    pub(crate) fn reset_for(&mut self, incarnation: u32) {
        self.incarnation = incarnation;
        self.credit = CREDIT;
        self.queue.clear();
    }

    fn flush(&mut self) {
        while let Some(front) = self.queue.front() {
            let needs_credit = matches!(front, Item::Batch { .. });
            if needs_credit && self.credit == 0 {
                break;
            }
            if needs_credit {
                self.credit -= 1;
            }
            let item = self.queue.pop_front().expect("front exists");
            self.to.do_send(Deliver { input: self.input, incarnation: self.incarnation, item });
        }
    }
}

/// A group of output channels to the subtasks of one downstream node.
#[derive(Clone)]
pub struct OutGroup {
    /// How records are spread.
    pub partition: Partition,
    /// Channel indexes into [`Outputs::channels`], by downstream subtask.
    pub channels: Vec<usize>,
    next: usize,
}

impl OutGroup {
    /// A group over `channels`.
    pub fn new(partition: Partition, channels: Vec<usize>) -> OutGroup {
        OutGroup { partition, channels, next: 0 }
    }
}

/// All outputs of a subtask.
#[derive(Default)]
pub struct Outputs {
    /// The channels, in output index order.
    pub channels: Vec<OutChannel>,
    /// One group per downstream node.
    pub groups: Vec<OutGroup>,
    /// Bytes the buffer queues may hold before they give up until the next checkpoint.
    pub budget: usize,
    /// Bytes the buffer queues hold (approximately).
    buffered: usize,
    /// The buffer queues gave up until the next barrier.
    overflowed: bool,
    /// For messages.
    pub name: String,
}

/// Above this many queued items on any output channel, a subtask stops granting credits.
pub(crate) const CONGESTED: usize = 2;

impl Outputs {
    /// Outputs over `channels` in `groups`; buffer queues (if the channels keep them) may
    /// hold `budget` bytes.
    pub fn new(channels: Vec<OutChannel>, groups: Vec<OutGroup>, budget: usize, name: String) -> Outputs {
        Outputs { channels, groups, budget, buffered: 0, overflowed: false, name }
    }

    /// Last sequence number sent per channel, for a snapshot.
    pub fn seqs(&self) -> Vec<Seq> {
        self.channels.iter().map(|c| c.seq).collect()
    }

    /// Whether a channel has more queued than it may send (or is being replayed): upstream
    /// should wait.
    pub fn congested(&self) -> bool {
        self.channels.iter().any(|c| c.queue.len() > CONGESTED || c.replaying)
    }

    /// A credit arrived for channel `output`.
    pub fn on_credit(&mut self, credit: Credit) {
        let channel = &mut self.channels[credit.output];
        channel.credit += credit.n;
        channel.flush();
    }

    fn send_seq(&mut self, channel: usize, payload: Payload) {
        let c = &mut self.channels[channel];
        c.seq += 1;
        let seq = c.seq;
        c.push(Item::Batch { seq, payload });
    }

    /// Send a batch downstream, spread as each group says. Returns the records sent.
    pub fn send(&mut self, batch: Batch) -> usize {
        let records = batch.len();
        if records == 0 {
            return 0;
        }
        let count = self.budget > 0 && !self.overflowed;
        let (channels, buffered) = (&mut self.channels, &mut self.buffered);
        route(&mut self.groups, batch, |ch, part| {
            if count {
                *buffered += part.bytes();
            }
            let c = &mut channels[ch];
            c.seq += 1;
            let seq = c.seq;
            c.push(Item::Batch { seq, payload: Payload::Data(Arc::new(part)) });
        });
        if self.budget > 0 && self.buffered > self.budget {
            self.overflow();
        }
        records
    }

    fn overflow(&mut self) {
        tracing::warn!(
            "{}: buffer queues over {} MiB: until the next checkpoint completes, a failure downstream is healed by a global rollback",
            self.name,
            self.budget >> 20
        );
        for channel in &mut self.channels {
            if let Some(buffer) = &mut channel.buffer {
                buffer.overflow();
            }
        }
        self.buffered = 0;
        self.overflowed = true;
    }

    /// Checkpoint `c` completed: buffer queues drop what no replay can need any more.
    pub fn complete(&mut self, c: CheckpointId) {
        self.buffered = 0;
        for channel in &mut self.channels {
            if let Some(buffer) = &mut channel.buffer {
                buffer.complete(c);
                self.buffered += buffer_bytes(buffer);
            }
        }
    }

    /// The receiver of channel `resume.output` restarted: queue the buffer queue's entries
    /// after its position, then go on live.
    pub fn resume(&mut self, resume: Resume) -> Result<(), ReplayGap> {
        let channel = &mut self.channels[resume.output];
        let Some(buffer) = &mut channel.buffer else {
            return Err(ReplayGap { base: CheckpointId(u64::MAX), restored: resume.restored });
        };
        let items: VecDeque<Item> = buffer
            .replay(resume.from_seq, resume.restored)?
            .map(|e| match e {
                Buffered::Batch { seq, item } => Item::Batch { seq: *seq, payload: item.clone() },
                Buffered::Barrier(c) => Item::Barrier(*c),
            })
            .collect();
        channel.reset_for(resume.incarnation);
        channel.queue = items;
        channel.flush();
        Ok(())
    }

    /// This subtask restarted from its snapshot of `c` (0: none) with these output sequence
    /// numbers: what it sent after that is produced again, identically. Fails with the first
    /// channel whose receiver still needs items this sender will not produce again.
    pub fn restart_from(&mut self, c: CheckpointId, seqs: &[Seq]) -> Result<(), (usize, ReplayGap)> {
        self.buffered = 0;
        let mut gap = None;
        for (ch, channel) in self.channels.iter_mut().enumerate() {
            channel.seq = seqs.get(ch).copied().unwrap_or(0);
            channel.queue.clear();
            if let Some(buffer) = &mut channel.buffer {
                if let Err(e) = buffer.restart_from(c, channel.seq) {
                    gap.get_or_insert((ch, e));
                }
                self.buffered += buffer_bytes(buffer);
            }
        }
        gap.map_or(Ok(()), Err)
    }

    /// Whether a channel is being replayed by re-reading.
    pub fn replaying(&self) -> bool {
        self.channels.iter().any(|c| c.replaying)
    }

    /// Send `Barrier(c)` on every channel, behind everything sent before.
    pub fn send_barrier(&mut self, c: CheckpointId) {
        self.overflowed = false;
        for channel in &mut self.channels {
            channel.push(Item::Barrier(c));
        }
    }

    /// Tell every channel that no more records will come.
    pub fn send_end(&mut self) {
        for ch in 0..self.channels.len() {
            self.send_seq(ch, Payload::End);
        }
    }
}

fn buffer_bytes(buffer: &BufferQueue<Payload>) -> usize {
    buffer
        .entries()
        .map(|e| match e {
            Buffered::Batch { item: Payload::Data(b), .. } => b.bytes(),
            _ => 0,
        })
        .sum()
}

/// Spread `batch` over the groups' channels as each group says, calling `emit(channel, part)`
/// for every non-empty part, in channel order within each group.
pub fn route(groups: &mut [OutGroup], batch: Batch, mut emit: impl FnMut(usize, Batch)) {
    let n = groups.len();
    let mut batch = Some(batch);
    for (g, group) in groups.iter_mut().enumerate() {
        let last = g + 1 == n;
        let this = if last { batch.take().expect("sent once") } else { batch.clone().expect("kept") };
        match &group.partition {
            Partition::Forward => emit(group.channels[0], this),
            Partition::RoundRobin => {
                let ch = group.channels[group.next % group.channels.len()];
                group.next += 1;
                emit(ch, this);
            }
            Partition::Hash(field) => {
                let parts = split_by_key(&this, field, group.channels.len());
                for (part, &ch) in parts.into_iter().zip(&group.channels) {
                    if let Some(part) = part {
                        emit(ch, part);
                    }
                }
            }
        }
    }
}

/// The channel a key goes to: a fixed hash (the same in every run and on every machine).
pub fn key_channel(key: &[u8], channels: usize) -> usize {
    // FNV-1a: stable across runs and versions, unlike std's randomly seeded hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % channels as u64) as usize
}

fn split_by_key(batch: &Batch, field: &str, parts: usize) -> Vec<Option<Batch>> {
    if parts == 1 {
        return vec![Some(batch.clone())];
    }
    let column = batch.column(field).expect("the config layer checked the key field");
    let targets: Vec<usize> = (0..batch.len())
        .map(|i| match column {
            Column::Str(c) => key_channel(c.get(i).as_bytes(), parts),
            Column::Int(c) => key_channel(&c[i].to_le_bytes(), parts),
            Column::Bool(c) => key_channel(&[u8::from(c[i])], parts),
            Column::Float(c) => key_channel(&c[i].to_bits().to_le_bytes(), parts),
        })
        .collect();
    let mut out: Vec<Batch> =
        (0..parts).map(|_| Batch::with_capacity(batch.schema().clone(), batch.len() / parts + 1)).collect();
    for (i, &t) in targets.iter().enumerate() {
        out[t].push_from(batch, i);
    }
    out.into_iter().map(|b| if b.is_empty() { None } else { Some(b) }).collect()
}

/// Where a subtask's input channel `i` comes from, for returning credits.
#[derive(Clone)]
pub struct Upstream {
    /// The sender.
    pub to: Recipient<Credit>,
    /// The sender, for replay requests.
    pub resume: Recipient<Resume>,
    /// Its output channel index.
    pub output: usize,
}

impl SubtaskContext {
    /// Panic if an injected fault is due `processed` records in (called inside the region
    /// where panics are caught, so it exercises the same path as a bug in operator code).
    pub fn inject(&self, processed: u64) {
        self.inject_at(FaultKind::Panic, processed);
    }

    /// Panic if an injected fault of `kind` is due at `count` (records, snapshots, commits).
    pub fn inject_at(&self, kind: FaultKind, count: u64) {
        for fault in &self.faults {
            if fault.kind == kind && fault.fire(count) {
                panic!("injected fault {fault}");
            }
        }
    }

    /// Panic if an injected fault of `kind` is due at this event; such faults count their
    /// events themselves (credits received).
    pub fn inject_on(&self, kind: FaultKind) {
        for fault in &self.faults {
            if fault.kind == kind && fault.tick() {
                panic!("injected fault {fault}");
            }
        }
    }

    /// Whether an injected log write error is due at the `count`-th write of this subtask.
    pub fn write_fails(&self, count: u64) -> bool {
        self.faults.iter().any(|f| f.kind == FaultKind::WriteError && f.fire(count))
    }

    /// Report a caught panic to be healed by a global rollback (sources; or when the
    /// supervisor escalates).
    pub fn panicked(&self, message: String) {
        tracing::error!("{}: panicked: {message}", self.name);
        self.escalate(FailureReason::Panic, message);
    }

    /// Stop the attempt: the runner heals `reason` with a global rollback, within the restart
    /// intensity.
    pub fn escalate(&self, reason: FailureReason, message: String) {
        self.fatal.stop(Failure::Healable {
            node: self.node.clone(),
            subtask: self.subtask,
            reason,
            message,
            at: std::time::Instant::now(),
        });
    }
}

/// What every subtask actor knows about its place in the run.
#[derive(Clone)]
pub struct SubtaskContext {
    /// Its node's name and subtask index, for messages (`node` or `node/3`).
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its subtask index.
    pub subtask: usize,
    /// Faults injected into this subtask (usually none).
    pub faults: Vec<Arc<crate::pipeline::faults::Injection>>,
    /// Its participant id at the coordinator.
    pub participant: ParticipantId,
    /// The log writer.
    pub writer: crate::log::Writer,
    /// The log, for reads.
    pub log: crate::log::Log,
    /// Record counters.
    pub counters: Arc<Counters>,
    /// Where fatal errors go.
    pub fatal: Arc<Fatal>,
    /// Restart decisions and the restart record.
    pub supervisor: Arc<crate::pipeline::supervise::Supervisor>,
}
