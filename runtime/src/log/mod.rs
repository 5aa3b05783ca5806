//! The local log: one LMDB environment per data directory (heed), holding everything a
//! restart needs (DESIGN.md §6).
//!
//! Databases (names are the constants below), keys big-endian so cursor order is numeric:
//! - `meta`: the pipeline's fingerprint, the completion record of the latest checkpoint, and
//!   per subtask slot promoted at least once the epoch granted (`grant` + participant u32).
//! - `snapshots`: (participant u32, checkpoint u64) -> [`SnapshotRecord`].
//! - `staged`: (participant u32, checkpoint u64) -> a sink's pre-committed output bytes.
//! - `sinks`: (participant u32) -> [`CommitRecord`], a sink's "committed through".
//! - `wal`, `wal_keys`, `wal_ages`: a network source's write-ahead log ([`wal`]).
//! - `outbox`: a network sink's committed output until the broker has it ([`outbox`]).
//!
//! Every value starts with a format version byte and a CRC-32C over its key and payload,
//! then postcard: LMDB does not checksum its pages, and edge hosts keep their logs on SD
//! cards and eMMC, so a flipped bit must be a refusal that names the record, never a
//! plausible wrong value restored into a run. The directory itself ([`dir`]) is private,
//! locked for the life of the process, and its `data.mdb` is checked before it is mapped.
//! Reads are synchronous and short (recovery at start and at a restart; a sink's commit reads
//! its staged output on the writer thread). Writes go through one writer thread ([`Writer`]),
//! which applies everything queued in one transaction, commits (fsync), and only then calls
//! each write's completion callback: nothing counts as durable before that (SPEC §1.3). A full map, a corrupt value or an unreadable directory is a [`LogError`] that
//! names the database and key, never a panic.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, MdbError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::protocol::recovery::{ParticipantLog, RecoveryInput, RestorePlan, SinkLog};
use crate::protocol::{CheckpointId, ParticipantId};

pub mod dir;
pub mod outbox;
pub mod ship;
pub mod wal;
mod writer;
pub use writer::{Job, Writer};

/// Database names.
pub const META: &str = "meta";
/// Snapshots by participant and checkpoint.
pub const SNAPSHOTS: &str = "snapshots";
/// Sink output staged by participant and checkpoint.
pub const STAGED: &str = "staged";
/// Sink commit records by participant.
pub const SINKS: &str = "sinks";

const KEY_COMPLETION: &[u8] = b"completion";
/// Followed by the participant: the epoch its slot was granted (SPEC §11.8).
const KEY_GRANT: &[u8] = b"grant";

fn grant_key(p: ParticipantId) -> Vec<u8> {
    [KEY_GRANT, &participant_key(p)[..]].concat()
}
const KEY_PIPELINE: &[u8] = b"pipeline";
const KEY_OWNER: &[u8] = b"owner/";

fn owner_key(from: CheckpointId) -> Vec<u8> {
    [KEY_OWNER, &from.0.to_be_bytes()[..]].concat()
}

/// The format version written before every value (2: with a CRC-32C).
pub const FORMAT_VERSION: u8 = 2;
/// Version byte plus checksum.
const HEADER: usize = 5;

/// A failure of the log. Each names the database and key (or the path) involved.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The data directory cannot be created or opened.
    #[error("log: cannot open {}: {reason}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process holds the data directory.
    #[error(
        "log: {} is in use by another weir process{}; stop it first, or use another --data-dir",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The holder, as it wrote itself into the lock file.
        pid: Option<u32>,
    },
    /// The LMDB file is damaged in a way found before mapping it.
    #[error("log: {} {what}; the data directory is damaged (move it away, or start afresh with --fresh)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The disk under the data directory is full.
    #[error("log: the disk holding {} is full (no space left on device) writing {db}/{key}; free space and run again", path.display())]
    DiskFull {
        /// The data directory.
        path: PathBuf,
        /// The database being written.
        db: &'static str,
        /// The key.
        key: String,
    },
    /// The LMDB map is full.
    #[error(
        "log: the data directory is full (LMDB map of {map_size_mb} MiB) writing {db}/{key}; raise map_size_mb"
    )]
    MapFull {
        /// The database being written.
        db: &'static str,
        /// The key.
        key: String,
        /// The configured map size.
        map_size_mb: usize,
    },
    /// A value cannot be decoded, or its checksum does not match.
    #[error("log: corrupt record {db}/{key}: {reason}")]
    Corrupt {
        /// The database.
        db: &'static str,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Any other LMDB failure.
    #[error("log: {db}/{key}: {source}")]
    Lmdb {
        /// The database.
        db: &'static str,
        /// The key, or an operation.
        key: String,
        /// The LMDB error.
        source: heed::Error,
    },
    /// The data directory holds the state of a different pipeline, or of this one with a
    /// setting changed that changes the meaning of the state or the output.
    #[error(
        "log: {} holds the state of a different pipeline: {found}; run with --fresh to start afresh (the output is written again from the start) or use another --data-dir",
        path.display()
    )]
    OtherPipeline {
        /// The directory.
        path: PathBuf,
        /// The first difference, e.g. `transforms.windows.size_ms was 1000, is now 2000`.
        found: String,
    },
    /// The writer thread is gone (it failed earlier).
    #[error("log: the writer stopped after an earlier error")]
    WriterGone,
    /// A write failed because a test or chaos drill said so (`--inject write-error:...`).
    #[error("log: injected write error ({0})")]
    Injected(String),
    /// The writes are durable here, but replication refused them: the peer did not have
    /// them in time, or this agent no longer owns the pipeline ([`ship::Tap`]).
    #[error("replication: {0}")]
    Replication(String),
}

