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
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use weir_runtime::log::ship::{self, Tap};
use weir_runtime::log::{Log, WriteOp};
use weir_runtime::pipeline::run::StopRequest;
use weir_runtime::pipeline::spec::{PipelineSpec, ReplicationSpec};
use weir_runtime::protocol::CheckpointId;
use weir_runtime::protocol::lease::{self, LeaseAction, Member, PromoteRefused, Timing};
use weir_runtime::protocol::replication::{Ack, Shipper};

use super::Clock;
use super::service::Service;
use super::store::RegisterStore;
use super::wire::{self, Bulk, Control};

/// The lease, in milliseconds of the agent's monotonic clock: an owner that stops renewing
/// is replaced after `lease + grace` (2.5 s), and stops releasing output `grace` before its
/// lease ends.
pub const TIMING: Timing = Timing { lease: 2000, grace: 500, renew_after: 500, round_timeout: 400 };

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
    clock: Clock,
    /// This agent's voter number.
    pub me: u8,
    /// Voter numbers of the data agents other than this one.
    pub data_peers: Vec<u8>,
    /// The voters' names, by number.
    voters: Vec<String>,
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
    /// Bytes of log records committed here as owner (shipping's measure of lag).
    committed_bytes: u64,
    /// The most in-step data peer's acknowledged mark of `committed_bytes`.
    acked_bytes: u64,
    /// As a replica: the latest checkpoint applied here (complete in its copy).
    applied: u64,
    /// As a replica: the latest checkpoint received (`received` mode acknowledges it
    /// before applying).
    received: u64,
    /// As a replica: the copy of the log being applied to.
    replica: Option<Log>,
    /// The register's store failed: this agent stops answering and proposing.
    broken: Option<String>,
}

/// A bulk link from the owner to one data peer.
struct Session {
    id: u64,
    seeded: bool,
    /// `committed_bytes` after each message sent and not yet acknowledged as durable.
    marks: std::collections::VecDeque<u64>,
    to: UnboundedSender<Bulk>,
}

impl Replicated {
    /// The pipeline `name` (config `spec`) on the agent whose peer service is `service`:
    /// its acceptor read from the service's store.
    pub fn new(name: &str, spec: &PipelineSpec, service: &Service) -> Result<Arc<Replicated>, String> {
        let replication = spec.replication.ok_or("not a replicated pipeline")?;
        Replicated::open(name, replication, &spec.data_dir, spec.map_size, service)
    }

    /// The same from its parts: the pipeline's `[replication]`, its data directory and map
    /// size.
    pub fn open(
        name: &str,
        replication: ReplicationSpec,
        data_dir: &std::path::Path,
        map_size: usize,
        service: &Service,
    ) -> Result<Arc<Replicated>, String> {
        let node = service.node();
        let me = node.id();
        let data_peers = node.data_peers().filter_map(|p| node.number(&p.name)).collect();
        let first = super::service::first_data_agent(node);
        let (store, clock, outbound) = (service.store().clone(), service.clock.clone(), service.outbound());
        let voters = node.voters().into_iter().map(str::to_owned).collect();
        let (acceptor, attempted) = store.member(name).map_err(|e| e.to_string())?;
        let mut member =
            Member::new(me, outbound.len() as u8, TIMING, replication.failover.automatic(), acceptor);
        member.attempted = attempted;
        if first && !replication.failover.automatic() {
            member = member.first_owner();
        }
        Ok(Arc::new(Replicated {
            name: name.to_owned(),
            spec: replication,
            data_dir: data_dir.to_owned(),
            map_size,
            store,
            clock,
            me,
            data_peers,
            voters,
            outbound,
            state: Mutex::new(State {
                member,
                persisted: (acceptor, attempted),
                owner: None,
                shipper: Shipper::new(replication.mode, CheckpointId(0)),
                sessions: Vec::new(),
                next_session: 0,
                completed: CheckpointId(0),
                committed_bytes: 0,
                acked_bytes: 0,
                applied: 0,
                received: 0,
                replica: None,
                broken: None,
            }),
            changed: Condvar::new(),
        }))
    }

