//! The storage seam (SPEC §11): what a subtask's driver reads from durable storage when it
//! restarts. The runtime implements it over the LMDB log; [`MemoryStorage`] is its in-memory
//! twin for the model and for tests. Writes are not part of it: they are effects that the
//! shell carries out asynchronously and reports back as durable.

use std::collections::BTreeMap;

use crate::recovery::{ParticipantLog, SinkLog};
use crate::{CheckpointId, ParticipantId, Seq};

/// A subtask's snapshot of one checkpoint, as a restart reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot<S> {
    /// Last applied sequence number per input.
    pub positions: Vec<Seq>,
    /// Last sent sequence number per output channel.
    pub out_seqs: Vec<Seq>,
    /// Inputs whose end was processed.
    pub ended: Vec<bool>,
    /// The operator's state.
    pub state: S,
}

/// What the drivers read from durable storage.
pub trait Storage<P> {
    /// The operator state a snapshot holds.
    type State;
    /// Why a read failed.
    type Error;

    /// The latest durable completion record.
    fn completed(&self) -> Result<Option<CheckpointId>, Self::Error>;

    /// The checkpoints `participant` has durable snapshots of (and a sink's staged and
    /// committed output), as the recovery planners read them.
    fn participant_log(&self, participant: ParticipantId, sink: bool) -> Result<ParticipantLog, Self::Error>;

    /// `participant`'s snapshot of `checkpoint`.
    fn snapshot(
        &self,
        participant: ParticipantId,
        checkpoint: CheckpointId,
    ) -> Result<Snapshot<Self::State>, Self::Error>;

    /// The checkpoint a sink's output is durably committed through (none: nothing yet).
    fn committed_through(&self, participant: ParticipantId) -> Result<Option<CheckpointId>, Self::Error>;
}

/// Durable storage in memory: the twin of the runtime's log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemoryStorage<S> {
    /// The latest completion record.
    pub completed: Option<CheckpointId>,
    /// Snapshots by participant and checkpoint.
    pub snapshots: BTreeMap<(ParticipantId, CheckpointId), Snapshot<S>>,
    /// Sinks' staged checkpoints, by participant.
    pub staged: BTreeMap<ParticipantId, Vec<CheckpointId>>,
    /// Sinks' "committed through" records.
    pub committed: BTreeMap<ParticipantId, CheckpointId>,
}

impl<P, S: Clone> Storage<P> for MemoryStorage<S> {
    type State = S;
    type Error = String;

    fn completed(&self) -> Result<Option<CheckpointId>, String> {
        Ok(self.completed)
    }

    fn participant_log(&self, participant: ParticipantId, sink: bool) -> Result<ParticipantLog, String> {
        let snapshots =
            self.snapshots.range((participant, CheckpointId(0))..=(participant, CheckpointId(u64::MAX)));
        Ok(ParticipantLog {
            snapshots: snapshots.map(|(&(_, c), _)| c).collect(),
            sink: sink.then(|| SinkLog {
                staged: self.staged.get(&participant).cloned().unwrap_or_default(),
                committed_through: self.committed.get(&participant).copied(),
            }),
        })
    }

    fn snapshot(&self, participant: ParticipantId, checkpoint: CheckpointId) -> Result<Snapshot<S>, String> {
        self.snapshots
            .get(&(participant, checkpoint))
            .cloned()
            .ok_or_else(|| format!("no snapshot of {checkpoint} for participant {participant}"))
    }

    fn committed_through(&self, participant: ParticipantId) -> Result<Option<CheckpointId>, String> {
        Ok(self.committed.get(&participant).copied())
    }
}
