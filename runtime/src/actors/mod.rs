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
pub mod slot;
pub mod source;
pub mod task;

pub use crate::batch::key_channel;
pub use shared::{Counters, Failure, FailureReason, Fatal, Guarded, Watch, panic_message};

use std::collections::VecDeque;

use crate::sync::Arc;

use actix::prelude::*;

use crate::batch::{Batch, Column};
use crate::pipeline::faults::FaultKind;
use crate::protocol::driver::{self, Epoch};
use crate::protocol::route;
use crate::protocol::{CheckpointId, ParticipantId};

/// A transform or sink subtask's slot (its actor now, its grant).
pub type TaskSlot = slot::Slot<Addr<task::TaskActor>>;

/// Where a message to a subtask goes: a source's actor, or a transform or sink's slot.
pub type To<M> = slot::Route<M, Addr<task::TaskActor>>;

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

impl route::Payload for Payload {
    type Key = String;

    fn end() -> Payload {
        Payload::End
    }

    fn is_end(&self) -> bool {
        matches!(self, Payload::End)
    }

    fn is_empty(&self) -> bool {
        matches!(self, Payload::Data(b) if b.is_empty() && b.event_time_floor().is_none())
    }

    fn bytes(&self) -> usize {
        match self {
            Payload::Data(b) => b.bytes(),
            Payload::End => 0,
        }
    }

    fn split(&self, field: &String, parts: usize) -> Vec<Option<Payload>> {
        let Payload::Data(batch) = self else { unreachable!("the end of input is never routed") };
        split_by_key(batch, field, parts).into_iter().map(|b| b.map(|b| Payload::Data(Arc::new(b)))).collect()
    }
}

/// An item on a channel.
pub type Item = route::Item<Payload>;

/// How a node's output is spread over the subtasks of one downstream node.
pub type Partition = route::Partition<String>;

/// The channels to one downstream node.
pub type OutGroup = route::Group<String>;

/// Upstream to downstream: an item on input `input` of the receiver.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The receiver's input index.
    pub input: usize,
    /// The receiver's epoch the sender knows of: a restarted receiver drops what was sent to
    /// its previous epoch (the replay sends it again, in order).
    pub epoch: Epoch,
    /// The epoch the sender's slot was granted when it sent this (a deposed primary's is
    /// refused, S12).
    pub grant: Epoch,
    /// The item.
    pub item: Item,
}

/// Restarted receiver to upstream: replay an output channel (the protocol's request).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resume(pub driver::Resume);

/// Coordinator to source: start checkpoint `c`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Trigger(pub CheckpointId);

/// Participant to coordinator: snapshot of `checkpoint` durable.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Ack {
    /// Who.
    pub participant: ParticipantId,
    /// The epoch its slot was granted (a deposed primary's ack is refused, S12).
    pub grant: Epoch,
    /// Which checkpoint.
    pub checkpoint: CheckpointId,
}

/// Source to coordinator: its input is exhausted.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SourceFinished(pub usize);

/// Sink to coordinator: output through `checkpoint` is durably committed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SinkCommitted {
    /// The sink.
    pub participant: ParticipantId,
    /// Through which checkpoint.
    pub checkpoint: CheckpointId,
}

/// Where a subtask's reports to the coordinator go (recipients, so that no subtask actor
/// depends on the coordinator actor's type, nor the coordinator on theirs).
#[derive(Clone)]
pub struct ToCoordinator {
    /// A standby was promoted.
    pub failover: Recipient<coordinator::Failover>,
    /// Snapshots durable.
    pub ack: Recipient<Ack>,
    /// A source's input exhausted.
    pub finished: Recipient<SourceFinished>,
    /// A sink's output committed.
    pub committed: Recipient<SinkCommitted>,
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

/// The wire of one output channel: the receiver, flow-control credit and what waits for it.
/// What goes on it, in what order and to which epoch is the protocol core's decision
/// ([`route::Outputs`]); this only carries it.
pub struct Link {
    to: To<Deliver>,
    /// Input index at the receiver.
    input: usize,
    credit: u32,
    queue: VecDeque<(Epoch, Item)>,
    /// The sender's grant, sent with every item.
    grant: Epoch,
}

impl Link {
    /// A link to `to`, arriving there as input `input`.
    pub fn new(to: To<Deliver>, input: usize) -> Link {
        Link { to, input, credit: CREDIT, queue: VecDeque::new(), grant: 0 }
    }

