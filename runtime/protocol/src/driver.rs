//! The per-subtask driver of a transform or sink (SPEC §11): everything a subtask decides,
//! in one state machine that the runtime's `TaskActor` and the protocol model both drive.
//!
//! It owns the checkpoint core ([`Task`]), the input [`Gate`] (de-duplication and the
//! determinant log), the [`Outputs`] (sequence numbers, buffer queues, the router and the
//! buffer budget), the end-of-input flags, the epoch (the incarnation a restart bumps), and
//! the local-restart sequence. Inputs are method calls (`handle_*`, `on_*`); outputs are
//! [`Effect`]s drained with [`Subtask::poll_effect`]. The shell carries effects out: it runs
//! the operator on [`Effect::Process`] (feeding what the operator outputs back through
//! [`Subtask::emit`] and then calling [`Subtask::processed`]), puts [`Effect::Send`] on the
//! wire, writes [`Effect::Snapshot`] and reports durability back with the epoch it was
//! issued in. "When may a restarted subtask consume input" is answered here and only here:
//! after [`Subtask::restart`], in the order its gate's determinant log says.

use std::collections::VecDeque;
use std::fmt;

use crate::buffer::ReplayGap;
use crate::participant::{Action, Task, TaskConfig};
use crate::recovery::{ParticipantLog, RecoveryError, plan_local};
use crate::replay::{Arrival, Feed, Gate};
use crate::route::{Item, Outputs, Payload};
use crate::storage::{Snapshot, Storage};
use crate::{CheckpointId, Mutant, ParticipantId, Seq};

pub mod source;
pub mod standby;

pub use standby::{Mode, Point, Replica, Shipped};

/// The incarnation of a subtask: bumped by every local restart. What was sent to, or
/// written by, an earlier epoch is dropped when it arrives (the replay sends it again).
pub type Epoch = u32;

/// A replay request from a restarted receiver: send output channel `channel` again from
/// just after `from_seq` (it restored checkpoint `restored`), tagged with its new `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resume {
    /// The sender's output channel.
    pub channel: usize,
    /// The receiver's restored position on that channel.
    pub from_seq: Seq,
    /// The checkpoint the receiver restored (0: none).
    pub restored: CheckpointId,
    /// The receiver's new epoch.
    pub epoch: Epoch,
}

/// Why local recovery cannot go on: the run must roll back globally.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Escalation {
    /// A buffer queue no longer holds what a restarted receiver needs, or a restarted
    /// sender would not produce again what its receiver still needs (SPEC §10.2).
    ReplayGap {
        /// The output channel.
        channel: usize,
        /// The gap.
        gap: ReplayGap,
    },
    /// Replayed input differs from the determinant log (SPEC §10.3).
    Diverged(String),
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escalation::ReplayGap { channel, gap } => write!(f, "cannot replay output {channel}: {gap}"),
            Escalation::Diverged(detail) => {
                write!(f, "local recovery cannot reproduce the logged input order: {detail}")
            }
        }
    }
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect<P: Payload> {
    /// Apply `batch` from `input` to the operator (sinks: write it); pass what the operator
    /// outputs to [`Subtask::emit`], then call [`Subtask::processed`].
    Process {
        /// The input.
        input: usize,
        /// Its sequence number there.
        seq: Seq,
        /// The batch.
        batch: P,
    },
    /// Input `input` ended (for the first time): let the operator flush what it holds for
    /// it (through [`Subtask::emit`]), then call [`Subtask::processed`].
    InputEnded {
        /// The input.
        input: usize,
    },
    /// Put `item` on output channel `channel`, to its receiver's `epoch`.
    Send {
        /// The channel.
        channel: usize,
        /// The receiver's epoch.
        epoch: Epoch,
        /// The item.
        item: Item<P>,
    },
    /// The receiver of `channel` restarted: drop whatever is still queued for its earlier
    /// epoch (a replay follows, as `Send`s).
    Reset {
        /// The channel.
        channel: usize,
    },
    /// Capture the operator's state and write it durably with these positions, output
    /// sequence numbers and end flags (a sink stages its output since the previous snapshot
    /// in the same write). Report it with [`Subtask::on_snapshot_durable`].
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Last applied sequence number per input.
        positions: Vec<Seq>,
        /// Last sent sequence number per output channel.
        out_seqs: Vec<Seq>,
        /// Inputs whose end was processed.
        ended: Vec<bool>,
    },
    /// Acknowledge the checkpoint to the coordinator.
    Ack(CheckpointId),
    /// Sinks: make staged output through this checkpoint visible, durably. Report it with
    /// [`Subtask::on_commit_durable`].
    Commit(CheckpointId),
    /// Snapshots older than this checkpoint are not needed any more.
    DropSnapshotsBelow(CheckpointId),
    /// Return a flow-control credit on `input` (a duplicate used one and was dropped).
    Credit {
        /// The input.
        input: usize,
    },
    /// Ask the sender of `input` to replay it from `from_seq`, tagged with `epoch`.
    ResumeUpstream {
        /// The input.
        input: usize,
        /// The restored position on it.
        from_seq: Seq,
        /// The checkpoint restored (0: none).
        restored: CheckpointId,
        /// This subtask's new epoch.
        epoch: Epoch,
    },
    /// Sinks: output through this checkpoint is durably committed (tell the coordinator).
    Committed(CheckpointId),
    /// Local recovery cannot go on: roll the run back globally.
    Escalate(Escalation),
    /// Send this to the standby (SPEC §11.8), before anything that follows: no output may
    /// reach downstream ahead of what the standby has been shipped.
    Ship(Shipped<P>),
    /// A standby: restore the operator from the primary's snapshot of this checkpoint (0: a
    /// fresh operator); what follows applies to that state.
    Install(CheckpointId),
}

