//! Recovery planning for global rollback (SPEC §7): after a crash, read what the log holds
//! durably and decide, for the whole pipeline, which checkpoint to restore, what each
//! participant restores, which sink output is committed as a repair, and what is discarded.
//!
//! The plan is a pure function of durable facts. The driver reads those facts from the log,
//! calls [`plan_global_rollback`], performs the discards, and builds every core from the plan
//! (`Coordinator::restore`, `SourceTask::restore`, `Task::restore`). Sources resume from the
//! read position in their snapshot of the restore point, or from the start without one.

use std::fmt;

use super::{CheckpointId, ParticipantId};

/// What the log holds durably, as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct RecoveryInput {
    /// The latest checkpoint whose completion record is durable.
    pub completed: Option<CheckpointId>,
    /// One entry per participant, by participant id.
    pub participants: Vec<ParticipantLog>,
}

/// One participant's durable checkpoint data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ParticipantLog {
    /// Checkpoints it has a durable snapshot of.
    pub snapshots: Vec<CheckpointId>,
    /// For a sink, its two-phase-commit data.
    pub sink: Option<SinkLog>,
}

/// A sink's durable two-phase-commit data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SinkLog {
    /// Checkpoints whose output is staged (pre-committed) and not recorded as committed.
    pub staged: Vec<CheckpointId>,
    /// The durable "committed through" record: staged output up to it is visible.
    pub committed_through: Option<CheckpointId>,
}

/// The rollback decision for the whole pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RestorePlan {
    /// The checkpoint everything restores; `None` restarts from the beginning.
    pub checkpoint: Option<CheckpointId>,
    /// One entry per participant, by participant id.
    pub participants: Vec<ParticipantRestore>,
}

/// What one participant restores and discards.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ParticipantRestore {
    /// The snapshot to restore; `None` means the initial state.
    pub from: Option<CheckpointId>,
    /// Snapshots to delete: older ones (no longer needed) and newer ones (from checkpoints
    /// the crash aborted).
    pub discard_snapshots: Vec<CheckpointId>,
    /// For a sink, its part of the plan.
    pub sink: Option<SinkRestore>,
}

impl ParticipantRestore {
    /// Nothing to restore or discard: a first start.
    pub fn fresh() -> ParticipantRestore {
        ParticipantRestore::default()
    }
}

/// A sink's part of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SinkRestore {
    /// Commit through this checkpoint before anything else: staged output at or below the
    /// restore point that is not visible yet (a crash came between pre-commit and commit).
    pub commit: Option<CheckpointId>,
    /// Staged checkpoints kept (at or below the restore point, not yet committed).
    pub staged: Vec<CheckpointId>,
    /// Staged output to delete: above the restore point (never to be committed), or at or
    /// below the committed-through record (already visible).
    pub discard_staged: Vec<CheckpointId>,
}

/// Why no plan can be made. Each is a broken invariant of the protocol or a damaged log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecoveryError {
    /// A checkpoint recorded complete lacks a participant's snapshot.
    MissingSnapshot {
        /// The participant.
        participant: ParticipantId,
        /// The completed checkpoint.
        checkpoint: CheckpointId,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::MissingSnapshot { participant, checkpoint } => write!(
                f,
                "recovery: {checkpoint} is recorded complete but participant {participant} has no snapshot of it"
            ),
        }
    }
}

impl std::error::Error for RecoveryError {}

/// Plans a global rollback to the latest completed checkpoint (SPEC §7.1).
pub fn plan_global_rollback(input: &RecoveryInput) -> Result<RestorePlan, RecoveryError> {
    let restore_point = input.completed;
    let participants = input
        .participants
        .iter()
        .enumerate()
        .map(|(participant, log)| {
            if let Some(c) = restore_point
                && !log.snapshots.contains(&c)
            {
                return Err(RecoveryError::MissingSnapshot { participant, checkpoint: c });
            }
            let discard_snapshots =
                log.snapshots.iter().copied().filter(|&s| Some(s) != restore_point).collect();
            let sink = log.sink.as_ref().map(|sink| plan_sink(sink, restore_point));
            Ok(ParticipantRestore { from: restore_point, discard_snapshots, sink })
        })
        .collect::<Result<_, _>>()?;
    Ok(RestorePlan { checkpoint: restore_point, participants })
}

