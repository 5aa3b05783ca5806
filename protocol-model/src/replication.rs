//! The replication model (SPEC §12): two data agents and a witness, one pipeline.
//!
//! Agent `a` owns the pipeline under epoch 1 at the start; `b` is its replica and, with
//! automatic failover, its candidate; `w` is a witness (an acceptor, nothing else). The
//! three acceptors, the agents' register members, the owner's [`Shipper`] and the replica's
//! [`ReplicaLog`] are the core's own types; this file decides nothing about the protocol. It
//! moves messages over a network that loses (within a budget), reorders and delays them (a
//! partition holds an agent's messages until it heals), lets each agent's clock run a tick
//! slow or fast of real time, crashes one box for good, and models the pipeline as
//! checkpoints taken, completed and committed to a sink that accepts everything (an MQTT
//! broker: consumers de-duplicate by `(pipeline, epoch, checkpoint, seq)`).
//!
//! Properties (this crate's README): S16 in `sync`, S17 in `async`, S18 in both, L3 as a
//! terminal-state property of this acyclic model (time is bounded, every step without a
//! tick consumes a message or a budget).

use std::collections::{BTreeMap, BTreeSet};

use stateright::{Model, Property};
use weir_protocol::lease::{Acceptor, Ballot, Lease, LeaseAction, Member, NodeId, Reply, Request, Timing};
use weir_protocol::replication::{Ack, Manifest, ReplicaLog, ReplicationMode, Shipper};
use weir_protocol::{CheckpointId, Mutant, Mutations};

/// The data agents and the witness.
pub const A: NodeId = 0;
/// The second data agent.
pub const B: NodeId = 1;
/// The witness.
pub const W: NodeId = 2;
const DATA: [NodeId; 2] = [A, B];
const NAMES: [&str; 3] = ["a", "b", "w"];

/// How large a state space to explore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicationScope {
    /// `sync` or `async` (with its `max_lag`).
    pub mode: ReplicationMode,
    /// Ticks of real time.
    pub ticks: u64,
    /// Lease, grace and renewal, in ticks.
    pub timing: Timing,
    /// How many ticks each agent's clock may skip or double (so it runs at most this far
    /// ahead of or behind real time).
    pub drift: u8,
    /// Checkpoints an owner may take (ids up to this).
    pub checkpoints: u64,
    /// Messages the network may lose.
    pub losses: u8,
    /// Partitions (isolating one agent until healed).
    pub partitions: u8,
    /// Box crashes (for good).
    pub crashes: u8,
    /// Whether a solo owner whose peer caught up leaves solo (`LeaveSolo`): in the scopes
    /// made for it, and the nightly ones (it doubles the others' state spaces).
    pub leave_solo: bool,
}

impl ReplicationScope {
    /// `sync`; lease 3 ticks, grace 1, renewal every tick; 6 ticks; one checkpoint; one lost
    /// message, one partition, one crash; exact clocks (nightly since session 14).
    pub fn sync() -> ReplicationScope {
        ReplicationScope {
            mode: ReplicationMode::Sync,
            ticks: 6,
            timing: Timing { lease: 3, grace: 1, renew_after: 1, round_timeout: 1 },
            drift: 0,
            checkpoints: 1,
            losses: 1,
            partitions: 1,
            crashes: 1,
            leave_solo: false,
        }
    }

    /// `sync` with clocks that may each skip or double one tick, and a partition; no crash
    /// or loss (CI). The partition makes the owner's renewals fail, the drift makes its
    /// clock slow and the candidate's fast: the scope of the `no-grace` mutant.
    pub fn sync_drift() -> ReplicationScope {
        ReplicationScope { drift: 1, losses: 0, crashes: 0, ..ReplicationScope::sync() }
    }

