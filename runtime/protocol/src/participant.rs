//! The checkpoint duties of one subtask (SPEC §4, §5): what a source, transform or sink
//! must do when a checkpoint reaches it, and in what order.
//!
//! - [`SourceTask`]: on a trigger, snapshot the read position and emit the barrier.
//! - [`Task`]: a transform or sink subtask. Its [`Aligner`] decides when to snapshot; the
//!   task acknowledges only after the snapshot is durable (SPEC §4.2), truncates on
//!   completion, and, for a sink, runs the two-phase commit: the snapshot write stages the
//!   output since the previous barrier (pre-commit), and only a completed checkpoint makes
//!   staged output visible (commit), idempotently (SPEC §5).
//!
//! Neither owns operator state or does I/O: the driver snapshots, writes, sends and commits
//! when an [`Action`] says so, and reports back through `on_*_durable`.

use std::collections::{BTreeSet, VecDeque};

use super::aligner::{Aligner, AlignerOutput, AlignmentMode};
use super::recovery::ParticipantRestore;
use super::{CheckpointId, Mutant, Mutations, Seq};

/// What a subtask's driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action<B> {
    /// Apply this batch to the operator (sinks: write it to the not-yet-staged output).
    Process {
        /// The input it came from.
        input: usize,
        /// Its sequence number on that input.
        seq: Seq,
        /// The batch.
        batch: B,
    },
    /// Snapshot now: capture the operator state (sources: the read position) with
    /// `positions`, write it to the log asynchronously, forward `Barrier(checkpoint)` on every
    /// output. A sink stages, in the same write, everything it output since its previous
    /// snapshot under `checkpoint` (pre-commit). Report durability with `on_snapshot_durable`.
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Last applied sequence number per input (empty for sources).
        positions: Vec<Seq>,
    },
    /// Acknowledge the checkpoint to the coordinator.
    Ack(CheckpointId),
    /// Sinks: make visible, in checkpoint order, every staged checkpoint up to and including
    /// this one that is not visible yet, and record "committed through" this checkpoint in
    /// the same durable write. Report it with `on_commit_durable`.
    Commit(CheckpointId),
    /// The checkpoint is complete: snapshots (and staged output) of older checkpoints are no
    /// longer needed (SPEC §6.5).
    DropSnapshotsBelow(CheckpointId),
}

/// How a [`Task`] is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskConfig {
    /// Number of input channels.
    pub inputs: usize,
    /// Exactly-once or at-least-once alignment.
    pub mode: AlignmentMode,
    /// Whether this task is a sink (runs the two-phase commit).
    pub sink: bool,
    /// Deliberately broken behaviour, for model checking only.
    pub mutations: Mutations,
}

impl TaskConfig {
    /// A transform subtask with `inputs` inputs.
    pub fn transform(inputs: usize, mode: AlignmentMode) -> TaskConfig {
        TaskConfig { inputs, mode, sink: false, mutations: Mutations::NONE }
    }

    /// A sink subtask with `inputs` inputs.
    pub fn sink(inputs: usize, mode: AlignmentMode) -> TaskConfig {
        TaskConfig { inputs, mode, sink: true, mutations: Mutations::NONE }
    }
}

/// The sink side of the two-phase commit (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct TwoPhaseCommit {
    /// Checkpoints whose staged output is durable and not yet visible.
    staged: BTreeSet<CheckpointId>,
}

/// The checkpoint core of a transform or sink subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task<B> {
    aligner: Aligner<B>,
    commit: Option<TwoPhaseCommit>,
    /// The latest checkpoint known complete (restored from, or reported by the coordinator).
    completed: CheckpointId,
    mutations: Mutations,
    out: VecDeque<Action<B>>,
}

impl<B> Task<B> {
    /// A fresh subtask (no checkpoint to restore).
    pub fn new(config: TaskConfig) -> Task<B> {
        Task::restore(config, &ParticipantRestore::fresh(), &vec![0; config.inputs])
    }

    /// A subtask restored as the recovery plan says (SPEC §7): `positions` come from its
    /// snapshot of `restore.from` (zeros when there is none). A sink whose staged output
    /// up to the restore point was not committed yet commits it first (the repair of a
    /// crash between pre-commit and commit).
    pub fn restore(config: TaskConfig, restore: &ParticipantRestore, positions: &[Seq]) -> Task<B> {
        assert_eq!(positions.len(), config.inputs, "one position per input");
        let aligner = Aligner::restore(positions, restore.from.unwrap_or_default(), config.mode)
            .with_mutations(config.mutations);
        let completed = restore.from.unwrap_or_default();
        let mut task =
            Task { aligner, commit: None, completed, mutations: config.mutations, out: VecDeque::new() };
        if config.sink {
            let sink = restore.sink.clone().unwrap_or_default();
            task.commit = Some(TwoPhaseCommit { staged: sink.staged.iter().copied().collect() });
            if let Some(c) = sink.commit {
                task.out.push_back(Action::Commit(c));
            }
        }
        task
    }

