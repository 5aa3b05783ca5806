//! Ownership of a pipeline across agents: an epoch-and-lease register (SPEC §12).
//!
//! One value per pipeline, `(epoch, holder, version)`, is kept by a CASPaxos register
//! (Rystsov, arXiv:1802.07000) whose acceptors are the voting agents: two data agents and a
//! witness, or three or more data agents. A round is Paxos's two phases over the whole value:
//! prepare with a ballot, adopt the highest accepted value of a majority, apply a change,
//! accept it under the same ballot. There is no log, and nothing to compact.
//!
//! - The **holder** renews by a round that raises `version`. A round that began at local
//!   time `s` and succeeded gives a lease until `s + lease`, by the holder's own monotonic
//!   clock. The holder **self-fences**: it releases sink commits only while
//!   `now < s + lease - grace` ([`Member::can_commit`]).
//! - A **candidate** (a data agent that holds nothing, with automatic failover) reads the
//!   register without disturbing it (a peek: the highest accepted value of a majority, no
//!   promise) and notes since when, by its clock, it has seen that value unchanged. Once that
//!   is `lease + grace`, it takes over by a round whose change succeeds only if the value is
//!   still the one it saw: the next epoch, itself the holder.
//!
//! Why that is safe with clocks that drift by at most `grace` over a lease: the value seen
//! was made by a round that began, on the holder's clock, at `s`, before the candidate saw
//! it. The holder commits nothing at or after `s + lease - grace` on its clock, so nothing
//! after `s + lease` in real time; the candidate waits `lease + grace` on its clock from
//! after `s`, so it takes over at `s + lease` or later in real time. A renewal the candidate
//! did not see either succeeded (then the value changed and the takeover round fails) or did
//! not (then it gave no lease). The model (`protocol-model`, `replication`) checks this
//! with clocks that run slow or fast, lost and reordered messages and a crash; the mutants
//! `no-grace` and `takeover-before-expiry` are the two halves of the argument broken.
//!
//! Sans-IO like the rest of the core: time is an argument, messages are actions.

use std::collections::VecDeque;

use crate::{Mutant, Mutations};

/// An agent's number among the register's voters: 0, 1, 2, ...
pub type NodeId = u8;

/// A Paxos ballot: a round number, made unique by the proposer's id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// The round.
    pub round: u64,
    /// The proposer.
    pub node: NodeId,
}

/// The register's value: who owns the pipeline, under which epoch. `version` counts the
/// holder's renewals, so that a candidate sees every renewal as a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    /// The ownership epoch: sinks and consumers rank writes by it (S18).
    pub epoch: u64,
    /// The owner.
    pub holder: NodeId,
    /// Renewals under this epoch.
    pub version: u64,
    /// The holder runs without a replica in step with it (its peer fell behind or is gone,
    /// or it took over from a holder it cannot reach): nobody may take over from it
    /// automatically, since no one else has its latest completed checkpoint.
    pub solo: bool,
}

/// A request to an acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Request {
    /// Paxos phase 1.
    Prepare(Ballot),
    /// Paxos phase 2.
    Accept(Ballot, Lease),
    /// Read the accepted value without promising anything.
    Peek,
}

/// An acceptor's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reply {
    /// Phase 1 granted: the acceptor promises to accept nothing below `ballot`.
    Promise { ballot: Ballot, accepted: Option<(Ballot, Lease)> },
    /// Phase 2 granted.
    Accepted { ballot: Ballot },
    /// Refused: the acceptor promised a higher ballot.
    Nack { ballot: Ballot, promised: Ballot },
    /// The answer to a peek.
    Peeked { accepted: Option<(Ballot, Lease)> },
}

/// A register acceptor: one per voting agent (the witness is nothing else). Its state must
/// be durable before its reply is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Acceptor {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// The last value accepted, with its ballot.
    pub accepted: Option<(Ballot, Lease)>,
}

impl Acceptor {
    /// An acceptor that already accepted `value` (a cluster set up with a first owner).
    pub fn with_value(ballot: Ballot, value: Lease) -> Acceptor {
        Acceptor { promised: ballot, accepted: Some((ballot, value)) }
    }

    /// Handle a request; the caller makes the new state durable, then sends the reply.
    pub fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Prepare(ballot) if ballot > self.promised => {
                self.promised = ballot;
                Reply::Promise { ballot, accepted: self.accepted }
            }
            Request::Accept(ballot, value) if ballot >= self.promised => {
                self.promised = ballot;
                self.accepted = Some((ballot, value));
                Reply::Accepted { ballot }
            }
            Request::Prepare(ballot) | Request::Accept(ballot, _) => {
                Reply::Nack { ballot, promised: self.promised }
            }
            Request::Peek => Reply::Peeked { accepted: self.accepted },
        }
    }
}

