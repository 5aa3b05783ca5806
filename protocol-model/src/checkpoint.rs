//! The checkpoint model: two sources, one two-input transform subtask, one sink and the
//! coordinator, driven through every interleaving by stateright.
//!
//! The state holds the runtime's own state machines: the [`Coordinator`], each source's
//! [`SourceTask`], and for the transform and the sink the runtime's subtask driver
//! ([`Subtask`]: the checkpoint core, the input gate with its determinant log, the output
//! side with its buffer queue and router, the epoch and the local-restart sequence), the
//! same type `TaskActor` drives. This file is the environment around them: the network
//! (FIFO channels), the disk (an explicit [`Disk`], read by a restart through the driver's
//! storage seam), crashes, and the operator as a function of batch ids. It feeds events in
//! and carries effects out; nothing here decides anything about the protocol.
//!
//! What the environment may do at any step (each a model [`Action`]):
//! - a source reads and sends its next batch;
//! - any FIFO channel delivers its oldest message;
//! - the checkpoint interval fires (a bounded number of times);
//! - a collecting checkpoint times out (bounded);
//! - a participant's oldest pending write becomes durable (writes are issued in one step and
//!   become durable in a later one, so a crash can fall between the two);
//! - any participant crashes (bounded): the process dies, everything volatile and every
//!   write not yet durable is lost, channels are emptied, and the pipeline rolls back
//!   globally with the plan of `recovery::plan_global_rollback` over what is on disk;
//! - the transform or the sink fails alone (bounded, separately): it restarts locally with
//!   the plan of `recovery::plan_local` (SPEC §10): its volatile state is rebuilt from its
//!   snapshot of the latest completed checkpoint, what was in flight to it is dropped, and
//!   each upstream is asked to replay;
//! - an upstream serves such a replay request (`Resume`) from its buffer queue. A replay
//!   gap, or a replay that diverges from the determinant log, escalates to a global rollback.
//!
//! The operator is the identity on batch ids (its state is the set of batches it applied),
//! so snapshot contents and the sink's output can be compared with what the sources sent.
//! The transform's output batch with sequence number `n` is the `n`-th batch it processed,
//! so its output depends on its processing order: a replay in another order sends a
//! different batch under a sequence number already sent (S8).
//! Budgets only shrink and every other step consumes a message, a write or a replay request,
//! so the state graph is finite and acyclic: every path ends in a terminal state, which is
//! what makes the terminal-state properties below liveness checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

use stateright::{Model, Property};
use weir_protocol::aligner::AlignmentMode;
use weir_protocol::buffer::BufferQueue;
use weir_protocol::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig};
use weir_protocol::driver::source::{Source, SourceEffect, Step};
use weir_protocol::driver::{self, Effect, Escalation, Mode, Subtask};
use weir_protocol::participant::{Task, TaskConfig};
use weir_protocol::recovery::{self, ParticipantLog, ParticipantRestore, RecoveryInput, SinkLog};
use weir_protocol::route::{self, Group, Item, Partition, Payload};
use weir_protocol::storage::{Snapshot, Storage};
use weir_protocol::{CheckpointId, Mutant, Mutations, ParticipantId, Seq};

use crate::failover::{Failover, FailoverAction, Phase};
use crate::props::{self, Violation};

/// Number of sources in the model.
pub const SOURCES: usize = 2;

/// A node of the model's pipeline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// The checkpoint coordinator.
    Coordinator,
    /// Source 0 or 1.
    Source(u8),
    /// The two-input transform subtask.
    Task,
    /// The sink subtask.
    Sink,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Coordinator => write!(f, "coordinator"),
            Node::Source(s) => write!(f, "source{s}"),
            Node::Task => write!(f, "task"),
            Node::Sink => write!(f, "sink"),
        }
    }
}

const C: Node = Node::Coordinator;
const S0: Node = Node::Source(0);
const S1: Node = Node::Source(1);
const T: Node = Node::Task;
const K: Node = Node::Sink;

/// Every node, in index order.
pub const NODES: [Node; 5] = [C, S0, S1, T, K];

impl Node {
    pub(crate) fn index(self) -> usize {
        match self {
            Node::Coordinator => 0,
            Node::Source(s) => 1 + s as usize,
            Node::Task => 3,
            Node::Sink => 4,
        }
    }

    /// The node's participant id at the coordinator.
    pub(crate) fn participant(self) -> ParticipantId {
        match self {
            Node::Source(s) => s as usize,
            Node::Task => 2,
            Node::Sink => 3,
            Node::Coordinator => unreachable!("the coordinator is not a participant"),
        }
    }
}

/// The FIFO channels: data (sources -> task -> sink, the first [`DATA_CHANNELS`]) and
/// control from the coordinator (triggers to sources, aborts to the task, complete and abort
/// to the sink).
///
/// Three hops are folded into the step that causes them, because no interleaving of theirs
/// can change an outcome (see the README, "Reductions"): acknowledgements and end-of-input
/// reports reach the coordinator in the step that sends them (their order against every
/// other coordinator input is still explored through the order of the steps that cause
/// them); `Complete` reaches sources and the task at once (there it only truncates buffer
/// queues and the determinant log, and the earliest truncation is the worst case for S6 and
/// for replays); sources get no `Abort` (they ignore it).
///
/// The last is the transform's second output channel to the sink (its input 1), used only
/// by the fan-out scopes ([`FanOut`]); it is appended so that the other scopes' steps keep
/// their order.
pub const CHANNELS: [(Node, Node); 8] = [(S0, T), (S1, T), (T, K), (C, S0), (C, S1), (C, T), (C, K), (T, K)];

/// The data channels (each has a buffer queue at its sender), by index into [`CHANNELS`].
pub const DATA_CHANNELS: [usize; 4] = [0, 1, 2, 7];

fn is_data(ch: usize) -> bool {
    DATA_CHANNELS.contains(&ch)
}

/// The index of the `lane`-th channel `from -> to` (lane 1: the transform's second output).
pub(crate) fn channel_lane(from: Node, to: Node, lane: u8) -> usize {
    CHANNELS
        .iter()
        .enumerate()
        .filter(|(_, ch)| **ch == (from, to))
        .nth(lane as usize)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no channel {from:?} -> {to:?} lane {lane}"))
}

pub(crate) fn channel(from: Node, to: Node) -> usize {
    channel_lane(from, to, 0)
}

/// Which of the channels `from -> to` channel `ch` is.
fn lane_of(ch: usize) -> u8 {
    CHANNELS[..ch].iter().filter(|&&c| c == CHANNELS[ch]).count() as u8
}

/// One source record batch: the `index`-th batch of source `source`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    /// The source.
    pub source: u8,
    /// Its position in that source's input.
    pub index: u8,
}

/// The end of a source's input, as the driver's payload (the model reports the end of input
/// to the coordinator directly and never sends it on a channel).
const END: BatchId = BatchId { source: u8::MAX, index: u8::MAX };

/// The model's records are whole batches: a hash partition sends a batch by its index.
impl Payload for BatchId {
    type Key = ();

    fn end() -> BatchId {
        END
    }

    fn is_end(&self) -> bool {
        *self == END
    }

    fn is_empty(&self) -> bool {
        false
    }

    fn bytes(&self) -> usize {
        1
    }

    fn split(&self, _: &(), parts: usize) -> Vec<Option<BatchId>> {
        (0..parts).map(|p| (p == self.index as usize % parts).then_some(*self)).collect()
    }
}

impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}b{}", self.source, self.index)
    }
}

/// A message on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    /// A data batch with its channel sequence number.
    Batch {
        /// Sequence number on the channel.
        seq: Seq,
        /// The batch.
        id: BatchId,
    },
    /// A checkpoint barrier.
    Barrier(CheckpointId),
    /// Coordinator to source: start a checkpoint.
    Trigger(CheckpointId),
    /// Coordinator to participant: checkpoint complete.
    Complete(CheckpointId),
    /// Coordinator to participant: checkpoint aborted.
    Abort(CheckpointId),
}

