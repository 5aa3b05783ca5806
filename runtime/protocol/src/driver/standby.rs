//! The standby of a transform subtask (SPEC §11.8): a replica of its primary's operator,
//! fed what the primary applies, in the primary's order, and promoted in its place.
//!
//! The primary ships ([`Effect::Ship`]) every batch and end of input before its operator
//! runs on it, and a mark at every snapshot; so whatever output of the primary a receiver has
//! accepted, the standby has been shipped the input that produced it (S13). A `hot` replica
//! applies what it is shipped as it comes and routes what its operator outputs into its own
//! buffer queues, sending nothing (S15). A `warm` one keeps what it is shipped since the last
//! completed checkpoint's snapshot, which it installs at the completion (dropping the input
//! that snapshot covers, never earlier: the data filter made sound), and applies that tail
//! only when it takes over. Promoted ([`Replica::into_primary`]), it becomes an ordinary
//! [`Subtask`] at its applied positions: upstream replays what follows them, and each
//! receiver, told of the promotion, asks for what follows its own position (S14).

use std::collections::VecDeque;

use super::{Effect, Epoch, Subtask};
use crate::participant::{Task, TaskConfig};
use crate::recovery::ParticipantRestore;
use crate::route::{Group, Outputs, Payload};
use crate::{CheckpointId, Mutant, Mutations, ParticipantId, Seq};

/// A state of the primary a standby can start from: its snapshot of `checkpoint` (0: its
/// initial state), with the positions, output sequence numbers and end flags in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Point {
    /// The checkpoint (0: none; the operator starts fresh).
    pub checkpoint: CheckpointId,
    /// Last applied sequence number per input.
    pub positions: Vec<Seq>,
    /// Last sequence number per output channel.
    pub out_seqs: Vec<Seq>,
    /// Inputs whose end was processed.
    pub ended: Vec<bool>,
}

/// What a primary ships to its standby, in the order it applies it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Shipped<P: Payload> {
    /// From here the primary's state is this snapshot's: start (again) from it.
    Install(Point),
    /// It applies this batch.
    Process {
        /// The input.
        input: usize,
        /// Its sequence number there.
        seq: Seq,
        /// The batch.
        batch: P,
    },
    /// Input `input` ended (its end took sequence number `seq`).
    InputEnded {
        /// The input.
        input: usize,
        /// The end's sequence number.
        seq: Seq,
    },
    /// It took its snapshot here.
    Snapshot(Point),
    /// Right after an `Install` of a snapshot not known complete: the primary's output side
    /// there, buffer queues included (they reach back to the last completed checkpoint, which
    /// a receiver may still need if this one aborts). Payloads are shared, not copied.
    Outputs(Box<Outputs<P>>),
    /// The receiver of `channel` restarted and is sent to `epoch` from now on.
    Receiver {
        /// The output channel.
        channel: usize,
        /// The receiver's epoch.
        epoch: Epoch,
    },
}

/// How a standby follows its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// It applies what it is shipped at once: a takeover is a role switch.
    Hot,
    /// It installs each completed checkpoint's snapshot and keeps the input since: a takeover
    /// applies that tail first.
    Warm,
}

/// The replica's state once it has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State<P: Payload> {
    positions: Vec<Seq>,
    ended: Vec<bool>,
    outputs: Outputs<P>,
    /// The latest checkpoint whose snapshot point it has passed (or installed).
    passed: CheckpointId,
}

/// The standby of one transform subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica<P: Payload> {
    participant: ParticipantId,
    config: TaskConfig,
    mode: Mode,
    groups: Vec<Group<P::Key>>,
    budget: usize,
    state: Option<State<P>>,
    /// Shipped and not applied yet (warm: everything since the installed snapshot).
    pending: VecDeque<Shipped<P>>,
    /// The receivers' epochs, per output channel.
    receivers: Vec<Epoch>,
    /// The latest checkpoint it heard completed.
    completed: CheckpointId,
    /// It is taking over: a warm replica applies its tail.
    taking_over: bool,
    processing: Option<(usize, bool)>,
    effects: VecDeque<Effect<P>>,
    mutations: Mutations,
}

impl<P: Payload> Replica<P> {
    /// A standby of `participant` (a transform with `config`), whose outputs are spread over
    /// `channels` channels in `groups` and keep buffer queues within `budget` bytes (0: no
    /// limit). It has no state until its primary ships one ([`Shipped::Install`]).
    pub fn new(
        participant: ParticipantId,
        config: TaskConfig,
        mode: Mode,
        (channels, groups): (usize, Vec<Group<P::Key>>),
        budget: usize,
        mutations: Mutations,
    ) -> Replica<P> {
        assert!(!config.sink, "a sink has no standby");
        Replica {
            participant,
            config,
            mode,
            groups,
            budget,
            state: None,
            pending: VecDeque::new(),
            receivers: vec![0; channels],
            completed: CheckpointId(0),
            taking_over: false,
            processing: None,
            effects: VecDeque::new(),
            mutations,
        }
    }