    fn now(&self) -> u64 {
        self.clock.now()
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
                    (st.committed_bytes, st.acked_bytes) = (0, 0);
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

    /// `weir promote`: this agent takes the pipeline over from a holder a person knows is
    /// gone, under the next epoch, and from then on decides alone ([`Member::promote`]).
    /// Refused while this agent owns it or sees the holder renew its lease. The new epoch.
    pub fn promote(&self) -> Result<u64, String> {
        let mut st = self.lock();
        if let Some(broken) = &st.broken {
            return Err(broken.clone());
        }
        let now = self.now();
        st.member.may_promote(now).map_err(|refused| match refused {
            PromoteRefused::Owner { epoch } => format!("this agent owns {} already (epoch {epoch})", self.name),
            PromoteRefused::Alive { epoch, holder, since } => format!(
                "{}'s owner ({}, epoch {epoch}) renewed its lease {since} ms ago: it is alive; stop it first, \
                 or wait {} ms after it stops",
                self.name,
                self.voter_name(holder),
                TIMING.lease + TIMING.grace
            ),
        })?;
        let epoch = st.member.promote(now);
        self.after_step(&mut st);
        match &st.broken {
            Some(broken) => Err(broken.clone()),
            None => Ok(epoch),
        }
    }

    fn voter_name(&self, number: u8) -> String {
        self.voters.get(number as usize).cloned().unwrap_or_else(|| format!("voter {number}"))
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
        self.close_replica();
        let mark = self.data_dir.join(SHIPPED_MARK);
        if mark.exists() {
            let rebased = weir_runtime::pipeline::run::adopt(spec).map_err(|e| e.to_string())?;
            tracing::info!("{}: took over a shipped log ({rebased} file sinks continue here)", self.name);
            std::fs::remove_file(&mark).map_err(|e| format!("cannot remove {}: {e}", mark.display()))?;
        }
        Ok(())
    }

    /// Closes the replica's copy of the log (a run as owner is about to open it).
    pub fn close_replica(&self) {
        drop(self.lock().replica.take());
    }

    /// The tap for a run as owner under `epoch`.
    pub fn tap(self: &Arc<Self>, epoch: u64) -> Arc<dyn Tap> {
        Arc::new(self.owner_tap(epoch))
    }

    /// The same tap, for a caller that drives its steps itself without blocking (the
    /// simulation: [`OwnerTap::ship`], [`OwnerTap::try_complete`]).
    pub fn owner_tap(self: &Arc<Self>, epoch: u64) -> OwnerTap {
        OwnerTap { r: self.clone(), epoch }
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
        st.sessions.push(Session { id, seeded: false, marks: Default::default(), to });
        Some(id)
    }

    /// The link of session `id` went down.
    pub fn close_session(&self, id: u64) {
        self.lock().sessions.retain(|s| s.id != id);
    }

    /// The peer of session `session` acknowledged `checkpoint` (`durable`: on its disk, one
    /// such per message sent; else only received).
    pub fn on_ack(&self, session: u64, checkpoint: u64, durable: bool) {
        let mut st = self.lock();
        st.shipper.on_ack(Ack { checkpoint: CheckpointId(checkpoint), durable });
        if durable {
            let mark = st.sessions.iter_mut().find(|s| s.id == session).and_then(|s| s.marks.pop_front());
            st.acked_bytes = st.acked_bytes.max(mark.unwrap_or(0));
        }
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
        (st.applied, st.received) = (completed, completed);
        Ok(completed)
    }

    /// A shipped batch arrived: its records, and the latest checkpoint received complete.
    pub fn receive(&self, batch: &[u8]) -> Result<(Vec<WriteOp>, u64), String> {
        let ops: Vec<WriteOp> = ship::decode_batch(batch)?;
        let mut st = self.lock();
        st.received = ship::completions(&ops).map(|c| c.0).fold(st.received, u64::max);
        Ok((ops, st.received))
    }

    /// Applies a received batch to the replica's copy; the checkpoint it holds complete.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<u64, String> {
        let mut st = self.lock();
        let log = st.replica.as_ref().ok_or("a batch before a seed")?;
        log.apply_shipped(ops).map_err(|e| e.to_string())?;
        let applied = log.completed().map_err(|e| e.to_string())?.map_or(0, |c| c.0);
        st.applied = applied;
        Ok(applied)
    }