/// A write issued to the log and not yet durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    /// A source's read position at a checkpoint.
    SourceSnapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Next batch index to read.
        position: u8,
    },
    /// The task's snapshot.
    TaskSnapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The snapshot.
        snapshot: TaskSnapshot,
    },
    /// The sink's snapshot with its staged output (pre-commit).
    SinkSnapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Its positions and end flags.
        snapshot: SinkSnapshot,
        /// Output since the previous snapshot.
        staged: Vec<BatchId>,
    },
    /// The sink's commit through a checkpoint.
    Commit(CheckpointId),
    /// The coordinator's completion record.
    Completion(CheckpointId),
}

/// The task's snapshot: operator state plus channel positions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskSnapshot {
    /// Batches reflected in the operator state.
    pub applied: BTreeSet<BatchId>,
    /// Last applied sequence number per input.
    pub positions: Vec<Seq>,
    /// Sequence number of the last batch sent to the sink, per output channel.
    pub out_seqs: Vec<Seq>,
    /// Inputs whose end was processed.
    pub ended: Vec<bool>,
}

/// The sink's snapshot: channel positions and end flags (its output is staged beside it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkSnapshot {
    /// Last applied sequence number per input.
    pub positions: Vec<Seq>,
    /// Inputs whose end was processed.
    pub ended: Vec<bool>,
}

/// What survives a crash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Disk {
    /// The latest durable completion record.
    pub completed: Option<CheckpointId>,
    /// Source snapshots: read position by checkpoint.
    pub sources: [BTreeMap<CheckpointId, u8>; SOURCES],
    /// Task snapshots by checkpoint.
    pub task: BTreeMap<CheckpointId, TaskSnapshot>,
    /// Sink snapshots (input positions and end flags) by checkpoint.
    pub sink: BTreeMap<CheckpointId, SinkSnapshot>,
    /// Sink output staged by checkpoint, not yet visible.
    pub staged: BTreeMap<CheckpointId, Vec<BatchId>>,
    /// Sink output made visible, in commit order.
    pub committed: Vec<BatchId>,
    /// The sink's durable "committed through" record.
    pub committed_through: Option<CheckpointId>,
}

/// A source subtask: the runtime's source driver (its checkpoint core, output side, end of
/// input and re-read bookkeeping) and its reader's position, the environment's part.
///
/// The reader at position `p` reads batch `p` of its source; a re-read opens a second reader
/// at the position the driver names (SPEC §10.2, §11.7).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceNode {
    /// The runtime's source driver; positions are batch indexes.
    pub driver: Source<BatchId, u8>,
    /// Next batch index to read (also the number of batches sent; batch `i` has seq `i + 1`).
    pub next: u8,
}

/// The transform subtask: the runtime's own driver (its checkpoint core, input gate with
/// the determinant log, output side with the buffer queue, epoch and restart sequence) and
/// the operator's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskNode {
    /// The runtime's subtask driver.
    pub driver: Subtask<BatchId>,
    /// What the gate drops as duplicates; see [`Watermark`].
    pub watermarks: Vec<Watermark>,
    /// Operator state: the batches applied.
    pub applied: BTreeSet<BatchId>,
}

impl TaskNode {
    /// What it sent to the sink since the latest completed checkpoint, per output channel.
    pub fn buffers(&self) -> impl Iterator<Item = &BufferQueue<BatchId>> {
        let outputs = self.driver.outputs();
        (0..outputs.channels()).map(|ch| outputs.buffer(ch).expect("the transform keeps buffer queues"))
    }
}

/// The sink subtask: its driver and its output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkNode {
    /// The runtime's subtask driver, in sink mode.
    pub driver: Subtask<BatchId>,
    /// What the gate drops as duplicates; see [`Watermark`].
    pub watermarks: Vec<Watermark>,
    /// Output written since the last snapshot (lost when the sink fails).
    pub unstaged: Vec<BatchId>,
    /// The whole output its state reflects, in sequence order: committed, staged (up to its
    /// restore point or its own later snapshots) and unstaged. `applied(sink)` of
    /// VERIFICATION.md 1.0; rebuilt from the disk on every restore.
    pub output: Vec<BatchId>,
    /// Batches applied per input (the end excluded), restored from the snapshot's positions.
    pub received: Vec<Seq>,
}

/// The highest sequence number and barrier that arrived at a gate on one input since the
/// gate was created or restarted (starting at the restored position and checkpoint): what
/// it drops as duplicates (SPEC §10.3). The gate keeps these itself; the shell keeps a copy
/// only so that [`State`]'s fingerprint can stand for the gate once its determinant log can
/// no longer be read (see `impl Hash for State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Watermark {
    /// Highest sequence number arrived.
    pub seq: Seq,
    /// Highest barrier arrived.
    pub barrier: CheckpointId,
}

impl Watermark {
    pub(crate) fn restored(positions: &[Seq], checkpoint: CheckpointId) -> Vec<Watermark> {
        positions.iter().map(|&seq| Watermark { seq, barrier: checkpoint }).collect()
    }

    fn arrived(&mut self, arrival: &Msg) {
        match *arrival {
            Msg::Batch { seq, .. } => self.seq = self.seq.max(seq),
            Msg::Barrier(c) => self.barrier = self.barrier.max(c),
            _ => {}
        }
    }
}

/// A replay request from a locally restarted receiver, not yet served by its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resume {
    /// The receiver's restored position on the channel.
    pub from_seq: Seq,
    /// The checkpoint the receiver restored (0: none).
    pub restored: CheckpointId,
}

/// How many times the environment may still do each bounded thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Checkpoint interval firings left.
    pub ticks: u8,
    /// Checkpoint timeouts left.
    pub timeouts: u8,
    /// Crashes (global rollbacks) left.
    pub crashes: u8,
    /// Local failures of the transform or the sink left.
    pub local_crashes: u8,
    /// Failures (crash or hang) of the transform's primary left, each followed by a failover.
    pub failovers: u8,
    /// Crashes of the transform's standby left.
    pub standby_crashes: u8,
}

/// History the properties need that the system itself does not keep (ghost state). Kept to
/// the current run and pruned at completions, so it distinguishes few states.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    /// Each source's read position when it emitted `Barrier(c)`, this run.
    pub barrier_positions: BTreeMap<CheckpointId, [Option<u8>; SOURCES]>,
    /// What the task had applied, and its output sequence number, when it snapshotted `c`,
    /// this run.
    pub task_snapshots: BTreeMap<CheckpointId, (BTreeSet<BatchId>, Vec<Seq>)>,
    /// What the task first sent to the sink under each sequence number, this run, above its
    /// output position at the latest completed checkpoint (S8).
    pub task_sent: BTreeMap<(usize, Seq), BatchId>,
    /// Checkpoints aborted this run.
    pub aborted: BTreeSet<CheckpointId>,
    /// Latest checkpoint each participant snapshotted in its current epoch.
    pub last_snapshot: [CheckpointId; 4],
    /// A checkpoint completed in this run.
    pub completed_this_run: bool,
    /// The lowest checkpoint a subtask restarted locally in this run restored: it may
    /// snapshot again any checkpoint above it, even one older than the latest completed, so
    /// the records above are kept for S1 and S8.
    pub restored_locally: Option<CheckpointId>,
    /// A local recovery had a batch replayed from a buffer queue.
    pub replayed: bool,
    /// A replay its queue could not serve because the queue had given up to its budget
    /// escalated to a global rollback.
    pub overflow_escalated: bool,
    /// Safety violations observed at the step they happened.
    pub violations: BTreeSet<Violation>,
}

/// A state of the whole pipeline.
///
/// Its fingerprint (`Hash`) leaves out what can no longer matter once local recovery is over
/// for good; see `impl Hash for State`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The coordinator core.
    pub coordinator: Coordinator,
    /// The sources.
    pub sources: [SourceNode; SOURCES],
    /// The transform subtask.
    pub task: TaskNode,
    /// The sink.
    pub sink: SinkNode,
    /// Channel contents, by index into [`CHANNELS`].
    pub net: [VecDeque<Msg>; CHANNELS.len()],
    /// Replay requests not yet served, by data channel. While one is outstanding, what the
    /// sender sends on that channel goes to the receiver's previous epoch and is
    /// dropped (it is in the buffer queue, so the replay sends it).
    pub resume: [Option<Resume>; CHANNELS.len()],
    /// Durable state.
    pub disk: Disk,
    /// Pending writes per node (by node index), durable in order.
    pub writes: [VecDeque<Write>; NODES.len()],
    /// The transform's standby, the epoch authority and a deposed primary (failover scopes).
    pub failover: Failover,
    /// What the environment may still do.
    pub budget: Budget,
    /// History for the properties.
    pub ghost: Ghost,
}

