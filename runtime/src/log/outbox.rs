//! A network sink's outbox (the MQTT sink's): committed output waiting for the broker's
//! acknowledgement, the source of truth for what is still to be delivered. One database,
//! `outbox`: (participant u32, checkpoint u64) -> [`OutboxChunk`], the output a commit
//! released, one message per line. A sink's commit puts its chunks there in the same
//! transaction as its commit record (so output is in the outbox exactly when it is
//! committed); the publisher deletes them as the broker acknowledges them.
//!
//! How far delivery got is in `meta` (`outbox_acked` + participant): a [`Delivered`]
//! position, everything before which was acknowledged (or dropped by `on_full =
//! "drop_oldest"`). It only moves forward; chunks wholly before it are deleted with it.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{Log, LogError, META, checkpoint_key, decode, encode, participant_key};
use crate::protocol::{CheckpointId, ParticipantId};

/// Committed output by participant and checkpoint.
pub const OUTBOX: &str = "outbox";

const KEY_OUTBOX_ACKED: &[u8] = b"outbox_acked";

fn acked_key(p: ParticipantId) -> Vec<u8> {
    [KEY_OUTBOX_ACKED, &participant_key(p)[..]].concat()
}

/// The output one checkpoint's commit released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxChunk {
    /// Its epoch, a consumer's de-duplication key with the checkpoint and the message's
    /// place in the chunk: for a replicated pipeline the ownership epoch of the run that
    /// started its checkpoint ([`crate::log::Log::owner_epoch`]), the same on every agent
    /// that commits it; else the epoch of the sink that committed it. (Widened from `u32`:
    /// postcard writes both as the same varint.)
    pub epoch: u64,
    /// When it was committed, milliseconds since the Unix epoch (the outbox's age).
    pub committed_ms: u64,
    /// The messages, each ending with a line break.
    pub messages: Vec<u8>,
}

impl OutboxChunk {
    /// Its messages (without their line breaks), as byte ranges of `messages`.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in self.messages.iter().enumerate() {
            if b == b'\n' {
                out.push(start..i);
                start = i + 1;
            }
        }
        if start < self.messages.len() {
            out.push(start..self.messages.len());
        }
        out
    }
}

/// How far a sink's delivery got: every message before message `index` of the chunk of
/// `checkpoint` (or before the first chunk at or after it) is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Delivered {
    /// The chunk.
    pub checkpoint: u64,
    /// The message within it.
    pub index: u32,
}

/// What the outbox of a participant holds, per chunk, without the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Its checkpoint.
    pub checkpoint: u64,
    /// Bytes of messages.
    pub bytes: u64,
    /// Messages.
    pub messages: u32,
    /// When it was committed.
    pub committed_ms: u64,
}

impl Log {
    /// The delivery position of `p` (the start for an outbox never acknowledged).
    pub fn outbox_delivered(&self, p: ParticipantId) -> Result<Delivered, LogError> {
        let key = acked_key(p);
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, &key))?;
        self.delivered_in(&rtxn, p)
    }

    fn delivered_in(&self, rtxn: &heed::RoTxn, p: ParticipantId) -> Result<Delivered, LogError> {
        let key = acked_key(p);
        match self.dbs.meta.get(rtxn, &key).map_err(self.lmdb(META, &key))? {
            Some(bytes) => decode(META, &key, bytes),
            None => Ok(Delivered::default()),
        }
    }

    /// Every chunk the outbox of `p` holds, oldest first (read when a run starts).
    pub fn outbox_index(&self, p: ParticipantId) -> Result<Vec<ChunkInfo>, LogError> {
        let (lo, hi) = (checkpoint_key(p, CheckpointId(0)), checkpoint_key(p, CheckpointId(u64::MAX)));
        let rtxn = self.env.read_txn().map_err(self.lmdb(OUTBOX, &lo))?;
        let iter = (self.dbs.outbox)
            .range(&rtxn, &(Bound::Included(&lo[..]), Bound::Included(&hi[..])))
            .map_err(self.lmdb(OUTBOX, &lo))?;
        let mut out = Vec::new();
        for entry in iter {
            let (key, value) = entry.map_err(self.lmdb(OUTBOX, &lo))?;
            let chunk: OutboxChunk = decode(OUTBOX, key, value)?;
            out.push(ChunkInfo {
                checkpoint: u64::from_be_bytes(key[4..12].try_into().unwrap_or_default()),
                bytes: chunk.messages.len() as u64,
                messages: chunk.ranges().len() as u32,
                committed_ms: chunk.committed_ms,
            });
        }
        Ok(out)
    }

    /// The first chunk of `p` at or after checkpoint `from`, if any.
    pub fn outbox_chunk(&self, p: ParticipantId, from: u64) -> Result<Option<(u64, OutboxChunk)>, LogError> {
        let (lo, hi) = (checkpoint_key(p, CheckpointId(from)), checkpoint_key(p, CheckpointId(u64::MAX)));
        let rtxn = self.env.read_txn().map_err(self.lmdb(OUTBOX, &lo))?;
        let mut iter = (self.dbs.outbox)
            .range(&rtxn, &(Bound::Included(&lo[..]), Bound::Included(&hi[..])))
            .map_err(self.lmdb(OUTBOX, &lo))?;
        match iter.next() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(self.lmdb(OUTBOX, &lo))?;
                let c = u64::from_be_bytes(key[4..12].try_into().unwrap_or_default());
                Ok(Some((c, decode(OUTBOX, key, value)?)))
            }
        }
    }

    pub(super) fn outbox_put(
        &self,
        wtxn: &mut heed::RwTxn,
        p: ParticipantId,
        c: CheckpointId,
        chunk: &OutboxChunk,
    ) -> Result<(), LogError> {
        let key = checkpoint_key(p, c);
        self.dbs.outbox.put(wtxn, &key, &encode(&key, chunk)).map_err(self.lmdb(OUTBOX, &key))
    }

    /// Move the delivery position of `p` forward to `to` (never back), deleting the chunks
    /// wholly before it.
    pub(super) fn outbox_deliver(
        &self,
        wtxn: &mut heed::RwTxn,
        p: ParticipantId,
        to: Delivered,
    ) -> Result<(), LogError> {
        let key = acked_key(p);
        let now = self.delivered_in(wtxn, p)?;
        if to <= now {
            return Ok(());
        }
        self.dbs.meta.put(wtxn, &key, &encode(&key, &to)).map_err(self.lmdb(META, &key))?;
        let (lo, hi) = (checkpoint_key(p, CheckpointId(0)), checkpoint_key(p, CheckpointId(to.checkpoint)));
        (self.dbs.outbox)
            .delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
            .map_err(self.lmdb(OUTBOX, &hi))?;
        Ok(())
    }
}