/// Lease timing, in the units of the agents' monotonic clocks (milliseconds in the runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    /// How long a successful round's lease lasts from the round's start.
    pub lease: u64,
    /// The margin for clock drift: at least the most two clocks can drift apart over a lease.
    pub grace: u64,
    /// Renew once this much of the lease has passed.
    pub renew_after: u64,
    /// A round or peek still open this long lost a message (or its replies are held up by a
    /// slow disk): the next tick abandons it and starts afresh.
    pub round_timeout: u64,
}

/// What the agent should do for the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseAction {
    /// Send `request` to acceptor `to` (never the agent's own: that one is called directly).
    Send { to: NodeId, request: Request },
    /// This agent now owns the pipeline under `epoch`: restore and run it.
    Acquired { epoch: u64 },
    /// This agent no longer owns the pipeline (a higher epoch exists, or its lease ran out
    /// without a renewal): stop its sinks and follow.
    Deposed { epoch: u64 },
}

/// What a round changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Change {
    /// Raise the version of the lease this agent holds.
    Renew(Lease),
    /// Take the next epoch if the value is still `expected`.
    Acquire { expected: Option<Lease> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Prepare { best: Option<(Ballot, Lease)> },
    Accept(Lease),
}

/// A round in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Round {
    ballot: Ballot,
    change: Change,
    /// Local time at the round's start: a lease it grants runs from here.
    start: u64,
    phase: Phase,
    /// Acceptors that answered the current phase (bit per node).
    votes: u32,
}

/// A peek in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Peek {
    best: Option<(Ballot, Lease)>,
    votes: u32,
    /// Local time at the peek's start.
    start: u64,
}

/// Why [`Member::may_promote`] refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromoteRefused {
    /// This agent owns the pipeline already, under `epoch`.
    Owner { epoch: u64 },
    /// Voter `holder` renewed its lease of `epoch` `since` ms ago: it is alive.
    Alive { epoch: u64, holder: NodeId, since: u64 },
}

/// One voting data agent's side of the register for one pipeline: proposer, lease holder
/// and candidate. A witness runs only an [`Acceptor`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    id: NodeId,
    voters: u8,
    /// Acceptors a phase needs: a majority of `voters`, or 1 after a manual promotion.
    quorum: u8,
    /// After a manual promotion: no commit before this local time (the old holder's lease
    /// has run out by then).
    fenced_until: u64,
    timing: Timing,
    /// Whether this agent takes over by itself (`failover = "witness"` or three or more
    /// voters); with manual failover it only follows.
    automatic: bool,
    /// Whether it may take a register nobody ever held (with manual failover, one agent is
    /// named to start the pipeline; with automatic failover every candidate may).
    first: bool,
    /// The agent's own acceptor.
    pub acceptor: Acceptor,
    /// The highest round seen in any ballot.
    round_seen: u64,
    round: Option<Round>,
    peek: Option<Peek>,
    /// The lease held: its value, the local time it runs from, and the ballot it was
    /// accepted under.
    held: Option<(Lease, u64, Ballot)>,
    /// Whether the last round under the held ballot succeeded, so that the next renewal may
    /// skip the prepare phase (no one has promised a higher ballot since, or its accept is
    /// refused).
    fast: bool,
    /// The value last seen and the local time since which it has been seen unchanged.
    seen: Option<(Option<Lease>, u64)>,
    /// What the holder's next renewal writes as `solo`.
    want_solo: bool,
    /// It proposed a value that is not solo since the last solo value it held was decided:
    /// that value may have been chosen even if its round looked lost (replies lost), so the
    /// register may say "in step" whatever `held` says. It does not act alone until a
    /// renewal records solo again. Found by the replication model (`sync-solo`): a peer
    /// timeout firing again while a renewal that left solo was in flight let the owner
    /// complete a checkpoint alone, and the renewal then recorded "in step".
    proposed_in_step: bool,
    /// The highest version this agent has proposed: every value it proposes carries a
    /// higher one, so no two rounds ever propose the same value (durable with the acceptor).
    /// Without it, a renewal retried after a failed one proposes the value the failed one
    /// left at an acceptor, a candidate may have seen that value before the retry began, and
    /// would count the retry's lease from too early: the model found this.
    pub attempted: u64,
    actions: VecDeque<LeaseAction>,
    mutations: Mutations,
}

impl Member {
    /// Agent `id` of `voters`, with its acceptor's durable state.
    pub fn new(id: NodeId, voters: u8, timing: Timing, automatic: bool, acceptor: Acceptor) -> Member {
        Member {
            id,
            voters,
            quorum: voters / 2 + 1,
            fenced_until: 0,
            timing,
            automatic,
            first: automatic,
            acceptor,
            round_seen: acceptor.promised.round,
            round: None,
            peek: None,
            held: None,
            fast: false,
            seen: None,
            want_solo: false,
            proposed_in_step: false,
            attempted: 0,
            actions: VecDeque::new(),
            mutations: Mutations::NONE,
        }
    }