/// Plans the local recovery of one participant (SPEC §10.1): it restores its snapshot of the
/// latest completed checkpoint, and a sink repairs a commit that the failure interrupted.
///
/// Unlike a global rollback, nothing is discarded: the other subtasks keep running, and a
/// snapshot newer than the restore point may already count towards a checkpoint the
/// coordinator is completing (the failed subtask acknowledged it before it failed). The
/// restarted subtask writes such snapshots and staged output again, identically, when its
/// replay reaches their barriers.
pub fn plan_local(
    participant: ParticipantId,
    log: &ParticipantLog,
    completed: Option<CheckpointId>,
) -> Result<ParticipantRestore, RecoveryError> {
    if let Some(c) = completed
        && !log.snapshots.contains(&c)
    {
        return Err(RecoveryError::MissingSnapshot { participant, checkpoint: c });
    }
    let sink = log.sink.as_ref().map(|sink| {
        let mut plan = plan_sink(sink, completed);
        plan.discard_staged.clear();
        plan
    });
    Ok(ParticipantRestore { from: completed, discard_snapshots: Vec::new(), sink })
}

fn plan_sink(sink: &SinkLog, restore_point: Option<CheckpointId>) -> SinkRestore {
    let committed = sink.committed_through;
    let (staged, discard_staged): (Vec<_>, Vec<_>) =
        sink.staged.iter().copied().partition(|&s| Some(s) <= restore_point && Some(s) > committed);
    SinkRestore { commit: staged.last().and(restore_point), staged, discard_staged }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);
    const C3: CheckpointId = CheckpointId(3);

    // Reference: SPEC §7.1, nothing completed: everything starts fresh, partial snapshots go.
    #[test]
    fn without_a_completed_checkpoint_everything_restarts_from_the_beginning() {
        let input = RecoveryInput {
            completed: None,
            participants: vec![ParticipantLog { snapshots: vec![C1], sink: None }],
        };
        let plan = plan_global_rollback(&input).unwrap();
        assert_eq!(plan.checkpoint, None);
        assert_eq!(
            plan.participants[0],
            ParticipantRestore { from: None, discard_snapshots: vec![C1], sink: None }
        );
    }

    // Reference: SPEC §7.2, commit repair and discards.
    #[test]
    fn sink_repairs_uncommitted_output_up_to_the_restore_point_and_drops_the_rest() {
        let input = RecoveryInput {
            completed: Some(C2),
            participants: vec![ParticipantLog {
                snapshots: vec![C1, C2, C3],
                sink: Some(SinkLog { staged: vec![C1, C2, C3], committed_through: Some(C1) }),
            }],
        };
        let plan = plan_global_rollback(&input).unwrap();
        let p = &plan.participants[0];
        assert_eq!(p.from, Some(C2));
        assert_eq!(p.discard_snapshots, vec![C1, C3]);
        assert_eq!(
            p.sink,
            Some(SinkRestore { commit: Some(C2), staged: vec![C2], discard_staged: vec![C1, C3] })
        );
    }

    // Reference: SPEC §7.2, commit is not repeated when it is already durable.
    #[test]
    fn sink_with_everything_committed_needs_no_repair() {
        let input = RecoveryInput {
            completed: Some(C1),
            participants: vec![ParticipantLog {
                snapshots: vec![C1],
                sink: Some(SinkLog { staged: vec![], committed_through: Some(C1) }),
            }],
        };
        let plan = plan_global_rollback(&input).unwrap();
        assert_eq!(plan.participants[0].sink.as_ref().unwrap().commit, None);
    }

    // Reference: SPEC §10.1, a local plan restores the latest completed checkpoint, repairs an
    // interrupted commit and discards nothing.
    #[test]
    fn local_plan_repairs_the_commit_and_keeps_newer_snapshots() {
        let log = ParticipantLog {
            snapshots: vec![C1, C2, C3],
            sink: Some(SinkLog { staged: vec![C2, C3], committed_through: Some(C1) }),
        };
        let plan = plan_local(0, &log, Some(C2)).unwrap();
        assert_eq!(plan.from, Some(C2));
        assert!(plan.discard_snapshots.is_empty());
        assert_eq!(
            plan.sink,
            Some(SinkRestore { commit: Some(C2), staged: vec![C2], discard_staged: vec![] })
        );
        assert!(plan_local(0, &ParticipantLog::default(), Some(C2)).is_err());
    }

    // Reference: SPEC §7.1, a completed checkpoint must be restorable everywhere.
    #[test]
    fn missing_snapshot_of_the_completed_checkpoint_is_an_error() {
        let input = RecoveryInput {
            completed: Some(C2),
            participants: vec![ParticipantLog { snapshots: vec![C2], sink: None }, ParticipantLog::default()],
        };
        assert_eq!(
            plan_global_rollback(&input),
            Err(RecoveryError::MissingSnapshot { participant: 1, checkpoint: C2 })
        );
    }
}