    /// `sync`, two checkpoints, one lost message, no partition or crash: the owner's peer
    /// timeout fires (it goes solo), the peer catches up (it leaves solo), and it goes on
    /// (CI). The scope of the `solo-until-renewal` mutant.
    pub fn sync_solo() -> ReplicationScope {
        ReplicationScope {
            checkpoints: 2,
            ticks: 6,
            losses: 1,
            partitions: 0,
            crashes: 0,
            leave_solo: true,
            ..ReplicationScope::sync()
        }
    }

    /// `async` with `max_lag` 1: two checkpoints, one lost message, one crash (CI).
    pub fn asynchronous() -> ReplicationScope {
        ReplicationScope {
            mode: ReplicationMode::Async { max_lag: 1 },
            checkpoints: 2,
            partitions: 0,
            ..ReplicationScope::sync()
        }
    }

    /// `sync` with drifting clocks, a partition and a crash together (nightly: a minute).
    pub fn sync_nightly() -> ReplicationScope {
        ReplicationScope { drift: 1, losses: 0, leave_solo: true, ..ReplicationScope::sync() }
    }

    /// `async` with drifting clocks (nightly).
    pub fn async_nightly() -> ReplicationScope {
        ReplicationScope { drift: 1, losses: 0, leave_solo: true, ..ReplicationScope::asynchronous() }
    }
}

/// A message in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    /// To an acceptor.
    Request { from: NodeId, to: NodeId, request: Request },
    /// From an acceptor.
    Reply { from: NodeId, to: NodeId, reply: Reply },
    /// A checkpoint's records (one part per checkpoint here).
    Part { from: NodeId, to: NodeId, checkpoint: u64 },
    /// A checkpoint's manifest.
    Manifest { from: NodeId, to: NodeId, manifest: Manifest },
    /// A replica's cumulative acknowledgement.
    Ack { from: NodeId, to: NodeId, ack: Ack },
}

impl Msg {
    fn ends(&self) -> (NodeId, NodeId) {
        match *self {
            Msg::Request { from, to, .. }
            | Msg::Reply { from, to, .. }
            | Msg::Part { from, to, .. }
            | Msg::Manifest { from, to, .. }
            | Msg::Ack { from, to, .. } => (from, to),
        }
    }
}

/// A data agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Agent {
    /// Its side of the register (and its acceptor).
    pub member: Member,
    /// The epoch it runs the pipeline under, while it does.
    pub owner: Option<u64>,
    /// It was deposed; it would be re-seeded before it follows again (not modelled).
    pub retired: bool,
    /// The last checkpoint taken (all participants acknowledged), completed, committed.
    pub taken: u64,
    /// See `taken`.
    pub completed: u64,
    /// See `taken`.
    pub committed: u64,
    /// The manifests it took and has not seen acknowledged, by checkpoint.
    pub unacked: BTreeMap<u64, Manifest>,
    /// The chain hash after its last taken checkpoint.
    pub chain: u64,
    /// As owner: what the peer has.
    pub shipper: Shipper,
    /// As replica: what it holds of the owner's checkpoints.
    pub replica: ReplicaLog,
    /// Ghost: the epoch each checkpoint's content was made under, as this agent knows it.
    pub content: BTreeMap<u64, u64>,
    /// Ghost: the checkpoints whose part this agent received as a replica.
    pub parts: BTreeSet<u64>,
}

/// The model's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Real time.
    pub now: u64,
    /// Each agent's clock (the witness keeps none).
    pub clocks: [u64; 2],
    /// Which boxes are up.
    pub up: [bool; 3],
    /// The data agents.
    pub agents: [Agent; 2],
    /// The witness's acceptor.
    pub witness: Acceptor,
    /// Messages in flight.
    pub net: BTreeSet<Msg>,
    /// The isolated agent, while a partition lasts.
    pub partition: Option<NodeId>,
    /// What is left of the fault budgets.
    pub losses: u8,
    /// See `losses`.
    pub partitions: u8,
    /// See `losses`.
    pub crashes: u8,
    /// What is left of each agent's clock skew budget.
    pub skews: [u8; 2],
    /// The sink's output: (checkpoint, epoch of its content).
    pub sink: BTreeSet<(u64, u64)>,
    /// Ghost: the epochs of the owners that committed.
    pub writers: BTreeSet<u64>,
    /// Ghost: a commit by an owner whose epoch was below a chosen one (S18).
    pub stale_commit: Option<(NodeId, u64)>,
    /// Ghost: the crash of an owner holding a lease that was not solo, and when.
    pub owner_crash: Option<(NodeId, u64)>,
}