    /// A batch arrived on `input`.
    pub fn handle_batch(&mut self, input: usize, seq: Seq, batch: B) {
        self.aligner.handle_batch(input, seq, batch);
        self.take_aligner_output();
    }

    /// `Barrier(checkpoint)` arrived on `input`.
    pub fn handle_barrier(&mut self, input: usize, checkpoint: CheckpointId) {
        self.aligner.handle_barrier(input, checkpoint);
        self.take_aligner_output();
    }

    /// The coordinator completed `checkpoint` (its completion record is durable).
    pub fn handle_checkpoint_complete(&mut self, checkpoint: CheckpointId) {
        self.completed = self.completed.max(checkpoint);
        if let Some(commit) = &self.commit
            && commit.staged.first().is_some_and(|&c| c <= checkpoint)
        {
            self.out.push_back(Action::Commit(checkpoint));
        }
        self.out.push_back(Action::DropSnapshotsBelow(checkpoint));
    }

    /// The coordinator aborted `checkpoint`. A sink keeps what it staged under it: the next
    /// completed checkpoint commits it (SPEC §5.3).
    pub fn handle_checkpoint_abort(&mut self, checkpoint: CheckpointId) {
        self.aligner.handle_abort(checkpoint);
        self.take_aligner_output();
    }

    /// The snapshot (and, for a sink, the staged output) of `checkpoint` is durable. A
    /// snapshot taken again by a replay after its checkpoint completed (SPEC §10.4) is
    /// handled as that completion at once: a sink commits what it re-staged.
    pub fn on_snapshot_durable(&mut self, checkpoint: CheckpointId) {
        if !self.mutations.has(Mutant::AckBeforeDurable) {
            self.out.push_back(Action::Ack(checkpoint));
        }
        if let Some(commit) = &mut self.commit {
            commit.staged.insert(checkpoint);
            if self.mutations.has(Mutant::CommitBeforeComplete) {
                self.out.push_back(Action::Commit(checkpoint));
            }
        }
        if checkpoint <= self.completed {
            self.handle_checkpoint_complete(self.completed);
        }
    }

    /// The commit through `checkpoint` is durable.
    pub fn on_commit_durable(&mut self, checkpoint: CheckpointId) {
        if let Some(commit) = &mut self.commit {
            commit.staged.retain(|&c| c > checkpoint);
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action<B>> {
        self.out.pop_front()
    }

    /// The input side: positions, alignment in progress, held batches.
    pub fn aligner(&self) -> &Aligner<B> {
        &self.aligner
    }

    fn take_aligner_output(&mut self) {
        while let Some(output) = self.aligner.poll_output() {
            match output {
                AlignerOutput::Process { input, seq, batch } => {
                    self.out.push_back(Action::Process { input, seq, batch })
                }
                AlignerOutput::Snapshot { checkpoint, positions } => {
                    self.out.push_back(Action::Snapshot { checkpoint, positions });
                    if self.mutations.has(Mutant::AckBeforeDurable) {
                        self.out.push_back(Action::Ack(checkpoint));
                    }
                }
            }
        }
    }
}

/// The checkpoint core of a source subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceTask {
    /// Highest checkpoint triggered here.
    last: CheckpointId,
    mutations: Mutations,
    out: VecDeque<Action<()>>,
}

impl SourceTask {
    /// A fresh source subtask.
    pub fn new() -> SourceTask {
        SourceTask::default()
    }

    /// A source restored from its snapshot of `from` (its read position is in the snapshot).
    pub fn restore(from: Option<CheckpointId>) -> SourceTask {
        SourceTask { last: from.unwrap_or_default(), ..SourceTask::default() }
    }

    /// Switch on deliberately broken behaviour (model checking only).
    pub fn with_mutations(mut self, mutations: Mutations) -> SourceTask {
        self.mutations = mutations;
        self
    }

    /// The coordinator triggered `checkpoint` (SPEC §4.1). Old or repeated triggers are ignored.
    pub fn handle_trigger(&mut self, checkpoint: CheckpointId) {
        if checkpoint <= self.last {
            return;
        }
        self.last = checkpoint;
        self.out.push_back(Action::Snapshot { checkpoint, positions: Vec::new() });
        if self.mutations.has(Mutant::AckBeforeDurable) {
            self.out.push_back(Action::Ack(checkpoint));
        }
    }