impl State {
    /// Whether no local recovery can happen from here on: no local failure is left in the
    /// budget, no replay request is outstanding and neither gate is replaying. Then the
    /// determinant logs, the buffer queues' entries and the S8 record of what the transform
    /// sent can no longer influence any step or any property: a log and a queue are read
    /// only by a restart and a replay, and the transform sends a sequence number again only
    /// after a local restart (a global rollback rebuilds all of them). In the failover
    /// scopes that holds only once the standby is promoted (the S8 and S14 records are read
    /// when the promoted standby serves the sink's reconnection).
    pub fn recovery_settled(&self) -> bool {
        self.budget.local_crashes == 0
            && (!self.failover.enabled || self.failover.phase == Phase::Promoted)
            && self.resume.iter().all(Option::is_none)
            && !self.task.driver.replaying()
            && !self.sink.driver.replaying()
    }
}

/// The fingerprint stateright keeps of each visited state. Once [`State::recovery_settled`],
/// it stands for each gate by its [`Watermark`]s (all a gate that is not replaying decides
/// with: what it drops; its log is write-only until a restart), for each buffer queue by its
/// base (which S6 reads; its entries are read only by a replay), and leaves out
/// `Ghost::task_sent`. States that differ only there have the same successors, step for
/// step, and the same value for every property, so merging them loses no behaviour. Without
/// this the determinant log, a record of the arrival order of every event since the last
/// completion, multiplies the default scope (which has no local failure at all) by about
/// seven. Before recovery is settled, everything is hashed.
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let State { coordinator, sources, task, sink, net, resume, disk, writes, failover, budget, ghost } =
            self;
        (coordinator, net, resume, disk, writes, failover, budget).hash(h);
        if !self.recovery_settled() {
            (sources, task, sink, ghost).hash(h);
            return;
        }
        for SourceNode { driver, next } in sources {
            (driver.core(), next, driver.base()).hash(h);
        }
        let TaskNode { driver, watermarks, applied } = task;
        (driver.core(), driver.epoch(), driver.ended(), watermarks, applied, driver.outputs().seqs()).hash(h);
        task.buffers().for_each(|b| b.base().hash(h));
        let SinkNode { driver, watermarks, unstaged, output, received } = sink;
        (driver.core(), driver.epoch(), driver.ended(), watermarks, unstaged, output, received).hash(h);
        let Ghost {
            barrier_positions,
            task_snapshots,
            task_sent: _,
            aborted,
            last_snapshot,
            completed_this_run,
            restored_locally,
            replayed,
            overflow_escalated,
            violations,
        } = ghost;
        (barrier_positions, task_snapshots, aborted, last_snapshot, completed_this_run, restored_locally)
            .hash(h);
        (replayed, overflow_escalated, violations).hash(h);
    }
}

/// A step of the environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Source `s` reads and sends its next batch.
    Emit(u8),
    /// The channel `from -> to` (the `.2`-th of them: lane 1 is the transform's second
    /// output) delivers its oldest message.
    Deliver(Node, Node, u8),
    /// The checkpoint interval fires.
    Tick,
    /// The timeout of a collecting checkpoint fires.
    Timeout(CheckpointId),
    /// The node's oldest pending write becomes durable.
    Durable(Node),
    /// The node crashes; the pipeline rolls back globally.
    Crash(Node),
    /// The transform or the sink fails alone and restarts locally.
    Fail(Node),
    /// The sender of channel `from -> to` (lane `.2`) serves the replay request of its
    /// restarted receiver.
    Resume(Node, Node, u8),
    /// A step of the failover scopes: the standby, the epoch authority, a hung primary.
    Failover(FailoverAction),
}

/// The size of the checked world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Batches each source emits.
    pub batches_per_source: u8,
    /// Times the checkpoint interval fires.
    pub ticks: u8,
    /// Checkpoint timeouts.
    pub timeouts: u8,
    /// Crashes (each followed by a global rollback).
    pub crashes: u8,
    /// Local failures of the transform or the sink (each followed by a local recovery).
    pub local_crashes: u8,
    /// How the transform's output reaches the sink.
    pub fan_out: FanOut,
    /// Sources send the end of their input as a sequenced item after their last batch, and
    /// the transform passes it on when both inputs ended (SPEC §11).
    pub end_of_input: bool,
    /// The batches the transform's buffer queues may hold before they give up until the next
    /// barrier (0: no limit; SPEC §11.6).
    pub buffer_budget: u8,
    /// The transform has a standby in this mode from the start (SPEC §11.8).
    pub standby: Option<Mode>,
    /// Failures of the transform's primary (a crash or a hang), each followed by a failover.
    pub failovers: u8,
    /// Crashes of the transform's standby (each may be followed by a new standby).
    pub standby_crashes: u8,
    /// A failure of the primary may be a hang: it goes on under its old grant.
    pub hang: bool,
}

/// How the transform's output reaches the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FanOut {
    /// One channel.
    One,
    /// Two channels (the sink's two inputs), batches in turn: the keyless node feeding a
    /// node of parallelism 2. The router's place is restored with the transform.
    RoundRobin,
    /// Two channels, each batch to the channel of its key (its index, modulo 2).
    Hash,
}
impl Default for Scope {
    /// The default scope, which CI checks exhaustively: two batches per source (so a
    /// checkpoint can fall mid-input on either side), one interval checkpoint plus the final
    /// one (two completed checkpoints in every fault-free run, up to four ids with a timeout
    /// and a crash), one timeout, one crash at any step, no local failure (see
    /// [`Scope::local`]).
    fn default() -> Scope {
        Scope {
            batches_per_source: 2,
            ticks: 1,
            timeouts: 1,
            crashes: 1,
            local_crashes: 0,
            fan_out: FanOut::One,
            end_of_input: false,
            buffer_budget: 0,
            standby: None,
            failovers: 0,
            standby_crashes: 0,
            hang: false,
        }
    }
}

impl Scope {
    /// The larger scope of the nightly check: a second interval checkpoint.
    pub fn nightly() -> Scope {
        Scope { ticks: 2, ..Scope::default() }
    }

    /// The local-recovery scope, which CI checks exhaustively: one batch per source, one
    /// interval checkpoint plus the final one, no timeout, no crash, and one local failure of
    /// the transform or the sink at any step. A failure can come before, between or after
    /// the two checkpoints, with each source's batch on either side of the first one, so a
    /// restart restores nothing or a completed checkpoint, replays from each buffer queue
    /// and follows the determinant log. About 360 thousand states.
    pub fn local() -> Scope {
        Scope {
            batches_per_source: 1,
            ticks: 1,
            timeouts: 0,
            crashes: 0,
            local_crashes: 1,
            ..Scope::default()
        }
    }

    /// The larger local-recovery scope of the nightly check: two batches per source.
    pub fn local_nightly() -> Scope {
        Scope { batches_per_source: 2, ..Scope::local() }
    }

    /// The local-recovery scope of the nightly check with aborts: one timeout and only the
    /// final checkpoint, so that aborts are logged as determinants and replayed.
    pub fn local_abort() -> Scope {
        Scope { ticks: 0, timeouts: 1, ..Scope::local() }
    }

    /// The routing scope, which CI checks exhaustively: the local scope with the transform's
    /// output going round-robin over two channels into the sink's two inputs, and the end of
    /// input sent as a sequenced item. A local failure of the transform restores its router
    /// with its sequence numbers (mutant `router-not-restored`), one of the sink replays
    /// both channels, and the end reaches the sink through every restart (L3).
    pub fn routing() -> Scope {
        Scope { fan_out: FanOut::RoundRobin, ..Scope::local() }
    }

    /// The local scope with the end of input sent as a sequenced item.
    pub fn end_of_input() -> Scope {
        Scope { end_of_input: true, ..Scope::local() }
    }