/// An environment step or an agent's step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Real time advances; each agent's clock by one, or by none (`Some((n, false))`, slow)
    /// or two (`Some((n, true))`, fast) for one agent, within the drift bound.
    Tick(Option<(NodeId, bool)>),
    /// Deliver a message (a request to an acceptor: its reply comes straight back).
    Deliver(Msg),
    /// Deliver a request to an acceptor, and lose its reply.
    LoseReply(Msg),
    /// Lose a message.
    Lose(Msg),
    /// Crash a box for good.
    Crash(NodeId),
    /// Isolate an agent.
    Partition(NodeId),
    /// End the partition.
    Heal,
    /// The owner takes its next checkpoint (every participant acknowledged) and ships it.
    Take(NodeId),
    /// The owner completes its last taken checkpoint (the shipper allows it).
    Complete(NodeId),
    /// The owner commits its completed checkpoints to the sink (its lease allows it).
    Commit(NodeId),
    /// The owner's peer timeout fired: it asks the register to record it as solo.
    GoSolo(NodeId),
    /// The peer of a solo owner acknowledged everything it completed: the owner asks to
    /// leave solo (the shell's `Replicated::on_ack`).
    LeaveSolo(NodeId),
}

/// The model.
#[derive(Clone, Debug)]
pub struct ReplicationModel {
    /// Its scope.
    pub scope: ReplicationScope,
    /// Mutants switched on.
    pub mutations: Mutations,
}

fn other(n: NodeId) -> NodeId {
    1 - n
}

impl ReplicationModel {
    /// The model of `scope`, no mutant.
    pub fn new(scope: ReplicationScope) -> ReplicationModel {
        ReplicationModel { scope, mutations: Mutations::NONE }
    }

    /// The model with `mutant` switched on.
    pub fn with_mutant(mut self, mutant: Mutant) -> ReplicationModel {
        self.mutations = self.mutations.with(mutant);
        self
    }

    fn deliverable(&self, state: &State, msg: &Msg) -> bool {
        state.up[msg.ends().1 as usize]
    }

    /// Carry out an agent's register actions.
    fn drain(&self, state: &mut State, n: NodeId, log: &mut Vec<String>) {
        while let Some(action) = state.agents[n as usize].member.poll_action() {
            match action {
                LeaseAction::Send { to, request } => {
                    if Self::reachable(state, n, to) {
                        state.net.insert(Msg::Request { from: n, to, request });
                    }
                }
                LeaseAction::Acquired { epoch } => {
                    let agent = &mut state.agents[n as usize];
                    let restore = agent.replica.restore_point().0;
                    log.push(format!(
                        "{} acquires epoch {epoch}, restores checkpoint {restore}",
                        NAMES[n as usize]
                    ));
                    agent.owner = Some(epoch);
                    agent.taken = restore;
                    agent.completed = restore;
                    // It cannot know whether the old owner committed its restore point:
                    // commit it again (the consumer de-duplicates; its content keeps its
                    // epoch).
                    agent.committed = restore.saturating_sub(1);
                    agent.chain = agent.replica.chain();
                    agent.unacked.clear();
                    agent.shipper = self.shipper();
                }
                LeaseAction::Deposed { epoch } => {
                    log.push(format!("{} is deposed (epoch {epoch})", NAMES[n as usize]));
                    let agent = &mut state.agents[n as usize];
                    agent.owner = None;
                    agent.retired = true;
                }
            }
        }
    }

