//! The failover part of the checkpoint model (SPEC §11.8): the transform's standby, the
//! epoch authority, a crashed or hung primary, and a crashed standby.
//!
//! The standby is the core's own [`Replica`], fed over a FIFO channel what the primary ships
//! ([`Effect::Ship`]); the authority's steps call the core's `fence`, `handle_failover`,
//! `caught_up`, `take_over`, `into_primary` and `reconnect`. This file decides nothing about
//! the protocol: it moves shipped entries, stale items and writes, crashes things, keeps the
//! ghost record of grants and records what the properties S11 to S15 need. A *hung* primary
//! is not removed: it goes on taking steps under its old grant (its inbox, its writes, its
//! sends to the sink on a channel of its own), and S12 asks that none of it has an effect.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use weir_protocol::driver::{Effect, Epoch, Mode, Replica, Shipped};
use weir_protocol::participant::TaskConfig;
use weir_protocol::route::Item;
use weir_protocol::{CheckpointId, Seq};

use crate::checkpoint::{
    BatchId, CheckpointModel, Disk, Log, Msg, Node, SOURCES, State, TaskNode, Watermark, Write,
};
use crate::props::{self, Violation};

/// Where the transform's slot is in a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Phase {
    /// The primary runs.
    #[default]
    Primary,
    /// The primary crashed or hung; the authority granted the next epoch and fenced the
    /// receivers; the standby is not promoted yet.
    Down,
    /// The standby was promoted.
    Promoted,
}

/// The standby: the core's replica and its operator's state (the batches it applied).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StandbyNode {
    /// The core's replica.
    pub replica: Replica<BatchId>,
    /// Its operator's state.
    pub applied: BTreeSet<BatchId>,
    /// Its number in the ghost record of grants (the first primary is 0).
    pub id: u8,
}

/// A deposed primary that hung and woke up: it keeps its driver (and old grant), what was in
/// flight to it, and its own pending writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Deposed {
    /// Its driver and operator state.
    pub node: TaskNode,
    /// What was sent to it on each input before the promotion.
    pub inbox: [VecDeque<Msg>; SOURCES],
    /// Its writes, not yet durable.
    pub writes: VecDeque<Write>,
}

/// The failover state of the transform's slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Failover {
    /// The scope has a standby (so the fingerprint never leaves anything out).
    pub enabled: bool,
    /// Where the slot is.
    pub phase: Phase,
    /// The slot's epoch as the authority persisted it (the latest grant).
    pub authority: Epoch,
    /// The standby, if one runs.
    pub standby: Option<StandbyNode>,
    /// Shipped by the primary, not yet delivered to the standby (FIFO). A hot standby takes
    /// all of it when it hears of a completion (before it handles it) and when it is
    /// promoted, not entry by entry: until then nothing it does is visible (S15), and the
    /// promotion hands it the rest anyway. A warm standby takes each entry as it is shipped:
    /// what it keeps is this channel, so that costs no states, and its data filter sees each
    /// snapshot mark before the checkpoint completes or aborts.
    pub ship: VecDeque<Shipped<BatchId>>,
    /// What the old primary sent to the sink under its old grant and is still in flight,
    /// per sink input (the hung primary's later sends join it).
    pub stale: [VecDeque<Msg>; 2],
    /// The old primary's grant.
    pub stale_grant: Epoch,
    /// The hung primary, once deposed.
    pub deposed: Option<Deposed>,
    /// The next replica's number.
    pub next_id: u8,
    /// Ghost (S11): every grant, by replica.
    pub grants: Vec<(u8, Epoch)>,
    /// Ghost (S14): what the old primary had sent under each (channel, seq) when it failed.
    pub old_sent: BTreeMap<(usize, Seq), BatchId>,
    /// Ghost (N2): a checkpoint completed after the promotion.
    pub completed_after: bool,
    /// Ghost (N3): a receiver refused an item sent under a deposed grant.
    pub refused_stale: bool,
}