    /// The local scope with a buffer budget of one batch: the transform's queue gives up at
    /// its second batch since the latest completion, and a failure of the sink until the next
    /// barrier escalates to a global rollback (N8).
    pub fn overflow() -> Scope {
        Scope { buffer_budget: 1, ..Scope::local() }
    }

    /// The routing scope with a hash edge instead of round-robin.
    pub fn hash() -> Scope {
        Scope { fan_out: FanOut::Hash, ..Scope::routing() }
    }

    /// The failover scope, which CI checks exhaustively: one batch per source, only the
    /// final checkpoint, no timeout, crash or local failure; the transform has a hot
    /// standby, and its primary crashes or hangs once at any step (a failover).
    pub fn failover() -> Scope {
        Scope {
            batches_per_source: 1,
            ticks: 0,
            timeouts: 0,
            crashes: 0,
            local_crashes: 0,
            standby: Some(Mode::Hot),
            failovers: 1,
            standby_crashes: 0,
            hang: true,
            ..Scope::default()
        }
    }

    /// The failover scope with a warm standby (it installs each completed checkpoint's
    /// snapshot and applies the input since only when it takes over); the primary crashes
    /// (no hang), and the standby may crash once before, and a new one be attached.
    pub fn failover_warm() -> Scope {
        Scope { standby: Some(Mode::Warm), standby_crashes: 1, hang: false, ..Scope::failover() }
    }

    /// The sink's inputs.
    pub fn sink_inputs(&self) -> usize {
        if self.fan_out == FanOut::One { 1 } else { 2 }
    }
}

/// The checkpoint model: a scope and the mutants switched on.
#[derive(Clone, Debug)]
pub struct CheckpointModel {
    /// The scope.
    pub scope: Scope,
    /// Mutants switched on (none for the real protocol).
    pub mutations: Mutations,
}

impl CheckpointModel {
    /// The real protocol in `scope`.
    pub fn new(scope: Scope) -> CheckpointModel {
        CheckpointModel { scope, mutations: Mutations::NONE }
    }

    /// The protocol with `mutant` switched on.
    pub fn with_mutant(mut self, mutant: Mutant) -> CheckpointModel {
        self.mutations = self.mutations.with(mutant);
        self
    }

    /// The coordinator, restored from `completed` (none: fresh); it waits for the sink.
    fn coordinator(&self, completed: Option<CheckpointId>) -> Coordinator {
        Coordinator::restore(CoordinatorConfig::new(4, SOURCES), completed)
            .with_sinks(&[K.participant()])
            .with_mutations(self.mutations)
    }

    pub(crate) fn task_config(&self, sink: bool) -> TaskConfig {
        let inputs = if sink { self.scope.sink_inputs() } else { SOURCES };
        TaskConfig { inputs, mode: AlignmentMode::ExactlyOnce, sink, mutations: self.mutations }
    }

    /// Source `s`'s driver, restored from `restored` (0: none) at reader position `next`.
    fn source(&self, s: u8, restored: CheckpointId, next: u8) -> SourceNode {
        // The end goes out with the last batch, so the position says whether it was sent.
        let ended = self.sends_end(next);
        let seq = Seq::from(next) + Seq::from(ended);
        let groups = vec![Group::new(Partition::Forward, vec![0])];
        let outputs = route::Outputs::new(&[seq], restored, groups, (false, 0), self.mutations);
        let participant = Node::Source(s).participant();
        SourceNode {
            driver: Source::new(participant, (restored, next, ended), outputs, self.mutations),
            next,
        }
    }

    /// The transform's output groups.
    pub(crate) fn task_groups(&self) -> Vec<Group<()>> {
        let (partition, channels) = match self.scope.fan_out {
            FanOut::One => (Partition::Forward, vec![0]),
            FanOut::RoundRobin => (Partition::RoundRobin, vec![0, 1]),
            FanOut::Hash => (Partition::Hash(()), vec![0, 1]),
        };
        vec![Group::new(partition, channels)]
    }

    /// The transform's driver, restored as `plan` says from `snapshot` (none: fresh), acting
    /// under the slot's epoch `grant`.
    fn task_driver(
        &self,
        plan: &ParticipantRestore,
        snapshot: Option<&TaskSnapshot>,
        grant: driver::Epoch,
    ) -> Subtask<BatchId> {
        let config = self.task_config(false);
        let restored = plan.from.unwrap_or_default();
        let groups = self.task_groups();
        let out_seqs = snapshot.map_or(vec![0; self.scope.sink_inputs()], |s| s.out_seqs.clone());
        let budget = usize::from(self.scope.buffer_budget);
        let outputs = route::Outputs::new(&out_seqs, restored, groups, (true, budget), self.mutations);
        let positions = snapshot.map_or(vec![0; SOURCES], |s| s.positions.clone());
        let ended = snapshot.map_or(vec![false; SOURCES], |s| s.ended.clone());
        let core = Task::restore(config, plan, &positions);
        let mut driver = Subtask::new(T.participant(), core, config, (&positions, ended, restored), outputs);
        driver.set_grant(grant);
        driver
    }

    /// The sink's driver, restored as `plan` says from `snapshot` (none: fresh).
    fn sink_driver(&self, plan: &ParticipantRestore, snapshot: Option<&SinkSnapshot>) -> Subtask<BatchId> {
        let config = self.task_config(true);
        let restored = plan.from.unwrap_or_default();
        let outputs = route::Outputs::new(&[], restored, Vec::new(), (false, 0), self.mutations);
        let positions = snapshot.map_or(vec![0; config.inputs], |s| s.positions.clone());
        let ended = snapshot.map_or(vec![false; config.inputs], |s| s.ended.clone());
        let core = Task::restore(config, plan, &positions);
        Subtask::new(K.participant(), core, config, (&positions, ended, restored), outputs)
    }

    /// The source's end of input goes out right after its last batch.
    fn sends_end(&self, next: u8) -> bool {
        self.scope.end_of_input && next == self.scope.batches_per_source
    }

    /// Every batch the sources emit: the failure-free output, as a set (the two sources
    /// interleave freely, so the order of the output is not fixed).
    pub fn reference_output(&self) -> BTreeSet<BatchId> {
        (0..SOURCES as u8)
            .flat_map(|source| (0..self.scope.batches_per_source).map(move |index| BatchId { source, index }))
            .collect()
    }

    /// Whether no step is possible from `state`.
    pub fn is_terminal(&self, state: &State) -> bool {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions.is_empty()
    }

    /// Apply `action` to `state`, writing what each node did to `log`.
    pub fn step(&self, state: &mut State, action: &Action, log: &mut Log) {
        match *action {
            Action::Emit(s) => {
                let source = &mut state.sources[s as usize];
                let id = BatchId { source: s, index: source.next };
                source.next += 1;
                log.note(|| format!("source{s} reads {id:?}"));
                source.driver.read(1, id);
                self.drain_source(state, s, log);
                self.report_if_exhausted(state, s, log);
            }
            Action::Deliver(from, to, lane) => {
                let msg = state.net[channel_lane(from, to, lane)]
                    .pop_front()
                    .expect("delivering from an empty channel");
                self.deliver(state, (from, to, lane), msg, log);
            }
            Action::Tick => {
                state.budget.ticks -= 1;
                log.note(|| "the checkpoint interval fires".to_string());
                state.coordinator.handle_tick();
                self.drain_coordinator(state, log);
            }
            Action::Timeout(c) => {
                state.budget.timeouts -= 1;
                log.note(|| format!("the timeout of {c:?} fires"));
                state.coordinator.handle_timeout(c);
                self.drain_coordinator(state, log);
            }
            Action::Durable(node) => {
                let write = state.writes[node.index()].pop_front().expect("no pending write");
                self.on_durable(state, node, write, true, log);
            }
            Action::Crash(node) => {
                state.budget.crashes -= 1;
                log.note(|| format!("{node:?} crashes: the process dies, pending writes are lost"));
                self.global_rollback(state, log);
            }
            Action::Fail(node) => {
                state.budget.local_crashes -= 1;
                log.note(|| format!("{node:?} fails alone: its volatile state is lost, it restarts locally"));
                self.local_recovery(state, node, log);
            }
            Action::Resume(from, to, lane) => {
                let ch = channel_lane(from, to, lane);
                let resume = state.resume[ch].take().expect("no replay request");
                self.serve_resume(state, ch, resume, log);
            }
            Action::Failover(action) => self.failover_step(state, action, log),
        }
    }