    fn shipper(&self) -> Shipper {
        Shipper::new(self.scope.mode, CheckpointId(0)).with_mutations(self.mutations)
    }

    fn ship(state: &mut State, from: NodeId, manifest: Manifest) {
        let to = other(from);
        if Self::reachable(state, from, to) {
            state.net.insert(Msg::Part { from, to, checkpoint: manifest.checkpoint.0 });
            state.net.insert(Msg::Manifest { from, to, manifest });
        }
    }

    /// The highest epoch a majority of acceptors accepted (or a value of a later epoch).
    pub fn chosen_epoch(state: &State) -> u64 {
        let mut epochs: Vec<u64> = [
            state.agents[0].member.acceptor.accepted,
            state.agents[1].member.acceptor.accepted,
            state.witness.accepted,
        ]
        .iter()
        .map(|a| a.map_or(0, |(_, v)| v.epoch))
        .collect();
        epochs.sort_unstable();
        epochs[1]
    }

    /// Apply `action`; the lines say what happened.
    pub fn step(&self, state: &mut State, action: &Action, log: &mut Vec<String>) {
        match *action {
            Action::Tick(skew) => {
                state.now += 1;
                for n in DATA {
                    let delta = match skew {
                        Some((m, fast)) if m == n => {
                            state.skews[n as usize] -= 1;
                            if fast { 2 } else { 0 }
                        }
                        _ => 1,
                    };
                    state.clocks[n as usize] += delta;
                }
                log.push(format!(
                    "tick: real {} clocks a {} b {}",
                    state.now, state.clocks[0], state.clocks[1]
                ));
                for n in DATA {
                    let i = n as usize;
                    if !state.up[i] || state.agents[i].retired {
                        continue;
                    }
                    let clock = state.clocks[i];
                    state.agents[i].member.handle_tick(clock);
                    self.drain(state, n, log);
                    // The owner ships again what the peer has not acknowledged.
                    let agent = &state.agents[i];
                    if agent.owner.is_some() {
                        let durable = agent.shipper.durable().0;
                        let resend: Vec<Manifest> =
                            agent.unacked.range(durable + 1..).map(|(_, m)| *m).collect();
                        for m in resend {
                            Self::ship(state, n, m);
                        }
                    }
                }
            }
            Action::Deliver(msg) => {
                state.net.remove(&msg);
                log.push(format!("deliver {msg:?}"));
                self.deliver(state, msg, log);
            }
            Action::LoseReply(msg) => {
                state.net.remove(&msg);
                state.losses -= 1;
                log.push(format!("deliver {msg:?}, lose the reply"));
                if let Msg::Request { to, request, .. } = msg {
                    let _ = Self::acceptor(state, to).handle(request);
                }
            }
            Action::Lose(msg) => {
                state.net.remove(&msg);
                state.losses -= 1;
                log.push(format!("lose {msg:?}"));
            }
            Action::Crash(n) => {
                state.crashes -= 1;
                state.up[n as usize] = false;
                state.net.retain(|m| m.ends().1 != n);
                if n != W {
                    let agent = &state.agents[n as usize];
                    if agent.owner.is_some() && agent.member.held().is_some_and(|l| !l.solo) {
                        state.owner_crash = Some((n, state.now));
                    }
                }
                log.push(format!("{} crashes", NAMES[n as usize]));
            }
            Action::Partition(n) => {
                state.partitions -= 1;
                state.partition = Some(n);
                state.net.retain(|m| {
                    let (from, to) = m.ends();
                    from != n && to != n
                });
                log.push(format!("{} is cut off", NAMES[n as usize]));
            }
            Action::Heal => {
                state.partition = None;
                log.push("the partition heals".into());
            }
            Action::Take(n) => {
                let agent = &mut state.agents[n as usize];
                let epoch = agent.owner.unwrap_or_default();
                agent.taken += 1;
                let c = agent.taken;
                let manifest =
                    Manifest { checkpoint: CheckpointId(c), epoch, parts: 1, digest: c, prev: agent.chain };
                agent.chain = manifest.chain();
                agent.unacked.insert(c, manifest);
                agent.content.insert(c, epoch);
                log.push(format!("{} takes checkpoint {c} (epoch {epoch}) and ships it", NAMES[n as usize]));
                Self::ship(state, n, manifest);
            }
            Action::Complete(n) => {
                let agent = &mut state.agents[n as usize];
                agent.completed = agent.taken;
                log.push(format!("{} completes checkpoint {}", NAMES[n as usize], agent.completed));
            }
            Action::Commit(n) => {
                let chosen = Self::chosen_epoch(state);
                let agent = &mut state.agents[n as usize];
                let epoch = agent.owner.unwrap_or_default();
                for c in agent.committed + 1..=agent.completed {
                    let content = agent.content.get(&c).copied().unwrap_or(epoch);
                    state.sink.insert((c, content));
                }
                log.push(format!(
                    "{} commits checkpoints {}..={} under epoch {epoch} (chosen: {chosen})",
                    NAMES[n as usize],
                    agent.committed + 1,
                    agent.completed
                ));
                agent.committed = agent.completed;
                state.writers.insert(epoch);
                if epoch < chosen && state.stale_commit.is_none() {
                    state.stale_commit = Some((n, epoch));
                }
            }
            Action::GoSolo(n) => {
                state.agents[n as usize].member.set_solo(true);
                log.push(format!("{}'s peer timeout: its next renewal records it solo", NAMES[n as usize]));
            }
            Action::LeaveSolo(n) => {
                state.agents[n as usize].member.set_solo(false);
                log.push(format!("{}'s peer is in step: it leaves solo", NAMES[n as usize]));
            }
        }
    }

