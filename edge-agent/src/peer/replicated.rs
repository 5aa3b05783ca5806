//! One replicated pipeline on a data agent (SPEC §12): its side of the ownership register
//! ([`lease::Member`], driven on the agent's monotonic clock), and whichever of the two roles
//! the register gives it.
//!
//! - **Owner**: its run ships every committed batch of the log to the data peers
//!   ([`OwnerTap`], a [`Tap`] on the log's writer thread): a peer link that (re)connects is
//!   first seeded with a compacted copy of the log, then gets every batch after it. A
//!   checkpoint's completion is reported to the sinks only once [`Shipper::may_complete`]
//!   says so (`sync`: the peer has it durable, S16), and a sink releases output only while
//!   the lease has more than the grace period left ([`Member::can_commit`]: the self-fence).
//! - **Replica**: it applies what the owner ships to its own copy of the pipeline's data
//!   directory, so that a takeover is the restore a restart after `kill -9` on the owner
//!   would have made, from the last batch that arrived.
//!
//! The register decides every change of role; this file only carries its decisions out.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use weir_runtime::log::ship::{self, Tap};
use weir_runtime::log::{Log, WriteOp};
use weir_runtime::pipeline::run::StopRequest;
use weir_runtime::pipeline::spec::{PipelineSpec, ReplicationSpec};
use weir_runtime::protocol::CheckpointId;
use weir_runtime::protocol::lease::{self, LeaseAction, Member, Timing};
use weir_runtime::protocol::replication::{Ack, Shipper};

use super::store::RegisterStore;
use super::wire::{self, Bulk, Control};

/// The lease, in milliseconds of the agent's monotonic clock: an owner that stops renewing
/// is replaced after `lease + grace` (2.5 s), and stops releasing output `grace` before its
/// lease ends.
pub const TIMING: Timing = Timing { lease: 2000, grace: 500, renew_after: 500 };

/// A file in the pipeline's data directory while it holds a copy shipped from another agent
/// (its file sinks' commit records describe the other agent's files until adopted).
const SHIPPED_MARK: &str = "shipped";

/// One replicated pipeline.
pub struct Replicated {
    /// Its name.
    pub name: String,
    spec: ReplicationSpec,
    data_dir: PathBuf,
    map_size: usize,
    store: RegisterStore,
    clock: Instant,
    /// This agent's voter number.
    pub me: u8,
    /// Voter numbers of the data agents other than this one.
    pub data_peers: Vec<u8>,
    /// Where register requests to each voter go (by number; none for this agent).
    outbound: Vec<Option<UnboundedSender<Control>>>,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    member: Member,
    /// The acceptor and `attempted` as last made durable.
    persisted: (lease::Acceptor, u64),
    /// The epoch this agent owns the pipeline under.
    owner: Option<u64>,
    shipper: Shipper,
    sessions: Vec<Session>,
    next_session: u64,
    /// The latest checkpoint completed here as owner.
    completed: CheckpointId,
    /// As a replica: the copy of the log being applied to.
    replica: Option<Log>,
    /// The register's store failed: this agent stops answering and proposing.
    broken: Option<String>,
}

/// A bulk link from the owner to one data peer.
struct Session {
    id: u64,
    seeded: bool,
    to: UnboundedSender<Bulk>,
}

