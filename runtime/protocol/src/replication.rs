//! Replication of completed checkpoints to a peer agent (SPEC §12).
//!
//! The owner ships, per checkpoint whose every participant acknowledged, the records a
//! restore needs as numbered *parts* and then a [`Manifest`] naming how many parts there are,
//! a digest of them, and the chain hash of the previous manifest. The peer's
//! [`ReplicaLog`] makes a checkpoint its restore point only once the manifest and every part
//! are there and the manifest continues its chain (S17: a replica is never a partial
//! checkpoint); it then acknowledges cumulatively. The owner's [`Shipper`] decides, by the
//! pipeline's [`ReplicationMode`], whether a checkpoint may complete (and its sinks commit)
//! yet: `sync` only once the peer has it durable (S16), `received` once the peer has it,
//! `async` at once unless the peer is more than `max_lag` checkpoints behind.
//!
//! The chain lets a returning old owner, or any peer whose history forked, be recognised
//! ([`resume_point`]): its restore point's chain hash is not in the owner's history, and it
//! is seeded again from a full copy instead of merging.

use std::collections::{BTreeMap, BTreeSet};

use crate::{CheckpointId, Mutant, Mutations};

/// When a checkpoint completes, relative to the peer (DRBD's protocols A, B and C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    /// At once; the peer may lag by at most `max_lag` checkpoints, after which completion
    /// waits for it (the loss after losing the box is bounded by that).
    Async {
        /// Checkpoints the peer may lack.
        max_lag: u64,
    },
    /// Once the peer has received it (in its memory).
    Received,
    /// Once the peer has it durable (S16).
    Sync,
}

impl ReplicationMode {
    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Async { .. } => "async",
            ReplicationMode::Received => "received",
            ReplicationMode::Sync => "sync",
        }
    }
}

/// A peer's cumulative acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ack {
    /// The latest checkpoint it has whole.
    pub checkpoint: CheckpointId,
    /// Whether it is durable there (else only received).
    pub durable: bool,
}

/// The owner's side: what the peer has acknowledged, and whether a checkpoint may complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shipper {
    mode: ReplicationMode,
    received: CheckpointId,
    durable: CheckpointId,
    mutations: Mutations,
}

impl Shipper {
    /// A shipper to a peer known to hold `durable` (its restore point at the handshake).
    pub fn new(mode: ReplicationMode, durable: CheckpointId) -> Shipper {
        Shipper { mode, received: durable, durable, mutations: Mutations::NONE }
    }

    /// Switch on deliberately broken variants (the model's mutants).
    pub fn with_mutations(mut self, mutations: Mutations) -> Shipper {
        self.mutations = mutations;
        self
    }

    /// The mode.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// An acknowledgement from the peer (cumulative; an older one changes nothing).
    pub fn on_ack(&mut self, ack: Ack) {
        self.received = self.received.max(ack.checkpoint);
        if ack.durable {
            self.durable = self.durable.max(ack.checkpoint);
        }
    }

    /// The peer's acknowledged restore point.
    pub fn durable(&self) -> CheckpointId {
        self.durable
    }

    /// Whether `checkpoint`, all of whose participants acknowledged, may complete now;
    /// `solo` when the register records that the owner runs without a replica in step
    /// ([`crate::lease::Lease::solo`]).
    pub fn may_complete(&self, checkpoint: CheckpointId, solo: bool) -> bool {
        if solo {
            return true;
        }
        match self.mode {
            ReplicationMode::Sync if self.mutations.has(Mutant::AsyncReportsSync) => true,
            ReplicationMode::Sync => self.durable >= checkpoint,
            ReplicationMode::Received => self.received >= checkpoint,
            ReplicationMode::Async { max_lag } => checkpoint.0.saturating_sub(self.durable.0) <= max_lag,
        }
    }

    /// Whether input written to the owner's log (a source's WAL) must be durable at the peer
    /// before its sender is told it arrived: in `sync` and `received` mode, unless the owner
    /// runs solo. (`received` waits for durability too: a receipt is acknowledged per
    /// checkpoint, not per batch.) In `async` mode the sender is answered at once, and input
    /// not yet shipped is part of the bounded loss.
    pub fn input_waits_for_peer(&self, solo: bool) -> bool {
        !solo && !matches!(self.mode, ReplicationMode::Async { .. })
    }