    fn deliver(&self, state: &mut State, msg: Msg, log: &mut Vec<String>) {
        match msg {
            Msg::Request { from, to, request } => {
                // The reply travels back at once: a reply delayed past the next tick belongs
                // to a round its proposer has abandoned, which `LoseReply` covers.
                let reply = Self::acceptor(state, to).handle(request);
                self.deliver(state, Msg::Reply { from: to, to: from, reply }, log);
            }
            Msg::Reply { from, to, reply } => {
                let i = to as usize;
                if state.agents[i].retired {
                    return;
                }
                let clock = state.clocks[i];
                state.agents[i].member.handle_reply(from, reply, clock);
                self.drain(state, to, log);
            }
            Msg::Part { from, to, checkpoint } => {
                let agent = &mut state.agents[to as usize];
                if agent.owner.is_some() || agent.retired {
                    return;
                }
                agent.parts.insert(checkpoint);
                agent.replica.handle_part(CheckpointId(checkpoint), 0);
                Self::ack(state, to, from);
            }
            Msg::Manifest { from, to, manifest } => {
                let agent = &mut state.agents[to as usize];
                if agent.owner.is_some() || agent.retired {
                    return;
                }
                agent.content.insert(manifest.checkpoint.0, manifest.epoch);
                agent.replica.handle_manifest(manifest);
                Self::ack(state, to, from);
            }
            Msg::Ack { to, ack, .. } => {
                let agent = &mut state.agents[to as usize];
                if agent.owner.is_some() {
                    agent.shipper.on_ack(ack);
                    let durable = agent.shipper.durable().0;
                    agent.unacked = agent.unacked.split_off(&(durable + 1));
                }
            }
        }
        let _ = log;
    }

    /// Whether a message from `from` to `to` can arrive: `to` is up and neither is cut off.
    fn reachable(state: &State, from: NodeId, to: NodeId) -> bool {
        state.up[to as usize] && state.partition.is_none_or(|p| p != from && p != to)
    }

    fn acceptor(state: &mut State, n: NodeId) -> &mut Acceptor {
        if n == W { &mut state.witness } else { &mut state.agents[n as usize].member.acceptor }
    }