impl Failover {
    /// Whether the slot has no running primary (between the failure and the promotion).
    pub fn down(&self) -> bool {
        self.phase == Phase::Down
    }

    /// A global rollback restarted the pipeline: the standby, what was shipped or in flight
    /// under an old grant, and a hung primary are gone; the authority's epoch and the ghost
    /// records stay. A slot that was failing over has its primary again (the restarted one,
    /// under the latest grant).
    pub(crate) fn reset(&mut self) {
        self.standby = None;
        self.ship.clear();
        self.stale.iter_mut().for_each(VecDeque::clear);
        self.deposed = None;
        if self.phase == Phase::Down {
            self.phase = Phase::Promoted;
        }
    }
}

/// A step of the failover environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailoverAction {
    /// The primary crashes (`hang`: it hangs, and later goes on under its old grant); the
    /// authority grants the next epoch, fences the sink and tells the coordinator.
    Fail {
        /// It hangs instead of dying.
        hang: bool,
    },
    /// The authority promotes the standby once it has applied everything shipped.
    Promote,
    /// The standby crashes; its primary stops shipping.
    CrashStandby,
    /// A new standby is attached to the primary (it starts at the primary's next snapshot).
    Attach,
    /// The sink receives the oldest item the old primary sent on sink input `.0`.
    Stale(u8),
}

impl CheckpointModel {
    /// A fresh standby of the transform, not attached yet.
    pub(crate) fn standby(&self, mode: Mode, id: u8) -> StandbyNode {
        let config: TaskConfig = self.task_config(false);
        let groups = self.task_groups();
        let channels = self.scope.sink_inputs();
        let budget = usize::from(self.scope.buffer_budget);
        let replica =
            Replica::new(Node::Task.participant(), config, mode, (channels, groups), budget, self.mutations);
        StandbyNode { replica, applied: BTreeSet::new(), id }
    }

    /// The failover steps possible in `state`.
    pub(crate) fn failover_actions(&self, state: &State, actions: &mut Vec<FailoverAction>) {
        let fo = &state.failover;
        if !fo.enabled {
            return;
        }
        let ready = fo.standby.as_ref().is_some_and(|s| {
            s.replica.installed() || fo.ship.iter().any(|s| matches!(s, Shipped::Install(_)))
        });
        if fo.phase == Phase::Primary && state.budget.failovers > 0 && ready {
            actions.push(FailoverAction::Fail { hang: false });
            if self.scope.hang {
                actions.push(FailoverAction::Fail { hang: true });
            }
        }
        if fo.down() {
            actions.push(FailoverAction::Promote);
        }
        if fo.phase == Phase::Primary && fo.standby.is_some() && state.budget.standby_crashes > 0 {
            actions.push(FailoverAction::CrashStandby);
        }
        if fo.phase == Phase::Primary && fo.standby.is_none() && fo.next_id < 2 + self.scope.standby_crashes {
            actions.push(FailoverAction::Attach);
        }
        for (lane, queue) in fo.stale.iter().enumerate() {
            if !queue.is_empty() {
                actions.push(FailoverAction::Stale(lane as u8));
            }
        }
    }