impl Replicated {
    /// The pipeline `name` as voter `me` of `voters` (by name, sorted), its acceptor read from
    /// `store`; `first`: with manual failover, whether this agent starts the pipeline.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        spec: &PipelineSpec,
        me: u8,
        data_peers: Vec<u8>,
        first: bool,
        store: RegisterStore,
        clock: Instant,
        outbound: Vec<Option<UnboundedSender<Control>>>,
    ) -> Result<Arc<Replicated>, String> {
        let replication = spec.replication.ok_or("not a replicated pipeline")?;
        let (acceptor, attempted) = store.member(name).map_err(|e| e.to_string())?;
        let voters = outbound.len() as u8;
        let mut member = Member::new(me, voters, TIMING, replication.failover.automatic(), acceptor);
        member.attempted = attempted;
        if first && !replication.failover.automatic() {
            member = member.first_owner();
        }
        Ok(Arc::new(Replicated {
            name: name.to_owned(),
            spec: replication,
            data_dir: spec.data_dir.clone(),
            map_size: spec.map_size,
            store,
            clock,
            me,
            data_peers,
            outbound,
            state: Mutex::new(State {
                member,
                persisted: (acceptor, attempted),
                owner: None,
                shipper: Shipper::new(replication.mode, CheckpointId(0)),
                sessions: Vec::new(),
                next_session: 0,
                completed: CheckpointId(0),
                replica: None,
                broken: None,
            }),
            changed: Condvar::new(),
        }))
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The periodic step.
    pub fn tick(&self) {
        let mut st = self.lock();
        if st.broken.is_some() {
            return;
        }
        let now = self.now();
        st.member.handle_tick(now);
        self.after_step(&mut st);
    }

    /// A reply from voter `from`'s acceptor.
    pub fn on_reply(&self, from: u8, reply: wire::Reply) {
        let mut st = self.lock();
        if st.broken.is_some() {
            return;
        }
        let now = self.now();
        st.member.handle_reply(from, reply.into(), now);
        self.after_step(&mut st);
    }

    /// A request to this agent's acceptor: its reply, once the acceptor's new state is
    /// durable (none if it could not be made so).
    pub fn on_request(&self, request: wire::Request) -> Option<wire::Reply> {
        let mut st = self.lock();
        if st.broken.is_some() {
            return None;
        }
        let reply = st.member.acceptor.handle(request.into());
        self.persist(&mut st).then_some(reply.into())
    }

    /// Makes the acceptor and `attempted` durable if they changed; false if the store failed.
    fn persist(&self, st: &mut State) -> bool {
        let now = (st.member.acceptor, st.member.attempted);
        if now == st.persisted {
            return true;
        }
        match self.store.put(&self.name, now.0, now.1) {
            Ok(()) => {
                st.persisted = now;
                true
            }
            Err(e) => {
                let message = format!("{}: {e}; this agent stops taking part in its ownership", self.name);
                eprintln!("weir: {message}");
                st.broken = Some(message);
                st.owner = None;
                self.changed.notify_all();
                false
            }
        }
    }

    /// After the member moved: its state durable first, then its messages out and its
    /// decisions carried out.
    fn after_step(&self, st: &mut State) {
        if !self.persist(st) {
            return;
        }
        while let Some(action) = st.member.poll_action() {
            match action {
                LeaseAction::Send { to, request } => {
                    if let Some(Some(out)) = self.outbound.get(to as usize) {
                        let _ = out
                            .send(Control::Register { pipeline: self.name.clone(), request: request.into() });
                    }
                }
                LeaseAction::Acquired { epoch } => {
                    tracing::info!("{}: owned by this agent from epoch {epoch}", self.name);
                    eprintln!("weir: {}: this agent owns it now (epoch {epoch})", self.name);
                    st.owner = Some(epoch);
                    st.shipper = Shipper::new(self.spec.mode, CheckpointId(0));
                    st.sessions.clear();
                    self.changed.notify_all();
                }
                LeaseAction::Deposed { epoch } => {
                    eprintln!("weir: {}: this agent no longer owns it (epoch {epoch} is over)", self.name);
                    st.owner = None;
                    st.sessions.clear();
                    self.changed.notify_all();
                }
            }
        }
    }

    /// The epoch this agent owns the pipeline under, if it does.
    pub fn owner(&self) -> Option<u64> {
        self.lock().owner
    }

    /// The highest epoch this agent knows of.
    pub fn known_epoch(&self) -> u64 {
        self.lock().member.known_epoch()
    }

    /// Waits until this agent owns the pipeline (its epoch) or `quit` is requested (none).
    pub fn wait_owner(&self, quit: &StopRequest) -> Option<u64> {
        let mut st = self.lock();
        loop {
            if quit.reason().is_some() {
                return None;
            }
            if let Some(epoch) = st.owner {
                return Some(epoch);
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Before a run as owner: the replica's copy is closed, and if it was shipped from
    /// another agent, adopted (its file sinks continue this agent's own files).
    pub fn prepare_run(&self, spec: &PipelineSpec) -> Result<(), String> {
        let mut st = self.lock();
        drop(st.replica.take());
        let mark = self.data_dir.join(SHIPPED_MARK);
        if mark.exists() {
            let rebased = weir_runtime::pipeline::run::adopt(spec).map_err(|e| e.to_string())?;
            tracing::info!("{}: took over a shipped log ({rebased} file sinks continue here)", self.name);
            std::fs::remove_file(&mark).map_err(|e| format!("cannot remove {}: {e}", mark.display()))?;
        }
        Ok(())
    }

    /// The tap for a run as owner under `epoch`.
    pub fn tap(self: &Arc<Self>, epoch: u64) -> Arc<dyn Tap> {
        Arc::new(OwnerTap { r: self.clone(), epoch })
    }

    /// A bulk link to a data peer is up: ship to it (from a seed) while this agent owns the
    /// pipeline under `epoch`. The session's id, or none if it no longer does.
    pub fn open_session(&self, epoch: u64, to: UnboundedSender<Bulk>) -> Option<u64> {
        let mut st = self.lock();
        if st.owner != Some(epoch) {
            return None;
        }
        st.next_session += 1;
        let id = st.next_session;
        st.sessions.push(Session { id, seeded: false, to });
        Some(id)
    }

    /// The link of session `id` went down.
    pub fn close_session(&self, id: u64) {
        self.lock().sessions.retain(|s| s.id != id);
    }

    /// A peer acknowledged `checkpoint`.
    pub fn on_ack(&self, checkpoint: u64, durable: bool) {
        let mut st = self.lock();
        st.shipper.on_ack(Ack { checkpoint: CheckpointId(checkpoint), durable });
        if st.shipper.lag(st.completed) == 0 {
            // The peer is in step again: the owner no longer runs alone.
            st.member.set_solo(false);
        }
        self.changed.notify_all();
    }

    /// The owner `epoch` starts shipping to this agent: refused if this agent owns the
    /// pipeline, or knows a later epoch (a deposed owner's links).
    pub fn replica_start(&self, epoch: u64) -> Result<(), String> {
        let st = self.lock();
        if let Some(mine) = st.owner {
            return Err(format!("this agent owns {} under epoch {mine}", self.name));
        }
        let known = st.member.known_epoch();
        if epoch < known {
            return Err(format!("epoch {epoch} is over ({} is at epoch {known})", self.name));
        }
        Ok(())
    }

    /// Installs a seed as the replica's copy; the checkpoint it holds complete.
    pub fn install_seed(&self, seed: &[u8]) -> Result<u64, String> {
        let mut st = self.lock();
        if st.owner.is_some() {
            return Err("this agent owns it now".into());
        }
        drop(st.replica.take());
        ship::install_seed(&self.data_dir, seed).map_err(|e| e.to_string())?;
        let mark = self.data_dir.join(SHIPPED_MARK);
        std::fs::write(&mark, b"").map_err(|e| format!("cannot write {}: {e}", mark.display()))?;
        let log = Log::open(&self.data_dir, self.map_size).map_err(|e| e.to_string())?;
        let completed = log.completed().map_err(|e| e.to_string())?.map_or(0, |c| c.0);
        st.replica = Some(log);
        Ok(completed)
    }

    /// Applies a shipped batch to the replica's copy; the checkpoint it holds complete.
    pub fn apply(&self, batch: &[u8]) -> Result<u64, String> {
        let st = self.lock();
        let log = st.replica.as_ref().ok_or("a batch before a seed")?;
        let ops: Vec<WriteOp> = ship::decode_batch(batch)?;
        log.apply_shipped(&ops).map_err(|e| e.to_string())?;
        Ok(log.completed().map_err(|e| e.to_string())?.map_or(0, |c| c.0))
    }

    /// The mode.
    pub fn spec(&self) -> ReplicationSpec {
        self.spec
    }
}

/// The owner's tap on its log's writer.
struct OwnerTap {
    r: Arc<Replicated>,
    epoch: u64,
}

impl OwnerTap {
    fn deposed(&self) -> String {
        format!("this agent no longer owns {} (epoch {} is over)", self.r.name, self.epoch)
    }
}

impl Tap for OwnerTap {
    fn committed(&self, log: &Log, ops: &[Vec<WriteOp>]) -> Result<(), String> {
        let r = &self.r;
        let seeding = {
            let st = r.lock();
            if st.owner != Some(self.epoch) {
                return Err(self.deposed());
            }
            st.sessions.iter().any(|s| !s.seeded)
        };
        // The copy is taken outside the lock (the register goes on meanwhile), here on the
        // writer thread: no batch commits while it is made.
        let seed = if seeding {
            let file = r.data_dir.with_extension("seed");
            let copied = log.copy_compacted(&file).map_err(|e| e.to_string());
            let bytes =
                copied.and_then(|_| std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display())));
            let _ = std::fs::remove_file(&file);
            Some(bytes?)
        } else {
            None
        };
        let mut batch = Vec::new();
        ship::encode_batch(ops, &mut batch);
        let mut st = r.lock();
        for session in &mut st.sessions {
            if session.seeded {
                let _ = session.to.send(Bulk::Batch { bytes: batch.clone() });
            } else if let Some(seed) = &seed {
                // The copy holds this batch already.
                for chunk in seed.chunks(wire::SEED_CHUNK) {
                    let _ = session.to.send(Bulk::Seed { bytes: chunk.to_vec() });
                }
                let _ = session.to.send(Bulk::SeedEnd);
                session.seeded = true;
            }
        }
        for c in ship::completions(ops) {
            st.completed = st.completed.max(c);
            let waiting = Instant::now();
            loop {
                if st.owner != Some(self.epoch) {
                    return Err(self.deposed());
                }
                let solo = st.member.held().is_some_and(|l| l.solo);
                if st.shipper.may_complete(c, solo) {
                    break;
                }
                if waiting.elapsed() > Duration::from_millis(TIMING.lease) {
                    // No peer has it after a whole lease: record in the register that this
                    // owner goes on alone (from then on nobody takes over automatically).
                    st.member.set_solo(true);
                }
                st = r
                    .changed
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        }
        Ok(())
    }

    fn may_release(&self) -> Result<(), String> {
        let st = self.r.lock();
        if st.owner == Some(self.epoch) && st.member.can_commit(self.r.now()) {
            Ok(())
        } else {
            Err(format!("{}: its lease is running out; no output is released", self.deposed()))
        }
    }
}