impl LogError {
    /// Whether restarting the subtask that saw this error can heal it. Only an injected
    /// fault can: a full map or disk, an I/O error or a damaged record stays after a
    /// restart, and retrying it would only hide what the person must fix.
    pub fn is_healable(&self) -> bool {
        matches!(self, LogError::Injected(_))
    }
}

/// A subtask's snapshot at one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SnapshotRecord {
    /// Last applied sequence number per input channel.
    pub positions: Vec<u64>,
    /// Last sent sequence number per output channel.
    pub out_seqs: Vec<u64>,
    /// The operator's (or source's) own state.
    pub state: Vec<u8>,
}

/// A sink's durable commit progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommitRecord {
    /// Staged output up to and including this checkpoint is visible.
    pub through: u64,
    /// Length of the output file after that commit (what a repair truncates to).
    pub file_len: u64,
}

/// One write, applied by the writer thread. Also what a replica receives ([`ship`]): the
/// same records, applied by the same code to its copy of the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteOp {
    /// Store a snapshot.
    Snapshot {
        /// Participant.
        participant: ParticipantId,
        /// Checkpoint.
        #[serde(with = "ship::checkpoint")]
        checkpoint: CheckpointId,
        /// The snapshot.
        record: SnapshotRecord,
    },
    /// Stage a sink's output under a checkpoint.
    Stage {
        /// Participant.
        participant: ParticipantId,
        /// Checkpoint.
        #[serde(with = "ship::checkpoint")]
        checkpoint: CheckpointId,
        /// Encoded output.
        bytes: Vec<u8>,
    },
    /// Record a sink's commit and delete the staged output it covers.
    Commit {
        /// Participant.
        participant: ParticipantId,
        /// The commit record.
        record: CommitRecord,
    },
    /// Record a checkpoint as complete.
    Completion(#[serde(with = "ship::checkpoint")] CheckpointId),
    /// Record the epoch granted to a subtask's slot (before it is granted: S11).
    Grant {
        /// Participant.
        participant: ParticipantId,
        /// The epoch.
        epoch: u32,
    },
    /// Delete a source's WAL entries below an index, and its dedup keys that arrived
    /// before a time.
    WalTruncate {
        /// Participant.
        participant: ParticipantId,
        /// Keep this entry and newer.
        below: u64,
        /// Forget dedup keys that arrived before this (ms since the Unix epoch).
        keys_before_ms: u64,
    },
    /// Put a sink's committed output into its outbox (with its commit record).
    OutboxPut {
        /// Participant.
        participant: ParticipantId,
        /// Checkpoint.
        #[serde(with = "ship::checkpoint")]
        checkpoint: CheckpointId,
        /// The output.
        chunk: outbox::OutboxChunk,
    },
    /// Move a sink's delivery position forward, deleting what is wholly before it.
    OutboxDeliver {
        /// Participant.
        participant: ParticipantId,
        /// The new position.
        to: outbox::Delivered,
    },
    /// Delete a participant's snapshots below a checkpoint.
    DropSnapshotsBelow {
        /// Participant.
        participant: ParticipantId,
        /// Keep this one and newer.
        #[serde(with = "ship::checkpoint")]
        checkpoint: CheckpointId,
    },
    /// A replicated pipeline's run owns it under `epoch` from checkpoint `from` on (written
    /// when the run starts; shipped with the rest, so that every agent stamps a checkpoint's
    /// MQTT output with the same epoch: [`Log::owner_epoch`]).
    Owner {
        /// The first checkpoint the run may start.
        #[serde(with = "ship::checkpoint")]
        from: CheckpointId,
        /// The ownership epoch.
        epoch: u64,
    },
    /// Append a source's arrivals to its WAL, as [`Log::wal_append`] does: the ingest of a
    /// replicated pipeline writes through the writer so that its WAL is shipped too.
    WalAppend {
        /// Participant.
        participant: ParticipantId,
        /// The entries, each with its dedup key if it has one.
        entries: Vec<(wal::WalEntry, Option<Vec<u8>>)>,
    },
}