    /// Carry out a failover step.
    pub(crate) fn failover_step(&self, state: &mut State, action: FailoverAction, log: &mut Log) {
        match action {
            FailoverAction::Fail { hang } => self.fail_primary(state, hang, log),
            FailoverAction::Promote => self.promote(state, log),
            FailoverAction::CrashStandby => {
                state.budget.standby_crashes -= 1;
                log.note(|| "the standby crashes; the primary stops shipping".to_string());
                state.failover.standby = None;
                state.failover.ship.clear();
                state.task.driver.detach_standby();
            }
            FailoverAction::Attach => {
                let mode = self.scope.standby.expect("a failover scope");
                let id = state.failover.next_id;
                state.failover.next_id += 1;
                log.note(|| format!("a new standby (replica {id}) is attached"));
                state.failover.standby = Some(self.standby(mode, id));
                state.task.driver.attach_standby();
                self.pump(state, Node::Task, log);
            }
            FailoverAction::Stale(lane) => {
                let msg = state.failover.stale[lane as usize].pop_front().expect("an item");
                let grant = state.failover.stale_grant;
                log.note(|| format!("sink receives {msg:?} sent under the old grant {grant}"));
                let item = match msg {
                    Msg::Batch { seq, id } => Item::Batch { seq, payload: id },
                    Msg::Barrier(c) => Item::Barrier(c),
                    other => unreachable!("a data channel carried {other:?}"),
                };
                let driver = &mut state.sink.driver;
                let epoch = driver.epoch();
                if driver.handle_deliver(lane as usize, grant, epoch, item) {
                    log.note(|| "the sink takes it".to_string());
                    props::check_stale_taken(state, grant);
                } else {
                    log.note(|| "the sink refuses it: a deposed grant".to_string());
                    state.failover.refused_stale = true;
                }
                self.pump(state, Node::Sink, log);
            }
        }
    }

    /// The primary failed: the authority raises the slot's epoch, fences the sink's inputs
    /// from the transform and tells the coordinator (which aborts what is collecting). What
    /// the primary sent the sink and is still in flight carries its old grant; a hung primary
    /// keeps its state and its pending writes, a crashed one loses them. A warm standby starts
    /// taking over (it applies the input it kept).
    fn fail_primary(&self, state: &mut State, hang: bool, log: &mut Log) {
        state.budget.failovers -= 1;
        let fo = &mut state.failover;
        fo.phase = Phase::Down;
        fo.stale_grant = state.task.driver.grant();
        fo.authority += 1;
        let grant = fo.authority;
        log.note(|| {
            let how = if hang { "hangs" } else { "crashes" };
            format!("the primary {how}: the authority grants epoch {grant}, fences the sink and tells the coordinator")
        });
        fo.old_sent = state.ghost.task_sent.clone();
        for lane in 0..self.scope.sink_inputs() as u8 {
            let ch = crate::checkpoint::channel_lane(Node::Task, Node::Sink, lane);
            fo.stale[lane as usize].extend(state.net[ch].drain(..));
            state.sink.driver.fence(lane as usize, grant);
        }
        let writes = std::mem::take(&mut state.writes[Node::Task.index()]);
        if hang {
            fo.deposed = Some(Deposed { node: state.task.clone(), inbox: Default::default(), writes });
        }
        state.coordinator.handle_failover(Node::Task.participant(), grant);
        self.drain_coordinator(state, log);
        if let Some(standby) = &mut state.failover.standby
            && standby.replica.mode() == Mode::Warm
        {
            standby.replica.take_over();
            self.pump_standby(state, log);
        }
    }

    /// The authority promotes the standby: it hands it the rest of what the primary shipped,
    /// waits until the replica says it has applied everything (`caught_up`), and makes it
    /// the slot's primary under the new grant, at a new epoch; the sink reconnects to it.
    fn promote(&self, state: &mut State, log: &mut Log) {
        let fo = &mut state.failover;
        let standby = fo.standby.as_mut().expect("a standby to promote");
        for shipped in fo.ship.drain(..) {
            standby.replica.handle_shipped(shipped);
        }
        let caught_up =
            |state: &State| state.failover.standby.as_ref().is_some_and(|s| s.replica.caught_up());
        while !caught_up(state) {
            // A step that yields nothing may still have applied a snapshot mark.
            if !self.standby_effect(state, log) && !caught_up(state) {
                log.note(|| "the standby cannot catch up: no promotion".to_string());
                state.ghost.violations.insert(Violation::PromotionUnsafe);
                return;
            }
        }
        let StandbyNode { replica, applied, id } = state.failover.standby.take().expect("standby");
        props::check_promotion(state, &applied);
        let grant = state.failover.authority;
        props::check_grant(state, id, grant);
        let epoch = state.task.driver.epoch() + 1;
        log.note(|| format!("the standby (replica {id}) is promoted under grant {grant}, epoch {epoch}"));
        let driver = replica.into_primary(epoch, grant);
        if driver.grant() != grant || state.coordinator.grant(Node::Task.participant()) != grant {
            state.ghost.violations.insert(Violation::UniqueGrant);
        }
        let watermarks = Watermark::restored(driver.positions(), CheckpointId::default());
        state.task = TaskNode { driver, watermarks, applied };
        state.failover.phase = Phase::Promoted;
        state.ghost.last_snapshot[Node::Task.participant()] = CheckpointId::default();
        // What the sources sent to the old primary's epoch: the hung one may take it.
        for s in 0..SOURCES as u8 {
            let ch = crate::checkpoint::channel(Node::Source(s), Node::Task);
            let in_flight = state.net[ch].drain(..);
            match &mut state.failover.deposed {
                Some(deposed) => deposed.inbox[s as usize].extend(in_flight),
                None => drop(in_flight),
            }
        }
        self.pump(state, Node::Task, log);
        for lane in 0..self.scope.sink_inputs() {
            state.sink.driver.reconnect(lane);
        }
        self.pump(state, Node::Sink, log);
        if state.failover.deposed.is_some() {
            self.wake(state, log);
        }
    }

