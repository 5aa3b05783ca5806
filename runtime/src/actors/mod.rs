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

pub use shared::{Counters, Failure, Fatal, panic_message};

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;

use crate::batch::{Batch, Column};
use crate::protocol::{CheckpointId, ParticipantId, Seq};

/// Sequenced items a sender may have in flight on one channel.
pub const CREDIT: u32 = 8;

/// What a sequenced item carries: records, or the end of the sender's input.
#[derive(Debug)]
pub enum Payload {
    /// Records.
    Data(Batch),
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
    /// The item.
    pub item: Item,
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
}

impl OutChannel {
    /// A channel to `to`, arriving there as input `input`, whose last sequence number was
    /// `seq` (restored from a snapshot, or 0).
    pub fn new(to: Recipient<Deliver>, input: usize, seq: Seq) -> OutChannel {
        OutChannel { to, input, seq, credit: CREDIT, queue: VecDeque::new() }
    }

    fn push(&mut self, item: Item) {
        self.queue.push_back(item);
        self.flush();
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
            self.to.do_send(Deliver { input: self.input, item });
        }
    }
}

/// A group of output channels to the subtasks of one downstream node.
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
}

/// Above this many queued items on any output channel, a subtask stops granting credits.
const CONGESTED: usize = 2;

impl Outputs {
    /// Last sequence number sent per channel, for a snapshot.
    pub fn seqs(&self) -> Vec<Seq> {
        self.channels.iter().map(|c| c.seq).collect()
    }

    /// Whether a channel has more queued than it may send: upstream should wait.
    pub fn congested(&self) -> bool {
        self.channels.iter().any(|c| c.queue.len() > CONGESTED)
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
        let groups = self.groups.len();
        let mut batch = Some(batch);
        for g in 0..groups {
            let last = g + 1 == groups;
            let this = if last { batch.take().expect("sent once") } else { batch.clone().expect("kept") };
            let group = &mut self.groups[g];
            match &group.partition {
                Partition::Forward => {
                    let ch = group.channels[0];
                    self.send_seq(ch, Payload::Data(this));
                }
                Partition::RoundRobin => {
                    let ch = group.channels[group.next % group.channels.len()];
                    group.next += 1;
                    self.send_seq(ch, Payload::Data(this));
                }
                Partition::Hash(field) => {
                    let parts = split_by_key(&this, field, group.channels.len());
                    let channels = group.channels.clone();
                    for (part, ch) in parts.into_iter().zip(channels) {
                        if let Some(part) = part {
                            self.send_seq(ch, Payload::Data(part));
                        }
                    }
                }
            }
        }
        records
    }

    /// Send `Barrier(c)` on every channel, behind everything sent before.
    pub fn send_barrier(&mut self, c: CheckpointId) {
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
    /// Its output channel index.
    pub output: usize,
}

impl SubtaskContext {
    /// Panic if an injected fault is due `processed` records in (called inside the region
    /// where panics are caught, so it exercises the same path as a bug in operator code).
    pub fn inject(&self, processed: u64) {
        for fault in &self.faults {
            if fault.fire(processed) {
                panic!("injected fault {fault}");
            }
        }
    }

    /// Report a caught panic: the supervisor decides whether to restart.
    pub fn panicked(&self, payload: &(dyn std::any::Any + Send)) {
        let message = panic_message(payload);
        tracing::error!("{}: panicked: {message}", self.name);
        self.fatal.stop(Failure::Panic {
            node: self.node.clone(),
            subtask: self.subtask,
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
}