    /// The replica acknowledges its restore point (durable as soon as it moved here).
    fn ack(state: &mut State, replica: NodeId, owner: NodeId) {
        let restore = state.agents[replica as usize].replica.restore_point();
        if restore.0 > 0 && Self::reachable(state, replica, owner) {
            state.net.insert(Msg::Ack {
                from: replica,
                to: owner,
                ack: Ack { checkpoint: restore, durable: true },
            });
        }
    }

    /// Whether nothing but time is left, and time is up.
    pub fn terminal(&self, state: &State) -> bool {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions.is_empty()
    }
}

impl Model for ReplicationModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let first = Lease { epoch: 1, holder: A, version: 0, solo: false };
        let ballot = Ballot { round: 0, node: A };
        let acceptor = Acceptor::with_value(ballot, first);
        let agent = |n: NodeId| {
            let member = Member::new(n, 3, self.scope.timing, true, acceptor).with_mutations(self.mutations);
            Agent {
                member: if n == A { member.holding(first, 0, ballot) } else { member },
                owner: (n == A).then_some(1),
                retired: false,
                taken: 0,
                completed: 0,
                committed: 0,
                unacked: BTreeMap::new(),
                chain: 0,
                shipper: self.shipper(),
                replica: ReplicaLog::new(CheckpointId(0), 0).with_mutations(self.mutations),
                content: BTreeMap::new(),
                parts: BTreeSet::new(),
            }
        };
        vec![State {
            now: 0,
            clocks: [0, 0],
            up: [true; 3],
            agents: [agent(A), agent(B)],
            witness: acceptor,
            net: BTreeSet::new(),
            partition: None,
            losses: self.scope.losses,
            partitions: self.scope.partitions,
            crashes: self.scope.crashes,
            skews: [self.scope.drift; 2],
            sink: BTreeSet::new(),
            writers: BTreeSet::new(),
            stale_commit: None,
            owner_crash: None,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for msg in &state.net {
            if self.deliverable(state, msg) {
                actions.push(Action::Deliver(*msg));
                if state.losses > 0 {
                    actions.push(Action::Lose(*msg));
                    if matches!(msg, Msg::Request { .. }) {
                        actions.push(Action::LoseReply(*msg));
                    }
                }
            }
        }
        for n in DATA {
            let i = n as usize;
            let agent = &state.agents[i];
            if !state.up[i] || agent.owner.is_none() {
                continue;
            }
            let solo = agent.member.solo();
            if agent.taken == agent.completed && agent.taken < self.scope.checkpoints {
                actions.push(Action::Take(n));
            }
            if agent.taken > agent.completed && agent.shipper.may_complete(CheckpointId(agent.taken), solo) {
                actions.push(Action::Complete(n));
            }
            if agent.completed > agent.committed && agent.member.can_commit(state.clocks[i]) {
                actions.push(Action::Commit(n));
            }
            if !solo && agent.taken > agent.shipper.durable().0 && agent.member.held().is_some() {
                actions.push(Action::GoSolo(n));
            }
            if self.scope.leave_solo && solo && agent.shipper.lag(CheckpointId(agent.completed)) == 0 {
                // Only when it changes the member (the mutant's `solo()` stays true).
                let mut left = agent.member.clone();
                left.set_solo(false);
                if left != agent.member {
                    actions.push(Action::LeaveSolo(n));
                }
            }
        }
        if state.crashes > 0 {
            actions.extend([A, B, W].into_iter().filter(|&n| state.up[n as usize]).map(Action::Crash));
        }
        if state.partition.is_some() {
            actions.push(Action::Heal);
        } else if state.partitions > 0 {
            actions.extend(DATA.map(Action::Partition));
        }
        // Every message is delivered within its tick, or lost by the environment (within the
        // loss budget, or by a partition): time does not pass with messages in flight, so that
        // a loss is always a choice the budget counts and L3 can ask for progress.
        if state.now < self.scope.ticks && state.net.is_empty() {
            actions.push(Action::Tick(None));
            for n in DATA {
                if state.skews[n as usize] > 0 && state.up[n as usize] {
                    actions.push(Action::Tick(Some((n, false))));
                    actions.push(Action::Tick(Some((n, true))));
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut next = last.clone();
        self.step(&mut next, &action, &mut Vec::new());
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always(
                "S18 takeover fencing: no commit under a superseded epoch",
                |_: &Self, s: &State| s.stale_commit.is_none(),
            ),
            Property::always("S17 a replica is a whole checkpoint", |_: &Self, s: &State| {
                s.agents.iter().all(|a| {
                    let r = a.replica.restore_point().0;
                    (1..=r).all(|c| a.parts.contains(&c))
                })
            }),
            Property::always(
                "L3 failover completes: the survivor owns a new epoch and commits",
                |m: &Self, s: &State| {
                    let Some((dead, at)) = s.owner_crash else { return true };
                    let t = m.scope.timing;
                    let quiet =
                        s.losses == m.scope.losses && s.partitions == m.scope.partitions && s.up[W as usize];
                    // The survivor sees the last value by the tick after the crash, waits
                    // lease + grace by its clock (a slow clock adds its drift), takes over and
                    // commits within that tick.
                    let time = at + 1 + t.lease + t.grace + u64::from(m.scope.drift) <= s.now;
                    if !(quiet && time && m.terminal(s)) {
                        return true;
                    }
                    let survivor = &s.agents[other(dead) as usize];
                    // A value recorded solo (the dead owner's peer timeout fired) rightly
                    // stops an automatic takeover.
                    let best = survivor.member.acceptor.accepted.max(s.witness.accepted);
                    if best.is_some_and(|(_, v)| v.solo && v.holder == dead) {
                        return true;
                    }
                    survivor.owner.is_some_and(|e| e > 1 && s.writers.contains(&e))
                },
            ),
        ];
        let t = self.scope.timing;
        if self.scope.ticks > t.lease + t.grace && (self.scope.crashes > 0 || self.scope.partitions > 0) {
            props.push(Property::sometimes("a takeover commits output", |_: &Self, s: &State| {
                s.writers.len() > 1
            }));
        }
        if self.scope.partitions > 0 {
            props.push(Property::sometimes("a partition isolates the owner", |_: &Self, s: &State| {
                s.partition.is_some_and(|p| s.agents[p as usize].owner.is_some())
            }));
        }
        match self.scope.mode {
            ReplicationMode::Sync | ReplicationMode::Received => {
                props.push(Property::always(
                    "S16 sync durability: a completed checkpoint is durable at the peer",
                    |_: &Self, s: &State| {
                        DATA.iter().all(|&n| {
                            let owner = &s.agents[n as usize];
                            let solo = owner.member.held().is_none_or(|l| l.solo);
                            owner.owner.is_none()
                                || solo
                                || owner.completed <= s.agents[other(n) as usize].replica.restore_point().0
                        })
                    },
                ));
                props.push(Property::always(
                    "S18 one epoch per checkpoint at the sink (sync)",
                    |_: &Self, s: &State| {
                        let mut seen = BTreeMap::new();
                        s.sink.iter().all(|&(c, e)| *seen.entry(c).or_insert(e) == e)
                    },
                ));
            }
            ReplicationMode::Async { .. } => {
                props.push(Property::always(
                    "S17 async bounded loss: the peer lags by at most max_lag",
                    |m: &Self, s: &State| {
                        let ReplicationMode::Async { max_lag } = m.scope.mode else { return true };
                        DATA.iter().all(|&n| {
                            let owner = &s.agents[n as usize];
                            let solo = owner.member.held().is_none_or(|l| l.solo);
                            owner.owner.is_none()
                                || solo
                                || owner.completed
                                    <= s.agents[other(n) as usize].replica.restore_point().0 + max_lag
                        })
                    },
                ));
            }
        }
        props
    }
}