    /// Its mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The primary shipped `shipped`.
    pub fn handle_shipped(&mut self, shipped: Shipped<P>) {
        match shipped {
            Shipped::Receiver { channel, epoch } => {
                self.receivers[channel] = epoch;
                if let Some(state) = &mut self.state {
                    state.outputs.set_epoch(channel, epoch);
                }
            }
            // The mutant's data filter: the input the snapshot covers is dropped as soon as
            // the snapshot is shipped, before it is known durable (S7/S10).
            Shipped::Snapshot(point)
                if self.mode == Mode::Warm
                    && !self.taking_over
                    && self.mutations.has(Mutant::WarmDropsUncovered) =>
            {
                self.pending.clear();
                self.pending.push_back(Shipped::Snapshot(point));
            }
            shipped => self.pending.push_back(shipped),
        }
    }

    /// The coordinator completed `c`: a hot replica's buffer queues drop what no replay can
    /// need; a warm one installs the snapshot of `c` if it holds its mark, dropping the input
    /// that snapshot covers.
    pub fn handle_complete(&mut self, c: CheckpointId) {
        self.completed = self.completed.max(c);
        if let Some(state) = &mut self.state {
            state.outputs.complete(c);
        }
        if self.mode == Mode::Warm && !self.taking_over {
            let mark = self
                .pending
                .iter()
                .rposition(|s| matches!(s, Shipped::Snapshot(p) | Shipped::Install(p) if p.checkpoint == c));
            if let Some(at) = mark {
                let Some(Shipped::Snapshot(point) | Shipped::Install(point)) =
                    self.pending.drain(..=at).last()
                else {
                    unreachable!("found above")
                };
                self.pending.push_front(Shipped::Install(point));
            }
        }
    }

    /// Whether it can be promoted now: it has a state and has applied everything it was
    /// shipped (S13). A warm replica must take over first.
    pub fn caught_up(&self) -> bool {
        let Some(_) = &self.state else { return false };
        if self.mutations.has(Mutant::PromoteUnsynced) {
            return true;
        }
        self.pending.is_empty() && self.processing.is_none() && self.effects.is_empty()
    }

    /// How many shipped entries wait to be applied.
    pub fn lag(&self) -> usize {
        self.pending.len()
    }

    /// Whether it has a state (it can take over).
    pub fn installed(&self) -> bool {
        self.state.is_some() || self.pending.iter().any(|s| matches!(s, Shipped::Install(_)))
    }

    /// Whether it can take over now: it has a state, and its buffer queues did not give up
    /// over their budget (promoted, it must serve each receiver from its position; a queue
    /// that gave up could not, and the takeover would end in a global rollback, where a local
    /// restart of the primary would not).
    pub fn can_take_over(&self) -> bool {
        self.installed() && !self.state.as_ref().is_some_and(|s| s.outputs.gave_up())
    }

    /// Its primary failed: a warm replica applies the input it kept (a hot one has).
    pub fn take_over(&mut self) {
        self.taking_over = true;
    }

    /// The next thing to do: [`Effect::Install`], [`Effect::Process`] and
    /// [`Effect::InputEnded`] only (the operator's output goes to [`Replica::emit`], then
    /// [`Replica::processed`]).
    pub fn poll_effect(&mut self) -> Option<Effect<P>> {
        loop {
            if let Some(effect) = self.effects.pop_front() {
                return Some(effect);
            }
            if self.processing.is_some() {
                return None;
            }
            let applying = self.mode == Mode::Hot || self.taking_over;
            let next = match self.pending.front()? {
                Shipped::Install(_) => self.pending.pop_front(),
                _ if self.state.is_none() => {
                    // Shipped for a state it does not have: it waits for the next one.
                    self.pending.pop_front();
                    continue;
                }
                // The output side that goes with the state just installed.
                Shipped::Outputs(_) => self.pending.pop_front(),
                _ if !applying => return None,
                _ if self.mutations.has(Mutant::StandbyOwnOrder) => self.own_order(),
                _ => self.pending.pop_front(),
            };
            self.apply(next.expect("one pending"));
        }
    }

