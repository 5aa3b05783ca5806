//! An agent's durable register acceptors, one per replicated pipeline, in an LMDB
//! environment of their own (`<node data_dir>/register`). An acceptor's new state is committed
//! (LMDB's commit is durable) before its reply leaves: a promise or an acceptance forgotten in
//! a power cut would let two proposers both win (SPEC §12.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvOpenOptions};
use weir_runtime::protocol::lease;

use super::wire;

/// The acceptors' store.
#[derive(Clone)]
pub struct RegisterStore {
    env: Env,
    acceptors: Database<Str, Bytes>,
    path: PathBuf,
    /// Writes still to fail: the simulation's disk write errors (always 0 in the agent).
    failing: Arc<AtomicU32>,
}

/// A store that cannot be opened, read or written; the agent stops answering for the
/// register rather than answer from memory.
#[derive(Debug, thiserror::Error)]
#[error("register store {}: {message}", path.display())]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

impl RegisterStore {
    /// Opens (or creates) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<RegisterStore, StoreError> {
        let path = data_dir.join("register");
        let error = |message: String| StoreError { path: path.clone(), message };
        std::fs::create_dir_all(&path).map_err(|e| error(format!("cannot create it: {e}")))?;
        // SAFETY (heed's `open` is unsafe): the environment is opened once per process (the
        // agent holds one store) and never by another process while this one runs: the
        // agent's config folder and its data dir belong to one agent.
        #[allow(unsafe_code)]
        let env = unsafe { EnvOpenOptions::new().map_size(16 << 20).max_dbs(1).open(&path) }
            .map_err(|e| error(format!("cannot open it: {e}")))?;
        let mut txn = env.write_txn().map_err(|e| error(e.to_string()))?;
        let acceptors = env.create_database(&mut txn, Some("acceptors")).map_err(|e| error(e.to_string()))?;
        txn.commit().map_err(|e| error(e.to_string()))?;
        Ok(RegisterStore { env, acceptors, path, failing: Arc::default() })
    }

    /// Makes the next `writes` writes fail as a disk's would (for the simulation).
    pub fn fail_writes(&self, writes: u32) {
        self.failing.store(writes, Ordering::SeqCst);
    }

    /// An injected write error, if one is due.
    fn injected(&self) -> Result<(), StoreError> {
        match self.failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(self.error("write failed (an injected disk error)")),
            Err(_) => Ok(()),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError { path: self.path.clone(), message: message.to_string() }
    }

    /// `pipeline`'s acceptor as stored (the default, nothing promised, if none is).
    pub fn acceptor(&self, pipeline: &str) -> Result<lease::Acceptor, StoreError> {
        Ok(self.member(pipeline)?.0)
    }

    /// `pipeline`'s acceptor and the highest version its agent proposed
    /// ([`lease::Member::attempted`]).
    pub fn member(&self, pipeline: &str) -> Result<(lease::Acceptor, u64), StoreError> {
        let txn = self.env.read_txn().map_err(|e| self.error(e))?;
        self.read(&txn, pipeline)
    }

    fn read(&self, txn: &heed::RoTxn<'_>, pipeline: &str) -> Result<(lease::Acceptor, u64), StoreError> {
        match self.acceptors.get(txn, pipeline).map_err(|e| self.error(e))? {
            None => Ok((lease::Acceptor::default(), 0)),
            Some(bytes) => {
                let (stored, attempted): (wire::Acceptor, u64) =
                    postcard::from_bytes(bytes).map_err(|e| {
                        self.error(format!("pipeline {pipeline}'s acceptor does not decode: {e}"))
                    })?;
                Ok((stored.into(), attempted))
            }
        }
    }

    /// Handles a request to `pipeline`'s acceptor; its new state is durable when this returns.
    pub fn handle(&self, pipeline: &str, request: lease::Request) -> Result<lease::Reply, StoreError> {
        let mut txn = self.env.write_txn().map_err(|e| self.error(e))?;
        let (mut acceptor, attempted) = self.read(&txn, pipeline)?;
        let before = acceptor;
        let reply = acceptor.handle(request);
        if acceptor != before {
            self.injected()?;
            let bytes = postcard::to_stdvec(&(wire::Acceptor::from(acceptor), attempted))
                .map_err(|e| self.error(e))?;
            self.acceptors.put(&mut txn, pipeline, &bytes).map_err(|e| self.error(e))?;
            txn.commit().map_err(|e| self.error(e))?;
        }
        Ok(reply)
    }

    /// Replaces `pipeline`'s acceptor and `attempted` (a data agent's own, which its
    /// [`lease::Member`] changes in place: a promise to itself, or `weir promote`).
    pub fn put(&self, pipeline: &str, acceptor: lease::Acceptor, attempted: u64) -> Result<(), StoreError> {
        self.injected()?;
        let mut txn = self.env.write_txn().map_err(|e| self.error(e))?;
        let bytes =
            postcard::to_stdvec(&(wire::Acceptor::from(acceptor), attempted)).map_err(|e| self.error(e))?;
        self.acceptors.put(&mut txn, pipeline, &bytes).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }
}
