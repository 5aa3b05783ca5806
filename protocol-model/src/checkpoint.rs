//! The checkpoint model: two sources, one two-input transform subtask, one sink and the
//! coordinator, driven through every interleaving by stateright.
//!
//! The state holds the runtime's own cores ([`Coordinator`], [`SourceTask`], [`Task`]); this
//! file plays the part the actors will play in the runtime (the *shell*): it feeds messages
//! into `handle_*`, carries out the actions the cores return, and stands in for the log with
//! an explicit [`Disk`]. Nothing here decides anything about the protocol.
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
//!   globally with the plan of `recovery::plan_global_rollback` over what is on disk.
//!
//! The operator is the identity on batch ids (its state is the set of batches it applied),
//! so snapshot contents and the sink's output can be compared with what the sources sent.
//! Budgets only shrink and every other step consumes a message or a write, so the state
//! graph is finite and acyclic: every path ends in a terminal state, which is what makes
//! the terminal-state properties below liveness checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use stateright::{Model, Property};
use weir_runtime::protocol::aligner::AlignmentMode;
use weir_runtime::protocol::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig};
use weir_runtime::protocol::participant::{Action as TaskAction, SourceTask, Task, TaskConfig};
use weir_runtime::protocol::recovery::{self, ParticipantLog, RecoveryInput, SinkLog};
use weir_runtime::protocol::{CheckpointId, Mutant, Mutations, ParticipantId, Seq};

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
    fn index(self) -> usize {
        match self {
            Node::Coordinator => 0,
            Node::Source(s) => 1 + s as usize,
            Node::Task => 3,
            Node::Sink => 4,
        }
    }

    /// The node's participant id at the coordinator.
    fn participant(self) -> ParticipantId {
        match self {
            Node::Source(s) => s as usize,
            Node::Task => 2,
            Node::Sink => 3,
            Node::Coordinator => unreachable!("the coordinator is not a participant"),
        }
    }
}

/// The FIFO channels: data (sources -> task -> sink) and control from the coordinator
/// (triggers to sources, aborts to the task, complete and abort to the sink).
///
/// Three hops are folded into the step that causes them, because no interleaving of theirs
/// can change an outcome (see the README, "Reductions"): acknowledgements and end-of-input
/// reports reach the coordinator in the step that sends them (their order against every
/// other coordinator input is still explored through the order of the steps that cause
/// them); `Complete` reaches sources and the task at once (there it only truncates, and the
/// earliest truncation is the worst case for S6); sources get no `Abort` (they ignore it).
pub const CHANNELS: [(Node, Node); 7] = [(S0, T), (S1, T), (T, K), (C, S0), (C, S1), (C, T), (C, K)];

fn channel(from: Node, to: Node) -> usize {
    CHANNELS
        .iter()
        .position(|&ch| ch == (from, to))
        .unwrap_or_else(|| panic!("no channel {from:?} -> {to:?}"))
}

/// One source record batch: the `index`-th batch of source `source`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    /// The source.
    pub source: u8,
    /// Its position in that source's input.
    pub index: u8,
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
        /// Last applied sequence number on its input.
        positions: Vec<Seq>,
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
    /// Sequence number of the last batch sent to the sink.
    pub out_seq: Seq,
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
    /// Sink snapshots (input positions) by checkpoint.
    pub sink: BTreeMap<CheckpointId, Vec<Seq>>,
    /// Sink output staged by checkpoint, not yet visible.
    pub staged: BTreeMap<CheckpointId, Vec<BatchId>>,
    /// Sink output made visible, in commit order.
    pub committed: Vec<BatchId>,
    /// The sink's durable "committed through" record.
    pub committed_through: Option<CheckpointId>,
}

/// A source subtask: its core and its read position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceNode {
    /// The runtime's source core.
    pub core: SourceTask,
    /// Next batch index to read (also the number of batches sent; batch `i` has seq `i + 1`).
    pub next: u8,
}

/// The transform subtask: its core and its operator state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskNode {
    /// The runtime's task core.
    pub core: Task<BatchId>,
    /// Operator state: the batches applied.
    pub applied: BTreeSet<BatchId>,
    /// Sequence number of the last batch sent to the sink.
    pub out_seq: Seq,
}