/// Why a restart failed before it could begin (the storage, or its contents).
#[derive(Debug, PartialEq, Eq)]
pub enum RestartError<E> {
    /// The storage failed.
    Storage(E),
    /// The log holds no snapshot to restore.
    Recovery(RecoveryError),
    /// The snapshot does not fit this subtask.
    Mismatch(String),
}

impl<E: fmt::Display> fmt::Display for RestartError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartError::Storage(e) => e.fmt(f),
            RestartError::Recovery(e) => e.fmt(f),
            RestartError::Mismatch(e) => f.write_str(e),
        }
    }
}

/// What a subtask restores: from the snapshot of the latest completed checkpoint, or fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored<S> {
    /// The checkpoint restored (0: none).
    pub checkpoint: CheckpointId,
    /// The operator's state in the snapshot (none: start fresh).
    pub state: Option<S>,
}

/// The driver of one transform or sink subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subtask<P: Payload> {
    participant: ParticipantId,
    config: TaskConfig,
    core: Task<P>,
    gate: Gate<P>,
    outputs: Outputs<P>,
    ended: Vec<bool>,
    epoch: Epoch,
    /// Between a failure and the restore: input and replay requests wait.
    restarting: bool,
    /// Replay requests that came while restarting, served once restored.
    stashed: Vec<Resume>,
    /// The input whose `Process` or `InputEnded` the shell is carrying out.
    processing: Option<(usize, bool)>,
    /// The slot's epoch this subtask acts under (SPEC §11.8: a fencing token, raised only by
    /// a promotion); what it sends carries it.
    grant: Epoch,
    /// Per input: the highest sender's grant accepted or fenced; lower ones are refused (S12).
    accepted: Vec<Epoch>,
    /// Whether, and from when, it ships what it applies to a standby.
    standby: Shipping,
    /// The state it was restored to, until it applies anything (a standby attached then
    /// starts from it).
    restore_point: Option<Point>,
    effects: VecDeque<Effect<P>>,
}

/// A primary's shipping to its standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shipping {
    /// No standby.
    Off,
    /// A standby waits for a state to start from: the next snapshot.
    AtNextSnapshot,
    /// Everything applied is shipped.
    On,
}

impl<P: Payload> Subtask<P> {
    /// Participant `participant`, restored (at the start of a run attempt: a global
    /// rollback) from `checkpoint` (0: none) with these input positions and end flags, and
    /// these `outputs` (restored with their sequence numbers). A sink's repair commit, if
    /// the plan has one, is the first effect.
    pub fn new(
        participant: ParticipantId,
        core: Task<P>,
        config: TaskConfig,
        (positions, ended, checkpoint): (&[Seq], Vec<bool>, CheckpointId),
        outputs: Outputs<P>,
    ) -> Subtask<P> {
        let gate = Gate::new(positions, checkpoint).with_mutations(config.mutations);
        let restore_point = Point {
            checkpoint,
            positions: positions.to_vec(),
            out_seqs: outputs.seqs(),
            ended: ended.clone(),
        };
        Subtask {
            participant,
            config,
            core,
            gate,
            outputs,
            ended,
            epoch: 0,
            restarting: false,
            stashed: Vec::new(),
            processing: None,
            grant: 0,
            accepted: vec![0; positions.len()],
            standby: Shipping::Off,
            restore_point: Some(restore_point),
            effects: VecDeque::new(),
        }
    }

    /// From now on it acts under the slot's epoch `grant` (the one persisted for its slot: a
    /// promoted standby's, SPEC §11.8).
    pub fn set_grant(&mut self, grant: Epoch) {
        self.grant = grant;
    }

    /// The slot's epoch it acts under.
    pub fn grant(&self) -> Epoch {
        self.grant
    }

    /// A standby was started for this subtask (SPEC §11.8): from now on it ships what it
    /// applies ([`Effect::Ship`]), starting with the state the standby starts from. That is
    /// its restore point if it has applied nothing since; else its next snapshot.
    pub fn attach_standby(&mut self) {
        match self.restore_point.clone() {
            Some(point) => {
                self.effects.push_back(Effect::Ship(Shipped::Install(point)));
                self.standby = Shipping::On;
            }
            None => self.standby = Shipping::AtNextSnapshot,
        }
    }

