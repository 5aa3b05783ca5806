//! The properties of `protocol-model/README.md`, as functions over a model state.
//!
//! Safety properties that are about a moment (a snapshot taken, a write made durable) are
//! checked at that step by the `check_*` functions, which record a [`Violation`] in the
//! ghost state; the rest are evaluated on every state. Liveness is checked on terminal
//! states: the model is acyclic, so every path ends in one (see `checkpoint.rs`).
//! The names are those of `../shared/VERIFICATION.md` section 1 and of the README.

use std::collections::BTreeSet;

use stateright::Property;
use weir_runtime::protocol::CheckpointId;

use crate::checkpoint::{BatchId, CheckpointModel, Node, SOURCES, State, Write};

/// A safety violation observed at the step it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Violation {
    /// S1: a snapshot reflected input from after (or missed input from before) a barrier.
    Alignment,
    /// S3: a completion record became durable while a participant's snapshot was not.
    CompletionUnsound,
    /// S4: checkpoint ids went backwards, or an aborted checkpoint completed.
    NonMonotonic,
    /// S5: output became visible for a checkpoint that was not complete.
    CommitBeforeComplete,
    /// S9: a batch was applied twice.
    AppliedTwice,
    /// S6: recovery found no snapshot of the completed checkpoint.
    Unrecoverable,
}

/// S4, at a snapshot: each participant snapshots increasing checkpoints within a run.
pub(crate) fn check_snapshot_order(state: &mut State, node: Node, checkpoint: CheckpointId) {
    let index = match node {
        Node::Source(s) => s as usize,
        Node::Task => 2,
        Node::Sink => 3,
        Node::Coordinator => unreachable!(),
    };
    let last = &mut state.ghost.last_snapshot[index];
    if checkpoint <= *last {
        state.ghost.violations.insert(Violation::NonMonotonic);
    }
    *last = checkpoint;
}

/// S1 at the task: its state reflects, per input, exactly the batches its source sent
/// before `Barrier(checkpoint)`.
pub(crate) fn check_task_alignment(state: &mut State, checkpoint: CheckpointId) {
    let positions = state.ghost.barrier_positions.get(&checkpoint).copied().unwrap_or_default();
    let aligned = (0..SOURCES).all(|s| {
        let Some(position) = positions[s] else { return false };
        let applied: BTreeSet<u8> =
            state.task.applied.iter().filter(|b| b.source as usize == s).map(|b| b.index).collect();
        applied == (0..position).collect()
    });
    if !aligned {
        state.ghost.violations.insert(Violation::Alignment);
    }
}

/// S1 at the sink: its output up to `Barrier(checkpoint)` is exactly what the task had
/// applied when it snapshotted that checkpoint.
pub(crate) fn check_sink_alignment(state: &mut State, checkpoint: CheckpointId) {
    let expected = state.ghost.task_snapshots.get(&checkpoint);
    let mut reflected = sink_reflected(state);
    reflected.sort();
    if expected.is_none_or(|e| !reflected.iter().eq(e.iter())) {
        state.ghost.violations.insert(Violation::Alignment);
    }
}

/// S3 and S4, when a completion record becomes durable.
pub(crate) fn check_completion(state: &mut State, checkpoint: CheckpointId) {
    if Some(checkpoint) <= state.disk.completed || state.ghost.aborted.contains(&checkpoint) {
        state.ghost.violations.insert(Violation::NonMonotonic);
    }
    if !every_snapshot_durable(state, checkpoint) {
        state.ghost.violations.insert(Violation::CompletionUnsound);
    }
}

/// S5, when a commit becomes durable: only completed checkpoints become visible.
pub(crate) fn check_commit(state: &mut State, checkpoint: CheckpointId) {
    if Some(checkpoint) > state.disk.completed {
        state.ghost.violations.insert(Violation::CommitBeforeComplete);
    }
}

/// Everything the sink has output so far: visible, staged, being staged, and unstaged.
pub(crate) fn sink_reflected(state: &State) -> Vec<BatchId> {
    let disk = &state.disk;
    let pending = state.writes[4].iter().filter_map(|w| match w {
        Write::SinkSnapshot { staged, .. } => Some(staged),
        _ => None,
    });
    disk.committed
        .iter()
        .chain(disk.staged.values().flatten())
        .chain(pending.flatten())
        .chain(&state.sink.unstaged)
        .copied()
        .collect()
}

