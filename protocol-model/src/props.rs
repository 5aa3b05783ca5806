//! The properties of `protocol-model/README.md`, as functions over a model state.
//!
//! Safety properties that are about a moment (a snapshot taken, a write made durable) are
//! checked at that step by the `check_*` functions, which record a [`Violation`] in the
//! ghost state; the rest are evaluated on every state. Liveness is checked on terminal
//! states: the model is acyclic, so every path ends in one (see `checkpoint.rs`).
//! The names are those of `../shared/VERIFICATION.md` section 1 and of the README.

use std::collections::BTreeSet;

use stateright::Property;
use weir_protocol::{CheckpointId, Seq};

use crate::checkpoint::{BatchId, CheckpointModel, Node, SOURCES, Scope, State};
use crate::failover::Phase;

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
    /// S6: recovery found no snapshot of the completed checkpoint.
    Unrecoverable,
    /// S6: a buffer queue could not serve a replay although no checkpoint later than the
    /// receiver's restore point had completed (it was truncated too early).
    UnsafeTruncation,
    /// S7: a batch was applied twice (multiplicity above one).
    AppliedTwice,
    /// S7: a receiver applied a batch while an earlier one of the same input was missing.
    Gap,
    /// S7: a locally restored subtask's state is not its snapshot of the consistent cut.
    RestoreMismatch,
    /// S8: a sender sent, or a subtask snapshotted or staged, something different from what
    /// it did under the same sequence number or checkpoint before a local recovery.
    Nondeterministic,
    /// S8: a replay did not follow the determinant log (the gate escalated).
    Diverged,
    /// S9: a receiver applied a batch with a sequence number at or below its position.
    ReappliedSeq,
    /// S10: the run ended at its final checkpoint before the sink had committed all of its
    /// output.
    EndedEarly,
    /// S11: an epoch was granted to two replicas, a grant did not increase, or the core's
    /// record of the grant (the promoted driver's, the coordinator's) differs from the
    /// authority's.
    UniqueGrant,
    /// S12: a receiver took an item sent under a grant lower than the one it was fenced with.
    SplitBrain,
    /// S13: a standby was promoted whose state does not cover an output the sink accepted
    /// from the old primary (or it could not catch up at all).
    PromotionUnsafe,
    /// S14: after a promotion, the sink applied a sequence number twice or past a gap, a
    /// batch twice, or the new primary sent other content under a sequence number than the
    /// old one had.
    HandOff,
    /// S15: a standby sent, acknowledged or wrote something.
    StandbyActed,
}

/// S4, at a snapshot: each participant snapshots increasing checkpoints within an
/// epoch.
pub(crate) fn check_snapshot_order(state: &mut State, node: Node, checkpoint: CheckpointId) {
    let last = &mut state.ghost.last_snapshot[node.participant()];
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
    let expected = state.ghost.task_snapshots.get(&checkpoint).map(|(applied, _)| applied);
    let mut reflected = state.sink.output.clone();
    reflected.sort();
    if expected.is_none_or(|e| !reflected.iter().eq(e.iter())) {
        state.ghost.violations.insert(Violation::Alignment);
    }
}

/// S7 and S9, when `node` applies `batch` from `input` under sequence number `seq`: the
/// sequence number is the next one on that input (not at or below its position: S9; not
/// past a missing batch: S7), and the batch is not applied already (S7).
pub(crate) fn check_apply(state: &mut State, node: Node, input: usize, seq: Seq, batch: BatchId) {
    let (last, again) = match node {
        Node::Task => (
            state.task.applied.iter().filter(|b| b.source as usize == input).count(),
            state.task.applied.contains(&batch),
        ),
        _ => (state.sink.received[input] as usize, state.sink.output.contains(&batch)),
    };
    let violations = &mut state.ghost.violations;
    if seq <= last as Seq {
        violations.insert(Violation::ReappliedSeq);
    } else if seq > last as Seq + 1 {
        violations.insert(Violation::Gap);
    }
    if again {
        violations.insert(Violation::AppliedTwice);
    }
    // S14: after a promotion, the sink's channel from the transform goes on exactly where it
    // was (nothing twice, no gap).
    if node == Node::Sink && state.failover.phase == Phase::Promoted && (seq != last as Seq + 1 || again) {
        violations.insert(Violation::HandOff);
    }
}

