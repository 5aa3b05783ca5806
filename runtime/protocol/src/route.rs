//! The output side of a subtask (SPEC §10.2, §11): per channel the last sequence number sent,
//! the receiver's epoch and the buffer queue; the routers that spread batches over the
//! channels to each downstream node; and the buffer budget.
//!
//! A router's only state is where a round-robin group goes next. Every batch the group routes
//! takes the next sequence number on exactly one of its channels, and the end of input (one
//! on each) comes after the last, so the batches routed are the sum of the group's sequence
//! numbers: the router is snapshotted with the sequence numbers and restored from them.
//! Without that a restarted sender spreads replayed batches differently than before, and a
//! receiver gets another batch under a sequence number it has already applied (mutant
//! `router-not-restored`).

use std::fmt;
use std::hash::Hash;

use crate::buffer::{BufferQueue, Buffered, ReplayGap};
use crate::driver::{Epoch, Resume};
use crate::{CheckpointId, Mutant, Mutations, Seq};

/// What a channel carries, as far as the protocol needs to know.
pub trait Payload: Clone {
    /// What a hash partition splits by (a field name in the runtime).
    type Key: Clone + fmt::Debug + PartialEq + Eq + Hash;

    /// The end of the sender's input (it takes a sequence number like a batch).
    fn end() -> Self;

    /// Whether this is the end of input.
    fn is_end(&self) -> bool;

    /// Whether it carries no records (such a batch is not sent).
    fn is_empty(&self) -> bool;

    /// About how many bytes it holds, for the buffer budget.
    fn bytes(&self) -> usize;

    /// Its records split over `parts` channels by `key`, the same key always to the same
    /// channel; `None` for a channel that gets nothing.
    fn split(&self, key: &Self::Key, parts: usize) -> Vec<Option<Self>>;
}

/// An item on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item<P> {
    /// A sequenced item.
    Batch {
        /// Its sequence number on the channel.
        seq: Seq,
        /// What it carries.
        payload: P,
    },
    /// A checkpoint barrier.
    Barrier(CheckpointId),
}

/// How a node's output is spread over the subtasks of one downstream node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Partition<K> {
    /// Every batch to the one channel of the group.
    Forward,
    /// Records by key, the same key always to the same channel.
    Hash(K),
    /// Whole batches in turn to each channel.
    RoundRobin,
}

/// The channels to the subtasks of one downstream node, and how batches are spread there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group<K> {
    /// How records are spread.
    pub partition: Partition<K>,
    /// Output channel indexes, by downstream subtask.
    pub channels: Vec<usize>,
    /// Round-robin: batches routed so far (the next channel is this modulo their number).
    next: usize,
}

impl<K> Group<K> {
    /// A group over `channels`, routed nothing yet.
    pub fn new(partition: Partition<K>, channels: Vec<usize>) -> Group<K> {
        Group { partition, channels, next: 0 }
    }
}

/// Spread `payload` over the groups' channels as each group says, calling
/// `emit(channel, part)` for every non-empty part, in channel order within each group.
pub fn route<P: Payload>(groups: &mut [Group<P::Key>], payload: P, mut emit: impl FnMut(usize, P)) {
    let n = groups.len();
    let mut payload = Some(payload);
    for (g, group) in groups.iter_mut().enumerate() {
        let this =
            if g + 1 == n { payload.take().expect("sent once") } else { payload.clone().expect("kept") };
        match &group.partition {
            Partition::Forward => emit(group.channels[0], this),
            Partition::RoundRobin => {
                let ch = group.channels[group.next % group.channels.len()];
                group.next += 1;
                emit(ch, this);
            }
            Partition::Hash(key) => {
                let parts = this.split(key, group.channels.len());
                for (part, &ch) in parts.into_iter().zip(&group.channels) {
                    if let Some(part) = part {
                        emit(ch, part);
                    }
                }
            }
        }
    }
}

/// One output channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Channel<P> {
    /// The last sequence number sent.
    seq: Seq,
    /// The receiver's epoch.
    epoch: Epoch,
    /// What was sent since the latest completed checkpoint (with local recovery).
    buffer: Option<BufferQueue<P>>,
    /// Nothing is sent until the receiver asks for what follows its position (a promoted
    /// standby's channels, SPEC §11.8): the buffer queue keeps it for that replay.
    held: bool,
}