    /// The standby is gone (or could not start from what was shipped): stop shipping.
    pub fn detach_standby(&mut self) {
        self.standby = Shipping::Off;
    }

    fn ship(&mut self, shipped: Shipped<P>) {
        if self.standby == Shipping::On {
            self.effects.push_back(Effect::Ship(shipped));
        }
    }

    /// The authority granted the sender of `input` epoch `epoch` (SPEC §11.8): from now on
    /// what a lower grant sent there is refused.
    pub fn fence(&mut self, input: usize, epoch: Epoch) {
        self.accepted[input] = self.accepted[input].max(epoch);
    }

    /// The sender of `input` was replaced by its promoted standby: ask it for what follows
    /// this subtask's position there (the promoted standby serves it from its buffer queue,
    /// SPEC §11.8, S14); the barriers up to the last one arrived there it has.
    pub fn reconnect(&mut self, input: usize) {
        let from_seq = self.gate.positions()[input];
        let restored = self.gate.barriers()[input];
        let epoch = self.epoch;
        self.effects.push_back(Effect::ResumeUpstream { input, from_seq, restored, epoch });
    }

    /// The next thing to do.
    pub fn poll_effect(&mut self) -> Option<Effect<P>> {
        loop {
            if let Some(effect) = self.effects.pop_front() {
                return Some(effect);
            }
            if self.restarting || self.processing.is_some() {
                return None;
            }
            if let Some(action) = self.core.poll_action() {
                self.take(action);
                continue;
            }
            match self.gate.poll()? {
                Feed::Batch { input, seq, batch } => self.core.handle_batch(input, seq, batch),
                Feed::Barrier { input, checkpoint } => self.core.handle_barrier(input, checkpoint),
                Feed::Abort(c) => self.core.handle_checkpoint_abort(c),
                Feed::Duplicate { input } => self.effects.push_back(Effect::Credit { input }),
                Feed::Diverged { detail } => {
                    self.effects.push_back(Effect::Escalate(Escalation::Diverged(detail)))
                }
            }
        }
    }

    fn take(&mut self, action: Action<P>) {
        match action {
            Action::Process { input, seq, batch } if batch.is_end() => {
                if self.ended[input] {
                    self.effects.push_back(Effect::Credit { input });
                    return;
                }
                self.restore_point = None;
                self.ended[input] = true;
                self.processing = Some((input, true));
                // Shipped before the operator runs, so before anything it outputs (S13).
                self.ship(Shipped::InputEnded { input, seq });
                self.effects.push_back(Effect::InputEnded { input });
            }
            Action::Process { input, seq, batch } => {
                self.restore_point = None;
                self.processing = Some((input, false));
                self.ship(Shipped::Process { input, seq, batch: batch.clone() });
                self.effects.push_back(Effect::Process { input, seq, batch });
            }
            Action::Snapshot { checkpoint, positions } => {
                self.restore_point = None;
                let out_seqs = self.outputs.seqs();
                let ended = self.ended.clone();
                let point = Point {
                    checkpoint,
                    positions: positions.clone(),
                    out_seqs: out_seqs.clone(),
                    ended: ended.clone(),
                };
                self.effects.push_back(Effect::Snapshot { checkpoint, positions, out_seqs, ended });
                let effects = &mut self.effects;
                self.outputs.send_barrier(checkpoint, |channel, epoch, item| {
                    effects.push_back(Effect::Send { channel, epoch, item })
                });
                // Shipped after the write is issued: a standby that starts from this snapshot
                // reads it once the log has written what was issued before. It starts with
                // this subtask's buffer queues: the checkpoint may abort, and a receiver still
                // need what was sent before it.
                match self.standby {
                    Shipping::Off => {}
                    Shipping::AtNextSnapshot => {
                        self.standby = Shipping::On;
                        self.effects.push_back(Effect::Ship(Shipped::Install(point)));
                        let outputs = Box::new(self.outputs.clone());
                        self.effects.push_back(Effect::Ship(Shipped::Outputs(outputs)));
                    }
                    Shipping::On => self.effects.push_back(Effect::Ship(Shipped::Snapshot(point))),
                }
            }
            Action::Ack(c) => self.effects.push_back(Effect::Ack(c)),
            Action::Commit(c) => self.effects.push_back(Effect::Commit(c)),
            Action::DropSnapshotsBelow(c) => self.effects.push_back(Effect::DropSnapshotsBelow(c)),
        }
    }

    /// The operator output `batch` while carrying out `Process` or `InputEnded`: route it.
    /// Returns true when this took the buffer queues over their budget (see
    /// [`Outputs::send`]).
    pub fn emit(&mut self, batch: P) -> bool {
        let effects = &mut self.effects;
        self.outputs
            .send(batch, |channel, epoch, item| effects.push_back(Effect::Send { channel, epoch, item }))
    }