    /// What `/status` and `weir status` show of the replication.
    pub fn status(&self) -> ReplicationStatus {
        let st = self.lock();
        let known = st.member.known_lease();
        let owning = st.owner.is_some();
        ReplicationStatus {
            mode: self.spec.mode.name(),
            failover: self.spec.failover.name(),
            role: if st.broken.is_some() {
                "stopped"
            } else if owning {
                "owner"
            } else {
                "replica"
            },
            epoch: known.map_or(0, |l| l.epoch),
            owner: known.map(|l| self.voter_name(l.holder)),
            solo: known.is_some_and(|l| l.solo),
            lag_checkpoints: owning.then(|| st.shipper.lag(st.completed)),
            lag_bytes: owning.then(|| st.committed_bytes.saturating_sub(st.acked_bytes)),
            peers_connected: st.sessions.iter().filter(|s| s.seeded).count(),
            applied: (!owning).then_some(st.applied),
            error: st.broken.clone(),
        }
    }

    /// The mode.
    pub fn spec(&self) -> ReplicationSpec {
        self.spec
    }
}

/// A replicated pipeline's side of `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicationStatus {
    /// `sync`, `received` or `async`.
    pub mode: &'static str,
    /// `manual`, `witness` or `auto`.
    pub failover: &'static str,
    /// `owner` (runs it), `replica` (keeps a copy) or `stopped` (its register store failed).
    pub role: &'static str,
    /// The latest ownership epoch this agent knows of (0: nobody owned it yet).
    pub epoch: u64,
    /// The agent that owns it under that epoch.
    pub owner: Option<String>,
    /// Whether the register records the owner as running without a replica in step.
    pub solo: bool,
    /// Owner: checkpoints completed here and not yet durable on a data peer.
    pub lag_checkpoints: Option<u64>,
    /// Owner: bytes of log records committed here and not yet durable on a data peer.
    pub lag_bytes: Option<u64>,
    /// Owner: data peers being shipped to.
    pub peers_connected: usize,
    /// Replica: the latest checkpoint complete in its copy.
    pub applied: Option<u64>,
    /// Why it stopped taking part, if it did.
    pub error: Option<String>,
}

/// The owner's tap on its log's writer.
pub struct OwnerTap {
    r: Arc<Replicated>,
    epoch: u64,
}

impl OwnerTap {
    fn deposed(&self) -> String {
        format!("this agent no longer owns {} (epoch {} is over)", self.r.name, self.epoch)
    }