    /// An agent that holds `lease` since local time `start`, accepted under `ballot` (the
    /// first owner of a new cluster, set up with every acceptor holding that value).
    pub fn holding(mut self, lease: Lease, start: u64, ballot: Ballot) -> Member {
        self.held = Some((lease, start, ballot));
        self.fast = true;
        self
    }

    /// With manual failover: this agent is the one that starts the pipeline, taking epoch 1
    /// of a register nobody ever held (and nothing else without `weir promote`).
    pub fn first_owner(mut self) -> Member {
        self.first = true;
        self
    }

    /// Switch on deliberately broken variants (the model's mutants).
    pub fn with_mutations(mut self, mutations: Mutations) -> Member {
        self.mutations = mutations;
        self
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<LeaseAction> {
        self.actions.pop_front()
    }

    /// The lease this agent holds, if it does.
    pub fn held(&self) -> Option<Lease> {
        self.held.map(|(lease, _, _)| lease)
    }

    /// Ask that the next renewal record whether this holder runs without a replica in step
    /// (the shell's peer timeout, or the peer caught up again). The holder counts on it only
    /// once a renewal carrying it succeeded ([`Member::held`]).
    pub fn set_solo(&mut self, solo: bool) {
        self.want_solo = solo;
    }

    /// Whether the owner may act without a replica in step now: the register records it
    /// solo, and it has not asked to leave solo since. Once the shell reports the peer in
    /// step again (`set_solo(false)`) the owner waits for the peer at once, before the
    /// renewal that records it: acting alone until then would complete checkpoints the peer
    /// lacks while the register says the peer is in step, and a takeover would lose them.
    pub fn solo(&self) -> bool {
        let held = self.held().is_some_and(|l| l.solo);
        if self.mutations.has(Mutant::SoloUntilRenewal) {
            return held;
        }
        held && self.want_solo && !self.proposed_in_step
    }

    /// The epoch this agent owns the pipeline under, if it does.
    pub fn owner_epoch(&self) -> Option<u64> {
        self.held.map(|(lease, _, _)| lease.epoch)
    }

    /// The register's value as this agent knows it: its own lease, or the latest seen.
    pub fn known_lease(&self) -> Option<Lease> {
        let seen = self.seen.and_then(|(v, _)| v);
        self.held().into_iter().chain(seen).max_by_key(|l| (l.epoch, l.version))
    }

    /// The highest epoch this agent knows of.
    pub fn known_epoch(&self) -> u64 {
        let seen = self.seen.and_then(|(v, _)| v).map_or(0, |l| l.epoch);
        seen.max(self.owner_epoch().unwrap_or(0))
    }

    /// Whether the owner may release a sink commit at local time `now`: it holds a lease
    /// with more than `grace` left (the self-fence).
    pub fn can_commit(&self, now: u64) -> bool {
        let Some((_, start, _)) = self.held else { return false };
        let grace = if self.mutations.has(Mutant::NoGrace) { 0 } else { self.timing.grace };
        now + grace < start + self.timing.lease && now >= self.fenced_until
    }

    /// Whether `weir promote` may go ahead at local time `now`: not while this agent owns
    /// the pipeline, nor while it sees another holder's lease change within the last
    /// `lease + grace` (that holder is alive and reaches a majority: stop it first).
    pub fn may_promote(&self, now: u64) -> Result<(), PromoteRefused> {
        if let Some(epoch) = self.owner_epoch() {
            return Err(PromoteRefused::Owner { epoch });
        }
        match self.seen {
            Some((Some(value), since))
                if value.holder != self.id && now < since + self.timing.lease + self.timing.grace =>
            {
                Err(PromoteRefused::Alive { epoch: value.epoch, holder: value.holder, since: now - since })
            }
            _ => Ok(()),
        }
    }

    /// `weir promote`: a person asserts that the other voters are gone (manual failover, or
    /// a cluster that lost its majority) and accepts that this agent's replica is what
    /// survives. It records the next epoch on its own acceptor under a ballot above every one
    /// it has seen, so that this acceptor refuses the old holder's renewals from now on, and
    /// from then on decides alone (a quorum of one: the others must be re-seeded and added
    /// back by a person). It releases commits only after `lease + grace` from now: a holder
    /// that is alive but cut off cannot renew without this acceptor, so its lease has run
    /// out by then. Returns the new epoch.
    pub fn promote(&mut self, now: u64) -> u64 {
        let current = self.acceptor.accepted.map_or(0, |(_, v)| v.epoch);
        let epoch = self.known_epoch().max(current) + 1;
        self.round_seen = self.round_seen.max(self.acceptor.promised.round) + 1;
        let ballot = Ballot { round: self.round_seen, node: self.id };
        let value = Lease { epoch, holder: self.id, version: self.stamp(0), solo: true };
        self.acceptor = Acceptor::with_value(ballot, value);
        self.quorum = 1;
        self.fenced_until = now + self.timing.lease + self.timing.grace;
        self.round = None;
        self.peek = None;
        self.held = Some((value, now, ballot));
        self.fast = true;
        self.want_solo = true;
        self.proposed_in_step = false;
        self.seen = Some((Some(value), now));
        self.actions.push_back(LeaseAction::Acquired { epoch });
        epoch
    }

    /// The periodic step (every heartbeat interval): renew a lease, or watch the register
    /// and take over once the value has stood still for `lease + grace`.
    pub fn handle_tick(&mut self, now: u64) {
        // A round or peek open for `round_timeout` lost a message: start afresh (its
        // replies carry an old ballot and are ignored). One still younger goes on: a round
        // needs two durable writes at a majority, and abandoning it at every tick (100 ms)
        // meant that an owner whose acceptors' disks were slow for a moment lost its lease
        // and took it back under a new epoch (a loaded CI machine showed it).
        let timeout = self.timing.round_timeout;
        if self.round.is_some_and(|r| now >= r.start + timeout) {
            self.round = None;
        }
        if self.peek.is_some_and(|p| now >= p.start + timeout) {
            self.peek = None;
        }
        let open = self.round.is_some() || self.peek.is_some();
        if let Some((lease, start, ballot)) = self.held {
            if now >= start + self.timing.lease {
                // Renewals failed for a whole lease: the value may have moved on.
                self.depose(lease.epoch);
            } else if open {
                // The renewal under way decides.
            } else if now >= start + self.timing.renew_after && self.fast {
                // The holder's ballot is still the highest it knows of: accept the next
                // version under it directly (CASPaxos's one-round-trip renewal; a proposer
                // that prepared a higher ballot makes every such accept fail).
                let next = Lease { version: self.stamp(lease.version), solo: self.want_solo, ..lease };
                self.proposed_in_step |= !next.solo;
                self.round = Some(Round {
                    ballot,
                    change: Change::Renew(lease),
                    start: now,
                    phase: Phase::Accept(next),
                    votes: 0,
                });
                self.broadcast(Request::Accept(ballot, next), now);
            } else if now >= start + self.timing.renew_after {
                self.begin(Change::Renew(lease), now);
            }
            return;
        }
        if open {
            return;
        }
        if !self.automatic && !self.first {
            // Manual failover: it only watches (so that `weir promote` can tell a live
            // holder from a silent one).
            self.begin_peek(now);
            return;
        }
        match self.seen {
            // A solo holder that restarted (it holds nothing now) takes its own lease back
            // once it expired: it has everything it completed alone, on its own disk.
            // Found by the simulation: it used to wait for a person like everyone else.
            Some((Some(value), since))
                if value.solo && value.holder == self.id && self.expired(since, now) =>
            {
                self.begin(Change::Acquire { expected: Some(value) }, now)
            }
            // A solo holder has no replica in step: taking over from it would lose what it
            // completed alone. That needs a person (`weir promote`).
            Some((Some(value), _)) if value.solo => self.begin_peek(now),
            // Nobody ever held it: a candidate takes epoch 1 at once (the first owner of a
            // new cluster; with manual failover only the agent named first may).
            Some((None, _)) => self.begin(Change::Acquire { expected: None }, now),
            Some((value, since)) if self.automatic && self.expired(since, now) => {
                self.begin(Change::Acquire { expected: value }, now)
            }
            _ => self.begin_peek(now),
        }
    }

    fn expired(&self, since: u64, now: u64) -> bool {
        let wait = if self.mutations.has(Mutant::TakeoverBeforeExpiry) {
            0
        } else {
            self.timing.lease + self.timing.grace
        };
        now >= since + wait
    }

    /// A reply from acceptor `from`, at local time `now`.
    pub fn handle_reply(&mut self, from: NodeId, reply: Reply, now: u64) {
        match reply {
            Reply::Peeked { accepted } => {
                let Some(peek) = &mut self.peek else { return };
                if peek.votes & (1 << from) != 0 {
                    return;
                }
                peek.votes |= 1 << from;
                peek.best = peek.best.max(accepted);
                if peek.votes.count_ones() as u8 >= self.quorum {
                    let best = peek.best.map(|(_, v)| v);
                    self.peek = None;
                    self.observe(best, now);
                }
            }
            Reply::Nack { ballot, promised } => {
                self.round_seen = self.round_seen.max(promised.round);
                if self.round.is_some_and(|r| r.ballot == ballot) {
                    self.round = None;
                    self.fast = false;
                }
            }
            Reply::Promise { ballot, accepted } => {
                let Some(round) = &mut self.round else { return };
                if round.ballot != ballot || round.votes & (1 << from) != 0 {
                    return;
                }
                let Phase::Prepare { best } = &mut round.phase else { return };
                round.votes |= 1 << from;
                *best = (*best).max(accepted);
                if round.votes.count_ones() as u8 >= self.quorum {
                    let current = best.map(|(_, v)| v);
                    self.decide(current, now);
                }
            }
            Reply::Accepted { ballot } => {
                let Some(round) = &mut self.round else { return };
                if round.ballot != ballot || round.votes & (1 << from) != 0 {
                    return;
                }
                let Phase::Accept(value) = round.phase else { return };
                round.votes |= 1 << from;
                if round.votes.count_ones() as u8 >= self.quorum {
                    let start = round.start;
                    let acquired = matches!(round.change, Change::Acquire { .. });
                    self.round = None;
                    self.held = Some((value, start, ballot));
                    self.fast = true;
                    self.seen = Some((Some(value), now));
                    if value.solo {
                        self.proposed_in_step = false;
                    }
                    if acquired {
                        // Solo until the shell reports a peer in step (`set_solo(false)`).
                        self.want_solo = value.solo;
                        self.actions.push_back(LeaseAction::Acquired { epoch: value.epoch });
                    }
                }
            }
        }
    }

    /// The prepare phase has a majority, and `current` is the register's value: apply the
    /// round's change and start the accept phase, or give up.
    fn decide(&mut self, current: Option<Lease>, now: u64) {
        let Some(change) = self.round.map(|r| r.change) else { return };
        let next = match change {
            Change::Renew(held) if current == Some(held) => {
                Some(Lease { version: self.stamp(held.version), solo: self.want_solo, ..held })
            }
            Change::Acquire { expected } if current == expected => Some(Lease {
                epoch: current.map_or(1, |l| l.epoch + 1),
                holder: self.id,
                version: self.stamp(0),
                // The holder it replaces may have completed checkpoints it never shipped
                // (async) or may come back on its own history: it is re-seeded first. The
                // first owner of a register nobody held replaces nobody: nothing is
                // completed yet, and it completes nothing its peer lacks unless the register
                // says solo, so a candidate may take over from it.
                solo: current.is_some(),
            }),
            _ => None,
        };
        let Some(next) = next else {
            self.round = None;
            self.observe(current, now);
            return;
        };
        let Some(round) = &mut self.round else { return };
        self.proposed_in_step |= !next.solo;
        round.phase = Phase::Accept(next);
        round.votes = 0;
        let ballot = round.ballot;
        self.broadcast(Request::Accept(ballot, next), now);
    }

    /// A value read from a majority at `now`.
    fn observe(&mut self, value: Option<Lease>, now: u64) {
        if let Some((held, start, ballot)) = self.held {
            match value {
                // Its own renewal whose replies were lost: the register is ahead of it. Keep
                // the older start (the lease it counts on can only be shorter than the real
                // one), so that the next renewal expects the right value.
                Some(v) if v.epoch == held.epoch && v.holder == self.id && v.version > held.version => {
                    self.held = Some((v, start, ballot))
                }
                Some(v) if v.epoch > held.epoch => self.depose(v.epoch),
                _ => {}
            }
        }
        // Only a newer value restarts the wait. A renewal accepted by a minority only (its
        // other messages lost) is newer than the majority's value, and peeks that reach
        // different majorities then alternate between the two: restarting the wait at each
        // change kept a candidate waiting for ever (found by the simulation). Values only
        // grow (every proposal a fresh version, a takeover a higher epoch), and any later
        // renewal that succeeded is on every majority, so it is seen as newer still.
        if self.seen.is_none_or(|(seen, _)| value > seen) {
            self.seen = Some((value, now));
        }
    }

    /// A version never proposed by this agent before, above `base`.
    fn stamp(&mut self, base: u64) -> u64 {
        self.attempted = self.attempted.max(base) + 1;
        self.attempted
    }

    fn depose(&mut self, epoch: u64) {
        self.held = None;
        self.fast = false;
        self.round = None;
        self.actions.push_back(LeaseAction::Deposed { epoch });
    }

    fn begin(&mut self, change: Change, now: u64) {
        self.round_seen += 1;
        let ballot = Ballot { round: self.round_seen, node: self.id };
        self.round =
            Some(Round { ballot, change, start: now, phase: Phase::Prepare { best: None }, votes: 0 });
        self.broadcast(Request::Prepare(ballot), now);
    }

    fn begin_peek(&mut self, now: u64) {
        self.peek = Some(Peek { best: None, votes: 0, start: now });
        self.broadcast(Request::Peek, now);
    }

    /// Send `request` to every other acceptor, and hand it to this agent's own.
    fn broadcast(&mut self, request: Request, now: u64) {
        for to in (0..self.voters).filter(|&n| n != self.id) {
            self.actions.push_back(LeaseAction::Send { to, request });
        }
        let reply = self.acceptor.handle(request);
        self.handle_reply(self.id, reply, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing { lease: 4, grace: 1, renew_after: 1, round_timeout: 1 };

    fn first() -> Lease {
        Lease { epoch: 1, holder: 0, version: 0, solo: false }
    }

    fn cluster() -> (Member, Member, Acceptor) {
        let b = Ballot { round: 0, node: 0 };
        let acc = Acceptor::with_value(b, first());
        let a = Member::new(0, 3, TIMING, true, acc).holding(first(), 0, b);
        let bm = Member::new(1, 3, TIMING, true, acc);
        (a, bm, acc)
    }

    /// Two voters with manual failover, `a` holding epoch 1; and the acceptors' value.
    fn manual_pair() -> (Member, Member, Acceptor) {
        let ballot = Ballot { round: 0, node: 0 };
        let acc = Acceptor::with_value(ballot, first());
        let a = Member::new(0, 2, TIMING, false, acc).holding(first(), 0, ballot);
        (a, Member::new(1, 2, TIMING, false, acc), acc)
    }

    /// Deliver every send of `m` to the acceptors in `to` (others lost); replies go back.
    fn pump(m: &mut Member, others: &mut [(&mut Acceptor, bool)], now: u64) {
        while let Some(action) = m.poll_action() {
            if let LeaseAction::Send { to, request } = action {
                let idx = if to > m.id { to - 1 } else { to } as usize;
                let (acc, up) = &mut others[idx];
                if *up {
                    let reply = acc.handle(request);
                    m.handle_reply(to, reply, now);
                }
            }
        }
    }

    #[test]
    fn the_holder_renews_and_may_commit_until_the_grace_period() {
        let (mut a, _, mut acc) = cluster();
        let mut w = acc;
        assert!(a.can_commit(2));
        assert!(!a.can_commit(3), "lease 4, grace 1: not at 3");
        a.handle_tick(1);
        pump(&mut a, &mut [(&mut acc, true), (&mut w, false)], 1);
        assert_eq!(a.held.map(|(l, s, _)| (l.version, s)), Some((1, 1)));
        assert!(a.can_commit(3));
    }

    /// A renewal whose replies come later than the next tick (a slow disk at the acceptors)
    /// still renews the lease, as long as they come within `round_timeout`; abandoned at
    /// every tick, the holder lost its lease to slow disks and took it back under a new epoch.
    #[test]
    fn a_renewal_slower_than_a_tick_still_renews() {
        let slow = Timing { round_timeout: 3, ..TIMING };
        let b0 = Ballot { round: 0, node: 0 };
        let mut w = Acceptor::with_value(b0, first());
        let mut a = Member::new(0, 3, slow, true, w).holding(first(), 0, b0);
        a.handle_tick(1);
        // The accept for the witness is held up for two ticks.
        let mut sends = Vec::new();
        while let Some(action) = a.poll_action() {
            sends.push(action);
        }
        a.handle_tick(2);
        a.handle_tick(3);
        assert_eq!(a.poll_action(), None, "no second round while the first is open");
        for action in sends {
            if let LeaseAction::Send { to: 2, request } = action {
                let reply = w.handle(request);
                a.handle_reply(2, reply, 3);
            }
        }
        assert_eq!(a.held.map(|(l, s, _)| (l.epoch, l.version, s)), Some((1, 1, 1)));
        assert!(a.can_commit(3), "the lease runs from 1, the renewal's start");
    }

    #[test]
    fn a_candidate_takes_over_only_after_lease_and_grace_of_silence() {
        let (_, mut b, mut acc) = cluster();
        let mut w = acc;
        // The holder is gone. The candidate peeks at 0, then waits lease + grace.
        b.handle_tick(0);
        pump(&mut b, &mut [(&mut acc, true), (&mut w, true)], 0);
        for now in 1..5 {
            b.handle_tick(now);
            pump(&mut b, &mut [(&mut acc, true), (&mut w, true)], now);
            assert_eq!(b.owner_epoch(), None, "at {now}");
        }
        b.handle_tick(5);
        pump(&mut b, &mut [(&mut acc, true), (&mut w, true)], 5);
        assert_eq!(b.owner_epoch(), Some(2));
        assert_eq!(b.poll_action(), None);
        assert_eq!(w.accepted.map(|(_, v)| v), Some(Lease { epoch: 2, holder: 1, version: 1, solo: true }));
    }

    #[test]
    fn a_solo_holder_that_restarted_takes_its_own_lease_back_and_nobody_else_does() {
        let solo = Lease { solo: true, ..first() };
        let ballot = Ballot { round: 0, node: 0 };
        let acc = Acceptor::with_value(ballot, solo);
        // `a` held it alone, then restarted: it holds nothing, its acceptor is on disk.
        let mut a = Member::new(0, 3, TIMING, true, acc);
        let mut b = Member::new(1, 3, TIMING, true, acc);
        let (mut a_acc, mut b_acc, mut w) = (acc, acc, acc);
        for now in 0..=5 {
            b.handle_tick(now);
            pump(&mut b, &mut [(&mut a_acc, true), (&mut w, true)], now);
            assert_eq!(b.owner_epoch(), None, "b never takes over from a solo holder (at {now})");
            a.handle_tick(now);
            pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], now);
            assert_eq!(a.owner_epoch(), (now == 5).then_some(2), "a waits lease + grace (at {now})");
        }
        assert!(w.accepted.is_some_and(|(_, v)| v.holder == 0 && v.epoch == 2 && v.solo));
    }

    #[test]
    fn an_older_value_from_another_majority_does_not_restart_the_wait() {
        let (_, mut b, _) = cluster();
        let v8 = first();
        let v9 = Lease { version: 1, ..first() };
        b.observe(Some(v9), 0);
        b.observe(Some(v8), 1);
        assert_eq!(b.seen, Some((Some(v9), 0)), "v8 is older: the wait goes on from 0");
        let v10 = Lease { version: 2, ..first() };
        b.observe(Some(v10), 2);
        assert_eq!(b.seen, Some((Some(v10), 2)), "a newer value restarts it");
    }

    #[test]
    fn a_renewal_seen_by_the_candidate_restarts_its_wait() {
        let (mut a, mut b, acc) = cluster();
        let mut w = acc;
        b.handle_tick(0);
        pump(&mut b, &mut [(&mut a.acceptor.clone(), true), (&mut w, true)], 0);
        a.handle_tick(2);
        let mut b_acc = b.acceptor;
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 2);
        b.acceptor = b_acc;
        b.handle_tick(3);
        pump(&mut b, &mut [(&mut a.acceptor.clone(), true), (&mut w, true)], 3);
        b.handle_tick(5);
        pump(&mut b, &mut [(&mut a.acceptor.clone(), true), (&mut w, true)], 5);
        assert_eq!(b.owner_epoch(), None, "the value changed at 3: wait until 8");
    }