    /// The shell finished carrying out the last `Process` or `InputEnded`. After the last
    /// input's end, the end goes out on every channel. Returns the input (whose credit the
    /// shell returns, as flow control allows).
    pub fn processed(&mut self) -> Option<usize> {
        let (input, end) = self.processing.take()?;
        if end && self.ended.iter().all(|&e| e) {
            let effects = &mut self.effects;
            self.outputs
                .send_end(|channel, epoch, item| effects.push_back(Effect::Send { channel, epoch, item }));
        }
        Some(input)
    }

    /// `item` arrived on `input`, sent by a sender granted `grant` to this subtask's `epoch`.
    /// Returns whether it was taken: false for an item sent to an earlier epoch, or arriving
    /// before the restore (the replay sends it again), or sent under a grant lower than one
    /// accepted or fenced on that input (a deposed primary's, S12).
    pub fn handle_deliver(&mut self, input: usize, grant: Epoch, epoch: Epoch, item: Item<P>) -> bool {
        if epoch != self.epoch || self.restarting {
            return false;
        }
        if grant < self.accepted[input] && !self.config.mutations.has(Mutant::NoEpochCheck) {
            return false;
        }
        self.accepted[input] = self.accepted[input].max(grant);
        let arrival = match item {
            Item::Batch { seq, payload } => Arrival::Batch { seq, batch: payload },
            Item::Barrier(c) => Arrival::Barrier(c),
        };
        self.gate.handle_arrival(input, arrival);
        true
    }

    /// The coordinator completed `c`.
    pub fn handle_complete(&mut self, c: CheckpointId) {
        self.outputs.complete(c);
        self.gate.handle_complete(c);
        if !self.restarting {
            self.core.handle_checkpoint_complete(c);
        }
    }

    /// The coordinator aborted `c`.
    pub fn handle_abort(&mut self, c: CheckpointId) {
        self.gate.handle_abort(c);
    }

    /// A restarted receiver asks for a replay.
    pub fn handle_resume(&mut self, resume: Resume) {
        if self.restarting {
            self.stashed.push(resume); // served once this subtask has restored itself
        } else {
            self.serve(resume);
        }
    }

    fn serve(&mut self, resume: Resume) {
        let effects = &mut self.effects;
        let replay = self.outputs.resume(resume, |channel, epoch, item| match item {
            None => effects.push_back(Effect::Reset { channel }),
            Some(item) => effects.push_back(Effect::Send { channel, epoch, item }),
        });
        match replay {
            Err(gap) => {
                let channel = resume.channel;
                self.effects.push_back(Effect::Escalate(Escalation::ReplayGap { channel, gap }));
            }
            Ok(()) => self.ship(Shipped::Receiver { channel: resume.channel, epoch: resume.epoch }),
        }
    }

    /// A snapshot written by `epoch` is durable.
    pub fn on_snapshot_durable(&mut self, epoch: Epoch, c: CheckpointId) {
        if epoch == self.epoch {
            self.core.on_snapshot_durable(c);
        }
    }

    /// A commit written by `epoch` is durable.
    pub fn on_commit_durable(&mut self, epoch: Epoch, c: CheckpointId) {
        if epoch == self.epoch {
            self.core.on_commit_durable(c);
            self.effects.push_back(Effect::Committed(c));
        }
    }

    /// This subtask failed (its operator state is not trusted any more): a new epoch
    /// begins; nothing is consumed or served until [`Subtask::restart`].
    pub fn fail(&mut self) {
        self.epoch += 1;
        self.restarting = true;
        self.processing = None;
        self.effects.clear();
    }

    /// The local-restart sequence (SPEC §10.1), once every write this subtask issued is
    /// settled in `storage`: plan from what the log holds, restore the core, the gate (which
    /// then feeds replayed input in the logged order), the end flags and the outputs (buffer
    /// queues and routers), ask every upstream to replay, serve the replay requests that
    /// waited, and have a sink report a commit that became durable while it failed. Returns
    /// the operator state to restore; the effects follow.
    pub fn restart<S: Storage<P>>(
        &mut self,
        storage: &S,
    ) -> Result<Restored<S::State>, RestartError<S::Error>> {
        let p = self.participant;
        let completed = storage.completed().map_err(RestartError::Storage)?;
        let log: ParticipantLog =
            storage.participant_log(p, self.config.sink).map_err(RestartError::Storage)?;
        let plan = plan_local(p, &log, completed).map_err(RestartError::Recovery)?;
        let restored = completed.unwrap_or_default();
        let (positions, out_seqs, ended, state) = match completed {
            Some(c) => {
                let Snapshot { positions, out_seqs, ended, state } =
                    storage.snapshot(p, c).map_err(RestartError::Storage)?;
                (positions, out_seqs, ended, Some(state))
            }
            None => (
                vec![0; self.config.inputs],
                vec![0; self.outputs.channels()],
                vec![false; self.config.inputs],
                None,
            ),
        };
        if positions.len() != self.config.inputs || ended.len() != self.config.inputs {
            return Err(RestartError::Mismatch(format!(
                "snapshot has positions for {} inputs, the subtask {}",
                positions.len(),
                self.config.inputs
            )));
        }
        self.core = Task::restore(self.config, &plan, &positions);
        self.ended =
            if self.config.mutations.has(Mutant::EndNotRestored) { vec![false; ended.len()] } else { ended };
        self.gate.restart(&positions, restored);
        self.restarting = false;
        if let Err((channel, gap)) = self.outputs.restart_from(restored, &out_seqs) {
            self.effects.push_back(Effect::Escalate(Escalation::ReplayGap { channel, gap }));
            return Ok(Restored { checkpoint: restored, state });
        }
        // A standby follows the restored state from here.
        let point =
            Point { checkpoint: restored, positions: positions.clone(), out_seqs, ended: self.ended.clone() };
        if self.standby != Shipping::Off {
            self.standby = Shipping::On;
            self.effects.push_back(Effect::Ship(Shipped::Install(point.clone())));
        }
        self.restore_point = Some(point);
        for (input, &from_seq) in positions.iter().enumerate() {
            self.effects.push_back(Effect::ResumeUpstream { input, from_seq, restored, epoch: self.epoch });
        }
        for resume in std::mem::take(&mut self.stashed) {
            self.serve(resume);
        }
        if self.config.sink
            && let Some(c) = storage.committed_through(p).map_err(RestartError::Storage)?
        {
            self.effects.push_back(Effect::Committed(c));
        }
        Ok(Restored { checkpoint: restored, state })
    }