impl WriteOp {
    /// Bytes it adds, roughly: which write of a transaction is the big one.
    fn size(&self) -> usize {
        match self {
            WriteOp::Snapshot { record, .. } => {
                record.state.len() + 8 * (record.positions.len() + record.out_seqs.len())
            }
            WriteOp::Stage { bytes, .. } => bytes.len(),
            WriteOp::OutboxPut { chunk, .. } => chunk.messages.len(),
            WriteOp::WalAppend { entries, .. } => entries.iter().map(|(e, _)| e.payload.len() + 32).sum(),
            WriteOp::OutboxDeliver { .. }
            | WriteOp::Commit { .. }
            | WriteOp::Completion(_)
            | WriteOp::Grant { .. }
            | WriteOp::Owner { .. }
            | WriteOp::WalTruncate { .. }
            | WriteOp::DropSnapshotsBelow { .. } => 16,
        }
    }

    /// The database and key it writes.
    fn place(&self) -> (&'static str, Vec<u8>) {
        match self {
            WriteOp::Snapshot { participant, checkpoint, .. } => {
                (SNAPSHOTS, checkpoint_key(*participant, *checkpoint).to_vec())
            }
            WriteOp::Stage { participant, checkpoint, .. } => {
                (STAGED, checkpoint_key(*participant, *checkpoint).to_vec())
            }
            WriteOp::Commit { participant, .. } => (SINKS, participant_key(*participant).to_vec()),
            WriteOp::Completion(_) => (META, KEY_COMPLETION.to_vec()),
            WriteOp::Grant { participant, .. } => (META, grant_key(*participant)),
            WriteOp::Owner { from, .. } => (META, owner_key(*from)),
            WriteOp::WalAppend { participant, .. } => (wal::WAL, participant_key(*participant).to_vec()),
            WriteOp::DropSnapshotsBelow { participant, checkpoint } => {
                (SNAPSHOTS, checkpoint_key(*participant, *checkpoint).to_vec())
            }
            WriteOp::WalTruncate { participant, .. } => (wal::WAL, participant_key(*participant).to_vec()),
            WriteOp::OutboxPut { participant, checkpoint, .. } => {
                (outbox::OUTBOX, checkpoint_key(*participant, *checkpoint).to_vec())
            }
            WriteOp::OutboxDeliver { participant, .. } => {
                (outbox::OUTBOX, participant_key(*participant).to_vec())
            }
        }
    }
}

/// Called once the writes it was submitted with are durable (or failed).
pub type Done = Box<dyn FnOnce(Result<(), std::sync::Arc<LogError>>) + Send>;

#[derive(Clone, Copy)]
struct Dbs {
    meta: Database<Bytes, Bytes>,
    snapshots: Database<Bytes, Bytes>,
    staged: Database<Bytes, Bytes>,
    sinks: Database<Bytes, Bytes>,
    wal: Database<Bytes, Bytes>,
    wal_keys: Database<Bytes, Bytes>,
    wal_ages: Database<Bytes, Bytes>,
    outbox: Database<Bytes, Bytes>,
}

/// How much of its map a log uses: the high-water mark of its pages (LMDB reuses freed pages
/// below it), updated after every write transaction. Shared by the log's clones; holding it
/// does not hold the log open.
#[derive(Debug, Default)]
pub struct MapUsage {
    /// Bytes up to the last page used.
    pub used: std::sync::atomic::AtomicU64,
    /// The map's size in bytes.
    pub size: u64,
}

/// The log of one data directory.
#[derive(Clone)]
pub struct Log {
    env: Env,
    dbs: Dbs,
    path: PathBuf,
    map_size_mb: usize,
    usage: std::sync::Arc<MapUsage>,
    page_size: u64,
    /// Held for as long as any clone of the log lives.
    _lock: std::sync::Arc<dir::DirLock>,
}

/// One setting that gives the state or the output its meaning, as recorded in the data
/// directory: `(path, value)`, e.g. `("transforms.windows.size_ms", "1000")`.
pub type Setting = (String, String);

fn participant_key(p: ParticipantId) -> [u8; 4] {
    u32::try_from(p).expect("participant ids fit in u32").to_be_bytes()
}

fn checkpoint_key(p: ParticipantId, c: CheckpointId) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&participant_key(p));
    k[4..].copy_from_slice(&c.0.to_be_bytes());
    k
}

fn show_key(key: &[u8]) -> String {
    match key.len() {
        4 => format!("participant {}", u32::from_be_bytes(key.try_into().unwrap_or_default())),
        12 => format!(
            "participant {} checkpoint {}",
            u32::from_be_bytes(key[..4].try_into().unwrap_or_default()),
            u64::from_be_bytes(key[4..].try_into().unwrap_or_default())
        ),
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

/// The checksum of a record: CRC-32C over its key and payload, so that a value moved to
/// another key (a flipped bit in a key) is caught as well as a changed value.
fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), payload)
}

