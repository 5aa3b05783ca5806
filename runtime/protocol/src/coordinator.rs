//! The checkpoint coordinator (SPEC §6): triggers checkpoints, collects acknowledgements,
//! completes a checkpoint only once its completion record is durable, and aborts what does
//! not finish in time.
//!
//! Per checkpoint `c`:
//! - *collecting*: triggered; waiting for an acknowledgement from every participant.
//!   Timeout -> *aborted*. Last acknowledgement -> *persisting*.
//! - *persisting*: the completion record is being written. It cannot be aborted any more
//!   (the write may already be durable). Durable -> *completed*: every participant is told,
//!   and every older checkpoint still collecting is aborted (subsumed).
//!
//! Time is an input: [`Coordinator::handle_tick`] is the checkpoint interval firing, and
//! [`Coordinator::handle_timeout`] a timer armed by [`CoordinatorAction::ArmTimeout`].
//! When every source has reported that its input is exhausted, the coordinator triggers a
//! *final* checkpoint at once; its completion commits the last output and finishes the job.
//!
//! A stop request (SIGTERM) ends the run early at a completed checkpoint (SPEC §6.7): the
//! checkpoint in flight, or one triggered at once, is the last one; a rerun resumes from it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{CheckpointId, Mutant, Mutations, ParticipantId};
use crate::driver::Epoch;

/// Static facts the coordinator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorConfig {
    /// Participants that must acknowledge every checkpoint: ids `0..participants`.
    pub participants: usize,
    /// Source subtasks that report end of input: ids `0..sources`.
    pub sources: usize,
    /// At most this many checkpoints collect acknowledgements at once.
    pub max_concurrent: usize,
}

impl CoordinatorConfig {
    /// `participants` acknowledging, `sources` reporting end of input, one checkpoint at a time.
    pub fn new(participants: usize, sources: usize) -> CoordinatorConfig {
        CoordinatorConfig { participants, sources, max_concurrent: 1 }
    }
}

/// What the coordinator's driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorAction {
    /// Tell every source to snapshot its position and emit `Barrier(c)`.
    Trigger(CheckpointId),
    /// Arm the checkpoint timeout; call `handle_timeout(c)` when it fires.
    ArmTimeout(CheckpointId),
    /// Write "c is complete" durably; call `on_completion_durable(c)` when it is.
    PersistCompletion(CheckpointId),
    /// Tell every participant that `c` is complete (sinks commit, logs truncate).
    NotifyComplete(CheckpointId),
    /// Tell every participant that `c` is aborted (aligners release held input).
    NotifyAbort(CheckpointId),
    /// The final checkpoint completed: all input is processed and all output committed.
    Finished,
    /// A stop was requested and checkpoint `c` completed: end the run once its output is
    /// committed; a rerun resumes from `c` (SPEC §6.7).
    Stopped(CheckpointId),
    /// A stop was requested and checkpoint `c`, triggered for it, was aborted: end the run
    /// now, without a new restore point (SPEC §6.7).
    StopFailed(CheckpointId),
    /// After `Finished` or `Stopped`: every sink has committed its output through
    /// `checkpoint`, so the run may end (SPEC §6.8). Emitted once.
    RunEnded {
        /// The last checkpoint.
        checkpoint: CheckpointId,
        /// It was a stop's (`Stopped`), not the end of input's (`Finished`).
        stopped: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending {
    acks: BTreeSet<ParticipantId>,
    is_final: bool,
    persisting: bool,
}

/// A requested stop (SPEC §6.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Stop {
    /// The checkpoint triggered for the stop, if one had to be.
    own: Option<CheckpointId>,
    /// `Stopped` or `StopFailed` was emitted: nothing more happens.
    ended: bool,
}

