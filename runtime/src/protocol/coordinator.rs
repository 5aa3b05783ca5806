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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{CheckpointId, ParticipantId};

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
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending {
    acks: BTreeSet<ParticipantId>,
    is_final: bool,
    persisting: bool,
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
            out: VecDeque::new(),
        }
    }

    /// The checkpoint interval elapsed.
    pub fn handle_tick(&mut self) {
        if self.all_sources_finished() {
            self.trigger_final_if_needed();
        } else if !self.finished && self.pending.len() < self.config.max_concurrent {
            self.trigger(false);
        }
    }

    /// `participant` acknowledged `checkpoint` (its snapshot is durable). Acknowledgements of
    /// checkpoints that are not collecting (aborted, already complete) are ignored.
    pub fn handle_ack(&mut self, participant: ParticipantId, checkpoint: CheckpointId) {
        assert!(participant < self.config.participants, "ack from unknown participant {participant}");
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
        if self.all_sources_finished() {
            self.trigger_final_if_needed();
        }
    }

    /// Source `source` has emitted all its input (SPEC §6.6).
    pub fn handle_source_finished(&mut self, source: usize) {
        assert!(source < self.config.sources, "end of input from unknown source {source}");
        self.sources_finished.insert(source);
        if self.all_sources_finished() {
            self.trigger_final_if_needed();
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<CoordinatorAction> {
        self.out.pop_front()
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

    fn all_sources_finished(&self) -> bool {
        self.sources_finished.len() == self.config.sources
    }

    fn trigger_final_if_needed(&mut self) {
        let final_pending = self.pending.values().any(|p| p.is_final);
        if !self.finished && !final_pending && self.pending.len() < self.config.max_concurrent {
            self.trigger(true);
        }
    }

    fn trigger(&mut self, is_final: bool) {
        let c = self.next;
        self.next = c.next();
        self.pending.insert(c, Pending { acks: BTreeSet::new(), is_final, persisting: false });
        self.out.push_back(CoordinatorAction::Trigger(c));
        self.out.push_back(CoordinatorAction::ArmTimeout(c));
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
        c.handle_ack(0, C1);
        c.handle_ack(0, C1);
        assert_eq!(drain(&mut c), vec![]);
        c.handle_ack(1, C1);
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
        c.handle_ack(0, C1);
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
        c.handle_ack(0, C2);
        c.on_completion_durable(C2);
        assert_eq!(drain(&mut c), vec![PersistCompletion(C2), NotifyComplete(C2), Finished]);
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
        c.handle_ack(0, C2);
        c.on_completion_durable(C2);
        assert_eq!(drain(&mut c), vec![PersistCompletion(C2), NotifyAbort(C1), NotifyComplete(C2)]);
        c.handle_tick();
        assert_eq!(drain(&mut c), vec![Trigger(C3), ArmTimeout(C3)]);
    }
}