fn every_snapshot_durable(state: &State, c: CheckpointId) -> bool {
    let disk = &state.disk;
    disk.sources.iter().all(|s| s.contains_key(&c))
        && disk.task.contains_key(&c)
        && disk.sink.contains_key(&c)
}

fn holds(state: &State, violation: Violation) -> bool {
    !state.ghost.violations.contains(&violation)
}

/// S2: the snapshots of the latest completed checkpoint form a consistent cut: the task's
/// state and the sink's output up to it are exactly the batches the sources had read at
/// their positions for that checkpoint.
pub fn s2_consistent_cut(_: &CheckpointModel, state: &State) -> bool {
    let disk = &state.disk;
    let Some(c) = disk.completed else { return true };
    if !every_snapshot_durable(state, c) {
        return true; // S3 and S6 judge a missing snapshot
    }
    let expected: Vec<BatchId> = (0..SOURCES)
        .flat_map(|s| (0..disk.sources[s][&c]).map(move |index| BatchId { source: s as u8, index }))
        .collect();
    let task: Vec<BatchId> = disk.task[&c].applied.iter().copied().collect();
    let mut sink: Vec<BatchId> =
        disk.committed.iter().chain(disk.staged.range(..=c).flat_map(|(_, out)| out)).copied().collect();
    sink.sort();
    task == expected && sink == expected
}

/// S6: the snapshots of the latest completed checkpoint are never deleted, and recovery
/// always finds them.
pub fn s6_safe_truncation(_: &CheckpointModel, state: &State) -> bool {
    holds(state, Violation::Unrecoverable)
        && state.disk.completed.is_none_or(|c| every_snapshot_durable(state, c))
}

/// S9: no batch is applied twice, and each receiver's last sequence number per channel is
/// exactly the number of batches from that channel its state reflects (so it is restored
/// with the snapshot, never reset).
pub fn s9_idempotent_channels(_: &CheckpointModel, state: &State) -> bool {
    let task_positions = state.task.core.aligner().positions();
    let task_ok = (0..SOURCES).all(|s| {
        let applied = state.task.applied.iter().filter(|b| b.source as usize == s).count();
        task_positions[s] == applied as u64
    });
    let sink_ok = state.sink.core.aligner().positions()[0] == sink_reflected(state).len() as u64;
    holds(state, Violation::AppliedTwice) && task_ok && sink_ok
}

/// S10: the committed output never holds a duplicate or a batch that is not in the
/// failure-free output, and in a terminal state it is the failure-free output.
pub fn s10_failure_transparency(model: &CheckpointModel, state: &State) -> bool {
    let reference = model.reference_output();
    let committed = &state.disk.committed;
    let distinct: BTreeSet<BatchId> = committed.iter().copied().collect();
    if distinct.len() != committed.len() || !distinct.is_subset(&reference) {
        return false;
    }
    !model.is_terminal(state) || distinct == reference
}

/// L1: every run ends with the final checkpoint complete (all output committed).
pub fn l1_checkpoint_termination(model: &CheckpointModel, state: &State) -> bool {
    !model.is_terminal(state) || state.coordinator.is_finished()
}

/// L2: every run ends with no checkpoint pending, no alignment in progress and nothing held.
pub fn l2_abort_progress(model: &CheckpointModel, state: &State) -> bool {
    let quiet = |a: &weir_runtime::protocol::aligner::Aligner<BatchId>| {
        a.aligning().is_none() && a.held_batches() == 0
    };
    !model.is_terminal(state)
        || (state.coordinator.pending().next().is_none()
            && quiet(state.task.core.aligner())
            && quiet(state.sink.core.aligner()))
}

/// Every property of the checkpoint model, in README order.
pub fn properties() -> Vec<Property<CheckpointModel>> {
    vec![
        Property::always("S1 local alignment", |_, s: &State| holds(s, Violation::Alignment)),
        Property::always("S2 consistent cut", s2_consistent_cut),
        Property::always("S3 completion soundness", |_, s: &State| holds(s, Violation::CompletionUnsound)),
        Property::always("S4 monotonic checkpoints", |_, s: &State| holds(s, Violation::NonMonotonic)),
        Property::always("S5 two-phase sink commit", |_, s: &State| {
            holds(s, Violation::CommitBeforeComplete)
        }),
        Property::always("S6 safe truncation", s6_safe_truncation),
        Property::always("S9 idempotent channels", s9_idempotent_channels),
        Property::always("S10 failure transparency", s10_failure_transparency),
        Property::always("L1 checkpoint termination", l1_checkpoint_termination),
        Property::always("L2 abort progress", l2_abort_progress),
        Property::sometimes("N1 a checkpoint completes", |_, s: &State| s.disk.completed.is_some()),
        Property::sometimes("N4 alignment holds back a batch", |_, s: &State| {
            s.task.core.aligner().held_batches() > 0
        }),
        Property::sometimes(
            "N5 a recovery is followed by a completed checkpoint",
            |m: &CheckpointModel, s: &State| s.budget.crashes < m.scope.crashes && s.ghost.completed_this_run,
        ),
    ]
}