/// A record as stored under `key`: version, checksum, postcard payload.
pub fn encode<T: Serialize>(key: &[u8], value: &T) -> Vec<u8> {
    let mut out =
        postcard::to_extend(value, vec![FORMAT_VERSION, 0, 0, 0, 0]).expect("encoding to a Vec cannot fail");
    let crc = checksum(key, &out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a record stored under `key` in `db`, verifying its version, checksum and that
/// the payload is exactly one value in its one encoding ([`crate::codec::decode_exact`]).
pub fn decode<T: DeserializeOwned + Serialize>(
    db: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, LogError> {
    let corrupt = |reason: String| LogError::Corrupt { db, key: show_key(key), reason };
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(corrupt("empty value".into()));
    };
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {version} (this weir writes {FORMAT_VERSION})")));
    }
    let (stored, payload) =
        rest.split_at_checked(HEADER - 1).ok_or_else(|| corrupt("truncated value".into()))?;
    let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
    if stored != checksum(key, payload) {
        return Err(corrupt("checksum mismatch (the data directory is damaged)".into()));
    }
    crate::codec::decode_exact(payload).map_err(|e| corrupt(e.to_string()))
}

impl Log {
    /// Open (creating if needed) the log in `dir` with a map of `map_size` bytes. The
    /// directory is created private and locked for as long as the log (any clone) lives;
    /// `fresh` first removes what it holds (under the lock).
    pub fn open(dir: &Path, map_size: usize) -> Result<Log, LogError> {
        Log::open_with(dir, map_size, false)
    }

    /// [`Log::open`], removing the directory's log first when `fresh`.
    #[allow(unsafe_code)] // the one unsafe call of the crate: heed's environment open
    pub fn open_with(dir: &Path, map_size: usize, fresh: bool) -> Result<Log, LogError> {
        let open_err =
            |e: Box<dyn std::error::Error + Send + Sync>| LogError::Open { path: dir.to_owned(), reason: e };
        dir::create_private(dir)?;
        let lock = dir::lock(dir)?;
        if fresh {
            dir::wipe(dir)?;
        }
        dir::check_data_file(dir)?;
        let new = !dir.join(dir::DATA_FILE).exists();
        let mut options = EnvOpenOptions::new();
        options.map_size(map_size).max_dbs(16);
        // SAFETY: LMDB requires that an environment is opened at most once per process and
        // that its files are not modified by other means while open. The agent opens each
        // data directory once, at start, and holds that one `Env` (cloned) for the whole run.
        let env = unsafe { options.open(dir) }.map_err(|e| open_err(Box::new(e)))?;
        let mut wtxn = env.write_txn().map_err(|e| open_err(Box::new(e)))?;
        let mut create = |name: &'static str| {
            env.create_database::<Bytes, Bytes>(&mut wtxn, Some(name)).map_err(|e| LogError::Lmdb {
                db: name,
                key: "create".into(),
                source: e,
            })
        };
        let dbs = Dbs {
            meta: create(META)?,
            snapshots: create(SNAPSHOTS)?,
            staged: create(STAGED)?,
            sinks: create(SINKS)?,
            wal: create(wal::WAL)?,
            wal_keys: create(wal::WAL_KEYS)?,
            wal_ages: create(wal::WAL_AGES)?,
            outbox: create(outbox::OUTBOX)?,
        };
        wtxn.commit().map_err(|e| open_err(Box::new(e)))?;
        if new {
            // LMDB created its files: make their directory entries durable too.
            dir::sync_dir(dir).map_err(|e| open_err(Box::new(e)))?;
        }
        let page_size = u64::from(env.stat().page_size);
        let usage = std::sync::Arc::new(MapUsage { used: Default::default(), size: map_size as u64 });
        Ok(Log {
            env,
            dbs,
            path: dir.to_owned(),
            map_size_mb: map_size >> 20,
            usage,
            page_size,
            _lock: std::sync::Arc::new(lock),
        })
    }

    fn lmdb(&self, db: &'static str, key: &[u8]) -> impl Fn(heed::Error) -> LogError {
        let key = show_key(key);
        let map_size_mb = self.map_size_mb;
        let path = self.path.clone();
        move |e| match e {
            heed::Error::Mdb(MdbError::MapFull) => LogError::MapFull { db, key: key.clone(), map_size_mb },
            // LMDB reports a short write as EIO, so an I/O error on a disk with no room
            // left is a full disk too.
            heed::Error::Mdb(MdbError::Other(code)) if is_disk_error(code, &path) => {
                LogError::DiskFull { path: path.clone(), db, key: key.clone() }
            }
            heed::Error::Io(io) if io.raw_os_error().is_some_and(|code| is_disk_error(code, &path)) => {
                LogError::DiskFull { path: path.clone(), db, key: key.clone() }
            }
            other => LogError::Lmdb { db, key: key.clone(), source: other },
        }
    }

    /// Check that this directory belongs to the pipeline whose meaningful settings are
    /// `settings` (see `pipeline::fingerprint`), recording them on first use. A difference
    /// is refused, naming the first setting that differs.
    pub fn claim(&self, settings: &[Setting]) -> Result<(), LogError> {
        let err = self.lmdb(META, KEY_PIPELINE);
        let rtxn = self.env.read_txn().map_err(&err)?;
        let found = self
            .dbs
            .meta
            .get(&rtxn, KEY_PIPELINE)
            .map_err(&err)?
            .map(|b| decode::<Vec<Setting>>(META, KEY_PIPELINE, b));
        drop(rtxn);
        match found {
            Some(Ok(recorded)) => match first_difference(&recorded, settings) {
                None => Ok(()),
                Some(found) => Err(LogError::OtherPipeline { path: self.path.clone(), found }),
            },
            Some(Err(e)) => Err(e),
            None => {
                let mut wtxn = self.env.write_txn().map_err(&err)?;
                self.dbs.meta.put(&mut wtxn, KEY_PIPELINE, &encode(KEY_PIPELINE, &settings)).map_err(&err)?;
                wtxn.commit().map_err(&err)
            }
        }
    }

    /// What recovery needs: the latest completion record and each participant's snapshot ids
    /// and (for sinks) staged ids and commit record.
    pub fn recovery_input(
        &self,
        participants: usize,
        sinks: &[ParticipantId],
    ) -> Result<RecoveryInput, LogError> {
        let all: Vec<ParticipantId> = (0..participants).collect();
        self.recovery_input_of(&all, sinks)
    }

    fn recovery_input_of(
        &self,
        participants: &[ParticipantId],
        sinks: &[ParticipantId],
    ) -> Result<RecoveryInput, LogError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, b"read"))?;
        let completed =
            match self.dbs.meta.get(&rtxn, KEY_COMPLETION).map_err(self.lmdb(META, KEY_COMPLETION))? {
                Some(bytes) => Some(CheckpointId(decode::<u64>(META, KEY_COMPLETION, bytes)?)),
                None => None,
            };
        let ids = |db: Database<Bytes, Bytes>,
                   name: &'static str,
                   p: ParticipantId|
         -> Result<Vec<CheckpointId>, LogError> {
            let prefix = participant_key(p);
            let iter = db.prefix_iter(&rtxn, &prefix).map_err(self.lmdb(name, &prefix))?;
            let mut out = Vec::new();
            for entry in iter {
                let (key, _) = entry.map_err(self.lmdb(name, &prefix))?;
                let c = key.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(
                    || LogError::Corrupt { db: name, key: show_key(key), reason: "malformed key".into() },
                )?;
                out.push(CheckpointId(c));
            }
            Ok(out)
        };
        let mut logs = Vec::with_capacity(participants.len());
        for &p in participants {
            let sink = if sinks.contains(&p) {
                let commit = self.read_commit_in(&rtxn, p)?;
                Some(SinkLog {
                    staged: ids(self.dbs.staged, STAGED, p)?,
                    committed_through: commit.map(|c| CheckpointId(c.through)).filter(|c| c.0 > 0),
                })
            } else {
                None
            };
            logs.push(ParticipantLog { snapshots: ids(self.dbs.snapshots, SNAPSHOTS, p)?, sink });
        }
        Ok(RecoveryInput { completed, participants: logs })
    }

    /// The latest checkpoint whose completion record is durable.
    pub fn completed(&self) -> Result<Option<CheckpointId>, LogError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, KEY_COMPLETION))?;
        match self.dbs.meta.get(&rtxn, KEY_COMPLETION).map_err(self.lmdb(META, KEY_COMPLETION))? {
            Some(bytes) => Ok(Some(CheckpointId(decode::<u64>(META, KEY_COMPLETION, bytes)?))),
            None => Ok(None),
        }
    }

    /// One participant's durable checkpoint data (for a local restart).
    pub fn participant_log(&self, p: ParticipantId, sink: bool) -> Result<ParticipantLog, LogError> {
        let sinks = if sink { vec![p] } else { Vec::new() };
        let mut input = self.recovery_input_of(&[p], &sinks)?;
        Ok(input.participants.pop().unwrap_or_default())
    }

    /// Carry out the discards of a restore plan, durably, before anything restarts.
    pub fn apply_discards(&self, plan: &RestorePlan) -> Result<(), LogError> {
        let err = self.lmdb(SNAPSHOTS, b"discard");
        let mut wtxn = self.env.write_txn().map_err(&err)?;
        for (p, restore) in plan.participants.iter().enumerate() {
            for &c in &restore.discard_snapshots {
                self.dbs
                    .snapshots
                    .delete(&mut wtxn, &checkpoint_key(p, c))
                    .map_err(self.lmdb(SNAPSHOTS, &checkpoint_key(p, c)))?;
            }
            for &c in restore.sink.iter().flat_map(|s| &s.discard_staged) {
                self.dbs
                    .staged
                    .delete(&mut wtxn, &checkpoint_key(p, c))
                    .map_err(self.lmdb(STAGED, &checkpoint_key(p, c)))?;
            }
        }
        wtxn.commit().map_err(&err)
    }

    /// A participant's snapshot of `checkpoint`.
    pub fn read_snapshot(
        &self,
        p: ParticipantId,
        checkpoint: CheckpointId,
    ) -> Result<SnapshotRecord, LogError> {
        let key = checkpoint_key(p, checkpoint);
        let rtxn = self.env.read_txn().map_err(self.lmdb(SNAPSHOTS, &key))?;
        match self.dbs.snapshots.get(&rtxn, &key).map_err(self.lmdb(SNAPSHOTS, &key))? {
            Some(bytes) => decode(SNAPSHOTS, &key, bytes),
            None => Err(LogError::Corrupt { db: SNAPSHOTS, key: show_key(&key), reason: "missing".into() }),
        }
    }

    /// A sink's staged output for checkpoints in `(after, through]`, in checkpoint order.
    pub fn read_staged(
        &self,
        p: ParticipantId,
        after: CheckpointId,
        through: CheckpointId,
    ) -> Result<Vec<(CheckpointId, Vec<u8>)>, LogError> {
        let (lo, hi) = (checkpoint_key(p, after.next()), checkpoint_key(p, through));
        let rtxn = self.env.read_txn().map_err(self.lmdb(STAGED, &lo))?;
        let iter = self
            .dbs
            .staged
            .range(&rtxn, &(Bound::Included(&lo[..]), Bound::Included(&hi[..])))
            .map_err(self.lmdb(STAGED, &lo))?;
        let mut out = Vec::new();
        for entry in iter {
            let (key, value) = entry.map_err(self.lmdb(STAGED, &lo))?;
            let c = u64::from_be_bytes(key[4..12].try_into().unwrap_or_default());
            out.push((CheckpointId(c), decode::<Vec<u8>>(STAGED, key, value)?));
        }
        Ok(out)
    }

    /// The epoch granted to participant `p`'s slot (0: never promoted).
    pub fn read_grant(&self, p: ParticipantId) -> Result<u32, LogError> {
        let key = grant_key(p);
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, &key))?;
        match self.dbs.meta.get(&rtxn, &key).map_err(self.lmdb(META, &key))? {
            Some(bytes) => decode(META, &key, bytes),
            None => Ok(0),
        }
    }

    /// A sink's commit record.
    pub fn read_commit(&self, p: ParticipantId) -> Result<Option<CommitRecord>, LogError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb(SINKS, &participant_key(p)))?;
        self.read_commit_in(&rtxn, p)
    }

    fn read_commit_in(&self, rtxn: &heed::RoTxn, p: ParticipantId) -> Result<Option<CommitRecord>, LogError> {
        let key = participant_key(p);
        match self.dbs.sinks.get(rtxn, &key).map_err(self.lmdb(SINKS, &key))? {
            Some(bytes) => decode(SINKS, &key, bytes).map(Some),
            None => Ok(None),
        }
    }

    fn apply(&self, wtxn: &mut heed::RwTxn, op: &WriteOp) -> Result<(), LogError> {
        match op {
            WriteOp::Snapshot { participant, checkpoint, record } => {
                let key = checkpoint_key(*participant, *checkpoint);
                self.dbs.snapshots.put(wtxn, &key, &encode(&key, record)).map_err(self.lmdb(SNAPSHOTS, &key))
            }
            WriteOp::Stage { participant, checkpoint, bytes } => {
                let key = checkpoint_key(*participant, *checkpoint);
                self.dbs.staged.put(wtxn, &key, &encode(&key, bytes)).map_err(self.lmdb(STAGED, &key))
            }
            WriteOp::Commit { participant, record } => {
                let key = participant_key(*participant);
                self.dbs.sinks.put(wtxn, &key, &encode(&key, record)).map_err(self.lmdb(SINKS, &key))?;
                let (lo, hi) = (
                    checkpoint_key(*participant, CheckpointId(0)),
                    checkpoint_key(*participant, CheckpointId(record.through)),
                );
                self.dbs
                    .staged
                    .delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Included(&hi[..])))
                    .map_err(self.lmdb(STAGED, &hi))?;
                Ok(())
            }
            WriteOp::Completion(c) => self
                .dbs
                .meta
                .put(wtxn, KEY_COMPLETION, &encode(KEY_COMPLETION, &c.0))
                .map_err(self.lmdb(META, KEY_COMPLETION)),
            WriteOp::Grant { participant, epoch } => {
                let key = grant_key(*participant);
                self.dbs.meta.put(wtxn, &key, &encode(&key, epoch)).map_err(self.lmdb(META, &key))
            }
            WriteOp::DropSnapshotsBelow { participant, checkpoint } => {
                let (lo, hi) = (
                    checkpoint_key(*participant, CheckpointId(0)),
                    checkpoint_key(*participant, *checkpoint),
                );
                self.dbs
                    .snapshots
                    .delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
                    .map_err(self.lmdb(SNAPSHOTS, &hi))?;
                Ok(())
            }
            WriteOp::WalTruncate { participant, below, keys_before_ms } => {
                self.wal_truncate(wtxn, *participant, *below, *keys_before_ms)
            }
            WriteOp::OutboxPut { participant, checkpoint, chunk } => {
                self.outbox_put(wtxn, *participant, *checkpoint, chunk)
            }
            WriteOp::OutboxDeliver { participant, to } => self.outbox_deliver(wtxn, *participant, *to),
            WriteOp::Owner { from, epoch } => {
                let key = owner_key(*from);
                self.dbs.meta.put(wtxn, &key, &encode(&key, epoch)).map_err(self.lmdb(META, &key))
            }
            WriteOp::WalAppend { participant, entries } => {
                self.wal_append_in(wtxn, *participant, entries).map(|_| ())
            }
        }
    }

    /// The ownership epoch of the run that started checkpoint `c` of a replicated pipeline
    /// (the latest [`WriteOp::Owner`] at or below it); none if no run wrote one.
    pub fn owner_epoch(&self, c: CheckpointId) -> Result<Option<u64>, LogError> {
        let key = owner_key(c);
        let rtxn = self.env.read_txn().map_err(self.lmdb(META, &key))?;
        let lo = owner_key(CheckpointId(0));
        let range = (Bound::Included(&lo[..]), Bound::Included(&key[..]));
        let mut found = self.dbs.meta.rev_range(&rtxn, &range).map_err(self.lmdb(META, &key))?;
        match found.next().transpose().map_err(self.lmdb(META, &key))? {
            Some((at, bytes)) => Ok(Some(decode::<u64>(META, at, bytes)?)),
            None => Ok(None),
        }
    }

    /// Apply `ops` in one transaction and commit it (fsync), synchronously.
    pub fn write_now(&self, ops: &[WriteOp]) -> Result<(), LogError> {
        self.transaction(ops.iter())
    }

    /// Apply `ops` in one write transaction and commit it. LMDB may report a full map at
    /// the commit rather than at a put; the error then names the largest write of the
    /// transaction, the one that most plausibly filled it.
    pub(crate) fn transaction<'o>(
        &self,
        ops: impl Iterator<Item = &'o WriteOp> + Clone,
    ) -> Result<(), LogError> {
        let (db, key) = ops.clone().max_by_key(|op| op.size()).map_or((META, Vec::new()), WriteOp::place);
        let err = self.lmdb(db, &key);
        let mut wtxn = self.env.write_txn().map_err(&err)?;
        for op in ops {
            self.apply(&mut wtxn, op)?;
        }
        wtxn.commit().map_err(&err)?;
        self.note_usage();
        Ok(())
    }

    /// How much of its map the log uses (kept up to date by its writes).
    pub fn usage(&self) -> std::sync::Arc<MapUsage> {
        self.note_usage();
        self.usage.clone()
    }

    pub(crate) fn note_usage(&self) {
        let used = (self.env.info().last_page_number as u64 + 1) * self.page_size;
        self.usage.used.store(used, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether the OS error `code` from a write in `dir` means that its disk is full: ENOSPC
/// (or EDQUOT), or EIO while the file system has less than a page left for us.
fn is_disk_error(code: i32, dir: &Path) -> bool {
    const EIO: i32 = 5;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match code {
        ENOSPC | EDQUOT => true,
        EIO => rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) < 64 << 10),
        _ => false,
    }
}