    fn deliver(&self, state: &mut State, (from, to, lane): (Node, Node, u8), msg: Msg, log: &mut Log) {
        log.note(|| format!("{to:?} receives {msg:?} from {from:?}"));
        match (to, msg) {
            (Node::Source(s), Msg::Trigger(c)) => {
                let source = &mut state.sources[s as usize];
                source.driver.handle_trigger(c, source.next);
                self.drain_source(state, s, log);
            }
            (Node::Task | Node::Sink, msg) => {
                let input = match from {
                    Node::Source(s) => s as usize,
                    _ => lane as usize,
                };
                if from != C {
                    watermarks(state, to)[input].arrived(&msg);
                }
                // What the channel holds is for the receiver's current epoch: a restart
                // empties it, and what is sent until the replay is dropped (see `send`).
                // The sender's grant: the slot's current primary's (what the old one sent is
                // on a channel of its own, `Failover::stale`).
                let grant = if from == T { state.task.driver.grant() } else { 0 };
                let driver = driver(state, to);
                let epoch = driver.epoch();
                let taken = match msg {
                    Msg::Batch { seq, id } => {
                        driver.handle_deliver(input, grant, epoch, Item::Batch { seq, payload: id })
                    }
                    Msg::Barrier(c) => driver.handle_deliver(input, grant, epoch, Item::Barrier(c)),
                    Msg::Complete(c) => {
                        driver.handle_complete(c);
                        true
                    }
                    Msg::Abort(c) => {
                        driver.handle_abort(c);
                        true
                    }
                    other => unreachable!("{to:?} got {other:?}"),
                };
                assert!(taken, "the model delivers to the receiver's current epoch only");
                self.pump(state, to, log);
            }
            (to, msg) => unreachable!("{to:?} got {msg:?}"),
        }
    }

    /// A write became durable. `current`: it was issued by the node's current epoch, which
    /// is told (a write of an earlier epoch lands, but its report goes nowhere).
    fn on_durable(&self, state: &mut State, node: Node, write: Write, current: bool, log: &mut Log) {
        log.note(|| {
            let stale = if current { "" } else { " (written before the failure)" };
            format!("{node:?}: {write:?} is durable{stale}")
        });
        match write {
            Write::SourceSnapshot { checkpoint, position } => {
                let Node::Source(s) = node else { unreachable!() };
                state.disk.sources[s as usize].insert(checkpoint, position);
                state.sources[s as usize].driver.on_snapshot_durable(checkpoint);
                self.drain_source(state, s, log);
            }
            Write::TaskSnapshot { checkpoint, snapshot } => {
                if state.disk.task.get(&checkpoint).is_some_and(|old| *old != snapshot) {
                    state.ghost.violations.insert(Violation::Nondeterministic);
                }
                state.disk.task.insert(checkpoint, snapshot);
                if current {
                    let epoch = state.task.driver.epoch();
                    state.task.driver.on_snapshot_durable(epoch, checkpoint);
                    self.pump(state, T, log);
                }
            }
            Write::SinkSnapshot { checkpoint, snapshot, staged } => {
                let disk = &mut state.disk;
                disk.sink.insert(checkpoint, snapshot);
                // Output staged again by a replay after it was committed is visible already.
                if Some(checkpoint) > disk.committed_through {
                    if disk.staged.get(&checkpoint).is_some_and(|old| *old != staged) {
                        state.ghost.violations.insert(Violation::Nondeterministic);
                    }
                    disk.staged.insert(checkpoint, staged);
                }
                if current {
                    let epoch = state.sink.driver.epoch();
                    state.sink.driver.on_snapshot_durable(epoch, checkpoint);
                    self.pump(state, K, log);
                }
            }
            Write::Commit(checkpoint) => {
                props::check_commit(state, checkpoint);
                let disk = &mut state.disk;
                let visible: Vec<CheckpointId> = disk
                    .staged
                    .range(..=checkpoint)
                    .map(|(&c, _)| c)
                    .filter(|&c| Some(c) > disk.committed_through)
                    .collect();
                for c in visible {
                    let out = disk.staged.remove(&c).unwrap_or_default();
                    disk.committed.extend(out);
                }
                disk.committed_through = disk.committed_through.max(Some(checkpoint));
                if current {
                    let epoch = state.sink.driver.epoch();
                    state.sink.driver.on_commit_durable(epoch, checkpoint);
                    self.pump(state, K, log);
                }
            }
            Write::Completion(checkpoint) => {
                props::check_completion(state, checkpoint);
                state.disk.completed = Some(checkpoint);
                let ghost = &mut state.ghost;
                ghost.completed_this_run = true;
                state.failover.completed_after |= state.failover.phase == Phase::Promoted;
                let keep = ghost.restored_locally.map_or(checkpoint, |r| r.min(checkpoint));
                ghost.barrier_positions.retain(|&c, _| c >= keep);
                ghost.task_snapshots.retain(|&c, _| c >= keep);
                ghost.aborted.retain(|&c| c >= checkpoint);
                if let Some(snapshot) = state.disk.task.get(&checkpoint) {
                    // No restart restores an older output position.
                    ghost.task_sent.retain(|&(ch, seq), _| seq > snapshot.out_seqs[ch]);
                }
                state.coordinator.on_completion_durable(checkpoint);
                self.drain_coordinator(state, log);
            }
        }
    }

    pub(crate) fn drain_coordinator(&self, state: &mut State, log: &mut Log) {
        while let Some(action) = state.coordinator.poll_action() {
            log.note(|| format!("coordinator: {action:?}"));
            match action {
                CoordinatorAction::Trigger(c) => {
                    for s in 0..SOURCES as u8 {
                        send(state, channel(C, Node::Source(s)), Msg::Trigger(c), log);
                    }
                }
                CoordinatorAction::RunEnded { stopped, .. } => {
                    if !stopped {
                        props::check_run_end(self, state);
                    }
                }
                CoordinatorAction::ArmTimeout(_)
                | CoordinatorAction::Finished
                | CoordinatorAction::Stopped(_)
                | CoordinatorAction::StopFailed(_) => {}
                CoordinatorAction::PersistCompletion(c) => {
                    state.writes[C.index()].push_back(Write::Completion(c))
                }
                CoordinatorAction::NotifyComplete(c) => {
                    for s in 0..SOURCES as u8 {
                        state.sources[s as usize].driver.handle_complete(c);
                        self.drain_source(state, s, log);
                    }
                    // The standby first: it may install the snapshot of `c`, which the
                    // primary's completion makes older snapshots obsolete beside.
                    self.deliver_shipped(state, log);
                    if let Some(standby) = &mut state.failover.standby {
                        standby.replica.handle_complete(c);
                        self.pump_standby(state, log);
                    }
                    if !state.failover.down() {
                        state.task.driver.handle_complete(c);
                        self.pump(state, T, log);
                    }
                    send(state, channel(C, K), Msg::Complete(c), log);
                }
                CoordinatorAction::NotifyAbort(c) => {
                    state.ghost.aborted.insert(c);
                    send(state, channel(C, T), Msg::Abort(c), log);
                    send(state, channel(C, K), Msg::Abort(c), log);
                }
            }
        }
    }

