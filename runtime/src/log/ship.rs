//! Shipping a pipeline's log to a replica on another agent (SPEC §12.2).
//!
//! What is shipped is the log's own logical records, [`WriteOp`]s, in the order and the
//! transactions the writer committed them: a replica applies each batch with the same code
//! ([`Log::apply_shipped`]) to its own copy, so that its log is always a state the owner's log
//! was in, and a takeover is the same restore as a restart after `kill -9` on the owner at
//! that moment. A replica that is new, or whose copy may have diverged (a returning old
//! owner), starts from a compacted copy of the owner's log ([`Log::copy_compacted`], taken on
//! the writer thread between two transactions, so that the batches after it follow on
//! exactly) installed with [`install_seed`].
//!
//! The writer calls a [`Tap`] after each local commit and before anyone hears that the
//! writes are durable: that is where a `sync` owner waits for the peer (S16) and where a
//! deposed owner's writes are refused.

use std::io::Write as _;
use std::path::Path;

use heed::CompactionOption;

use super::{Log, LogError, WriteOp, dir};

/// What the writer tells replication: called on the writer thread after the batch `ops`
/// committed locally, before its callbacks run. An `Err` fails the whole batch
/// ([`LogError::Replication`]): a checkpoint's completion is then not reported, so its sinks
/// do not commit.
pub trait Tap: Send + Sync {
    /// A batch committed locally to `log`. The tap may copy `log` here
    /// ([`Log::copy_compacted`]) for a replica that needs a seed: the copy then holds exactly
    /// the batches committed so far, this one included.
    fn committed(&self, log: &Log, ops: &[Vec<WriteOp>]) -> Result<(), String>;

    /// Whether a sink may make output visible now (append to its file, release to its
    /// outbox): called on the writer thread just before it does. The owner's self-fence: an
    /// `Err` once its lease has less than the grace period left.
    fn may_release(&self) -> Result<(), String> {
        Ok(())
    }

    /// The ownership epoch the run writes under, for a replicated pipeline's owner: recorded
    /// in the log when the run starts ([`WriteOp::Owner`]).
    fn owner_epoch(&self) -> Option<u64> {
        None
    }

    /// Wait until every batch committed so far is where the replication mode needs it
    /// before input may be acknowledged to its sender (an MQTT source's PUBACK for what it
    /// wrote to its WAL): an owner that died right after would otherwise lose input its
    /// sender will not send again. An `Err` if this agent no longer owns the pipeline.
    fn input_durable(&self) -> Result<(), String> {
        Ok(())
    }
}

/// `CheckpointId` as a plain number on the wire (the protocol core has no serde).
pub(crate) mod checkpoint {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::protocol::CheckpointId;

    pub(crate) fn serialize<S: Serializer>(c: &CheckpointId, s: S) -> Result<S::Ok, S::Error> {
        c.0.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CheckpointId, D::Error> {
        u64::deserialize(d).map(CheckpointId)
    }
}

/// Appends the postcard encoding of a committed batch (its writes in order) to `out`.
pub fn encode_batch(ops: &[Vec<WriteOp>], out: &mut Vec<u8>) {
    let flat: Vec<&WriteOp> = ops.iter().flatten().collect();
    let encoded = postcard::to_extend(&flat, std::mem::take(out));
    *out = encoded.expect("a write encodes");
}

/// A shipped batch, decoded; an error names what is wrong with the bytes.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<WriteOp>, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("a shipped batch does not decode: {e}"))
}

/// The completions a batch writes.
pub fn completions<'a>(
    ops: impl IntoIterator<Item = &'a WriteOp> + 'a,
) -> impl Iterator<Item = crate::protocol::CheckpointId> + 'a {
    ops.into_iter().filter_map(|op| match op {
        WriteOp::Completion(c) => Some(*c),
        _ => None,
    })
}

impl Log {
    /// Applies a batch shipped by the owner, in one transaction (durable when this returns).
    pub fn apply_shipped(&self, ops: &[WriteOp]) -> Result<(), LogError> {
        self.transaction(ops.iter())
    }

    /// A takeover: the log came from another agent, whose file sinks' commit records give
    /// the length of *its* output files. Each file sink (participant, its output path here)
    /// starts its own file from its current length: the next commit appends what the log
    /// staged after the last commit the old owner recorded. Returns the sinks rebased.
    pub fn rebase_file_sinks(
        &self,
        sinks: &[(crate::protocol::ParticipantId, &Path)],
    ) -> Result<usize, LogError> {
        let mut ops = Vec::new();
        for &(participant, path) in sinks {
            let Some(mut record) = self.read_commit(participant)? else { continue };
            record.file_len = match std::fs::metadata(path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(LogError::Open { path: path.to_owned(), reason: Box::new(e) }),
            };
            ops.push(WriteOp::Commit { participant, record });
        }
        self.write_now(&ops)?;
        Ok(ops.len())
    }

    /// Writes a compacted copy of the log to `file` (created or truncated) and syncs it;
    /// returns its length. Run it on the writer thread ([`super::Writer::run`]) for a copy
    /// that is exactly the state after the last committed batch.
    pub fn copy_compacted(&self, file: &Path) -> Result<u64, LogError> {
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| LogError::Open { path: file.to_owned(), reason: e };
        let copy = self.env.copy_to_path(file, CompactionOption::Enabled).map_err(|e| err(Box::new(e)))?;
        copy.sync_all().map_err(|e| err(Box::new(e)))?;
        copy.metadata().map(|m| m.len()).map_err(|e| err(Box::new(e)))
    }
}

/// Makes the compacted copy at `seed` the data directory `dir`'s log: written aside,
/// synced, renamed over `data.mdb` (LMDB's own lock file is removed with the old file's
/// readers), and the directory synced. The log must not be open in this process, and the
/// caller holds the directory's lock ([`dir::lock`]).
pub fn install_seed(dir_path: &Path, seed: &[u8]) -> Result<(), LogError> {
    let err = |e: std::io::Error| LogError::Open { path: dir_path.to_owned(), reason: Box::new(e) };
    dir::create_private(dir_path)?;
    let aside = dir_path.join("data.mdb.seed");
    let mut file = std::fs::File::create(&aside).map_err(err)?;
    file.write_all(seed).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&aside, dir_path.join(dir::DATA_FILE)).map_err(err)?;
    match std::fs::remove_file(dir_path.join("lock.mdb")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    dir::sync_dir(dir_path).map_err(err)?;
    dir::check_data_file(dir_path)
}