    /// Checkpoints completed here and not yet durable at the peer (ids, so an upper bound
    /// when some ids were aborted).
    pub fn lag(&self, last_completed: CheckpointId) -> u64 {
        last_completed.0.saturating_sub(self.durable.0)
    }
}

/// What a checkpoint's replica is made of; shipped after its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Manifest {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The ownership epoch it was taken under.
    pub epoch: u64,
    /// How many parts it has (numbered 0..parts).
    pub parts: u32,
    /// A digest of the parts' contents (the shell checks it when it writes them).
    pub digest: u64,
    /// The chain hash of the manifest before it (0 for the first).
    pub prev: u64,
}

impl Manifest {
    /// The chain hash after this manifest: FNV-1a over the previous hash and this manifest.
    pub fn chain(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for word in [self.prev, self.checkpoint.0, self.epoch, u64::from(self.parts), self.digest] {
            for byte in word.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Pending {
    manifest: Option<Manifest>,
    parts: BTreeSet<u32>,
}

/// The peer's side: parts and manifests as they arrive (in any order, any number of times),
/// and the restore point they add up to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaLog {
    restore: CheckpointId,
    chain: u64,
    pending: BTreeMap<CheckpointId, Pending>,
    mutations: Mutations,
}

impl ReplicaLog {
    /// A replica whose durable restore point is `restore`, with chain hash `chain`.
    pub fn new(restore: CheckpointId, chain: u64) -> ReplicaLog {
        ReplicaLog { restore, chain, pending: BTreeMap::new(), mutations: Mutations::NONE }
    }

    /// Switch on deliberately broken variants (the model's mutants).
    pub fn with_mutations(mut self, mutations: Mutations) -> ReplicaLog {
        self.mutations = mutations;
        self
    }

    /// The restore point: the latest checkpoint held whole.
    pub fn restore_point(&self) -> CheckpointId {
        self.restore
    }

    /// The chain hash at the restore point.
    pub fn chain(&self) -> u64 {
        self.chain
    }

    /// Part `index` of `checkpoint` arrived (and is written). Returns the new restore point
    /// if it moved: the shell makes it durable, then acknowledges it.
    pub fn handle_part(&mut self, checkpoint: CheckpointId, index: u32) -> Option<CheckpointId> {
        if checkpoint <= self.restore {
            return None;
        }
        self.pending.entry(checkpoint).or_default().parts.insert(index);
        self.advance()
    }

    /// The manifest of a checkpoint arrived. Returns the new restore point if it moved.
    pub fn handle_manifest(&mut self, manifest: Manifest) -> Option<CheckpointId> {
        if manifest.checkpoint <= self.restore {
            return None;
        }
        self.pending.entry(manifest.checkpoint).or_default().manifest = Some(manifest);
        self.advance()
    }

    /// Move the restore point along the chain as far as whole checkpoints reach.
    fn advance(&mut self) -> Option<CheckpointId> {
        let before = self.restore;
        while let Some(next) = self.pending.values().find_map(|p| {
            let m = p.manifest?;
            // Only parts the manifest names count: a stray index from the network cannot
            // make up for a missing one.
            let whole = self.mutations.has(Mutant::PartialManifest)
                || p.parts.range(..m.parts).count() as u64 == u64::from(m.parts);
            (whole && m.prev == self.chain && m.checkpoint > self.restore).then_some(m)
        }) {
            self.restore = next.checkpoint;
            self.chain = next.chain();
            self.pending = self.pending.split_off(&next.checkpoint.next());
        }
        (self.restore > before).then_some(self.restore)
    }

    /// Start again from a full copy of the owner's log at `restore` (a new, lagging or
    /// diverged peer).
    pub fn seed(&mut self, restore: CheckpointId, chain: u64) {
        *self = ReplicaLog { mutations: self.mutations, ..ReplicaLog::new(restore, chain) };
    }
}

/// Where to resume shipping to a peer that reports restore point `peer` with chain hash
/// `chain`, given the owner's recent history of (checkpoint, chain hash), oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Ship every checkpoint after this one.
    After(CheckpointId),
    /// The peer's history is not the owner's (it forked, or is older than what the owner
    /// keeps): seed it from a full copy.
    Reseed,
}

/// See [`Resume`].
pub fn resume_point(history: &[(CheckpointId, u64)], peer: CheckpointId, chain: u64) -> Resume {
    if peer == CheckpointId(0) && chain == 0 && history.first().is_none_or(|&(c, _)| c.0 <= 1) {
        return Resume::After(peer);
    }
    if history.contains(&(peer, chain)) { Resume::After(peer) } else { Resume::Reseed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(n: u64, epoch: u64) -> Vec<Manifest> {
        let mut prev = 0;
        (1..=n)
            .map(|c| {
                let m = Manifest { checkpoint: CheckpointId(c), epoch, parts: 2, digest: c * 7, prev };
                prev = m.chain();
                m
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_is_restorable_only_when_whole_and_in_order() {
        let ms = manifests(2, 1);
        let mut r = ReplicaLog::new(CheckpointId(0), 0);
        assert_eq!(r.handle_manifest(ms[1]), None);
        assert_eq!(r.handle_part(CheckpointId(2), 0), None);
        assert_eq!(r.handle_part(CheckpointId(2), 1), None, "checkpoint 1 is missing");
        assert_eq!(r.handle_manifest(ms[0]), None);
        assert_eq!(r.handle_part(CheckpointId(1), 1), None);
        assert_eq!(r.handle_part(CheckpointId(1), 1), None, "a duplicate part is not a second part");
        assert_eq!(r.handle_part(CheckpointId(1), 7), None, "a part the manifest does not name is not one");
        assert_eq!(r.handle_part(CheckpointId(1), 0), Some(CheckpointId(2)));
        assert_eq!(r.chain(), ms[1].chain());
        assert_eq!(r.handle_part(CheckpointId(1), 0), None);
    }

    #[test]
    fn a_manifest_of_another_history_does_not_continue_the_chain() {
        let ours = manifests(1, 1);
        let theirs = manifests(2, 2);
        let mut r = ReplicaLog::new(CheckpointId(0), 0);
        r.handle_manifest(ours[0]);
        r.handle_part(CheckpointId(1), 0);
        assert_eq!(r.handle_part(CheckpointId(1), 1), Some(CheckpointId(1)));
        r.handle_manifest(theirs[1]);
        r.handle_part(CheckpointId(2), 0);
        assert_eq!(r.handle_part(CheckpointId(2), 1), None);
        let history: Vec<_> = theirs.iter().map(|m| (m.checkpoint, m.chain())).collect();
        assert_eq!(resume_point(&history, r.restore_point(), r.chain()), Resume::Reseed);
        assert_eq!(resume_point(&history, history[0].0, history[0].1), Resume::After(CheckpointId(1)));
    }

    #[test]
    fn modes_decide_when_a_checkpoint_completes() {
        let mut sync = Shipper::new(ReplicationMode::Sync, CheckpointId(0));
        let mut received = Shipper::new(ReplicationMode::Received, CheckpointId(0));
        let lazy = Shipper::new(ReplicationMode::Async { max_lag: 2 }, CheckpointId(0));
        assert!(!sync.may_complete(CheckpointId(1), false));
        assert!(lazy.may_complete(CheckpointId(2), false) && !lazy.may_complete(CheckpointId(3), false));
        let got = Ack { checkpoint: CheckpointId(1), durable: false };
        sync.on_ack(got);
        received.on_ack(got);
        assert!(!sync.may_complete(CheckpointId(1), false) && received.may_complete(CheckpointId(1), false));
        sync.on_ack(Ack { checkpoint: CheckpointId(1), durable: true });
        assert!(sync.may_complete(CheckpointId(1), false));
        assert_eq!(sync.lag(CheckpointId(3)), 2);
    }
}