    /// The epoch (0 until the first local restart).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether it is between a failure and its restore.
    pub fn restarting(&self) -> bool {
        self.restarting
    }

    /// Inputs whose end was processed.
    pub fn ended(&self) -> &[bool] {
        &self.ended
    }

    /// The highest sequence number arrived per input.
    pub fn positions(&self) -> &[Seq] {
        self.gate.positions()
    }

    /// Its outputs.
    pub fn outputs(&self) -> &Outputs<P> {
        &self.outputs
    }

    /// Its checkpoint core.
    pub fn core(&self) -> &Task<P> {
        &self.core
    }

    /// Whether the gate is feeding replayed input in the logged order.
    pub fn replaying(&self) -> bool {
        self.gate.replaying()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mutations;
    use crate::aligner::AlignmentMode;
    use crate::recovery::ParticipantRestore;
    use crate::route::{Group, Partition};
    use crate::storage::MemoryStorage;

    /// A batch of records named by numbers; a hash partition sends a record by its parity.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    pub(crate) enum B {
        Data(Vec<u32>),
        End,
    }

    impl Payload for B {
        type Key = ();
        fn end() -> B {
            B::End
        }
        fn is_end(&self) -> bool {
            *self == B::End
        }
        fn is_empty(&self) -> bool {
            matches!(self, B::Data(r) if r.is_empty())
        }
        fn bytes(&self) -> usize {
            match self {
                B::Data(r) => 4 * r.len(),
                B::End => 0,
            }
        }
        fn split(&self, _: &(), parts: usize) -> Vec<Option<B>> {
            let B::Data(records) = self else { unreachable!() };
            (0..parts)
                .map(|p| {
                    let mine: Vec<u32> =
                        records.iter().copied().filter(|r| *r as usize % parts == p).collect();
                    (!mine.is_empty()).then_some(B::Data(mine))
                })
                .collect()
        }
    }

    const C1: CheckpointId = CheckpointId(1);

    /// Participant 3: a transform with `inputs` inputs whose output goes round-robin over two
    /// channels, with buffer queues.
    fn round_robin(inputs: usize) -> Subtask<B> {
        let config = TaskConfig::transform(inputs, AlignmentMode::ExactlyOnce);
        let groups = vec![Group::new(Partition::RoundRobin, vec![0, 1])];
        let outputs = Outputs::new(&[0, 0], CheckpointId(0), groups, (true, 0), Mutations::NONE);
        let positions = vec![0; inputs];
        Subtask::new(
            3,
            Task::new(config),
            config,
            (&positions, vec![false; inputs], CheckpointId(0)),
            outputs,
        )
    }

    fn effects(d: &mut Subtask<B>) -> Vec<Effect<B>> {
        std::iter::from_fn(|| d.poll_effect()).collect()
    }

    /// Deliver `batch` on input 0 as `seq`, let the operator pass it through unchanged.
    fn pass(d: &mut Subtask<B>, seq: Seq, batch: B) -> Vec<Effect<B>> {
        d.handle_deliver(0, 0, d.epoch(), Item::Batch { seq, payload: batch.clone() });
        let Some(Effect::Process { input: 0, batch: got, .. }) = d.poll_effect() else {
            panic!("no process")
        };
        assert_eq!(got, batch);
        d.emit(got);
        assert_eq!(d.processed(), Some(0));
        effects(d)
    }