/// All outputs of a subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Outputs<P: Payload> {
    channels: Vec<Channel<P>>,
    groups: Vec<Group<P::Key>>,
    /// Bytes the buffer queues may hold before they give up until the next barrier (0: no
    /// limit).
    budget: usize,
    /// Bytes they hold (approximately).
    buffered: usize,
    /// They gave up until the next barrier.
    overflowed: bool,
    mutations: Mutations,
}

impl<P: Payload> Outputs<P> {
    /// Outputs restored from checkpoint `restored` (0: none) with these last sequence
    /// numbers, one per channel, in `groups`. With `buffered`, each channel keeps a buffer
    /// queue for replays, within `budget` bytes in all (0: no limit).
    pub fn new(
        seqs: &[Seq],
        restored: CheckpointId,
        groups: Vec<Group<P::Key>>,
        (buffered, budget): (bool, usize),
        mutations: Mutations,
    ) -> Outputs<P> {
        let channels = seqs
            .iter()
            .map(|&seq| Channel {
                seq,
                epoch: 0,
                buffer: buffered.then(|| BufferQueue::new(restored, seq).with_mutations(mutations)),
                held: false,
            })
            .collect();
        let mut outputs = Outputs { channels, groups, budget, buffered: 0, overflowed: false, mutations };
        outputs.restore_routers();
        outputs
    }

    fn restore_routers(&mut self) {
        let reset = self.mutations.has(Mutant::RouterNotRestored);
        for group in &mut self.groups {
            group.next =
                if reset { 0 } else { group.channels.iter().map(|&ch| self.channels[ch].seq as usize).sum() };
        }
    }

    /// The buffer budget in bytes (0: no limit).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes the buffer queues hold now (approximately).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// The groups (a source's re-read routes with a copy of them).
    pub fn groups(&self) -> &[Group<P::Key>] {
        &self.groups
    }

    /// Last sequence number sent per channel, for a snapshot.
    pub fn seqs(&self) -> Vec<Seq> {
        self.channels.iter().map(|c| c.seq).collect()
    }

    /// Whether a buffer queue gave up over the budget and has not reached a completion since:
    /// it cannot serve every replay a receiver may ask for.
    pub fn gave_up(&self) -> bool {
        self.channels.iter().any(|c| c.buffer.as_ref().is_some_and(BufferQueue::gave_up))
    }

    /// The buffer queue of `channel`, if it keeps one.
    pub fn buffer(&self, channel: usize) -> Option<&BufferQueue<P>> {
        self.channels[channel].buffer.as_ref()
    }

    fn put(&mut self, channel: usize, payload: P, send: &mut impl FnMut(usize, Epoch, Item<P>)) {
        let c = &mut self.channels[channel];
        c.seq += 1;
        if let Some(buffer) = &mut c.buffer {
            if c.held {
                buffer.push_batch(c.seq, payload);
                return;
            }
            buffer.push_batch(c.seq, payload.clone());
        }
        send(channel, c.epoch, Item::Batch { seq: c.seq, payload });
    }

    /// Send `payload` downstream, spread as each group says; `send(channel, epoch, item)`
    /// puts each part on the wire. Returns true when this send took the buffer queues over
    /// their budget: until the next barrier a failure downstream cannot be replayed locally.
    pub fn send(&mut self, payload: P, mut send: impl FnMut(usize, Epoch, Item<P>)) -> bool {
        if payload.is_empty() {
            return false;
        }
        let count = self.budget > 0 && !self.overflowed;
        let mut groups = std::mem::take(&mut self.groups);
        let mut bytes = 0;
        route(&mut groups, payload, |ch, part| {
            if count {
                bytes += part.bytes();
            }
            self.put(ch, part, &mut send);
        });
        self.groups = groups;
        self.buffered += bytes;
        if count && self.buffered > self.budget {
            for channel in &mut self.channels {
                if let Some(buffer) = &mut channel.buffer {
                    buffer.overflow();
                }
            }
            self.buffered = 0;
            self.overflowed = true;
            return true;
        }
        false
    }

