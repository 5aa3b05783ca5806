//! A source's write-ahead log (the MQTT source's): what arrived from the network, made
//! durable before the broker is told it was received, and read back by position as a file
//! source reads its file. Three databases, keys big-endian:
//! - `wal`: (participant u32, index u64) -> [`WalEntry`];
//! - `wal_keys`: (participant u32, dedup key bytes) -> index u64: the entries that named a
//!   de-duplication key, so a redelivered message is recognised;
//! - `wal_ages`: (participant u32, arrival ms u64, index u64) -> dedup key bytes: the keys by
//!   age, so they are forgotten after a retention time, not all at once.
//!
//! The next index of each participant is in `meta` (`wal_next` + participant), so indices
//! never go back, also when the WAL is empty after a truncation: snapshots name positions.
//! Entries below the position of a completed checkpoint are truncated through the writer
//! thread; keys after their retention.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{Log, LogError, META, decode, encode, participant_key};
use crate::protocol::ParticipantId;

/// The WAL's entries.
pub const WAL: &str = "wal";
/// Dedup keys to entries.
pub const WAL_KEYS: &str = "wal_keys";
/// Dedup keys by arrival.
pub const WAL_AGES: &str = "wal_ages";

const KEY_WAL_NEXT: &[u8] = b"wal_next";

/// One message as it arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEntry {
    /// Its topic.
    pub topic: String,
    /// When it arrived, milliseconds since the Unix epoch.
    pub arrival_ms: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

fn entry_key(p: ParticipantId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&participant_key(p));
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

fn dedup_key(p: ParticipantId, key: &[u8]) -> Vec<u8> {
    [&participant_key(p)[..], key].concat()
}

fn age_key(p: ParticipantId, arrival_ms: u64, index: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&participant_key(p));
    k[4..12].copy_from_slice(&arrival_ms.to_be_bytes());
    k[12..].copy_from_slice(&index.to_be_bytes());
    k
}

fn next_key(p: ParticipantId) -> Vec<u8> {
    [KEY_WAL_NEXT, &participant_key(p)[..]].concat()
}

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub struct Appended {
    /// Entries written.
    pub written: usize,
    /// Entries not written: their dedup key was in the WAL already (a redelivery).
    pub duplicates: usize,
    /// The index the next entry will get.
    pub next: u64,
}