/// The sink subtask: its core and the output not staged yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkNode {
    /// The runtime's task core, in sink mode.
    pub core: Task<BatchId>,
    /// Output written since the last snapshot.
    pub unstaged: Vec<BatchId>,
}

/// How many times the environment may still do each bounded thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Checkpoint interval firings left.
    pub ticks: u8,
    /// Checkpoint timeouts left.
    pub timeouts: u8,
    /// Crashes left.
    pub crashes: u8,
}

/// History the properties need that the system itself does not keep (ghost state). Kept to
/// the current run and pruned at completions, so it distinguishes few states.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    /// Each source's read position when it emitted `Barrier(c)`, this run.
    pub barrier_positions: BTreeMap<CheckpointId, [Option<u8>; SOURCES]>,
    /// What the task had applied when it snapshotted `c`, this run.
    pub task_snapshots: BTreeMap<CheckpointId, BTreeSet<BatchId>>,
    /// Checkpoints aborted this run.
    pub aborted: BTreeSet<CheckpointId>,
    /// Latest checkpoint each participant snapshotted this run.
    pub last_snapshot: [CheckpointId; 4],
    /// A checkpoint completed in this run.
    pub completed_this_run: bool,
    /// Safety violations observed at the step they happened.
    pub violations: BTreeSet<Violation>,
}

/// A state of the whole pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// Durable state.
    pub disk: Disk,
    /// Pending writes per node (by node index), durable in order.
    pub writes: [VecDeque<Write>; NODES.len()],
    /// What the environment may still do.
    pub budget: Budget,
    /// History for the properties.
    pub ghost: Ghost,
}

/// A step of the environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Source `s` reads and sends its next batch.
    Emit(u8),
    /// The channel `from -> to` delivers its oldest message.
    Deliver(Node, Node),
    /// The checkpoint interval fires.
    Tick,
    /// The timeout of a collecting checkpoint fires.
    Timeout(CheckpointId),
    /// The node's oldest pending write becomes durable.
    Durable(Node),
    /// The node crashes; the pipeline rolls back globally.
    Crash(Node),
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
}

impl Default for Scope {
    /// The default scope, which CI checks exhaustively: two batches per source (so a
    /// checkpoint can fall mid-input on either side), one interval checkpoint plus the final
    /// one (two completed checkpoints in every fault-free run, up to four ids with a timeout
    /// and a crash), one timeout, one crash at any step. About 2.7 million states.
    fn default() -> Scope {
        Scope { batches_per_source: 2, ticks: 1, timeouts: 1, crashes: 1 }
    }
}