    /// Seeds every link not seeded yet with a compacted copy of `log`, taken here on the
    /// writer thread (so it holds exactly the batches committed so far) outside the lock
    /// (the register goes on meanwhile).
    fn seed<'a>(&'a self, log: &Log, st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>, String> {
        if st.sessions.iter().all(|s| s.seeded) {
            return Ok(st);
        }
        drop(st);
        let file = self.r.data_dir.with_extension("seed");
        let copied = log.copy_compacted(&file).map_err(|e| e.to_string());
        let bytes = copied.and_then(|_| std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display())));
        let _ = std::fs::remove_file(&file);
        let seed = bytes?;
        let mut st = self.r.lock();
        let mark = st.committed_bytes;
        for session in st.sessions.iter_mut().filter(|s| !s.seeded) {
            for chunk in seed.chunks(wire::SEED_CHUNK) {
                let _ = session.to.send(Bulk::Seed { bytes: chunk.to_vec() });
            }
            let _ = session.to.send(Bulk::SeedEnd);
            session.marks.push_back(mark);
            session.seeded = true;
        }
        Ok(st)
    }

    /// A batch committed locally to `log`: it goes to every seeded link, and a link not
    /// seeded yet gets a copy that holds it. The checkpoints it completes, which
    /// [`OwnerTap::try_complete`] then gates.
    pub fn ship(&self, log: &Log, ops: &[Vec<WriteOp>]) -> Result<Vec<CheckpointId>, String> {
        let mut batch = Vec::new();
        ship::encode_batch(ops, &mut batch);
        let mut st = self.r.lock();
        if st.owner != Some(self.epoch) {
            return Err(self.deposed());
        }
        st.committed_bytes += batch.len() as u64;
        let mark = st.committed_bytes;
        for session in st.sessions.iter_mut().filter(|s| s.seeded) {
            let _ = session.to.send(Bulk::Batch { bytes: batch.clone() });
            session.marks.push_back(mark);
        }
        // A link that came up since is seeded with a copy that holds this batch already.
        drop(self.seed(log, st)?);
        Ok(ship::completions(ops.iter().flatten()).collect())
    }

    /// Whether checkpoint `c`'s completion may be reported now, waiting since `since` (the
    /// agent's clock): one step of the wait that [`Tap::committed`] blocks in. Once it may,
    /// it counts as completed here.
    pub fn try_complete(&self, log: &Log, c: CheckpointId, since: u64) -> Result<bool, String> {
        let st = self.r.lock();
        let (mut st, ready) = self.poll(st, Some(log), since, |st, solo| st.shipper.may_complete(c, solo))?;
        if ready {
            st.completed = st.completed.max(c);
        }
        Ok(ready)
    }

    /// One look at `ready(state, alone)` for a wait that began at `since`, while this agent
    /// owns the pipeline under its epoch; `alone`: it may go on without the peer. After a
    /// whole lease of waiting it records in the register that it goes on alone (`solo`: from
    /// then on nobody takes over automatically). A solo owner with a peer connected still
    /// waits for it, up to a lease each time, so that a peer slower than the owner catches
    /// up and the owner stops running alone ([`Replicated::on_ack`] clears `solo` once the
    /// peer is in step).
    ///
    /// On the writer thread (`log` given), a link that came up meanwhile is seeded first: no
    /// other batch commits while this one waits, and the peer it waits for may be that
    /// link's.
    fn poll<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        log: Option<&Log>,
        since: u64,
        ready: impl Fn(&State, bool) -> bool,
    ) -> Result<(MutexGuard<'a, State>, bool), String> {
        if let Some(log) = log {
            st = self.seed(log, st)?;
        }
        if st.owner != Some(self.epoch) {
            return Err(self.deposed());
        }
        let waited = self.r.now().saturating_sub(since);
        let solo = st.member.solo();
        let peer = st.sessions.iter().any(|s| s.seeded);
        let alone = solo && (!peer || waited > TIMING.lease);
        if ready(&st, alone) {
            return Ok((st, true));
        }
        if waited > TIMING.lease {
            st.member.set_solo(true);
        }
        Ok((st, false))
    }

    /// Blocks until [`OwnerTap::poll`] says `ready`.
    fn wait<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        log: Option<&Log>,
        ready: impl Fn(&State, bool) -> bool,
    ) -> Result<MutexGuard<'a, State>, String> {
        let since = self.r.now();
        loop {
            let done;
            (st, done) = self.poll(st, log, since, &ready)?;
            if done {
                return Ok(st);
            }
            st = self
                .r
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Tap for OwnerTap {
    fn committed(&self, log: &Log, ops: &[Vec<WriteOp>]) -> Result<(), String> {
        for c in self.ship(log, ops)? {
            let mut st = self.wait(self.r.lock(), Some(log), |st, solo| st.shipper.may_complete(c, solo))?;
            st.completed = st.completed.max(c);
        }
        Ok(())
    }

    fn input_durable(&self) -> Result<(), String> {
        let st = self.r.lock();
        let target = st.committed_bytes;
        let ready = |st: &State, solo| !st.shipper.input_waits_for_peer(solo) || st.acked_bytes >= target;
        drop(self.wait(st, None, ready)?);
        Ok(())
    }

    fn owner_epoch(&self) -> Option<u64> {
        Some(self.epoch)
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