    /// Carry out what source `s`'s driver asks until it is quiet.
    fn drain_source(&self, state: &mut State, s: u8, log: &mut Log) {
        let node = Node::Source(s);
        let ch = channel(node, T);
        while let Some(effect) = state.sources[s as usize].driver.poll_effect() {
            log.note(|| format!("{node:?}: {effect:?}"));
            match effect {
                SourceEffect::Send { item, .. } => send(state, ch, msg_of(item), log),
                SourceEffect::Reread { position, .. } => {
                    state.net[ch].clear();
                    self.reread(state, s, position, log);
                }
                SourceEffect::CaughtUp { .. } => {}
                SourceEffect::Snapshot { checkpoint, position, .. } => {
                    props::check_snapshot_order(state, node, checkpoint);
                    state.ghost.barrier_positions.entry(checkpoint).or_default()[s as usize] = Some(position);
                    state.writes[node.index()].push_back(Write::SourceSnapshot { checkpoint, position });
                }
                SourceEffect::Ack(c) => self.ack(state, node, c, log),
                SourceEffect::DropSnapshotsBelow(c) => state.disk.sources[s as usize].retain(|&k, _| k >= c),
                SourceEffect::Finished => self.report_finished(state, s, log),
                SourceEffect::Escalate(escalation) => {
                    log.note(|| format!("{node:?}: {escalation}: escalate to a global rollback"));
                    if let Escalation::ReplayGap { gap, .. } = escalation {
                        props::check_replay_gap(state, gap.restored);
                    }
                    self.global_rollback(state, log);
                    return;
                }
            }
        }
    }

    /// Source `s` re-reads its channel from `position` with a second reader, as its driver
    /// steps it (at once: the model's channels have no flow control).
    fn reread(&self, state: &mut State, s: u8, mut position: u8, log: &mut Log) {
        let ch = channel(Node::Source(s), T);
        loop {
            let driver = &mut state.sources[s as usize].driver;
            match driver.reread_step(0) {
                Step::Read(n) => {
                    let exhausted = position >= self.scope.batches_per_source;
                    let batch = (!exhausted).then_some(BatchId { source: s, index: position });
                    position += u8::from(!exhausted);
                    driver.reread_batch(0, n.min(usize::from(!exhausted)), batch);
                }
                Step::Skip(n) => {
                    let exhausted = position >= self.scope.batches_per_source;
                    position += u8::from(!exhausted);
                    driver.reread_skipped(0, n.min(usize::from(!exhausted)));
                }
                Step::Sent => {}
                Step::Done => return,
            }
            while let Some(effect) = state.sources[s as usize].driver.poll_effect() {
                match effect {
                    SourceEffect::Send { item, .. } => {
                        state.ghost.replayed |= matches!(item, Item::Batch { .. });
                        log.note(|| format!("source{s} re-reads {item:?}"));
                        state.net[ch].push_back(msg_of(item));
                    }
                    SourceEffect::CaughtUp { .. } => {}
                    other => unreachable!("a re-read step only sends: {other:?}"),
                }
            }
        }
    }

    /// Carry out what the driver of the transform or the sink asks until it is quiet.
    /// Returns false when it escalated and the pipeline rolled back.
    pub(crate) fn pump(&self, state: &mut State, node: Node, log: &mut Log) -> bool {
        while let Some(effect) = driver(state, node).poll_effect() {
            if !self.carry_out(state, node, effect, log) {
                return false;
            }
        }
        true
    }

    /// One effect of the transform's or the sink's driver; false when it escalated (the
    /// pipeline rolled back globally).
    fn carry_out(&self, state: &mut State, node: Node, effect: Effect<BatchId>, log: &mut Log) -> bool {
        log.note(|| format!("{node:?}: {effect:?}"));
        match (node, effect) {
            (Node::Task, Effect::Process { input, seq, batch }) => {
                props::check_apply(state, T, input, seq, batch);
                state.task.applied.insert(batch);
                state.task.driver.emit(batch);
                state.task.driver.processed();
            }
            (Node::Sink, Effect::Process { input, seq, batch }) => {
                props::check_apply(state, K, input, seq, batch);
                state.sink.unstaged.push(batch);
                state.sink.output.push(batch);
                state.sink.received[input] += 1;
                state.sink.driver.processed();
            }
            (_, Effect::InputEnded { .. }) => {
                driver(state, node).processed();
            }
            (Node::Task, Effect::Send { channel, item, .. }) => {
                let msg = match item {
                    Item::Batch { seq, payload } => {
                        props::check_task_output(state, channel, seq, payload);
                        Msg::Batch { seq, id: payload }
                    }
                    Item::Barrier(c) => Msg::Barrier(c),
                };
                send(state, channel_lane(T, K, channel as u8), msg, log);
            }
            (Node::Task, Effect::Reset { channel }) => state.net[channel_lane(T, K, channel as u8)].clear(),
            (Node::Task, Effect::Ship(shipped)) => {
                if let Some(standby) = &state.failover.standby {
                    let warm = standby.replica.mode() == Mode::Warm;
                    state.failover.ship.push_back(shipped);
                    if warm {
                        self.deliver_shipped(state, log);
                    }
                }
            }
            (Node::Task, Effect::Snapshot { checkpoint, positions, out_seqs, ended }) => {
                props::check_snapshot_order(state, T, checkpoint);
                props::check_task_alignment(state, checkpoint);
                let applied = state.task.applied.clone();
                let taken = (applied.clone(), out_seqs.clone());
                if state.ghost.task_snapshots.get(&checkpoint).is_some_and(|old| *old != taken) {
                    state.ghost.violations.insert(Violation::Nondeterministic);
                }
                state.ghost.task_snapshots.insert(checkpoint, taken);
                let snapshot = TaskSnapshot { applied, positions, out_seqs, ended };
                state.writes[T.index()].push_back(Write::TaskSnapshot { checkpoint, snapshot });
            }
            (Node::Sink, Effect::Snapshot { checkpoint, positions, ended, .. }) => {
                props::check_snapshot_order(state, K, checkpoint);
                props::check_sink_alignment(state, checkpoint);
                let staged = std::mem::take(&mut state.sink.unstaged);
                let snapshot = SinkSnapshot { positions, ended };
                state.writes[K.index()].push_back(Write::SinkSnapshot { checkpoint, snapshot, staged });
            }
            (_, Effect::Ack(c)) => self.ack(state, node, c, log),
            (Node::Sink, Effect::Commit(c)) => state.writes[K.index()].push_back(Write::Commit(c)),
            (Node::Task, Effect::DropSnapshotsBelow(c)) => state.disk.task.retain(|&k, _| k >= c),
            (Node::Sink, Effect::DropSnapshotsBelow(c)) => state.disk.sink.retain(|&k, _| k >= c),
            (_, Effect::Credit { input }) => {
                log.note(|| format!("{node:?}: a duplicate on input {input} is dropped"))
            }
            (_, Effect::ResumeUpstream { input, from_seq, restored, .. }) => {
                let ch = match node {
                    Node::Task => channel(Node::Source(input as u8), T),
                    _ => channel_lane(T, K, input as u8),
                };
                state.resume[ch] = Some(Resume { from_seq, restored });
            }
            (Node::Sink, Effect::Committed(c)) => {
                state.coordinator.handle_sink_committed(K.participant(), c);
                self.drain_coordinator(state, log);
            }
            (_, Effect::Escalate(escalation)) => {
                log.note(|| format!("{node:?}: {escalation}: escalate to a global rollback"));
                match escalation {
                    Escalation::Diverged(_) => {
                        state.ghost.violations.insert(Violation::Diverged);
                    }
                    Escalation::ReplayGap { channel, gap } => {
                        // A queue that gave up to its budget may not serve; one that did not
                        // must, unless a later checkpoint completed (S6).
                        let gave_up = node == T
                            && state.task.driver.outputs().buffer(channel).is_some_and(|b| b.gave_up());
                        if gave_up {
                            state.ghost.overflow_escalated = true;
                        } else {
                            props::check_replay_gap(state, gap.restored);
                        }
                    }
                }
                self.global_rollback(state, log);
                return false;
            }
            (node, other) => unreachable!("{node:?} effect {other:?}"),
        }
        true
    }

    fn ack(&self, state: &mut State, node: Node, checkpoint: CheckpointId, log: &mut Log) {
        log.note(|| format!("coordinator receives Ack({checkpoint:?}) from {node:?}"));
        let grant = if node == T { state.task.driver.grant() } else { 0 };
        state.coordinator.handle_ack(node.participant(), grant, checkpoint);
        self.drain_coordinator(state, log);
    }