impl Scope {
    /// The larger scope of the nightly check: a second interval checkpoint.
    pub fn nightly() -> Scope {
        Scope { ticks: 2, ..Scope::default() }
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

    fn coordinator_config(&self) -> CoordinatorConfig {
        CoordinatorConfig::new(4, SOURCES)
    }

    fn task_config(&self, sink: bool) -> TaskConfig {
        let inputs = if sink { 1 } else { SOURCES };
        TaskConfig { inputs, mode: AlignmentMode::ExactlyOnce, sink, mutations: self.mutations }
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
                let seq = Seq::from(source.next);
                log.note(|| format!("source{s} reads {id:?}, sends it as seq {seq}"));
                send(state, Node::Source(s), T, Msg::Batch { seq, id });
                self.report_if_exhausted(state, s, log);
            }
            Action::Deliver(from, to) => {
                let msg = state.net[channel(from, to)].pop_front().expect("delivering from an empty channel");
                self.deliver(state, from, to, msg, log);
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
                self.on_durable(state, node, write, log);
            }
            Action::Crash(node) => {
                state.budget.crashes -= 1;
                log.note(|| format!("{node:?} crashes: the process dies, pending writes are lost"));
                self.global_rollback(state, log);
            }
        }
    }

    fn deliver(&self, state: &mut State, from: Node, to: Node, msg: Msg, log: &mut Log) {
        log.note(|| format!("{to:?} receives {msg:?} from {from:?}"));
        match (to, msg) {
            (Node::Source(s), Msg::Trigger(c)) => {
                state.sources[s as usize].core.handle_trigger(c);
                self.drain_source(state, s, log);
            }
            (Node::Task | Node::Sink, msg) => {
                let input = match from {
                    Node::Source(s) => s as usize,
                    _ => 0,
                };
                let core = if to == T { &mut state.task.core } else { &mut state.sink.core };
                match msg {
                    Msg::Batch { seq, id } => core.handle_batch(input, seq, id),
                    Msg::Barrier(c) => core.handle_barrier(input, c),
                    Msg::Complete(c) => core.handle_checkpoint_complete(c),
                    Msg::Abort(c) => core.handle_checkpoint_abort(c),
                    other => unreachable!("{to:?} got {other:?}"),
                }
                self.drain_task(state, to, log);
            }
            (to, msg) => unreachable!("{to:?} got {msg:?}"),
        }
    }

    fn on_durable(&self, state: &mut State, node: Node, write: Write, log: &mut Log) {
        log.note(|| format!("{node:?}: {write:?} is durable"));
        match write {
            Write::SourceSnapshot { checkpoint, position } => {
                let Node::Source(s) = node else { unreachable!() };
                state.disk.sources[s as usize].insert(checkpoint, position);
                state.sources[s as usize].core.on_snapshot_durable(checkpoint);
                self.drain_source(state, s, log);
            }
            Write::TaskSnapshot { checkpoint, snapshot } => {
                state.disk.task.insert(checkpoint, snapshot);
                state.task.core.on_snapshot_durable(checkpoint);
                self.drain_task(state, T, log);
            }
            Write::SinkSnapshot { checkpoint, positions, staged } => {
                state.disk.sink.insert(checkpoint, positions);
                state.disk.staged.insert(checkpoint, staged);
                state.sink.core.on_snapshot_durable(checkpoint);
                self.drain_task(state, K, log);
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
                state.sink.core.on_commit_durable(checkpoint);
                self.drain_task(state, K, log);
            }
            Write::Completion(checkpoint) => {
                props::check_completion(state, checkpoint);
                state.disk.completed = Some(checkpoint);
                let ghost = &mut state.ghost;
                ghost.completed_this_run = true;
                ghost.barrier_positions.retain(|&c, _| c >= checkpoint);
                ghost.task_snapshots.retain(|&c, _| c >= checkpoint);
                ghost.aborted.retain(|&c| c >= checkpoint);
                state.coordinator.on_completion_durable(checkpoint);
                self.drain_coordinator(state, log);
            }
        }
    }

    fn drain_coordinator(&self, state: &mut State, log: &mut Log) {
        while let Some(action) = state.coordinator.poll_action() {
            log.note(|| format!("coordinator: {action:?}"));
            match action {
                CoordinatorAction::Trigger(c) => {
                    for s in 0..SOURCES as u8 {
                        send(state, C, Node::Source(s), Msg::Trigger(c));
                    }
                }
                CoordinatorAction::ArmTimeout(_) | CoordinatorAction::Finished => {}
                CoordinatorAction::PersistCompletion(c) => {
                    state.writes[C.index()].push_back(Write::Completion(c))
                }
                CoordinatorAction::NotifyComplete(c) => {
                    for s in 0..SOURCES as u8 {
                        state.sources[s as usize].core.handle_checkpoint_complete(c);
                        self.drain_source(state, s, log);
                    }
                    state.task.core.handle_checkpoint_complete(c);
                    self.drain_task(state, T, log);
                    send(state, C, K, Msg::Complete(c));
                }
                CoordinatorAction::NotifyAbort(c) => {
                    state.ghost.aborted.insert(c);
                    send(state, C, T, Msg::Abort(c));
                    send(state, C, K, Msg::Abort(c));
                }
            }
        }
    }

    fn drain_source(&self, state: &mut State, s: u8, log: &mut Log) {
        let node = Node::Source(s);
        while let Some(action) = state.sources[s as usize].core.poll_action() {
            log.note(|| format!("{node:?}: {action:?}"));
            match action {
                TaskAction::Snapshot { checkpoint, .. } => {
                    let position = state.sources[s as usize].next;
                    props::check_snapshot_order(state, node, checkpoint);
                    state.ghost.barrier_positions.entry(checkpoint).or_default()[s as usize] = Some(position);
                    state.writes[node.index()].push_back(Write::SourceSnapshot { checkpoint, position });
                    send(state, node, T, Msg::Barrier(checkpoint));
                }
                TaskAction::Ack(c) => self.ack(state, node, c, log),
                TaskAction::DropSnapshotsBelow(c) => state.disk.sources[s as usize].retain(|&k, _| k >= c),
                other => unreachable!("source action {other:?}"),
            }
        }
    }

    fn drain_task(&self, state: &mut State, node: Node, log: &mut Log) {
        loop {
            let action =
                if node == T { state.task.core.poll_action() } else { state.sink.core.poll_action() };
            let Some(action) = action else { break };
            log.note(|| format!("{node:?}: {action:?}"));
            match (node, action) {
                (Node::Task, TaskAction::Process { batch, .. }) => {
                    if !state.task.applied.insert(batch) {
                        state.ghost.violations.insert(Violation::AppliedTwice);
                    }
                    state.task.out_seq += 1;
                    let seq = state.task.out_seq;
                    send(state, T, K, Msg::Batch { seq, id: batch });
                }
                (Node::Sink, TaskAction::Process { batch, .. }) => {
                    if props::sink_reflected(state).contains(&batch) {
                        state.ghost.violations.insert(Violation::AppliedTwice);
                    }
                    state.sink.unstaged.push(batch);
                }
                (Node::Task, TaskAction::Snapshot { checkpoint, positions }) => {
                    props::check_snapshot_order(state, T, checkpoint);
                    props::check_task_alignment(state, checkpoint);
                    let applied = state.task.applied.clone();
                    state.ghost.task_snapshots.insert(checkpoint, applied.clone());
                    let snapshot = TaskSnapshot { applied, positions, out_seq: state.task.out_seq };
                    state.writes[T.index()].push_back(Write::TaskSnapshot { checkpoint, snapshot });
                    send(state, T, K, Msg::Barrier(checkpoint));
                }
                (Node::Sink, TaskAction::Snapshot { checkpoint, positions }) => {
                    props::check_snapshot_order(state, K, checkpoint);
                    props::check_sink_alignment(state, checkpoint);
                    let staged = std::mem::take(&mut state.sink.unstaged);
                    state.writes[K.index()].push_back(Write::SinkSnapshot { checkpoint, positions, staged });
                }
                (_, TaskAction::Ack(c)) => self.ack(state, node, c, log),
                (Node::Sink, TaskAction::Commit(c)) => state.writes[K.index()].push_back(Write::Commit(c)),
                (Node::Task, TaskAction::DropSnapshotsBelow(c)) => state.disk.task.retain(|&k, _| k >= c),
                (Node::Sink, TaskAction::DropSnapshotsBelow(c)) => state.disk.sink.retain(|&k, _| k >= c),
                (node, other) => unreachable!("{node:?} action {other:?}"),
            }
        }
    }

    fn ack(&self, state: &mut State, node: Node, checkpoint: CheckpointId, log: &mut Log) {
        log.note(|| format!("coordinator receives Ack({checkpoint:?}) from {node:?}"));
        state.coordinator.handle_ack(node.participant(), checkpoint);
        self.drain_coordinator(state, log);
    }

    /// A source with nothing left to read tells the coordinator, once per run.
    fn report_if_exhausted(&self, state: &mut State, s: u8, log: &mut Log) {
        if state.sources[s as usize].next == self.scope.batches_per_source {
            log.note(|| format!("source{s}: input exhausted"));
            state.coordinator.handle_source_finished(s as usize);
            self.drain_coordinator(state, log);
        }
    }

    /// The process died: rebuild every node from the disk as the recovery plan says.
    fn global_rollback(&self, state: &mut State, log: &mut Log) {
        for queue in &mut state.net {
            queue.clear();
        }
        for queue in &mut state.writes {
            queue.clear();
        }
        let disk = &mut state.disk;
        let input = RecoveryInput {
            completed: disk.completed,
            participants: vec![
                ParticipantLog { snapshots: checkpoint_ids(&disk.sources[0]), sink: None },
                ParticipantLog { snapshots: checkpoint_ids(&disk.sources[1]), sink: None },
                ParticipantLog { snapshots: checkpoint_ids(&disk.task), sink: None },
                ParticipantLog {
                    snapshots: checkpoint_ids(&disk.sink),
                    sink: Some(SinkLog {
                        staged: disk.staged.keys().copied().collect(),
                        committed_through: disk.committed_through,
                    }),
                },
            ],
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
        for (s, restore) in plan.participants[..SOURCES].iter().enumerate() {
            for c in &restore.discard_snapshots {
                disk.sources[s].remove(c);
            }
        }
        for c in &plan.participants[2].discard_snapshots {
            disk.task.remove(c);
        }
        let sink_plan = &plan.participants[3];
        for c in &sink_plan.discard_snapshots {
            disk.sink.remove(c);
        }
        for c in sink_plan.sink.iter().flat_map(|s| &s.discard_staged) {
            disk.staged.remove(c);
        }

        state.coordinator = Coordinator::restore(self.coordinator_config(), from);
        for s in 0..SOURCES {
            let next = from.map_or(0, |c| disk.sources[s][&c]);
            let core = SourceTask::restore(from).with_mutations(self.mutations);
            state.sources[s] = SourceNode { core, next };
        }
        let task_snapshot = from.map(|c| disk.task[&c].clone());
        let positions = task_snapshot.as_ref().map_or(vec![0; SOURCES], |s| s.positions.clone());
        state.task = TaskNode {
            core: Task::restore(self.task_config(false), &plan.participants[2], &positions),
            applied: task_snapshot.as_ref().map(|s| s.applied.clone()).unwrap_or_default(),
            out_seq: task_snapshot.map_or(0, |s| s.out_seq),
        };
        let positions = from.map_or(vec![0], |c| disk.sink[&c].clone());
        state.sink = SinkNode {
            core: Task::restore(self.task_config(true), sink_plan, &positions),
            unstaged: Vec::new(),
        };
        state.ghost = Ghost { violations: std::mem::take(&mut state.ghost.violations), ..Ghost::default() };
        self.drain_task(state, K, log);
        for s in 0..SOURCES as u8 {
            self.report_if_exhausted(state, s, log);
        }
    }
}