    /// Where it goes.
    pub fn to(&self) -> &To<Deliver> {
        &self.to
    }

    /// Its receiver's input index.
    pub fn input(&self) -> usize {
        self.input
    }

    /// Queue `item` for the receiver's `epoch` and send what credit allows.
    pub(crate) fn push(&mut self, epoch: Epoch, item: Item) {
        self.queue.push_back((epoch, item));
        self.flush();
    }

    /// Items queued, not yet sent.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The receiver restarted: forget what is queued for its previous epoch.
    pub(crate) fn reset(&mut self) {
        self.credit = CREDIT;
        self.queue.clear();
    }

    fn flush(&mut self) {
        while let Some((_, front)) = self.queue.front() {
            let needs_credit = matches!(front, Item::Batch { .. });
            if needs_credit && self.credit == 0 {
                break;
            }
            if needs_credit {
                self.credit -= 1;
            }
            let (epoch, item) = self.queue.pop_front().expect("front exists");
            self.to.do_send(Deliver { input: self.input, epoch, grant: self.grant, item });
        }
    }
}

/// The links of all output channels of a subtask.
#[derive(Default)]
pub struct Links(pub Vec<Link>);

/// Above this many queued items on any output channel, a subtask stops granting credits.
pub(crate) const CONGESTED: usize = 2;

impl Links {
    /// Whether a channel has more queued than it may send: upstream should wait.
    pub fn congested(&self) -> bool {
        self.0.iter().any(|c| c.queue.len() > CONGESTED)
    }

    /// A credit arrived for channel `output`.
    pub fn on_credit(&mut self, credit: Credit) {
        let link = &mut self.0[credit.output];
        link.credit += credit.n;
        link.flush();
    }

    /// Put `item` on channel `channel`, to the receiver's `epoch`.
    pub fn send(&mut self, channel: usize, epoch: Epoch, item: Item) {
        self.0[channel].push(epoch, item);
    }

    /// What is sent from now on is sent under `grant`.
    pub fn set_grant(&mut self, grant: Epoch) {
        self.0.iter_mut().for_each(|l| l.grant = grant);
    }