    /// A source with nothing left to read tells the coordinator, once per run.
    fn report_if_exhausted(&self, state: &mut State, s: u8, log: &mut Log) {
        if state.sources[s as usize].next < self.scope.batches_per_source {
            return;
        }
        log.note(|| format!("source{s}: input exhausted"));
        if self.scope.end_of_input {
            state.sources[s as usize].driver.end(); // its effects report the end
            self.drain_source(state, s, log);
        } else {
            // Scopes without the end as an item: the environment tells the coordinator.
            self.report_finished(state, s, log);
        }
    }

    fn report_finished(&self, state: &mut State, s: u8, log: &mut Log) {
        state.coordinator.handle_source_finished(s as usize);
        self.drain_coordinator(state, log);
    }

    /// Source `s` starts (a run attempt begins): a source restored after its end says so.
    fn start_source(&self, state: &mut State, s: u8, log: &mut Log) {
        state.sources[s as usize].driver.start();
        self.drain_source(state, s, log);
        self.report_if_exhausted(state, s, log);
    }

    /// The transform or the sink failed alone (SPEC §10.1): the writes it issued land first
    /// (the runtime flushes its log writer), then its driver restarts from what the disk
    /// holds. What was in flight to it is lost with its mailbox; the driver's effects ask
    /// each upstream to replay.
    fn local_recovery(&self, state: &mut State, node: Node, log: &mut Log) {
        // Their reports go to the old epoch and are dropped.
        while let Some(write) = state.writes[node.index()].pop_front() {
            self.on_durable(state, node, write, false, log);
        }
        let inputs: Vec<usize> = match node {
            Node::Task => (0..SOURCES as u8).map(|s| channel(Node::Source(s), T)).collect(),
            _ => (0..self.scope.sink_inputs() as u8).map(|lane| channel_lane(T, K, lane)).collect(),
        };
        for ch in inputs {
            state.net[ch].clear();
        }
        let mut restarted = driver(state, node).clone();
        restarted.fail();
        let restored = match restarted.restart(&DiskView { disk: &state.disk, node }) {
            Ok(restored) => restored,
            Err(e) => {
                log.note(|| format!("local recovery fails: {e}"));
                state.ghost.violations.insert(Violation::Unrecoverable);
                return;
            }
        };
        let (checkpoint, completed) = (restored.checkpoint, state.disk.completed);
        log.note(|| format!("{node:?} restores {checkpoint:?} and asks upstream to replay"));
        let ghost = &mut state.ghost;
        ghost.last_snapshot[node.participant()] = checkpoint;
        ghost.restored_locally = Some(ghost.restored_locally.map_or(checkpoint, |r| r.min(checkpoint)));
        let positions = restarted.positions().to_vec();
        match (node, restored.state) {
            (Node::Task, state_of) => {
                state.task.driver = restarted;
                state.task.applied = match state_of {
                    Some(Restoring::Task(applied)) => applied,
                    _ => BTreeSet::new(),
                };
                state.task.watermarks = Watermark::restored(&positions, checkpoint);
            }
            (_, state_of) => {
                let ended = restarted.ended();
                state.sink.received = positions.iter().zip(ended).map(|(&p, &e)| p - Seq::from(e)).collect();
                state.sink.driver = restarted;
                state.sink.unstaged.clear();
                state.sink.output = match state_of {
                    Some(Restoring::Sink(output)) => output,
                    _ => restored_output(&state.disk, None),
                };
                state.sink.watermarks = Watermark::restored(&positions, checkpoint);
            }
        }
        props::check_restore(state, node, completed);
        self.pump(state, node, log);
    }

    /// The sender of `from -> to` serves its restarted receiver's replay request: a source
    /// from its queue (the runtime re-reads), the transform through its driver.
    fn serve_resume(&self, state: &mut State, ch: usize, resume: Resume, log: &mut Log) {
        let Resume { from_seq, restored } = resume;
        let (from, to) = CHANNELS[ch];
        let Node::Source(s) = from else {
            let epoch = state.sink.driver.epoch();
            let channel = usize::from(lane_of(ch));
            state.task.driver.handle_resume(driver::Resume { channel, from_seq, restored, epoch });
            if self.pump(state, T, log) && state.net[ch].iter().any(|m| matches!(m, Msg::Batch { .. })) {
                state.ghost.replayed = true;
            }
            return;
        };
        log.note(|| format!("{from:?} re-reads for {to:?} after seq {from_seq}"));
        let epoch = state.task.driver.epoch();
        let resume = driver::Resume { channel: 0, from_seq, restored, epoch };
        state.sources[s as usize].driver.handle_resume(resume);
        self.drain_source(state, s, log);
    }

    /// The process died: rebuild every node from the disk as the recovery plan says.
    fn global_rollback(&self, state: &mut State, log: &mut Log) {
        for queue in &mut state.net {
            queue.clear();
        }
        for queue in &mut state.writes {
            queue.clear();
        }
        state.resume = [None; CHANNELS.len()];
        let disk = &mut state.disk;
        let input = RecoveryInput {
            completed: disk.completed,
            participants: [S0, S1, T, K].map(|node| participant_log(disk, node)).to_vec(),
        };
        let plan = match recovery::plan_global_rollback(&input) {
            Ok(plan) => plan,
            Err(e) => {
                log.note(|| format!("recovery fails: {e}"));
                state.ghost.violations.insert(Violation::Unrecoverable);
                return;
            }
        };
        log.note(|| format!("global rollback to {:?}", plan.checkpoint));
        let from = plan.checkpoint;
        let restored = from.unwrap_or_default();
        for (s, restore) in plan.participants[..SOURCES].iter().enumerate() {
            for c in &restore.discard_snapshots {
                disk.sources[s].remove(c);
            }
        }
        for c in &plan.participants[2].discard_snapshots {
            disk.task.remove(c);
        }
        let sink_plan: &ParticipantRestore = &plan.participants[3];
        for c in &sink_plan.discard_snapshots {
            disk.sink.remove(c);
        }
        for c in sink_plan.sink.iter().flat_map(|s| &s.discard_staged) {
            disk.staged.remove(c);
        }

        state.coordinator = self.coordinator(from);
        for s in 0..SOURCES {
            let next = from.map_or(0, |c| disk.sources[s][&c]);
            state.sources[s] = self.source(s as u8, restored, next);
        }
        let task_snapshot = from.map(|c| disk.task[&c].clone());
        // The slot's epoch is persisted: the restarted pipeline acts under the latest grant,
        // with no standby (a hung primary died with the process).
        let grant = state.failover.authority;
        state.failover.reset();
        let driver = self.task_driver(&plan.participants[2], task_snapshot.as_ref(), grant);
        state.task = TaskNode {
            watermarks: Watermark::restored(driver.positions(), restored),
            driver,
            applied: task_snapshot.map(|s| s.applied).unwrap_or_default(),
        };
        let sink_snapshot = from.map(|c| disk.sink[&c].clone());
        let driver = self.sink_driver(sink_plan, sink_snapshot.as_ref());
        let received =
            driver.positions().iter().zip(driver.ended()).map(|(&p, &e)| p - Seq::from(e)).collect();
        state.sink = SinkNode {
            received,
            watermarks: Watermark::restored(driver.positions(), restored),
            driver,
            unstaged: Vec::new(),
            output: restored_output(disk, from),
        };
        if grant > 0 {
            state.coordinator.handle_failover(T.participant(), grant);
            for lane in 0..self.scope.sink_inputs() {
                state.sink.driver.fence(lane, grant);
            }
        }
        state.ghost = Ghost {
            violations: std::mem::take(&mut state.ghost.violations),
            replayed: state.ghost.replayed,
            overflow_escalated: state.ghost.overflow_escalated,
            ..Ghost::default()
        };
        self.pump(state, K, log);
        for s in 0..SOURCES as u8 {
            self.start_source(state, s, log);
        }
    }
}

/// What the log holds of `node`'s checkpoints, as the planners read it.
fn participant_log(disk: &Disk, node: Node) -> ParticipantLog {
    match node {
        Node::Source(s) => {
            ParticipantLog { snapshots: checkpoint_ids(&disk.sources[s as usize]), sink: None }
        }
        Node::Task => ParticipantLog { snapshots: checkpoint_ids(&disk.task), sink: None },
        Node::Sink => ParticipantLog {
            snapshots: checkpoint_ids(&disk.sink),
            sink: Some(SinkLog {
                staged: disk.staged.keys().copied().collect(),
                committed_through: disk.committed_through,
            }),
        },
        Node::Coordinator => unreachable!("the coordinator has no snapshots"),
    }
}