fn checkpoint_ids<V>(snapshots: &BTreeMap<CheckpointId, V>) -> Vec<CheckpointId> {
    snapshots.keys().copied().collect()
}

fn send(state: &mut State, from: Node, to: Node, msg: Msg) {
    state.net[channel(from, to)].push_back(msg);
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

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.enabled {
            self.lines.push(line());
        }
    }
}

impl Model for CheckpointModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let task = Task::new(self.task_config(false));
        let sink = Task::new(self.task_config(true));
        let mut state = State {
            coordinator: Coordinator::new(self.coordinator_config()),
            sources: std::array::from_fn(|_| SourceNode {
                core: SourceTask::new().with_mutations(self.mutations),
                next: 0,
            }),
            task: TaskNode { core: task, applied: BTreeSet::new(), out_seq: 0 },
            sink: SinkNode { core: sink, unstaged: Vec::new() },
            net: Default::default(),
            disk: Disk::default(),
            writes: Default::default(),
            budget: Budget {
                ticks: self.scope.ticks,
                timeouts: self.scope.timeouts,
                crashes: self.scope.crashes,
            },
            ghost: Ghost::default(),
        };
        for s in 0..SOURCES as u8 {
            self.report_if_exhausted(&mut state, s, &mut Log::off());
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
            if !state.net[i].is_empty() {
                actions.push(Action::Deliver(from, to));
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
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut next = last.clone();
        self.step(&mut next, &action, &mut Log::off());
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        props::properties()
    }
}