    /// The mutant's order: the first pending batch of the lowest input, before the next
    /// snapshot mark.
    fn own_order(&mut self) -> Option<Shipped<P>> {
        let upto = self
            .pending
            .iter()
            .position(|s| !matches!(s, Shipped::Process { .. }))
            .unwrap_or(self.pending.len());
        let lowest = (0..upto)
            .min_by_key(|&i| match &self.pending[i] {
                Shipped::Process { input, .. } => (*input, i),
                _ => unreachable!("batches only"),
            })
            .unwrap_or(0);
        self.pending.remove(lowest)
    }

    fn apply(&mut self, shipped: Shipped<P>) {
        match shipped {
            Shipped::Install(point) => {
                let mut outputs = Outputs::new(
                    &point.out_seqs,
                    point.checkpoint,
                    self.groups.clone(),
                    (true, self.budget),
                    self.mutations,
                );
                for (channel, &epoch) in self.receivers.iter().enumerate() {
                    outputs.set_epoch(channel, epoch);
                }
                outputs.complete(self.completed);
                self.state = Some(State {
                    positions: point.positions,
                    ended: point.ended,
                    outputs,
                    passed: point.checkpoint,
                });
                self.effects.push_back(Effect::Install(point.checkpoint));
            }
            Shipped::Process { input, seq, batch } => {
                let state = self.state.as_mut().expect("installed");
                state.positions[input] = seq;
                self.processing = Some((input, false));
                self.effects.push_back(Effect::Process { input, seq, batch });
            }
            Shipped::InputEnded { input, seq } => {
                let state = self.state.as_mut().expect("installed");
                state.positions[input] = seq;
                state.ended[input] = true;
                self.processing = Some((input, true));
                self.effects.push_back(Effect::InputEnded { input });
            }
            Shipped::Outputs(outputs) => {
                // As trimmed as the primary's at the snapshot: the completions it had heard
                // of then are in; later ones come here after this (no `complete` of an older
                // checkpoint here: a queue drops through the first barrier at or after it).
                let state = self.state.as_mut().expect("installed");
                state.outputs = *outputs;
                for (channel, &epoch) in self.receivers.iter().enumerate() {
                    state.outputs.set_epoch(channel, epoch);
                }
            }
            Shipped::Snapshot(point) => {
                let state = self.state.as_mut().expect("installed");
                let emits = self.mutations.has(Mutant::StandbyEmits);
                let effects = &mut self.effects;
                state.outputs.send_barrier(point.checkpoint, |channel, epoch, item| {
                    if emits {
                        effects.push_back(Effect::Send { channel, epoch, item })
                    }
                });
                state.passed = point.checkpoint;
            }
            Shipped::Receiver { .. } => unreachable!("applied on arrival"),
        }
    }

    /// The operator output `batch` while carrying out `Process` or `InputEnded`: route it
    /// into the buffer queues (nothing is sent, S15). Returns true when this took them over
    /// their budget.
    pub fn emit(&mut self, batch: P) -> bool {
        let state = self.state.as_mut().expect("installed");
        let emits = self.mutations.has(Mutant::StandbyEmits);
        let effects = &mut self.effects;
        state.outputs.send(batch, |channel, epoch, item| {
            if emits {
                effects.push_back(Effect::Send { channel, epoch, item })
            }
        })
    }

    /// The shell finished carrying out the last `Process` or `InputEnded`.
    pub fn processed(&mut self) {
        let Some((_, end)) = self.processing.take() else { return };
        let state = self.state.as_mut().expect("installed");
        if end && state.ended.iter().all(|&e| e) {
            state.outputs.send_end(|_, _, _| {});
        }
    }

    /// The replica as its slot's primary under `grant`, consuming input sent to `epoch` (an
    /// epoch its upstream has not sent to before). Call it once [`Replica::caught_up`]. Its
    /// first effects ask every upstream to replay what follows its applied positions; the
    /// checkpoints its primary had in flight it does not snapshot (the coordinator aborts
    /// them at the promotion).
    pub fn into_primary(self, epoch: Epoch, grant: Epoch) -> Subtask<P> {
        let State { positions, ended, mut outputs, passed } = self.state.expect("promoted once installed");
        // Its receivers were sent by the old primary: until each asks for what follows its
        // position, nothing live may overtake that replay.
        outputs.hold();
        let restore = ParticipantRestore { from: Some(passed), ..ParticipantRestore::default() };
        let core = Task::restore(self.config, &restore, &positions);
        let mut primary =
            Subtask::new(self.participant, core, self.config, (&positions, ended, passed), outputs);
        primary.grant = grant;
        primary.epoch = epoch;
        primary.restore_point = None;
        for (input, &from_seq) in positions.iter().enumerate() {
            // It has every barrier up to the last one it passed.
            primary.effects.push_back(Effect::ResumeUpstream { input, from_seq, restored: passed, epoch });
        }
        primary
    }
}