/// The first setting in which `now` differs from `recorded`, in words.
fn first_difference(recorded: &[Setting], now: &[Setting]) -> Option<String> {
    let value = |list: &[Setting], key: &str| list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    for (key, was) in recorded {
        match value(now, key) {
            Some(is) if &is == was => {}
            Some(is) => return Some(format!("{key} was {was}, is now {is}")),
            None => return Some(format!("{key} ({was}) is no longer in the config")),
        }
    }
    now.iter()
        .find(|(k, _)| value(recorded, k).is_none())
        .map(|(key, is)| format!("{key} ({is}) was not in the config that wrote it"))
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log").field("path", &self.path).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::protocol::recovery::plan_global_rollback;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);

    #[test]
    fn writes_are_durable_across_reopen_and_feed_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let record = SnapshotRecord { positions: vec![3], out_seqs: vec![2], state: vec![1, 2, 3] };
        let writer = Writer::start(log.clone());
        let (tx, rx) = mpsc::channel();
        writer.submit(
            vec![
                WriteOp::Snapshot { participant: 0, checkpoint: C1, record: record.clone() },
                WriteOp::Snapshot { participant: 1, checkpoint: C1, record: SnapshotRecord::default() },
                WriteOp::Stage { participant: 1, checkpoint: C1, bytes: b"a\n".to_vec() },
                WriteOp::Stage { participant: 1, checkpoint: C2, bytes: b"b\n".to_vec() },
                WriteOp::Completion(C1),
            ],
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
        assert!(rx.recv().unwrap());
        // (The writer thread holds the environment open, and LMDB allows one open
        // environment per directory and process, so this reads through the same handle;
        // reopening is covered below.)
        assert_eq!(log.read_snapshot(0, C1).unwrap(), record);
        let input = log.recovery_input(2, &[1]).unwrap();
        assert_eq!(input.completed, Some(C1));
        let plan = plan_global_rollback(&input).unwrap();
        assert_eq!(plan.participants[1].sink.as_ref().unwrap().commit, Some(C1));
        log.apply_discards(&plan).unwrap();
        assert_eq!(log.read_staged(1, CheckpointId(0), C2).unwrap(), vec![(C1, b"a\n".to_vec())]);
        log.write_now(&[WriteOp::Commit {
            participant: 1,
            record: CommitRecord { through: 1, file_len: 2 },
        }])
        .unwrap();
        assert!(log.read_staged(1, CheckpointId(0), C2).unwrap().is_empty());
        assert_eq!(log.read_commit(1).unwrap(), Some(CommitRecord { through: 1, file_len: 2 }));
    }

    /// Each checkpoint's ownership epoch is the latest recorded at or below it, other meta
    /// keys (the completion, grants) notwithstanding.
    #[test]
    fn a_checkpoints_owner_epoch_is_the_run_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(log.owner_epoch(CheckpointId(3)).unwrap(), None);
        log.write_now(&[
            WriteOp::Owner { from: CheckpointId(1), epoch: 1 },
            WriteOp::Completion(CheckpointId(5)),
            WriteOp::Grant { participant: 0, epoch: 9 },
            WriteOp::Owner { from: CheckpointId(6), epoch: 3 },
        ])
        .unwrap();
        let epochs: Vec<Option<u64>> =
            [0, 1, 5, 6, 300].map(|c| log.owner_epoch(CheckpointId(c)).unwrap()).into();
        assert_eq!(epochs, [None, Some(1), Some(1), Some(3), Some(3)]);
    }

    #[test]
    fn synchronous_writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        log.write_now(&[WriteOp::Completion(C2)]).unwrap();
        drop(log);
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(log.recovery_input(1, &[]).unwrap().completed, Some(C2));
    }

    #[test]
    fn a_full_map_is_an_error_naming_the_database_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 20).unwrap();
        let big = SnapshotRecord { state: vec![7; 4 << 20], ..SnapshotRecord::default() };
        let err =
            log.write_now(&[WriteOp::Snapshot { participant: 2, checkpoint: C1, record: big }]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "log: the data directory is full (LMDB map of 1 MiB) writing snapshots/participant 2 checkpoint 1; raise map_size_mb"
        );
    }

    #[test]
    fn a_corrupt_value_is_an_error_naming_the_database_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let mut wtxn = log.env.write_txn().unwrap();
        log.dbs.snapshots.put(&mut wtxn, &checkpoint_key(4, C2), &[9, 9]).unwrap();
        wtxn.commit().unwrap();
        assert_eq!(
            log.read_snapshot(4, C2).unwrap_err().to_string(),
            "log: corrupt record snapshots/participant 4 checkpoint 2: unknown format version 9 (this weir writes 2)"
        );
    }

    #[test]
    fn a_directory_of_another_pipeline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let set = |pairs: &[(&str, &str)]| -> Vec<Setting> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let a = set(&[("sources.a.type", "\"generator\""), ("transforms.w.size_ms", "1000")]);
        log.claim(&a).unwrap();
        log.claim(&a).unwrap();
        let changed = set(&[("sources.a.type", "\"generator\""), ("transforms.w.size_ms", "2000")]);
        let err = log.claim(&changed).unwrap_err().to_string();
        assert!(err.contains(": transforms.w.size_ms was 1000, is now 2000; run with --fresh"), "{err}");
        let more = set(&[
            ("sources.a.type", "\"generator\""),
            ("transforms.w.size_ms", "1000"),
            ("sinks.o.type", "\"file\""),
        ]);
        let err = log.claim(&more).unwrap_err().to_string();
        assert!(err.contains("sinks.o.type (\"file\") was not in the config that wrote it"), "{err}");
        let err = log.claim(&a[..1]).unwrap_err().to_string();
        assert!(err.contains("transforms.w.size_ms (1000) is no longer in the config"), "{err}");
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_or_its_key_is_refused() {
        let record = SnapshotRecord { positions: vec![3, 9], out_seqs: vec![2], state: vec![1, 2, 3, 200] };
        let key = checkpoint_key(1, C2);
        let bytes = encode(&key, &record);
        assert_eq!(decode::<SnapshotRecord>(SNAPSHOTS, &key, &bytes).unwrap(), record);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode::<SnapshotRecord>(SNAPSHOTS, &key, &flipped).is_err(), "bit {bit} went unnoticed");
        }
        for bit in 0..key.len() * 8 {
            let mut other = key;
            other[bit / 8] ^= 1 << (bit % 8);
            let err = decode::<SnapshotRecord>(SNAPSHOTS, &other, &bytes).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "{err}");
        }
        for len in 0..bytes.len() {
            assert!(decode::<SnapshotRecord>(SNAPSHOTS, &key, &bytes[..len]).is_err(), "cut at {len}");
        }
        let err = decode::<SnapshotRecord>(SNAPSHOTS, &key, &{
            let mut b = bytes.clone();
            b[5] ^= 1;
            b
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "log: corrupt record snapshots/participant 1 checkpoint 2: checksum mismatch (the data directory is damaged)"
        );
    }
}