    /// Send `Barrier(c)` on every channel, behind everything sent before.
    pub fn send_barrier(&mut self, c: CheckpointId, mut send: impl FnMut(usize, Epoch, Item<P>)) {
        self.overflowed = false;
        for (ch, channel) in self.channels.iter_mut().enumerate() {
            if let Some(buffer) = &mut channel.buffer {
                buffer.push_barrier(c);
            }
            if !channel.held {
                send(ch, channel.epoch, Item::Barrier(c));
            }
        }
    }

    /// Send the end of input on every channel.
    pub fn send_end(&mut self, mut send: impl FnMut(usize, Epoch, Item<P>)) {
        for ch in 0..self.channels.len() {
            self.put(ch, P::end(), &mut send);
        }
    }

    /// Checkpoint `c` completed: buffer queues drop what no replay can need any more.
    pub fn complete(&mut self, c: CheckpointId) {
        self.buffered = 0;
        for channel in &mut self.channels {
            if let Some(buffer) = &mut channel.buffer {
                buffer.complete(c);
                self.buffered += buffered_bytes(buffer);
            }
        }
    }

    /// The receiver of `resume.channel` restarted with epoch `resume.epoch`: `send(channel,
    /// epoch, None)` resets the wire to it, then `Some(item)` for each buffered item after its
    /// position, in order.
    pub fn resume(
        &mut self,
        resume: Resume,
        mut send: impl FnMut(usize, Epoch, Option<Item<P>>),
    ) -> Result<(), ReplayGap> {
        let ch = resume.channel;
        let channel = &mut self.channels[ch];
        let Some(buffer) = &mut channel.buffer else {
            return Err(ReplayGap { base: CheckpointId(u64::MAX), restored: resume.restored });
        };
        let replay = buffer.replay(resume.from_seq, resume.restored)?;
        channel.epoch = resume.epoch;
        channel.held = false;
        send(ch, resume.epoch, None);
        for entry in replay {
            let item = match entry {
                Buffered::Batch { seq, item } => Item::Batch { seq: *seq, payload: item.clone() },
                Buffered::Barrier(c) => Item::Barrier(*c),
            };
            send(ch, resume.epoch, Some(item));
        }
        Ok(())
    }

    /// Send nothing on any channel until its receiver asks for what follows its position
    /// ([`Outputs::resume`]): a promoted standby's receivers were sent by another, and what
    /// it sends live must not overtake the replay they are about to ask for (SPEC §11.8).
    /// Only channels with a buffer queue are held.
    pub fn hold(&mut self) {
        for channel in &mut self.channels {
            channel.held = channel.buffer.is_some();
        }
    }

    /// The receiver of `channel` restarted and is served by other means (a source re-reads):
    /// from now on send to `epoch`.
    pub fn set_epoch(&mut self, channel: usize, epoch: Epoch) {
        self.channels[channel].epoch = epoch;
    }

    /// The epoch of the receiver of `channel`.
    pub fn epoch(&self, channel: usize) -> Epoch {
        self.channels[channel].epoch
    }

    /// This subtask restarted from its snapshot of `c` (0: none) with these output sequence
    /// numbers: what it sent after that is produced again, identically, and routed as
    /// before. Fails with the first channel whose receiver still needs items this sender
    /// will not produce again.
    pub fn restart_from(&mut self, c: CheckpointId, seqs: &[Seq]) -> Result<(), (usize, ReplayGap)> {
        self.buffered = 0;
        self.overflowed = false;
        let mut gap = None;
        for (ch, channel) in self.channels.iter_mut().enumerate() {
            channel.seq = seqs.get(ch).copied().unwrap_or(0);
            if let Some(buffer) = &mut channel.buffer {
                if let Err(e) = buffer.restart_from(c, channel.seq) {
                    gap.get_or_insert((ch, e));
                }
                self.buffered += buffered_bytes(buffer);
            }
        }
        self.restore_routers();
        gap.map_or(Ok(()), Err)
    }
}

fn buffered_bytes<P: Payload>(buffer: &BufferQueue<P>) -> usize {
    buffer
        .entries()
        .map(|e| match e {
            Buffered::Batch { item, .. } => item.bytes(),
            Buffered::Barrier(_) => 0,
        })
        .sum()
}