    /// The standby takes everything its primary shipped so far, in order, and carries it
    /// out (the model's reduction of the FIFO channel to the standby: see [`Failover::ship`]).
    pub(crate) fn deliver_shipped(&self, state: &mut State, log: &mut Log) {
        let Some(standby) = &mut state.failover.standby else { return };
        for shipped in state.failover.ship.drain(..) {
            log.note(|| format!("standby takes {shipped:?}"));
            standby.replica.handle_shipped(shipped);
        }
        self.pump_standby(state, log);
    }

    /// Carry out what the standby asks until it is quiet.
    pub(crate) fn pump_standby(&self, state: &mut State, log: &mut Log) {
        while self.standby_effect(state, log) {}
    }

    /// One effect of the standby; false when it has none (or it is gone).
    fn standby_effect(&self, state: &mut State, log: &mut Log) -> bool {
        let Some(standby) = &mut state.failover.standby else { return false };
        let Some(effect) = standby.replica.poll_effect() else { return false };
        log.note(|| format!("standby: {effect:?}"));
        match effect {
            Effect::Install(c) => match installed(&state.disk, &state.writes[Node::Task.index()], c) {
                Some(applied) => standby.applied = applied,
                None => {
                    // The snapshot is gone (a later completion dropped it): this standby
                    // cannot start, and its primary stops shipping to it.
                    log.note(|| format!("the standby finds no snapshot of {c:?} and gives up"));
                    state.failover.standby = None;
                    state.failover.ship.clear();
                    state.task.driver.detach_standby();
                    return false;
                }
            },
            Effect::Process { batch, .. } => {
                standby.applied.insert(batch);
                standby.replica.emit(batch);
                standby.replica.processed();
            }
            Effect::InputEnded { .. } => standby.replica.processed(),
            other => {
                log.note(|| format!("the standby acts: {other:?}"));
                state.ghost.violations.insert(Violation::StandbyActed);
            }
        }
        true
    }