impl Log {
    /// The index the next entry of `p` will get (0 for a WAL never written).
    pub fn wal_next(&self, p: ParticipantId) -> Result<u64, LogError> {
        let key = next_key(p);
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, &key))?;
        match self.dbs.meta.get(&rtxn, &key).map_err(self.lmdb(META, &key))? {
            Some(bytes) => decode(META, &key, bytes),
            None => Ok(0),
        }
    }

    /// Append `entries` (each with its dedup key, if it has one) to the WAL of `p` in one
    /// transaction, and commit it (fsync): an entry whose key is already there is not written.
    pub fn wal_append(
        &self,
        p: ParticipantId,
        entries: &[(WalEntry, Option<Vec<u8>>)],
    ) -> Result<Appended, LogError> {
        let next_at = next_key(p);
        let err = self.lmdb(WAL, &next_at);
        let mut wtxn = self.env.write_txn().map_err(&err)?;
        let appended = self.wal_append_in(&mut wtxn, p, entries)?;
        wtxn.commit().map_err(&err)?;
        self.note_usage();
        Ok(appended)
    }

    /// [`Log::wal_append`] inside the transaction `wtxn` (a [`super::WriteOp::WalAppend`]
    /// applied by the writer, or on a replica).
    pub(super) fn wal_append_in(
        &self,
        wtxn: &mut heed::RwTxn,
        p: ParticipantId,
        entries: &[(WalEntry, Option<Vec<u8>>)],
    ) -> Result<Appended, LogError> {
        let next_at = next_key(p);
        let err = self.lmdb(WAL, &next_at);
        let mut next: u64 = match self.dbs.meta.get(wtxn, &next_at).map_err(&err)? {
            Some(bytes) => decode(META, &next_at, bytes)?,
            None => 0,
        };
        let (mut written, mut duplicates) = (0, 0);
        for (entry, dedup) in entries {
            if let Some(dedup) = dedup {
                let k = dedup_key(p, dedup);
                if self.dbs.wal_keys.get(wtxn, &k).map_err(self.lmdb(WAL_KEYS, &k))?.is_some() {
                    duplicates += 1;
                    continue;
                }
                self.dbs.wal_keys.put(wtxn, &k, &encode(&k, &next)).map_err(self.lmdb(WAL_KEYS, &k))?;
                let a = age_key(p, entry.arrival_ms, next);
                self.dbs.wal_ages.put(wtxn, &a, &encode(&a, dedup)).map_err(self.lmdb(WAL_AGES, &a))?;
            }
            let k = entry_key(p, next);
            self.dbs.wal.put(wtxn, &k, &encode(&k, entry)).map_err(self.lmdb(WAL, &k))?;
            next += 1;
            written += 1;
        }
        self.dbs.meta.put(wtxn, &next_at, &encode(&next_at, &next)).map_err(&err)?;
        Ok(Appended { written, duplicates, next })
    }

    /// Up to `max` entries of the WAL of `p` from index `from` on, with their indices.
    pub fn wal_read(
        &self,
        p: ParticipantId,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, WalEntry)>, LogError> {
        let (lo, hi) = (entry_key(p, from), entry_key(p, u64::MAX));
        let rtxn = self.env.read_txn().map_err(self.lmdb(WAL, &lo))?;
        let iter = (self.dbs.wal)
            .range(&rtxn, &(Bound::Included(&lo[..]), Bound::Included(&hi[..])))
            .map_err(self.lmdb(WAL, &lo))?;
        let mut out = Vec::with_capacity(max.min(4096));
        for entry in iter.take(max) {
            let (key, value) = entry.map_err(self.lmdb(WAL, &lo))?;
            let index = u64::from_be_bytes(key[4..12].try_into().unwrap_or_default());
            out.push((index, decode(WAL, key, value)?));
        }
        Ok(out)
    }

    /// Delete the entries of `p` below `below`, and the dedup keys that arrived before
    /// `keys_before_ms`.
    pub(super) fn wal_truncate(
        &self,
        wtxn: &mut heed::RwTxn,
        p: ParticipantId,
        below: u64,
        keys_before_ms: u64,
    ) -> Result<(), LogError> {
        let (lo, hi) = (entry_key(p, 0), entry_key(p, below));
        (self.dbs.wal)
            .delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
            .map_err(self.lmdb(WAL, &hi))?;
        let (lo, hi) = (age_key(p, 0, 0), age_key(p, keys_before_ms, 0));
        let mut old = Vec::new();
        {
            let iter = (self.dbs.wal_ages)
                .range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
                .map_err(self.lmdb(WAL_AGES, &lo))?;
            for entry in iter {
                let (key, value) = entry.map_err(self.lmdb(WAL_AGES, &lo))?;
                old.push(decode::<Vec<u8>>(WAL_AGES, key, value)?);
            }
        }
        for dedup in old {
            let k = dedup_key(p, &dedup);
            self.dbs.wal_keys.delete(wtxn, &k).map_err(self.lmdb(WAL_KEYS, &k))?;
        }
        (self.dbs.wal_ages)
            .delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
            .map_err(self.lmdb(WAL_AGES, &hi))?;
        Ok(())
    }

    /// Entries and dedup keys the WAL of `p` holds (for tests and metrics).
    pub fn wal_len(&self, p: ParticipantId) -> Result<(u64, u64), LogError> {
        let count = |db: heed::Database<heed::types::Bytes, heed::types::Bytes>, name: &'static str| {
            let lo = participant_key(p);
            let hi = participant_key(p + 1);
            let rtxn = self.env.read_txn().map_err(self.lmdb(name, &lo))?;
            let iter = db
                .range(&rtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
                .map_err(self.lmdb(name, &lo))?;
            Ok::<u64, LogError>(iter.count() as u64)
        };
        Ok((count(self.dbs.wal, WAL)?, count(self.dbs.wal_keys, WAL_KEYS)?))
    }
}