/// The sink's output as of its snapshot of `restored`: what is committed, then what is
/// staged up to the restore point (all of it follows the committed output).
fn restored_output(disk: &Disk, restored: Option<CheckpointId>) -> Vec<BatchId> {
    let staged = restored.into_iter().flat_map(|r| disk.staged.range(..=r)).flat_map(|(_, out)| out);
    disk.committed.iter().chain(staged).copied().collect()
}

fn checkpoint_ids<V>(snapshots: &BTreeMap<CheckpointId, V>) -> Vec<CheckpointId> {
    snapshots.keys().copied().collect()
}

fn driver(state: &mut State, node: Node) -> &mut Subtask<BatchId> {
    match node {
        Node::Task => &mut state.task.driver,
        Node::Sink => &mut state.sink.driver,
        other => unreachable!("{other:?} has no driver"),
    }
}

fn watermarks(state: &mut State, node: Node) -> &mut Vec<Watermark> {
    match node {
        Node::Task => &mut state.task.watermarks,
        Node::Sink => &mut state.sink.watermarks,
        other => unreachable!("{other:?} has no gate"),
    }
}

/// Put `msg` on channel `ch`, unless its receiver restarted and has not been served its
/// replay yet: then the message goes to its previous epoch and is dropped.
/// The message that carries `item`.
fn msg_of(item: Item<BatchId>) -> Msg {
    match item {
        Item::Batch { seq, payload } => Msg::Batch { seq, id: payload },
        Item::Barrier(c) => Msg::Barrier(c),
    }
}

fn send(state: &mut State, ch: usize, msg: Msg, log: &mut Log) {
    let to = CHANNELS[ch].1;
    if is_data(ch) && state.resume[ch].is_some() {
        log.note(|| format!("{msg:?} to {to:?} goes to its previous epoch and is dropped"));
        return;
    }
    state.net[ch].push_back(msg);
}

/// Where a step writes what each node did; off while checking, on when printing a trace.
#[derive(Default)]
pub struct Log {
    enabled: bool,
    /// The lines written.
    pub lines: Vec<String>,
}

impl Log {
    /// A log that records.
    pub fn recording() -> Log {
        Log { enabled: true, lines: Vec::new() }
    }

    /// A log that drops everything (and formats nothing).
    pub fn off() -> Log {
        Log::default()
    }

    pub(crate) fn note(&mut self, line: impl FnOnce() -> String) {
        if self.enabled {
            self.lines.push(line());
        }
    }
}

impl Model for CheckpointModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let none = CheckpointId::default();
        let mut state = State {
            coordinator: self.coordinator(None),
            sources: std::array::from_fn(|s| self.source(s as u8, none, 0)),
            task: TaskNode {
                driver: self.task_driver(&ParticipantRestore::fresh(), None, 0),
                watermarks: vec![Watermark::default(); SOURCES],
                applied: BTreeSet::new(),
            },
            sink: SinkNode {
                driver: self.sink_driver(&ParticipantRestore::fresh(), None),
                received: vec![0; self.scope.sink_inputs()],
                watermarks: vec![Watermark::default(); self.scope.sink_inputs()],
                unstaged: Vec::new(),
                output: Vec::new(),
            },
            net: Default::default(),
            resume: [None; CHANNELS.len()],
            disk: Disk::default(),
            writes: Default::default(),
            failover: Failover::default(),
            budget: Budget {
                ticks: self.scope.ticks,
                timeouts: self.scope.timeouts,
                crashes: self.scope.crashes,
                local_crashes: self.scope.local_crashes,
                failovers: self.scope.failovers,
                standby_crashes: self.scope.standby_crashes,
            },
            ghost: Ghost::default(),
        };
        if let Some(mode) = self.scope.standby {
            // The standby is attached at the start: the primary ships its initial state.
            state.failover =
                Failover { enabled: true, next_id: 2, grants: vec![(0, 0)], ..Failover::default() };
            state.failover.standby = Some(self.standby(mode, 1));
            state.task.driver.attach_standby();
            self.pump(&mut state, T, &mut Log::off());
        }
        for s in 0..SOURCES as u8 {
            self.start_source(&mut state, s, &mut Log::off());
        }
        vec![state]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.ghost.violations.contains(&Violation::Unrecoverable) {
            return;
        }
        for s in 0..SOURCES as u8 {
            if state.sources[s as usize].next < self.scope.batches_per_source {
                actions.push(Action::Emit(s));
            }
        }
        for (i, &(from, to)) in CHANNELS.iter().enumerate() {
            // With the primary down, what is sent to it waits (the promotion settles it).
            if state.failover.down() && to == T {
                continue;
            }
            if !state.net[i].is_empty() {
                actions.push(Action::Deliver(from, to, lane_of(i)));
            }
        }
        // An interval firing while a checkpoint is pending changes nothing (max_concurrent 1),
        // so it is offered only when it can trigger one.
        if state.budget.ticks > 0
            && !state.coordinator.is_finished()
            && state.coordinator.pending().next().is_none()
        {
            actions.push(Action::Tick);
        }
        if state.budget.timeouts > 0 {
            actions.extend(state.coordinator.collecting().map(Action::Timeout));
        }
        for node in NODES {
            if !state.writes[node.index()].is_empty() {
                actions.push(Action::Durable(node));
            }
        }
        if state.budget.crashes > 0 {
            actions.extend(NODES.map(Action::Crash));
        }
        // Appended after the older steps, so that a fuzz input of a scope without local
        // failures picks the same steps as before they existed.
        for i in DATA_CHANNELS {
            if state.resume[i].is_some() {
                let (from, to) = CHANNELS[i];
                actions.push(Action::Resume(from, to, lane_of(i)));
            }
        }
        if state.budget.local_crashes > 0 {
            actions.extend([Action::Fail(T), Action::Fail(K)]);
        }
        let mut failover = Vec::new();
        self.failover_actions(state, &mut failover);
        actions.extend(failover.into_iter().map(Action::Failover));
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut next = last.clone();
        self.step(&mut next, &action, &mut Log::off());
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        props::properties_for(&self.scope)
    }
}

/// What a restarted driver restores from the model's disk besides its positions: the
/// transform's applied batches, or the sink's output (committed, then staged up to the
/// restore point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restoring {
    /// The transform's operator state.
    Task(BTreeSet<BatchId>),
    /// The sink's output.
    Sink(Vec<BatchId>),
}

/// The model's disk as the driver's storage seam, for one node.
struct DiskView<'a> {
    disk: &'a Disk,
    node: Node,
}

impl Storage<BatchId> for DiskView<'_> {
    type State = Restoring;
    type Error = String;

    fn completed(&self) -> Result<Option<CheckpointId>, String> {
        Ok(self.disk.completed)
    }

    fn participant_log(&self, _: ParticipantId, _: bool) -> Result<ParticipantLog, String> {
        Ok(participant_log(self.disk, self.node))
    }

    fn snapshot(&self, _: ParticipantId, c: CheckpointId) -> Result<Snapshot<Restoring>, String> {
        match self.node {
            Node::Task => {
                let s = self.disk.task.get(&c).ok_or("no task snapshot")?;
                let state = Restoring::Task(s.applied.clone());
                Ok(Snapshot {
                    positions: s.positions.clone(),
                    out_seqs: s.out_seqs.clone(),
                    ended: s.ended.clone(),
                    state,
                })
            }
            _ => {
                let SinkSnapshot { positions, ended } =
                    self.disk.sink.get(&c).ok_or("no sink snapshot")?.clone();
                let state = Restoring::Sink(restored_output(self.disk, Some(c)));
                Ok(Snapshot { positions, out_seqs: Vec::new(), ended, state })
            }
        }
    }

    fn committed_through(&self, _: ParticipantId) -> Result<Option<CheckpointId>, String> {
        Ok(self.disk.committed_through)
    }
}