    /// The hung primary wakes up right after the promotion: it takes everything in its
    /// inbox, in order per input, and its writes land, each reported to it, until it has
    /// nothing left to do. Its items and acknowledgements carry its old grant; it is gone
    /// afterwards (it would only wait). All of it in the promotion's step: each of its
    /// effects is refused on its own (its items reach the sink as separate steps, on the
    /// channel [`Failover::stale`]), so when it wakes changes nothing the properties see,
    /// and waking later only multiplied the states (by ten in the failover scope).
    fn wake(&self, state: &mut State, log: &mut Log) {
        log.note(|| "the hung primary wakes up".to_string());
        loop {
            self.pump_deposed(state, log);
            let deposed = state.failover.deposed.as_mut().expect("a deposed primary");
            let input = (0..SOURCES).find(|&i| !deposed.inbox[i].is_empty());
            if let Some(input) = input {
                let msg = deposed.inbox[input].pop_front().expect("an item");
                log.note(|| format!("the deposed primary receives {msg:?} on input {input}"));
                let driver = &mut deposed.node.driver;
                let epoch = driver.epoch();
                let item = match msg {
                    Msg::Batch { seq, id } => Item::Batch { seq, payload: id },
                    Msg::Barrier(c) => Item::Barrier(c),
                    other => unreachable!("a data channel carried {other:?}"),
                };
                driver.handle_deliver(input, 0, epoch, item);
                continue;
            }
            let Some(write) = deposed.writes.pop_front() else { break };
            log.note(|| format!("the deposed primary's {write:?} is durable"));
            let Write::TaskSnapshot { checkpoint, snapshot } = write else {
                unreachable!("a transform writes snapshots only")
            };
            if state.disk.task.get(&checkpoint).is_some_and(|old| *old != snapshot) {
                state.ghost.violations.insert(Violation::Nondeterministic);
            }
            state.disk.task.insert(checkpoint, snapshot);
            let driver = &mut state.failover.deposed.as_mut().expect("deposed").node.driver;
            let epoch = driver.epoch();
            driver.on_snapshot_durable(epoch, checkpoint);
        }
        state.failover.deposed = None;
    }

    /// Carry out what the hung primary does, under its old grant: its operator runs, its
    /// sends go to the sink on its own channel, its snapshots to its own pending writes, its
    /// acknowledgements to the coordinator.
    fn pump_deposed(&self, state: &mut State, log: &mut Log) {
        loop {
            let Some(deposed) = &mut state.failover.deposed else { return };
            let Some(effect) = deposed.node.driver.poll_effect() else { return };
            log.note(|| format!("deposed primary: {effect:?}"));
            let node = &mut deposed.node;
            match effect {
                Effect::Process { batch, .. } => {
                    node.applied.insert(batch);
                    node.driver.emit(batch);
                    node.driver.processed();
                }
                Effect::InputEnded { .. } => {
                    node.driver.processed();
                }
                Effect::Send { channel, item, .. } => {
                    let msg = match item {
                        Item::Batch { seq, payload } => Msg::Batch { seq, id: payload },
                        Item::Barrier(c) => Msg::Barrier(c),
                    };
                    state.failover.stale[channel].push_back(msg);
                }
                Effect::Snapshot { checkpoint, positions, out_seqs, ended } => {
                    let applied = node.applied.clone();
                    let snapshot = crate::checkpoint::TaskSnapshot { applied, positions, out_seqs, ended };
                    deposed.writes.push_back(Write::TaskSnapshot { checkpoint, snapshot });
                }
                Effect::Ack(c) => {
                    let grant = node.driver.grant();
                    log.note(|| {
                        format!("coordinator receives Ack({c:?}) from the deposed primary (grant {grant})")
                    });
                    state.coordinator.handle_ack(Node::Task.participant(), grant, c);
                    self.drain_coordinator(state, log);
                }
                // It hears of no completion, restarts nothing, and has no standby any more.
                Effect::Credit { .. } | Effect::Ship(_) | Effect::DropSnapshotsBelow(_) => {}
                other => unreachable!("the deposed primary: {other:?}"),
            }
        }
    }
}

/// The operator state of the primary's snapshot of `c` (0: the initial state), from the disk
/// or, while it is being written, from the primary's pending writes.
fn installed(disk: &Disk, writes: &VecDeque<Write>, c: CheckpointId) -> Option<BTreeSet<BatchId>> {
    if c == CheckpointId::default() {
        return Some(BTreeSet::new());
    }
    if let Some(snapshot) = disk.task.get(&c) {
        return Some(snapshot.applied.clone());
    }
    writes.iter().find_map(|w| match w {
        Write::TaskSnapshot { checkpoint, snapshot } if *checkpoint == c => Some(snapshot.applied.clone()),
        _ => None,
    })
}