/// The checkpoint coordinator of one pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    config: CoordinatorConfig,
    next: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending>,
    completed: Option<CheckpointId>,
    sources_finished: BTreeSet<usize>,
    finished: bool,
    stop: Option<Stop>,
    /// Per sink participant, the checkpoint it has committed through.
    sinks: BTreeMap<ParticipantId, CheckpointId>,
    /// The run ends once every sink has committed this one (set by `Finished`, `Stopped`:
    /// then true).
    ending: Option<(CheckpointId, bool)>,
    ended: bool,
    /// Per participant promoted at least once, its slot's epoch.
    grants: BTreeMap<ParticipantId, Epoch>,
    mutations: Mutations,
    out: VecDeque<CoordinatorAction>,
}

impl Coordinator {
    /// A coordinator for a pipeline that has no completed checkpoint.
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        Coordinator::restore(config, None)
    }

    /// A coordinator after a global rollback to `completed` (SPEC §7). New ids continue
    /// above it; an id above it that was in flight before the crash is reissued, which is
    /// safe because the rollback discarded every trace of it (SPEC §7.4).
    pub fn restore(config: CoordinatorConfig, completed: Option<CheckpointId>) -> Coordinator {
        assert!(config.participants > 0 && config.max_concurrent > 0, "invalid {config:?}");
        Coordinator {
            config,
            next: completed.unwrap_or_default().next(),
            pending: BTreeMap::new(),
            completed,
            sources_finished: BTreeSet::new(),
            finished: false,
            stop: None,
            sinks: BTreeMap::new(),
            ending: None,
            ended: false,
            grants: BTreeMap::new(),
            mutations: Mutations::NONE,
            out: VecDeque::new(),
        }
    }

    /// The run's sink participants: it ends only once each has committed the last
    /// checkpoint (SPEC §6.8).
    pub fn with_sinks(mut self, sinks: &[ParticipantId]) -> Coordinator {
        self.sinks = sinks.iter().map(|&p| (p, CheckpointId::default())).collect();
        self
    }

    /// Switch on deliberately broken behaviour (model checking only).
    pub fn with_mutations(mut self, mutations: Mutations) -> Coordinator {
        self.mutations = mutations;
        self
    }

    /// Sink `participant` has durably committed its output through `checkpoint`.
    pub fn handle_sink_committed(&mut self, participant: ParticipantId, checkpoint: CheckpointId) {
        if let Some(c) = self.sinks.get_mut(&participant) {
            *c = (*c).max(checkpoint);
        }
        self.end_if_committed();
    }

    /// The run ends at `last` (a stop's if `stopped`), once every sink has committed it.
    fn end_at(&mut self, last: CheckpointId, stopped: bool) {
        self.ending = Some((last, stopped));
        self.end_if_committed();
    }

    fn end_if_committed(&mut self) {
        let Some((checkpoint, stopped)) = self.ending else { return };
        let early = self.mutations.has(Mutant::EndBeforeCommit);
        if !self.ended && (early || self.sinks.values().all(|&c| c >= checkpoint)) {
            self.ended = true;
            self.out.push_back(CoordinatorAction::RunEnded { checkpoint, stopped });
        }
    }

    /// The checkpoint interval elapsed.
    pub fn handle_tick(&mut self) {
        if self.stop.is_some() {
            return; // the stop triggers what it needs (SPEC §6.7)
        }
        if self.all_sources_finished() {
            self.trigger_final_if_needed();
        } else if !self.finished && self.pending.len() < self.config.max_concurrent {
            self.trigger(false);
        }
    }

    /// `participant`, acting under `grant` (its slot's epoch), acknowledged `checkpoint` (its
    /// snapshot is durable). Acknowledgements of checkpoints that are not collecting (aborted,
    /// already complete) are ignored, and so are those of a deposed primary (a grant below
    /// the slot's, S12).
    pub fn handle_ack(&mut self, participant: ParticipantId, grant: Epoch, checkpoint: CheckpointId) {
        assert!(participant < self.config.participants, "ack from unknown participant {participant}");
        let granted = self.grants.get(&participant).copied().unwrap_or_default();
        if grant < granted && !self.mutations.has(Mutant::NoEpochCheck) {
            return;
        }
        let Some(pending) = self.pending.get_mut(&checkpoint) else { return };
        if pending.persisting {
            return;
        }
        pending.acks.insert(participant);
        if pending.acks.len() == self.config.participants {
            pending.persisting = true;
            self.out.push_back(CoordinatorAction::PersistCompletion(checkpoint));
        }
    }

    /// The standby of `participant` was promoted under `epoch` (SPEC §11.8): acknowledgements
    /// under a lower grant are refused from now on, and every checkpoint still collecting is
    /// aborted (the standby takes no snapshot of a state it has moved past, and its primary's
    /// may never become durable).
    pub fn handle_failover(&mut self, participant: ParticipantId, epoch: Epoch) {
        let granted = self.grants.entry(participant).or_default();
        *granted = (*granted).max(epoch);
        let collecting: Vec<CheckpointId> =
            self.pending.iter().filter(|(_, p)| !p.persisting).map(|(&c, _)| c).collect();
        for c in collecting {
            self.handle_timeout(c);
        }
    }

    /// The epoch granted to `participant`'s slot (0: never promoted).
    pub fn grant(&self, participant: ParticipantId) -> Epoch {
        self.grants.get(&participant).copied().unwrap_or_default()
    }

    /// The completion record of `checkpoint` is durable (SPEC §6.3).
    pub fn on_completion_durable(&mut self, checkpoint: CheckpointId) {
        let pending = self.pending.remove(&checkpoint);
        assert!(
            pending.as_ref().is_some_and(|p| p.persisting),
            "completion of {checkpoint} reported durable, but it was not being persisted"
        );
        if self.completed.is_some_and(|c| c >= checkpoint) {
            return;
        }
        self.completed = Some(checkpoint);
        let subsumed: Vec<_> =
            self.pending.range(..checkpoint).filter(|(_, p)| !p.persisting).map(|(&c, _)| c).collect();
        for c in subsumed {
            self.pending.remove(&c);
            self.out.push_back(CoordinatorAction::NotifyAbort(c));
        }
        self.out.push_back(CoordinatorAction::NotifyComplete(checkpoint));
        if pending.is_some_and(|p| p.is_final) {
            self.finished = true;
            self.out.push_back(CoordinatorAction::Finished);
            self.end_at(checkpoint, false);
        } else if let Some(stop) = &mut self.stop {
            stop.ended = true;
            self.out.push_back(CoordinatorAction::Stopped(checkpoint));
            self.end_at(checkpoint, true);
        } else if self.all_sources_finished() {
            self.trigger_final_if_needed();
        }
    }

    /// The timeout of `checkpoint` fired (SPEC §6.4). A checkpoint still collecting is
    /// aborted; one whose completion is being persisted, or is gone, is left alone.
    pub fn handle_timeout(&mut self, checkpoint: CheckpointId) {
        let Some(pending) = self.pending.get(&checkpoint) else { return };
        if pending.persisting {
            return;
        }
        self.pending.remove(&checkpoint);
        self.out.push_back(CoordinatorAction::NotifyAbort(checkpoint));
        if let Some(stop) = &mut self.stop {
            if stop.own == Some(checkpoint) {
                stop.ended = true;
                self.out.push_back(CoordinatorAction::StopFailed(checkpoint));
            } else {
                self.trigger_stop_if_idle();
            }
        } else if self.all_sources_finished() {
            self.trigger_final_if_needed();
        }
    }

    /// Source `source` has emitted all its input (SPEC §6.6).
    pub fn handle_source_finished(&mut self, source: usize) {
        assert!(source < self.config.sources, "end of input from unknown source {source}");
        self.sources_finished.insert(source);
        if self.all_sources_finished() && self.stop.is_none() {
            self.trigger_final_if_needed();
        }
    }

    /// A stop was requested (SPEC §6.7): the next checkpoint to complete ends the run. One
    /// in flight is waited for; with none in flight, one is triggered now. A repeated
    /// request, or one after the job finished, changes nothing.
    pub fn handle_stop_requested(&mut self) {
        if self.finished || self.stop.is_some() {
            return;
        }
        self.stop = Some(Stop::default());
        self.trigger_stop_if_idle();
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<CoordinatorAction> {
        self.out.pop_front()
    }

    /// Whether `RunEnded` was emitted.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// The latest checkpoint known complete.
    pub fn completed(&self) -> Option<CheckpointId> {
        self.completed
    }

    /// Checkpoints triggered and neither completed nor aborted.
    pub fn pending(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.pending.keys().copied()
    }

    /// Checkpoints still collecting acknowledgements (the ones a timeout can abort).
    pub fn collecting(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.pending.iter().filter(|(_, p)| !p.persisting).map(|(&c, _)| c)
    }

    /// Whether the final checkpoint completed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_some()
    }

    fn all_sources_finished(&self) -> bool {
        self.sources_finished.len() == self.config.sources
    }

    fn trigger_final_if_needed(&mut self) {
        let final_pending = self.pending.values().any(|p| p.is_final);
        if !self.finished && !final_pending && self.pending.len() < self.config.max_concurrent {
            self.trigger(true);
        }
    }

    /// While stopping with nothing in flight, trigger the stop's own checkpoint (final if the
    /// input has ended, so that its completion finishes the job instead).
    fn trigger_stop_if_idle(&mut self) {
        let Some(stop) = self.stop else { return };
        if stop.ended || !self.pending.is_empty() {
            return;
        }
        let own = self.trigger(self.all_sources_finished());
        self.stop = Some(Stop { own: Some(own), ended: false });
    }

    fn trigger(&mut self, is_final: bool) -> CheckpointId {
        let c = self.next;
        self.next = c.next();
        self.pending.insert(c, Pending { acks: BTreeSet::new(), is_final, persisting: false });
        self.out.push_back(CoordinatorAction::Trigger(c));
        self.out.push_back(CoordinatorAction::ArmTimeout(c));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CoordinatorAction::*;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);
    const C3: CheckpointId = CheckpointId(3);

    fn drain(c: &mut Coordinator) -> Vec<CoordinatorAction> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    // Reference: SPEC §6.1 and §6.2, bounded concurrency.
    #[test]
    fn tick_triggers_at_most_max_concurrent_checkpoints() {
        let mut c = Coordinator::new(CoordinatorConfig::new(2, 1));
        c.handle_tick();
        c.handle_tick();
        assert_eq!(drain(&mut c), vec![Trigger(C1), ArmTimeout(C1)]);
    }

    // Reference: SPEC §6.3, completion is announced only after the record is durable.
    #[test]
    fn completes_only_after_every_ack_and_a_durable_record() {
        let mut c = Coordinator::new(CoordinatorConfig::new(2, 1));
        c.handle_tick();
        drain(&mut c);
        c.handle_ack(0, 0, C1);
        c.handle_ack(0, 0, C1);
        assert_eq!(drain(&mut c), vec![]);
        c.handle_ack(1, 0, C1);
        assert_eq!(drain(&mut c), vec![PersistCompletion(C1)]);
        assert_eq!(c.completed(), None);
        c.handle_timeout(C1); // too late to abort: the record may be durable already
        c.on_completion_durable(C1);
        assert_eq!(drain(&mut c), vec![NotifyComplete(C1)]);
        assert_eq!(c.completed(), Some(C1));
    }

    // Reference: SPEC §6.4.
    #[test]
    fn timeout_aborts_a_collecting_checkpoint_and_ignores_its_late_acks() {
        let mut c = Coordinator::new(CoordinatorConfig::new(1, 1));
        c.handle_tick();
        drain(&mut c);
        c.handle_timeout(C1);
        assert_eq!(drain(&mut c), vec![NotifyAbort(C1)]);
        c.handle_ack(0, 0, C1);
        assert_eq!(drain(&mut c), vec![]);
        c.handle_tick();
        assert_eq!(drain(&mut c), vec![Trigger(C2), ArmTimeout(C2)]);
    }

    // Reference: SPEC §6.6, the final checkpoint, retried after an abort.
    #[test]
    fn end_of_input_triggers_a_final_checkpoint_that_finishes_the_job() {
        let mut c = Coordinator::new(CoordinatorConfig::new(1, 2));
        c.handle_source_finished(0);
        assert_eq!(drain(&mut c), vec![]);
        c.handle_source_finished(1);
        assert_eq!(drain(&mut c), vec![Trigger(C1), ArmTimeout(C1)]);
        c.handle_timeout(C1);
        assert_eq!(drain(&mut c), vec![NotifyAbort(C1), Trigger(C2), ArmTimeout(C2)]);
        c.handle_ack(0, 0, C2);
        c.on_completion_durable(C2);
        assert_eq!(drain(&mut c), finished(C2));
        c.handle_tick();
        assert_eq!(drain(&mut c), vec![]);
    }

    // Reference: SPEC §6.3, a later completion aborts older checkpoints still collecting.
    #[test]
    fn completion_subsumes_older_collecting_checkpoints() {
        let mut c = Coordinator::new(CoordinatorConfig { max_concurrent: 2, ..CoordinatorConfig::new(1, 1) });
        c.handle_tick();
        c.handle_tick();
        drain(&mut c);
        c.handle_ack(0, 0, C2);
        c.on_completion_durable(C2);
        assert_eq!(drain(&mut c), vec![PersistCompletion(C2), NotifyAbort(C1), NotifyComplete(C2)]);
        c.handle_tick();
        assert_eq!(drain(&mut c), vec![Trigger(C3), ArmTimeout(C3)]);
    }

    /// What the completion of the final checkpoint `c` emits when no sink holds the run.
    fn finished(c: CheckpointId) -> Vec<CoordinatorAction> {
        vec![PersistCompletion(c), NotifyComplete(c), Finished, RunEnded { checkpoint: c, stopped: false }]
    }

    /// What the completion of a stop's checkpoint `c` emits when no sink holds the run.
    fn stopped(c: CheckpointId) -> Vec<CoordinatorAction> {
        vec![PersistCompletion(c), NotifyComplete(c), Stopped(c), RunEnded { checkpoint: c, stopped: true }]
    }

    fn complete(c: &mut Coordinator, participants: usize, checkpoint: CheckpointId) {
        for p in 0..participants {
            c.handle_ack(p, 0, checkpoint);
        }
        c.on_completion_durable(checkpoint);
    }

    // Reference: SPEC §6.7, a stop with nothing in flight triggers a checkpoint at once, and
    // its completion ends the run; nothing is triggered afterwards, and the sources are not
    // treated as finished.
    #[test]
    fn stop_with_nothing_in_flight_triggers_a_checkpoint_whose_completion_stops() {
        let mut c = Coordinator::new(CoordinatorConfig::new(1, 1));
        c.handle_stop_requested();
        assert!(c.is_stopping());
        assert_eq!(drain(&mut c), vec![Trigger(C1), ArmTimeout(C1)]);
        c.handle_tick();
        c.handle_stop_requested();
        assert_eq!(drain(&mut c), vec![]);
        complete(&mut c, 1, C1);
        assert_eq!(drain(&mut c), stopped(C1));
        c.handle_tick();
        c.handle_source_finished(0);
        assert_eq!(drain(&mut c), vec![]);
        assert!(!c.is_finished());
    }

    // Reference: SPEC §6.7, a checkpoint in flight when the stop arrives is the stop point.
    #[test]
    fn stop_waits_for_the_checkpoint_in_flight() {
        let mut c = Coordinator::new(CoordinatorConfig::new(2, 1));
        c.handle_tick();
        drain(&mut c);
        c.handle_ack(0, 0, C1);
        c.handle_stop_requested();
        assert_eq!(drain(&mut c), vec![]);
        complete(&mut c, 2, C1);
        assert_eq!(drain(&mut c), stopped(C1));
    }

    // Reference: SPEC §6.7, bounded: an in-flight checkpoint aborted after the stop is
    // replaced once; the stop's own checkpoint aborted ends the run with `StopFailed`.
    #[test]
    fn stop_retries_once_then_fails_when_its_own_checkpoint_is_aborted() {
        let mut c = Coordinator::new(CoordinatorConfig::new(1, 1));
        c.handle_tick();
        drain(&mut c);
        c.handle_stop_requested();
        c.handle_timeout(C1);
        assert_eq!(drain(&mut c), vec![NotifyAbort(C1), Trigger(C2), ArmTimeout(C2)]);
        c.handle_timeout(C2);
        assert_eq!(drain(&mut c), vec![NotifyAbort(C2), StopFailed(C2)]);
        c.handle_tick();
        c.handle_ack(0, 0, C2);
        assert_eq!(drain(&mut c), vec![]);
    }

    // Reference: SPEC §6.7 and §6.6, a stop after the input ended lets the final checkpoint
    // finish the job (its retry after an abort is the stop's own, and final).
    #[test]
    fn stop_after_end_of_input_finishes_the_job() {
        let mut c = Coordinator::new(CoordinatorConfig::new(1, 1));
        c.handle_source_finished(0);
        drain(&mut c);
        c.handle_stop_requested();
        c.handle_timeout(C1);
        assert_eq!(drain(&mut c), vec![NotifyAbort(C1), Trigger(C2), ArmTimeout(C2)]);
        complete(&mut c, 1, C2);
        assert_eq!(drain(&mut c), finished(C2));

        let mut done = Coordinator::new(CoordinatorConfig::new(1, 1));
        done.handle_source_finished(0);
        complete(&mut done, 1, C1);
        drain(&mut done);
        done.handle_stop_requested();
        assert!(!done.is_stopping());
        assert_eq!(drain(&mut done), vec![]);
    }

    // Reference: SPEC §6.7 and §7.4, a stop right after a rollback checkpoints above the
    // restore point.
    #[test]
    fn stop_after_a_rollback_continues_the_ids() {
        let mut c = Coordinator::restore(CoordinatorConfig::new(1, 1), Some(C2));
        c.handle_stop_requested();
        assert_eq!(drain(&mut c), vec![Trigger(C3), ArmTimeout(C3)]);
    }

    // Reference: SPEC §6.8. The run ends once every sink has committed the final checkpoint
    // (or the stop's), whatever order the completion and the commits come in; once.
    #[test]
    fn the_run_ends_when_every_sink_committed_the_last_checkpoint() {
        let mut c = Coordinator::new(CoordinatorConfig::new(3, 1)).with_sinks(&[1, 2]);
        c.handle_source_finished(0);
        drain(&mut c);
        c.handle_sink_committed(1, C1); // a commit may be reported before the completion
        complete(&mut c, 3, C1);
        assert_eq!(drain(&mut c), vec![PersistCompletion(C1), NotifyComplete(C1), Finished]);
        c.handle_sink_committed(2, CheckpointId(0));
        assert_eq!(drain(&mut c), vec![]);
        c.handle_sink_committed(2, C1);
        assert_eq!(drain(&mut c), vec![RunEnded { checkpoint: C1, stopped: false }]);
        c.handle_sink_committed(2, C1);
        assert_eq!(drain(&mut c), vec![]);

        let mut stopped = Coordinator::new(CoordinatorConfig::new(2, 1)).with_sinks(&[1]);
        stopped.handle_stop_requested();
        drain(&mut stopped);
        complete(&mut stopped, 2, C1);
        stopped.handle_sink_committed(1, C1);
        let actions = drain(&mut stopped);
        assert_eq!(actions[actions.len() - 2..], [Stopped(C1), RunEnded { checkpoint: C1, stopped: true }]);
    }
}