/// Each property must be able to fail. The mutants show it for S1, S3, S5, S6 and S9; these
/// show it for the rest, on states broken by hand.
#[cfg(test)]
mod tests {
    use stateright::Model;

    use super::*;
    use crate::checkpoint::{Scope, TaskSnapshot};

    const C1: CheckpointId = CheckpointId(1);

    fn model(scope: Scope) -> CheckpointModel {
        CheckpointModel::new(scope)
    }

    fn init(model: &CheckpointModel) -> State {
        model.init_states().remove(0)
    }

    fn b(source: u8, index: u8) -> BatchId {
        BatchId { source, index }
    }

    #[test]
    fn s10_fails_on_a_duplicate_or_foreign_committed_batch() {
        let m = model(Scope::default());
        let mut s = init(&m);
        assert!(s10_failure_transparency(&m, &s));
        s.disk.committed = vec![b(0, 0), b(0, 0)];
        assert!(!s10_failure_transparency(&m, &s));
        s.disk.committed = vec![b(0, 9)];
        assert!(!s10_failure_transparency(&m, &s));
    }

    /// A pipeline whose sources are empty and whose environment can do nothing: the final
    /// checkpoint is triggered at once. Emptying the channels strands it.
    fn stranded() -> (CheckpointModel, State) {
        let m = model(Scope { batches_per_source: 0, ticks: 0, timeouts: 0, crashes: 0 });
        let mut s = init(&m);
        assert!(!m.is_terminal(&s), "the final checkpoint's triggers are in flight");
        s.net.iter_mut().for_each(|q| q.clear());
        assert!(m.is_terminal(&s));
        (m, s)
    }

    #[test]
    fn l1_and_l2_fail_in_a_terminal_state_with_the_final_checkpoint_stranded() {
        let (m, s) = stranded();
        assert!(!l1_checkpoint_termination(&m, &s));
        assert!(!l2_abort_progress(&m, &s));
    }

    #[test]
    fn s10_fails_in_a_terminal_state_with_output_missing() {
        let m = model(Scope { batches_per_source: 1, ..Scope::default() });
        let (_, mut s) = stranded();
        s.budget = crate::checkpoint::Budget { ticks: 0, timeouts: 0, crashes: 0 };
        for source in &mut s.sources {
            source.next = 1;
        }
        assert!(m.is_terminal(&s));
        assert!(!s10_failure_transparency(&m, &s));
    }

    #[test]
    fn s2_fails_when_a_completed_snapshot_misses_a_batch_before_the_cut() {
        let m = model(Scope::default());
        let mut s = init(&m);
        s.disk.completed = Some(C1);
        s.disk.sources = [[(C1, 1)].into(), [(C1, 0)].into()];
        s.disk.task.insert(C1, TaskSnapshot { applied: [b(0, 0)].into(), positions: vec![1, 0], out_seq: 1 });
        s.disk.sink.insert(C1, vec![1]);
        s.disk.staged.insert(C1, vec![b(0, 0)]);
        assert!(s2_consistent_cut(&m, &s));
        s.disk.task.get_mut(&C1).unwrap().applied.clear();
        assert!(!s2_consistent_cut(&m, &s));
    }

    #[test]
    fn s4_fails_when_a_completion_goes_backwards_or_completes_an_aborted_checkpoint() {
        let m = model(Scope::default());
        let mut s = init(&m);
        s.disk.completed = Some(CheckpointId(2));
        check_completion(&mut s, C1);
        assert!(s.ghost.violations.contains(&Violation::NonMonotonic));

        let mut s = init(&m);
        s.ghost.aborted.insert(C1);
        check_completion(&mut s, C1);
        assert!(s.ghost.violations.contains(&Violation::NonMonotonic));
    }
}