/// S8, when the task sends `batch` to the sink under `seq` on output `channel`: within a
/// run, a sequence number always carries the same batch, before and after a local recovery.
pub(crate) fn check_task_output(state: &mut State, channel: usize, seq: Seq, batch: BatchId) {
    match state.ghost.task_sent.get(&(channel, seq)) {
        Some(&first) if first != batch => {
            state.ghost.violations.insert(Violation::Nondeterministic);
            // S14: the promoted standby sends other content than its old primary did.
            if state.failover.phase == Phase::Promoted {
                state.ghost.violations.insert(Violation::HandOff);
            }
        }
        Some(_) => {}
        None => {
            state.ghost.task_sent.insert((channel, seq), batch);
        }
    }
}

/// S7, right after `node` restored locally from `restored`: its state is exactly the
/// consistent cut of that checkpoint, the batches the sources had read at their positions
/// for it (none without a restore point).
pub(crate) fn check_restore(state: &mut State, node: Node, restored: Option<CheckpointId>) {
    let Some(cut) = consistent_cut(state, restored) else { return }; // S6 judges a missing snapshot
    let holds = match node {
        Node::Task => state.task.applied.iter().eq(cut.iter()),
        _ => {
            let mut output = state.sink.output.clone();
            output.sort();
            output == cut
        }
    };
    if !holds {
        state.ghost.violations.insert(Violation::RestoreMismatch);
    }
}

/// S12, when the sink took an item the old primary sent under `grant`: taken at all, it
/// must not be below the slot's epoch it was fenced with.
pub(crate) fn check_stale_taken(state: &mut State, grant: weir_protocol::driver::Epoch) {
    if grant < state.failover.authority {
        state.ghost.violations.insert(Violation::SplitBrain);
    }
}

/// S13, when the standby is promoted with operator state `applied`: every batch in the
/// sink's output (all of it accepted from the old primary) is in that state, i.e. the
/// standby's applied positions cover its provenance (the operator is the identity, so a
/// batch's provenance is the batch).
pub(crate) fn check_promotion(state: &mut State, applied: &BTreeSet<BatchId>) {
    if !state.sink.output.iter().all(|b| applied.contains(b)) {
        state.ghost.violations.insert(Violation::PromotionUnsafe);
    }
}

/// S11, when replica `id` is granted `grant`: no other replica ever had it, and it is above
/// every earlier grant. Recorded in the ghost list of grants.
pub(crate) fn check_grant(state: &mut State, id: u8, grant: weir_protocol::driver::Epoch) {
    let grants = &mut state.failover.grants;
    if grants.iter().any(|&(other, g)| g >= grant || (other != id && g == grant)) {
        state.ghost.violations.insert(Violation::UniqueGrant);
    }
    grants.push((id, grant));
}