    fn sent(effects: &[Effect<B>]) -> Vec<(usize, Item<B>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { channel, item, .. } => Some((*channel, item.clone())),
                _ => None,
            })
            .collect()
    }

    fn data(n: u32) -> B {
        B::Data(vec![n])
    }

    #[test]
    fn a_restarted_round_robin_sender_routes_each_replayed_batch_where_it_went_before() {
        let mut d = round_robin(1);
        assert_eq!(sent(&pass(&mut d, 1, data(1))), [(0, Item::Batch { seq: 1, payload: data(1) })]);
        assert_eq!(sent(&pass(&mut d, 2, data(2))), [(1, Item::Batch { seq: 1, payload: data(2) })]);
        assert_eq!(sent(&pass(&mut d, 3, data(3))), [(0, Item::Batch { seq: 2, payload: data(3) })]);
        // Checkpoint 1 after three batches (out_seqs 2 and 1), completed; then a fourth
        // batch, and the subtask fails.
        d.handle_deliver(0, 0, 0, Item::Barrier(C1));
        let snapshot = effects(&mut d);
        assert!(snapshot.contains(&Effect::Snapshot {
            checkpoint: C1,
            positions: vec![3],
            out_seqs: vec![2, 1],
            ended: vec![false]
        }));
        assert_eq!(sent(&pass(&mut d, 4, data(4))), [(1, Item::Batch { seq: 2, payload: data(4) })]);
        let mut storage = MemoryStorage::<()> { completed: Some(C1), ..Default::default() };
        let snapshot = Snapshot { positions: vec![3], out_seqs: vec![2, 1], ended: vec![false], state: () };
        storage.snapshots.insert((3, C1), snapshot);
        d.handle_complete(C1);
        d.fail();
        let restored = d.restart(&storage).unwrap();
        assert_eq!(restored, Restored { checkpoint: C1, state: Some(()) });
        assert_eq!(
            effects(&mut d),
            [Effect::ResumeUpstream { input: 0, from_seq: 3, restored: C1, epoch: 1 }]
        );
        // What was sent to the old epoch is dropped; the replay of batch 4 goes to channel 1
        // under sequence number 2 again, as before the failure.
        d.handle_deliver(0, 0, 0, Item::Batch { seq: 4, payload: data(4) });
        assert_eq!(d.poll_effect(), None);
        assert_eq!(sent(&pass(&mut d, 4, data(4))), [(1, Item::Batch { seq: 2, payload: data(4) })]);
    }

    #[test]
    fn the_end_goes_out_on_every_channel_after_the_last_input_ends_and_the_operator_flushed() {
        let mut d = round_robin(2);
        d.handle_deliver(1, 0, 0, Item::Batch { seq: 1, payload: B::End });
        assert_eq!(effects(&mut d), [Effect::InputEnded { input: 1 }]);
        assert_eq!(d.processed(), Some(1));
        assert_eq!(effects(&mut d), []);
        d.handle_deliver(0, 0, 0, Item::Batch { seq: 1, payload: B::End });
        assert_eq!(effects(&mut d), [Effect::InputEnded { input: 0 }]);
        d.emit(data(9)); // what the operator held for the input
        assert_eq!(d.processed(), Some(0));
        assert_eq!(
            sent(&effects(&mut d)),
            [
                (0, Item::Batch { seq: 1, payload: data(9) }),
                (0, Item::Batch { seq: 2, payload: B::End }),
                (1, Item::Batch { seq: 1, payload: B::End })
            ]
        );
    }

    #[test]
    fn replay_requests_wait_for_the_restore_and_a_gap_escalates() {
        let mut d = round_robin(1);
        pass(&mut d, 1, data(1));
        pass(&mut d, 2, data(2));
        d.fail();
        // A receiver restarted meanwhile: served after this subtask's own restore.
        d.handle_resume(Resume { channel: 0, from_seq: 0, restored: CheckpointId(0), epoch: 7 });
        assert_eq!(effects(&mut d), []);
        d.restart(&MemoryStorage::<()>::default()).unwrap();
        let after = effects(&mut d);
        assert_eq!(
            after[0],
            Effect::ResumeUpstream { input: 0, from_seq: 0, restored: CheckpointId(0), epoch: 1 }
        );
        assert_eq!(after[1], Effect::Reset { channel: 0 });
        assert_eq!(
            after.len(),
            2,
            "restarted from nothing, this subtask produces its output again: {after:?}"
        );
        // A receiver restored from a checkpoint the queue no longer reaches back to.
        let mut d = round_robin(1);
        pass(&mut d, 1, data(1));
        d.handle_deliver(0, 0, 0, Item::Barrier(C1));
        effects(&mut d);
        d.handle_complete(C1);
        d.handle_resume(Resume { channel: 1, from_seq: 0, restored: CheckpointId(0), epoch: 2 });
        let escalated = effects(&mut d);
        assert!(
            matches!(escalated.first(), Some(Effect::Escalate(Escalation::ReplayGap { channel: 1, .. }))),
            "{escalated:?}"
        );
    }

    #[test]
    fn writes_of_an_earlier_epoch_are_ignored() {
        let config = TaskConfig::sink(1, AlignmentMode::ExactlyOnce);
        let outputs = Outputs::new(&[], CheckpointId(0), Vec::new(), (false, 0), Mutations::NONE);
        let mut d: Subtask<B> = Subtask::new(
            0,
            Task::restore(config, &ParticipantRestore::fresh(), &[0]),
            config,
            (&[0], vec![false], CheckpointId(0)),
            outputs,
        );
        d.handle_deliver(0, 0, 0, Item::Barrier(C1));
        assert!(matches!(effects(&mut d)[..], [Effect::Snapshot { checkpoint: C1, .. }]));
        d.fail();
        d.restart(&MemoryStorage::<()>::default()).unwrap();
        effects(&mut d);
        d.on_snapshot_durable(0, C1);
        assert_eq!(effects(&mut d), [], "the old epoch's snapshot is not acknowledged");
    }

    /// Carry out every effect, the operator passing each batch through; the effects.
    fn run(d: &mut Subtask<B>) -> Vec<Effect<B>> {
        let mut all = Vec::new();
        while let Some(effect) = d.poll_effect() {
            if let Effect::Process { batch, .. } = &effect {
                d.emit(batch.clone());
                d.processed();
            }
            all.push(effect);
        }
        all
    }

    fn sends(effects: &[Effect<B>], channel: usize) -> Vec<Item<B>> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { channel: ch, item, .. } if *ch == channel => Some(item.clone()),
                _ => None,
            })
            .collect()
    }

    /// A replica of `round_robin(inputs)`'s subtask.
    fn replica(inputs: usize, mode: Mode) -> Replica<B> {
        let config = TaskConfig::transform(inputs, AlignmentMode::ExactlyOnce);
        let groups = vec![Group::new(Partition::RoundRobin, vec![0, 1])];
        Replica::new(3, config, mode, (2, groups), 0, Mutations::NONE)
    }

    /// Carry out a replica's effects, its operator passing each batch through; the effects.
    fn run_replica(r: &mut Replica<B>) -> Vec<Effect<B>> {
        let mut all = Vec::new();
        while let Some(effect) = r.poll_effect() {
            if let Effect::Process { batch, .. } = &effect {
                r.emit(batch.clone());
                r.processed();
            }
            all.push(effect);
        }
        all
    }

    fn shipped(effects: &[Effect<B>]) -> Vec<Shipped<B>> {
        effects.iter().filter_map(|e| if let Effect::Ship(s) = e { Some(s.clone()) } else { None }).collect()
    }

    fn processed_batches(effects: &[Effect<B>]) -> Vec<B> {
        effects
            .iter()
            .filter_map(|e| if let Effect::Process { batch, .. } = e { Some(batch.clone()) } else { None })
            .collect()
    }

    // Reference: SPEC §11.8 (S13, S14, S15). A hot standby applies what its primary applied, in
    // its primary's order, and sends nothing; promoted, it asks upstream for what follows its
    // positions and sends each receiver exactly what the primary sent after the receiver's
    // position, under the same sequence numbers.
    #[test]
    fn a_promoted_standby_sends_what_its_primary_sent_after_each_receivers_position() {
        let mut primary = round_robin(2);
        let mut standby = replica(2, Mode::Hot);
        primary.attach_standby();
        let mut sent = run(&mut primary);
        assert!(matches!(&shipped(&sent)[..], [Shipped::Install(p)] if p.checkpoint == CheckpointId(0)));
        let input = [(0, 1, 10), (1, 1, 20), (0, 2, 11), (1, 2, 21)];
        for (i, seq, record) in input {
            primary.handle_deliver(i, 0, 0, Item::Batch { seq, payload: B::Data(vec![record]) });
            sent.extend(run(&mut primary));
        }
        primary.handle_deliver(0, 0, 0, Item::Barrier(C1));
        primary.handle_deliver(1, 0, 0, Item::Barrier(C1));
        sent.extend(run(&mut primary));
        // What the primary ships comes before what it sends for it.
        let first_send = sent.iter().position(|e| matches!(e, Effect::Send { .. })).unwrap();
        let first_ship =
            sent.iter().position(|e| matches!(e, Effect::Ship(Shipped::Process { .. }))).unwrap();
        assert!(first_ship < first_send);
        let mut applied = Vec::new();
        for s in shipped(&sent) {
            standby.handle_shipped(s);
            applied.extend(run_replica(&mut standby));
        }
        assert_eq!(processed_batches(&applied), processed_batches(&sent), "the primary's order");
        assert!(
            applied.iter().all(|e| matches!(e, Effect::Process { .. } | Effect::Install(_))),
            "a standby sends, writes and acknowledges nothing: {applied:?}"
        );
        assert!(standby.caught_up());
        // The primary dies; receiver 0 had accepted its seq 1, receiver 1 nothing.
        let mut promoted = standby.into_primary(5, 1);
        assert_eq!(promoted.grant(), 1);
        assert_eq!(
            run(&mut promoted),
            [
                Effect::ResumeUpstream { input: 0, from_seq: 2, restored: C1, epoch: 5 },
                Effect::ResumeUpstream { input: 1, from_seq: 2, restored: C1, epoch: 5 }
            ]
        );
        for (channel, from_seq) in [(0, 1), (1, 0)] {
            promoted.handle_resume(Resume { channel, from_seq, restored: CheckpointId(0), epoch: 0 });
            let resent = run(&mut promoted);
            let expected: Vec<Item<B>> = sends(&sent, channel)
                .into_iter()
                .filter(|i| !matches!(i, Item::Batch { seq, .. } if *seq <= from_seq))
                .collect();
            assert_eq!(sends(&resent, channel), expected, "channel {channel}");
        }
        // A new standby starts from the promoted primary's next snapshot.
        promoted.attach_standby();
        assert_eq!(shipped(&run(&mut promoted)), []);
    }

    // Reference: SPEC §11.8 (S12). A receiver refuses what a sender sends under a grant lower
    // than one it has accepted or been fenced with.
    #[test]
    fn a_deposed_senders_items_are_refused() {
        let mut d = round_robin(1);
        assert!(d.handle_deliver(0, 0, 0, Item::Batch { seq: 1, payload: data(1) }));
        d.fence(0, 1);
        assert!(!d.handle_deliver(0, 0, 0, Item::Batch { seq: 2, payload: data(2) }), "fenced");
        assert!(d.handle_deliver(0, 1, 0, Item::Batch { seq: 2, payload: data(2) }));
        assert!(d.handle_deliver(0, 2, 0, Item::Barrier(C1)));
        assert!(!d.handle_deliver(0, 1, 0, Item::Batch { seq: 3, payload: data(3) }), "accepted 2");
    }

    // Reference: SPEC §11.8, warm mode. A warm standby installs a checkpoint's snapshot only
    // when it completes, keeping the input since; taking over, it applies that tail.
    #[test]
    fn a_warm_standby_keeps_the_input_since_the_last_completed_snapshot() {
        let mut primary = round_robin(1);
        let mut standby = replica(1, Mode::Warm);
        primary.attach_standby();
        let mut sent = run(&mut primary);
        for seq in 1..=2 {
            primary.handle_deliver(0, 0, 0, Item::Batch { seq, payload: data(seq as u32) });
            sent.extend(run(&mut primary));
        }
        primary.handle_deliver(0, 0, 0, Item::Barrier(C1));
        sent.extend(run(&mut primary));
        primary.handle_deliver(0, 0, 0, Item::Batch { seq: 3, payload: data(3) });
        sent.extend(run(&mut primary));
        for s in shipped(&sent) {
            standby.handle_shipped(s);
        }
        assert_eq!(run_replica(&mut standby), [Effect::Install(CheckpointId(0))]);
        assert_eq!(standby.lag(), 4, "two batches, the mark, one batch");
        standby.handle_complete(C1);
        assert_eq!(run_replica(&mut standby), [Effect::Install(C1)]);
        assert_eq!(standby.lag(), 1);
        standby.take_over();
        assert_eq!(processed_batches(&run_replica(&mut standby)), [data(3)]);
        assert!(standby.caught_up());
        let mut promoted = standby.into_primary(1, 1);
        assert_eq!(
            run(&mut promoted),
            [Effect::ResumeUpstream { input: 0, from_seq: 3, restored: C1, epoch: 1 }]
        );
        // Receiver 0 completed c1 and so has its seq 1 (batch 1): it gets batch 3 from the tail.
        promoted.handle_resume(Resume { channel: 0, from_seq: 1, restored: C1, epoch: 0 });
        assert_eq!(sends(&run(&mut promoted), 0), [Item::Batch { seq: 2, payload: data(3) }]);
    }

    // Reference: SPEC §11.8 (S6, S14). A standby started at a snapshot that may still abort
    // keeps its primary's buffer queues: a receiver may need what was sent before it. (The
    // failover-warm model scope found the queue starting at that snapshot instead.)
    #[test]
    fn a_standby_started_at_a_snapshot_keeps_the_primarys_buffer_queues() {
        let mut primary = round_robin(1);
        let mut standby = replica(1, Mode::Warm);
        let mut sent = Vec::new();
        primary.handle_deliver(0, 0, 0, Item::Batch { seq: 1, payload: data(1) });
        sent.extend(run(&mut primary));
        primary.attach_standby();
        sent.extend(run(&mut primary));
        primary.handle_deliver(0, 0, 0, Item::Barrier(C1));
        sent.extend(run(&mut primary));
        for s in shipped(&sent) {
            standby.handle_shipped(s);
            run_replica(&mut standby);
        }
        standby.take_over();
        run_replica(&mut standby);
        assert!(standby.caught_up());
        let mut promoted = standby.into_primary(1, 1);
        assert_eq!(promoted.outputs().buffer(0).unwrap().base(), CheckpointId(0));
        run(&mut promoted);
        promoted.handle_resume(Resume { channel: 0, from_seq: 0, restored: CheckpointId(0), epoch: 0 });
        assert_eq!(sends(&run(&mut promoted), 0), sends(&sent, 0), "batch 1 and Barrier(c1)");
    }
}