    /// The snapshot of `checkpoint` is durable.
    pub fn on_snapshot_durable(&mut self, checkpoint: CheckpointId) {
        if !self.mutations.has(Mutant::AckBeforeDurable) {
            self.out.push_back(Action::Ack(checkpoint));
        }
    }

    /// The coordinator completed `checkpoint`.
    pub fn handle_checkpoint_complete(&mut self, checkpoint: CheckpointId) {
        self.out.push_back(Action::DropSnapshotsBelow(checkpoint));
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action<()>> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::SinkRestore;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);

    fn drain<B>(t: &mut Task<B>) -> Vec<Action<B>> {
        std::iter::from_fn(|| t.poll_action()).collect()
    }

    fn sink() -> Task<u32> {
        Task::new(TaskConfig::sink(1, AlignmentMode::ExactlyOnce))
    }

    // Reference: SPEC §4.2, an acknowledgement only after the snapshot is durable.
    #[test]
    fn task_acks_only_after_snapshot_is_durable() {
        let mut t: Task<u32> = Task::new(TaskConfig::transform(1, AlignmentMode::ExactlyOnce));
        t.handle_barrier(0, C1);
        assert_eq!(drain(&mut t), vec![Action::Snapshot { checkpoint: C1, positions: vec![0] }]);
        t.on_snapshot_durable(C1);
        assert_eq!(drain(&mut t), vec![Action::Ack(C1)]);
    }

    // Reference: SPEC §10.4, a sink that re-stages on replay a checkpoint that completed
    // meanwhile commits it as soon as the re-staged output is durable.
    #[test]
    fn a_snapshot_durable_after_its_checkpoint_completed_is_committed_at_once() {
        let mut t = sink();
        t.handle_checkpoint_complete(C1); // heard while its snapshot of c1 was being replayed
        t.handle_batch(0, 1, 10);
        t.handle_barrier(0, C1);
        drain(&mut t);
        t.on_snapshot_durable(C1);
        assert_eq!(drain(&mut t), vec![Action::Ack(C1), Action::Commit(C1), Action::DropSnapshotsBelow(C1)]);
        t.on_snapshot_durable(C2); // an ordinary later snapshot waits for its completion
        assert_eq!(drain(&mut t), vec![Action::Ack(C2)]);
    }

    // Reference: SPEC §5.2, commit only on completion, and it covers every staged checkpoint.
    #[test]
    fn sink_commits_staged_output_only_when_a_checkpoint_completes() {
        let mut t = sink();
        t.handle_batch(0, 1, 10);
        t.handle_barrier(0, C1);
        t.on_snapshot_durable(C1);
        t.handle_checkpoint_abort(C1);
        t.handle_batch(0, 2, 20);
        t.handle_barrier(0, C2);
        t.on_snapshot_durable(C2);
        let before_complete = drain(&mut t);
        assert!(!before_complete.iter().any(|a| matches!(a, Action::Commit(_))), "{before_complete:?}");
        t.handle_checkpoint_complete(C2);
        assert_eq!(drain(&mut t), vec![Action::Commit(C2), Action::DropSnapshotsBelow(C2)]);
        t.on_commit_durable(C2);
        t.handle_checkpoint_complete(C2); // a repeated notification commits nothing twice
        assert_eq!(drain(&mut t), vec![Action::DropSnapshotsBelow(C2)]);
    }

    // Reference: SPEC §5.4 and §7.2, the repair of a crash between pre-commit and commit.
    #[test]
    fn restored_sink_commits_what_was_staged_up_to_the_restore_point() {
        let plan = ParticipantRestore {
            from: Some(C1),
            discard_snapshots: vec![],
            sink: Some(SinkRestore { commit: Some(C1), staged: vec![C1], discard_staged: vec![C2] }),
        };
        let mut t: Task<u32> = Task::restore(TaskConfig::sink(1, AlignmentMode::ExactlyOnce), &plan, &[1]);
        assert_eq!(drain(&mut t), vec![Action::Commit(C1)]);
        t.handle_batch(0, 1, 10); // replayed below the restored position: dropped
        assert_eq!(drain(&mut t), vec![]);
    }

    // Reference: SPEC §4.1.
    #[test]
    fn source_snapshots_once_per_trigger_and_acks_when_durable() {
        let mut s = SourceTask::new();
        s.handle_trigger(C1);
        s.handle_trigger(C1);
        assert_eq!(s.poll_action(), Some(Action::Snapshot { checkpoint: C1, positions: vec![] }));
        assert_eq!(s.poll_action(), None);
        s.on_snapshot_durable(C1);
        assert_eq!(s.poll_action(), Some(Action::Ack(C1)));
    }
}