/// S6, when a buffer queue cannot serve a replay to a receiver restored from `restored`:
/// that is allowed only when a later checkpoint completed meanwhile (SPEC §10.2).
pub(crate) fn check_replay_gap(state: &mut State, restored: CheckpointId) {
    if state.disk.completed.unwrap_or_default() <= restored {
        state.ghost.violations.insert(Violation::UnsafeTruncation);
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

/// The batches the sources had read at their durable positions for `checkpoint` (none
/// without a checkpoint), in order; `None` if a source's snapshot of it is missing.
fn consistent_cut(state: &State, checkpoint: Option<CheckpointId>) -> Option<Vec<BatchId>> {
    let Some(c) = checkpoint else { return Some(Vec::new()) };
    let positions: Vec<u8> = state.disk.sources.iter().map(|s| s.get(&c).copied()).collect::<Option<_>>()?;
    Some(
        positions
            .iter()
            .enumerate()
            .flat_map(|(s, &p)| (0..p).map(move |index| BatchId { source: s as u8, index }))
            .collect(),
    )
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
    let expected = consistent_cut(state, Some(c)).unwrap_or_default();
    let task: Vec<BatchId> = disk.task[&c].applied.iter().copied().collect();
    let mut sink: Vec<BatchId> =
        disk.committed.iter().chain(disk.staged.range(..=c).flat_map(|(_, out)| out)).copied().collect();
    sink.sort();
    task == expected && sink == expected
}

/// S6: the snapshots of the latest completed checkpoint are never deleted, and recovery
/// always finds them; no buffer queue is truncated past the latest completed checkpoint,
/// and none fails a replay that its receiver's restore point entitles it to.
pub fn s6_safe_truncation(_: &CheckpointModel, state: &State) -> bool {
    let completed = state.disk.completed.unwrap_or_default();
    holds(state, Violation::Unrecoverable)
        && holds(state, Violation::UnsafeTruncation)
        && state.disk.completed.is_none_or(|c| every_snapshot_durable(state, c))
        && state.sources.iter().all(|s| s.driver.base() <= completed)
        && state.task.buffers().all(|b| b.base() <= completed || b.gave_up())
}

/// S7: no batch is applied twice, none is applied past a missing one, a local restore
/// restores exactly the snapshot of the consistent cut, and in a terminal state every batch
/// is applied exactly once at the transform and at the sink.
pub fn s7_restore_correctness(model: &CheckpointModel, state: &State) -> bool {
    let safe = [Violation::AppliedTwice, Violation::Gap, Violation::RestoreMismatch];
    if !safe.into_iter().all(|v| holds(state, v)) {
        return false;
    }
    if !model.is_terminal(state) {
        return true;
    }
    let reference = model.reference_output();
    let mut output = state.sink.output.clone();
    output.sort();
    state.task.applied == reference && output.iter().eq(reference.iter())
}

/// S8: the transform never sends two different batches under one sequence number, never
/// takes two different snapshots of one checkpoint and never stages two different outputs
/// for one checkpoint, within a run; a replay always follows the determinant log.
pub fn s8_deterministic_replay(_: &CheckpointModel, state: &State) -> bool {
    holds(state, Violation::Nondeterministic) && holds(state, Violation::Diverged)
}

/// S9: no receiver applies a batch at or below its position, and each receiver's last
/// sequence number per channel is exactly the number of batches from that channel its
/// state reflects (so it is restored with the snapshot, never reset).
pub fn s9_idempotent_channels(_: &CheckpointModel, state: &State) -> bool {
    let task_positions = state.task.driver.core().aligner().positions();
    let task_ended = state.task.driver.ended();
    let task_ok = (0..SOURCES).all(|s| {
        let applied = state.task.applied.iter().filter(|b| b.source as usize == s).count();
        task_positions[s] == applied as u64 + u64::from(task_ended[s])
    });
    let sink_positions = state.sink.driver.core().aligner().positions();
    let sink_ended = state.sink.driver.ended();
    let sink_ok = (0..sink_positions.len())
        .all(|i| sink_positions[i] == state.sink.received[i] + u64::from(sink_ended[i]))
        && state.sink.received.iter().sum::<u64>() == state.sink.output.len() as u64;
    holds(state, Violation::ReappliedSeq) && task_ok && sink_ok
}

/// S10: the committed output never holds a duplicate or a batch that is not in the
/// failure-free output, and in a terminal state it is the failure-free output.
pub fn s10_failure_transparency(model: &CheckpointModel, state: &State) -> bool {
    let reference = model.reference_output();
    let committed = &state.disk.committed;
    let distinct: BTreeSet<BatchId> = committed.iter().copied().collect();
    if distinct.len() != committed.len()
        || !distinct.is_subset(&reference)
        || !holds(state, Violation::EndedEarly)
    {
        return false;
    }
    !model.is_terminal(state) || distinct == reference
}

/// S10, when the coordinator ends the run at the end of input: the sink's committed output
/// is the whole reference output.
pub(crate) fn check_run_end(model: &CheckpointModel, state: &mut State) {
    let committed: BTreeSet<BatchId> = state.disk.committed.iter().copied().collect();
    if committed != model.reference_output() {
        state.ghost.violations.insert(Violation::EndedEarly);
    }
}

/// L1: every run ends with the final checkpoint complete and committed: the coordinator
/// ended the run.
pub fn l1_checkpoint_termination(model: &CheckpointModel, state: &State) -> bool {
    !model.is_terminal(state) || (state.coordinator.is_finished() && state.coordinator.has_ended())
}

/// L2: every run ends with no checkpoint pending, no alignment in progress, nothing held and
/// no replay waiting for input.
pub fn l2_abort_progress(model: &CheckpointModel, state: &State) -> bool {
    let quiet =
        |a: &weir_protocol::aligner::Aligner<BatchId>| a.aligning().is_none() && a.held_batches() == 0;
    !model.is_terminal(state)
        || (state.coordinator.pending().next().is_none()
            && quiet(state.task.driver.core().aligner())
            && quiet(state.sink.driver.core().aligner())
            && !state.task.driver.replaying()
            && !state.sink.driver.replaying())
}

/// L3: with the end of input sent as a sequenced item, every run ends with the end of every
/// input processed at the transform and at the sink (it passed through every restart).
pub fn l3_end_of_input(model: &CheckpointModel, state: &State) -> bool {
    let all = |ended: &[bool]| ended.iter().all(|&e| e);
    !model.scope.end_of_input
        || !model.is_terminal(state)
        || (all(state.task.driver.ended()) && all(state.sink.driver.ended()))
}

/// S14: no violation at the hand-off, and once a promotion happened, every behaviour ends
/// with the sink's output equal to the failure-free output, each batch once.
pub fn s14_exact_hand_off(model: &CheckpointModel, state: &State) -> bool {
    if !holds(state, Violation::HandOff) {
        return false;
    }
    if state.failover.phase != Phase::Promoted || !model.is_terminal(state) {
        return true;
    }
    let mut output = state.sink.output.clone();
    output.sort();
    output.iter().eq(model.reference_output().iter())
}

/// L3 (failover): every behaviour in which the primary failed ends with its standby
/// promoted and the run ended by the coordinator.
pub fn l3_failover_completes(model: &CheckpointModel, state: &State) -> bool {
    state.budget.failovers == model.scope.failovers
        || !model.is_terminal(state)
        || (state.failover.phase == Phase::Promoted && state.coordinator.has_ended())
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
        Property::always("S7 restore correctness", s7_restore_correctness),
        Property::always("S8 deterministic replay", s8_deterministic_replay),
        Property::always("S9 idempotent channels", s9_idempotent_channels),
        Property::always("S10 failure transparency", s10_failure_transparency),
        Property::always("L1 checkpoint termination", l1_checkpoint_termination),
        Property::always("L2 abort progress", l2_abort_progress),
        Property::always("L3 end of input", l3_end_of_input),
        Property::always(S11, |_, s: &State| holds(s, Violation::UniqueGrant)),
        Property::always(S12, |_, s: &State| holds(s, Violation::SplitBrain)),
        Property::always(S13, |_, s: &State| holds(s, Violation::PromotionUnsafe)),
        Property::always(S14, s14_exact_hand_off),
        Property::always(S15, |_, s: &State| holds(s, Violation::StandbyActed)),
        Property::always(L3F, l3_failover_completes),
        Property::sometimes("N1 a checkpoint completes", |_, s: &State| s.disk.completed.is_some()),
        Property::sometimes(N4, |_, s: &State| s.task.driver.core().aligner().held_batches() > 0),
        Property::sometimes(N5, |_, s: &State| s.ghost.replayed),
        Property::sometimes(N6, |m: &CheckpointModel, s: &State| {
            s.budget.crashes < m.scope.crashes && s.ghost.completed_this_run
        }),
        Property::sometimes(N7, |_, s: &State| s.task.driver.replaying()),
        Property::sometimes(N8, |_, s: &State| s.ghost.overflow_escalated),
        Property::sometimes(N2, |_, s: &State| s.failover.completed_after),
        Property::sometimes(N3, |_, s: &State| s.failover.refused_stale),
    ]
}

const S11: &str = "S11 unique grant";
const S12: &str = "S12 no split-brain effect";
const S13: &str = "S13 promotion safety";
const S14: &str = "S14 exact hand-off";
const S15: &str = "S15 standby silence";
const L3F: &str = "L3 failover completes";
const N2: &str = "N2 a takeover happens and afterwards a checkpoint completes";
const N3: &str = "N3 a stale-epoch message is refused";

const N4: &str = "N4 alignment holds back a batch";
const N5: &str = "N5 a local recovery replays from the buffer queue";
const N6: &str = "N6 a global rollback is followed by a completed checkpoint";
const N7: &str = "N7 a restarted transform replays in logged order";
const N8: &str = "N8 a buffer queue over its budget escalates a replay to a global rollback";

/// The properties worth checking in `scope`: every safety and terminal property, and the
/// witnesses the scope can produce (no held batch without an interval checkpoint, since the
/// final one comes after the last batch; no local-recovery witness without local failures;
/// no rollback witness without crashes).
pub fn properties_for(scope: &Scope) -> Vec<Property<CheckpointModel>> {
    properties()
        .into_iter()
        .filter(|p| match p.name {
            N4 => scope.ticks > 0 && scope.batches_per_source > 0,
            N5 | N7 => scope.local_crashes > 0,
            N6 => scope.crashes > 0,
            N8 => scope.buffer_budget > 0 && scope.local_crashes > 0,
            S11 | S12 | S13 | S14 | S15 | L3F => scope.standby.is_some(),
            N2 | N3 => scope.standby.is_some() && scope.failovers > 0,
            _ => true,
        })
        .collect()
}

/// Each property must be able to fail. The mutants show it for S1, S3, S5, S6 and S9; these
/// show it for the rest, on states broken by hand.
#[cfg(test)]
mod tests {
    use stateright::Model;

    use super::*;
    use crate::checkpoint::{SinkSnapshot, TaskSnapshot};

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
        let m = model(Scope { batches_per_source: 0, ticks: 0, timeouts: 0, crashes: 0, ..Scope::default() });
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
    fn l3_fails_in_a_terminal_state_where_an_end_never_arrived() {
        let (_, s) = stranded();
        let m = model(Scope {
            batches_per_source: 0,
            ticks: 0,
            timeouts: 0,
            crashes: 0,
            ..Scope::end_of_input()
        });
        assert!(m.is_terminal(&s));
        assert!(!l3_end_of_input(&m, &s));
        assert!(l3_end_of_input(&model(Scope::default()), &s), "without the end as an item, L3 asks nothing");
    }

    #[test]
    fn s10_fails_in_a_terminal_state_with_output_missing() {
        let m = model(Scope { batches_per_source: 1, ..Scope::default() });
        let (_, mut s) = stranded();
        s.budget = crate::checkpoint::Budget {
            ticks: 0,
            timeouts: 0,
            crashes: 0,
            local_crashes: 0,
            failovers: 0,
            standby_crashes: 0,
        };
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
        let snapshot = TaskSnapshot {
            applied: [b(0, 0)].into(),
            positions: vec![1, 0],
            out_seqs: vec![1],
            ended: vec![false; 2],
        };
        s.disk.task.insert(C1, snapshot);
        s.disk.sink.insert(C1, SinkSnapshot { positions: vec![1], ended: vec![false] });
        s.disk.staged.insert(C1, vec![b(0, 0)]);
        assert!(s2_consistent_cut(&m, &s));
        s.disk.task.get_mut(&C1).unwrap().applied.clear();
        assert!(!s2_consistent_cut(&m, &s));
    }

    #[test]
    fn s11_fails_when_an_epoch_is_granted_twice_or_does_not_increase() {
        let m = model(Scope::failover());
        let mut s = init(&m);
        check_grant(&mut s, 2, 1);
        assert!(holds(&s, Violation::UniqueGrant));
        check_grant(&mut s, 3, 1);
        assert!(!holds(&s, Violation::UniqueGrant), "two replicas granted epoch 1");
        let mut s = init(&m);
        check_grant(&mut s, 2, 2);
        check_grant(&mut s, 3, 1);
        assert!(!holds(&s, Violation::UniqueGrant), "a grant went down");
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