    /// The model's counterexample, replayed on the core: a renewal reaches only the holder's
    /// own acceptor, the candidate peeks the value it left there, and the retry must not
    /// propose that value again (else the candidate counts the retry's lease from its peek,
    /// before the retry began).
    #[test]
    fn a_retried_renewal_never_proposes_the_value_a_failed_one_left_behind() {
        let (mut a, mut b, acc) = cluster();
        let mut w = acc;
        let mut b_acc = b.acceptor;
        a.handle_tick(1);
        pump(&mut a, &mut [(&mut b_acc, false), (&mut w, false)], 1);
        let left = a.acceptor.accepted.map(|(_, v)| v);
        b.handle_tick(1);
        pump(&mut b, &mut [(&mut a.acceptor.clone(), true), (&mut w, true)], 1);
        assert_eq!(b.seen, Some((left, 1)), "the candidate saw the failed renewal's value");
        a.handle_tick(2);
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 2);
        assert_eq!(a.owner_epoch(), Some(1));
        assert_ne!(a.held(), left, "the retry proposed the failed renewal's value again");
        b.acceptor = b_acc;
        for now in 2..6 {
            b.handle_tick(now);
            pump(&mut b, &mut [(&mut a.acceptor.clone(), true), (&mut w, true)], now);
            assert_eq!(b.owner_epoch(), None, "at {now}: a's lease began at 2; wait until 6");
        }
    }

    /// Two voters, manual failover: the holder is cut off; the survivor is promoted by a
    /// person, commits only once the old lease has run out, and the old holder, which can no
    /// longer renew, fences itself and then steps down when it reaches the survivor.
    #[test]
    fn a_promoted_survivor_waits_out_the_old_lease_and_the_old_holder_steps_down() {
        let (mut a, mut b, acc) = manual_pair();
        b.handle_tick(0);
        assert!(
            std::iter::from_fn(|| b.poll_action()).all(|a| matches!(a, LeaseAction::Send { .. })),
            "manual failover: a survivor only watches"
        );
        assert_eq!(b.may_promote(1), Ok(()), "it never saw a renew: a person's call");
        assert_eq!(b.promote(1), 2);
        assert_eq!(b.poll_action(), Some(LeaseAction::Acquired { epoch: 2 }));
        for now in 1..6 {
            assert!(!b.can_commit(now), "at {now}: the old holder's lease may still run");
        }
        // Cut off, a cannot renew (it needs b's acceptor too): its lease runs out.
        a.handle_tick(1);
        let mut unreachable = acc;
        pump(&mut a, &mut [(&mut unreachable, false)], 1);
        assert!(!a.can_commit(3));
        // b renews alone (a quorum of one) and commits once the wait is over.
        b.handle_tick(2);
        b.handle_tick(3);
        b.handle_tick(4);
        b.handle_tick(5);
        assert!(b.can_commit(6) && b.owner_epoch() == Some(2));
        // a reaches b again: refused, then sees epoch 2 and steps down.
        a.handle_tick(2);
        pump(&mut a, &mut [(&mut b.acceptor, true)], 2);
        a.handle_tick(3);
        pump(&mut a, &mut [(&mut b.acceptor, true)], 3);
        assert_eq!(a.owner_epoch(), None);
        assert_eq!(a.known_epoch(), 2);
    }

    /// `weir promote` is refused while the holder is seen renewing, and once it has been
    /// silent for `lease + grace` it goes ahead.
    #[test]
    fn promote_is_refused_while_the_holder_is_seen_alive() {
        let (mut a, mut b, _) = manual_pair();
        for now in 1..4 {
            a.handle_tick(now);
            let mut b_acc = b.acceptor;
            pump(&mut a, &mut [(&mut b_acc, true)], now);
            b.acceptor = b_acc;
            b.handle_tick(now);
            pump(&mut b, &mut [(&mut a.acceptor, true)], now);
            assert!(matches!(b.may_promote(now), Err(PromoteRefused::Alive { epoch: 1, holder: 0, .. })));
        }
        assert_eq!(a.may_promote(3), Err(PromoteRefused::Owner { epoch: 1 }));
        // a is gone from 3 on: b's peeks find no majority; the value it saw last stands.
        for now in 4..8 {
            b.handle_tick(now);
            pump(&mut b, &mut [(&mut a.acceptor, false)], now);
            assert!(b.may_promote(now).is_err(), "at {now}: a renewed at 3; wait until 8");
        }
        assert_eq!(b.may_promote(8), Ok(()));
    }

    /// An owner that asked to leave solo acts as in step at once, before the renewal that
    /// records it (found by the replicated MQTT source's end-to-end test: completing alone
    /// until then left checkpoints the register said the peer had).
    #[test]
    fn leaving_solo_takes_effect_before_the_renewal_records_it() {
        let solo = Lease { solo: true, ..first() };
        let ballot = Ballot { round: 0, node: 0 };
        let mut a =
            Member::new(0, 3, TIMING, true, Acceptor::with_value(ballot, solo)).holding(solo, 0, ballot);
        a.set_solo(true);
        assert!(a.solo());
        a.set_solo(false);
        assert!(a.held().is_some_and(|l| l.solo), "the register still says solo");
        assert!(!a.solo(), "but the owner no longer acts alone");
        let mut b = Member::new(1, 3, TIMING, true, Acceptor::default());
        assert!(!b.solo(), "no lease, nothing to act on");
        b.set_solo(true);
        assert!(!b.solo());
    }

    #[test]
    fn a_deposed_holder_steps_down_when_it_sees_the_next_epoch() {
        let (mut a, _, _) = cluster();
        let newer = Lease { epoch: 2, holder: 1, version: 0, solo: true };
        let mut b_acc = Acceptor::with_value(Ballot { round: 5, node: 1 }, newer);
        let mut w = b_acc;
        // Refused (a higher ballot was promised): it learns the round and tries again.
        a.handle_tick(1);
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 1);
        assert_eq!(a.owner_epoch(), Some(1));
        a.handle_tick(2);
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 2);
        assert_eq!(a.owner_epoch(), None);
        assert_eq!(a.poll_action(), None);
        assert!(!a.can_commit(2));
    }

    #[test]
    fn with_manual_failover_only_the_first_owner_takes_an_empty_register_and_nobody_takes_over() {
        let mut w = Acceptor::default();
        let mut a = Member::new(0, 3, TIMING, false, Acceptor::default()).first_owner();
        let mut b = Member::new(1, 3, TIMING, false, Acceptor::default());
        for now in 0..20 {
            b.handle_tick(now);
            let mut a_acc = a.acceptor;
            pump(&mut b, &mut [(&mut a_acc, true), (&mut w, true)], now);
            a.acceptor = a_acc;
            assert_eq!(b.owner_epoch(), None, "b never starts it, at {now}");
        }
        a.handle_tick(20);
        let mut b_acc = b.acceptor;
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 20);
        a.handle_tick(21);
        pump(&mut a, &mut [(&mut b_acc, true), (&mut w, true)], 21);
        assert_eq!(a.owner_epoch(), Some(1));
        b.acceptor = b_acc;
        // a is gone: b watches, and never takes over by itself.
        for now in 22..60 {
            b.handle_tick(now);
            let mut a_acc = a.acceptor;
            pump(&mut b, &mut [(&mut a_acc, true), (&mut w, true)], now);
            assert_eq!(b.owner_epoch(), None, "manual: no takeover at {now}");
        }
    }
}