    /// Fresh links to the same receivers (for a standby's own use once promoted).
    pub fn fresh(&self) -> Links {
        Links(self.0.iter().map(|l| Link::new(l.to.clone(), l.input)).collect())
    }
}

/// Warn that the buffer queues of `name` went over `budget` bytes.
pub fn warn_overflow(name: &str, budget: usize) {
    tracing::warn!(
        "{name}: buffer queues over {} MiB: until the next checkpoint completes, a failure downstream is healed by a global rollback",
        budget >> 20
    );
}

fn split_by_key(batch: &Batch, field: &str, parts: usize) -> Vec<Option<Batch>> {
    // An event-time floor is news for every part.
    if parts == 1 || batch.event_time_floor().is_some() {
        return vec![Some(batch.clone()); parts];
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
    let mut counts = vec![0; parts];
    targets.iter().for_each(|&t| counts[t] += 1);
    let mut out: Vec<Batch> =
        counts.iter().map(|&n| Batch::with_capacity(batch.schema().clone(), n)).collect();
    // Column by column: one type dispatch per column, not per value.
    for (c, source) in batch.columns().iter().enumerate() {
        let mut dests: Vec<&mut Column> = out.iter_mut().map(|b| &mut b.columns_mut()[c]).collect();
        match source {
            Column::Bool(v) => {
                scatter(v, &targets, &mut dests, |d| if let Column::Bool(d) = d { Some(d) } else { None })
            }
            Column::Int(v) => {
                scatter(v, &targets, &mut dests, |d| if let Column::Int(d) = d { Some(d) } else { None })
            }
            Column::Float(v) => {
                scatter(v, &targets, &mut dests, |d| if let Column::Float(d) = d { Some(d) } else { None })
            }
            Column::Str(v) => {
                for (i, &t) in targets.iter().enumerate() {
                    let Column::Str(d) = &mut *dests[t] else {
                        unreachable!("a part has its batch's schema")
                    };
                    d.push(v.get(i));
                }
            }
        }
    }
    for (part, &n) in out.iter_mut().zip(&counts) {
        part.set_len(n);
    }
    out.into_iter().map(|b| if b.is_empty() { None } else { Some(b) }).collect()
}

/// Append `values[i]` to the part `targets[i]`, whose column `as_vec` gives as a vector.
fn scatter<T: Copy>(
    values: &[T],
    targets: &[usize],
    dests: &mut [&mut Column],
    as_vec: impl Fn(&mut Column) -> Option<&mut Vec<T>>,
) {
    let mut dests: Vec<&mut Vec<T>> =
        dests.iter_mut().map(|d| as_vec(d).expect("a part has its batch's schema")).collect();
    for (&value, &t) in values.iter().zip(targets) {
        dests[t].push(value);
    }
}

/// Where a subtask's input channel `i` comes from, for returning credits.
#[derive(Clone)]
pub struct Upstream {
    /// The sender.
    pub to: To<Credit>,
    /// The sender, for replay requests.
    pub resume: To<Resume>,
    /// Its output channel index.
    pub output: usize,
}

impl SubtaskContext {
    /// Panic if an injected fault is due `processed` records in (called inside the region
    /// where panics are caught, so it exercises the same path as a bug in operator code).
    pub fn inject(&self, processed: u64) {
        self.inject_at(FaultKind::Panic, processed);
        for fault in &self.faults {
            if fault.kind == FaultKind::Hang && fault.fire(processed) {
                tracing::warn!("{}: injected fault {fault}: blocking its thread", self.name);
                std::thread::sleep(crate::pipeline::faults::HANG);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{DataType, Field, Schema, Value};

    /// Every record goes to the part of its key, in its order, with all its fields; parts
    /// that get nothing are `None`.
    #[test]
    fn split_by_key_sends_each_record_to_its_keys_channel_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Str),
            Field::new("ts", DataType::Int),
            Field::new("value", DataType::Float),
            Field::new("hot", DataType::Bool),
        ]));
        let mut batch = Batch::with_capacity(schema, 64);
        let rows: Vec<Vec<Value>> = (0..64i64)
            .map(|i| {
                let sensor = Value::Str(format!("s{:04}", i % 7));
                vec![sensor, Value::Int(i), Value::Float(i as f64 / 2.0), Value::Bool(i % 3 == 0)]
            })
            .collect();
        rows.iter().for_each(|r| batch.push_row(r));
        for parts in [2, 3, 8] {
            let split = split_by_key(&batch, "sensor", parts);
            let mut expected: Vec<Vec<Vec<Value>>> = vec![Vec::new(); parts];
            for row in &rows {
                let Value::Str(key) = &row[0] else { unreachable!() };
                expected[key_channel(key.as_bytes(), parts)].push(row.clone());
            }
            for (part, want) in split.iter().zip(&expected) {
                let got: Vec<Vec<Value>> = part.iter().flat_map(|b| (0..b.len()).map(|i| b.row(i))).collect();
                assert_eq!(&got, want, "{parts} parts");
                assert_eq!(part.is_none(), want.is_empty());
            }
        }
    }
}
