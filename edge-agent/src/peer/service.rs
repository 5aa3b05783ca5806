//! A data agent's peer service: one thread with a tokio runtime that keeps the links to the
//! other agents and carries the replicated pipelines' messages.
//!
//! - It listens on `node.toml`'s `listen`: a control link from a peer carries that peer's
//!   register requests to this agent's acceptors (and their replies back); a bulk link
//!   carries an owner's shipping to this agent's replica (and acknowledgements back).
//! - It keeps a control link to every peer for this agent's own requests, connecting again
//!   every half second while one is down.
//! - Every [`TICK`] it steps every replicated pipeline's register member.
//! - While this agent owns a pipeline, it keeps a bulk link to every data peer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use weir_runtime::protocol::replication::ReplicationMode;

use super::Clock;
use super::link::{self, Identity, Link, Tcp, Transport};
use super::replicated::Replicated;
use super::store::RegisterStore;
use super::wire::{self, Bulk, Channel, Control};
use crate::config::node::{NodeConfig, Peer, Role};

/// How often the register members step.
pub const TICK: Duration = Duration::from_millis(100);
/// How long to wait before connecting again to a peer that is down.
const RECONNECT: Duration = Duration::from_millis(500);
/// A control link whose requests go unanswered this long is taken for dead and made again.
/// A peer that lost power sends no reset: without this, requests would go into a connection
/// that TCP only gives up on after its retransmissions time out (many minutes), and the
/// register would lose that voter meanwhile. Found by the simulation (its partitions drop
/// segments for good).
const CONTROL_SILENCE: Duration = Duration::from_secs(2);
/// The same for a bulk link whose shipped batches go unacknowledged (until then a `sync`
/// owner waits for it: each completion up to a lease, then alone)...
const BULK_SILENCE: Duration = Duration::from_secs(4);
/// ...and while a seed whose receipt the peer acknowledged is being installed (a whole copy
/// of the log, written and synced).
const SEED_SILENCE: Duration = Duration::from_secs(60);

/// Messages sent on a link that expect an answer, and since when the oldest of them (or the
/// latest answer) waits: [`Silence::dead`] once that is longer than the link's limit.
#[derive(Default)]
struct Silence {
    pending: u64,
    since: Option<tokio::time::Instant>,
    /// A seed is the oldest message waiting (answered first: a link starts with it).
    seeding: bool,
    /// ...and its receipt was acknowledged: it is being installed.
    seed_received: bool,
}

impl Silence {
    fn sent(&mut self) {
        self.pending += 1;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn sent_seed(&mut self) {
        self.seeding = self.pending == 0;
        self.sent();
    }

    fn answered(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        (self.seeding, self.seed_received) = (false, false);
        self.since = (self.pending > 0).then(tokio::time::Instant::now);
    }

    /// A receipt (not yet durable): for a seed, the peer is alive and installing it.
    fn received(&mut self) {
        if self.seeding && !self.seed_received {
            self.seed_received = true;
            self.since = Some(tokio::time::Instant::now());
        }
    }

    /// Not every answer came, and none for `limit` (`seed_limit` while a seed whose receipt
    /// was acknowledged is being installed).
    fn dead(&self, limit: Duration, seed_limit: Duration) -> bool {
        let limit = if self.seed_received { seed_limit } else { limit };
        self.since.is_some_and(|since| since.elapsed() > limit)
    }
}

/// The peer service's shared state.
pub struct Service {
    node: NodeConfig,
    me: Identity,
    store: RegisterStore,
    /// Where register requests to each voter go (by voter number; none for this agent).
    outbound: Vec<Option<UnboundedSender<Control>>>,
    pipelines: Mutex<BTreeMap<String, Arc<Replicated>>>,
    /// (pipeline, peer number) with a bulk link being kept.
    shipping: Mutex<BTreeSet<(String, u8)>>,
    /// The control links' request queues, until [`Service::run`] takes them.
    inbound: Mutex<Vec<(Peer, UnboundedReceiver<Control>)>>,
    /// Writes to a replica's copy run on the calling task rather than on tokio's blocking
    /// threads (the simulation: one thread, deterministic).
    inline_disk: bool,
    /// The clock of every lease.
    pub clock: Clock,
}

impl Service {
    /// Starts the service's thread; fails if its listening address cannot be bound.
    pub fn start(node: NodeConfig, me: Identity, store: RegisterStore) -> anyhow::Result<Arc<Service>> {
        let service = Service::new(node, me, store, Clock::monotonic(), false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = {
            let std_listener = std::net::TcpListener::bind(service.node.listen).map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (node.toml listen): {e}", service.node.listen)
            })?;
            std_listener.set_nonblocking(true)?;
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let running = service.clone();
        std::thread::Builder::new()
            .name("weir-peers".into())
            .spawn(move || runtime.block_on(running.run(Tcp, listener)))?;
        Ok(service)
    }

    /// The service, not running yet ([`Service::run`]); `inline_disk`: see the field.
    pub fn new(
        node: NodeConfig,
        me: Identity,
        store: RegisterStore,
        clock: Clock,
        inline_disk: bool,
    ) -> Arc<Service> {
        let voters = node.voters().len();
        let mut outbound = vec![None; voters];
        let mut inbound = Vec::new();
        for peer in &node.peers {
            let (tx, rx) = unbounded_channel();
            let number = node.number(&peer.name).expect("a peer is a voter") as usize;
            outbound[number] = Some(tx);
            inbound.push((peer.clone(), rx));
        }
        Arc::new(Service {
            node,
            me,
            store,
            outbound,
            pipelines: Mutex::default(),
            shipping: Mutex::default(),
            inbound: Mutex::new(inbound),
            inline_disk,
            clock,
        })
    }

    /// Runs the service on the current tokio runtime: accepts links on `listener`, keeps
    /// control links to the peers, steps the members every [`TICK`]. Never returns.
    pub async fn run<T: Transport>(self: Arc<Self>, transport: T, listener: T::Listener) {
        tokio::spawn(listen::<T>(self.clone(), listener));
        for (peer, rx) in std::mem::take(&mut *lock(&self.inbound)) {
            tokio::spawn(control(self.clone(), transport.clone(), peer, rx));
        }
        let mut ticks = tokio::time::interval(TICK);
        loop {
            ticks.tick().await;
            self.tick(&transport);
        }
    }

    /// Runs `work` (a write to a replica's copy) off the async task, unless `inline_disk`.
    async fn disk<R: Send + 'static>(&self, work: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
        Ok(super::on_disk(self.inline_disk, work).await?)
    }

    /// The node's settings.
    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// The store of this agent's acceptors.
    pub fn store(&self) -> &RegisterStore {
        &self.store
    }

    /// Where register requests go, by voter number.
    pub fn outbound(&self) -> Vec<Option<UnboundedSender<Control>>> {
        self.outbound.clone()
    }

    /// Adds (or replaces) a replicated pipeline.
    pub fn register(&self, pipeline: Arc<Replicated>) {
        lock(&self.pipelines).insert(pipeline.name.clone(), pipeline);
    }

    /// Removes a pipeline (its config was removed or changed).
    pub fn unregister(&self, name: &str) {
        lock(&self.pipelines).remove(name);
    }

    /// The replicated pipeline `name`, if it runs here.
    pub fn pipeline(&self, name: &str) -> Option<Arc<Replicated>> {
        lock(&self.pipelines).get(name).cloned()
    }

    /// Steps every member, and starts shipping links for the pipelines this agent owns.
    fn tick<T: Transport>(self: &Arc<Self>, transport: &T) {
        let pipelines: Vec<Arc<Replicated>> = lock(&self.pipelines).values().cloned().collect();
        for r in pipelines {
            r.tick();
            let Some(epoch) = r.owner() else { continue };
            for &number in &r.data_peers {
                let key = (r.name.clone(), number);
                if !lock(&self.shipping).insert(key.clone()) {
                    continue;
                }
                let peer = self.peer(number).clone();
                tokio::spawn(ship(self.clone(), transport.clone(), r.clone(), epoch, peer, key));
            }
        }
    }

    fn peer(&self, number: u8) -> &Peer {
        let name = self.node.voters()[number as usize].to_owned();
        self.node.peers.iter().find(|p| p.name == name).expect("a voter other than this agent is a peer")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn listen<T: Transport>(service: Arc<Service>, listener: T::Listener) {
    loop {
        let Ok((stream, from)) = T::accept(&listener).await else { continue };
        let service = service.clone();
        tokio::spawn(async move {
            match link::accept(stream, from, &service.me).await {
                Ok(link) if link.channel == Channel::Control => {
                    let peer = link.peer.clone();
                    if let Err(e) = answer(&service, link).await {
                        tracing::info!("{peer}: control link down: {e}");
                    }
                }
                Ok(link) => {
                    let peer = link.peer.clone();
                    if let Err(e) = replicate(&service, link).await {
                        tracing::info!("{peer}: bulk link down: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    eprintln!("weir: {e}");
                }
            }
        });
    }
}

/// Answers a peer's register requests: a pipeline run here by its member's acceptor, any
/// other (not run here yet) by the store, as a witness would.
async fn answer<S>(service: &Service, link: Link<S>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    super::witness::answer(link, |pipeline, request| async move {
        match service.pipeline(&pipeline) {
            Some(r) => r.on_request(request),
            None => super::witness::from_store(&service.store, pipeline, request, service.inline_disk).await,
        }
    })
    .await
}

/// Keeps a control link to `peer`, sending this agent's requests and handing back replies.
async fn control<T: Transport>(
    service: Arc<Service>,
    transport: T,
    peer: Peer,
    mut requests: UnboundedReceiver<Control>,
) {
    let number = service.node.number(&peer.name).expect("a peer is a voter");
    let mut complained = false;
    loop {
        let link = match link::connect(&transport, &service.me, &peer, Channel::Control).await {
            Ok(link) => link,
            Err(e) => {
                if !complained {
                    tracing::info!("{e} (connecting again every {} ms)", RECONNECT.as_millis());
                    complained = true;
                }
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        tracing::info!("{}: control link up", peer.name);
        complained = false;
        // Requests queued while the link was down are stale: their rounds are over.
        while requests.try_recv().is_ok() {}
        let (mut reader, mut writer) = tokio::io::split(link.stream);
        let silence = Arc::new(Mutex::new(Silence::default()));
        let replies = {
            let (service, silence) = (service.clone(), silence.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let message: Control =
                        match wire::read_frame(&mut reader, wire::MAX_CONTROL_FRAME, &mut buffer).await {
                            Ok(message) => message,
                            Err(_) => return,
                        };
                    lock(&silence).answered();
                    if let Control::Registered { pipeline, reply } = message
                        && let Some(r) = service.pipeline(&pipeline)
                    {
                        r.on_reply(number, reply);
                    }
                }
            })
        };
        let mut buffer = Vec::new();
        loop {
            if lock(&silence).dead(CONTROL_SILENCE, CONTROL_SILENCE) {
                tracing::info!("{}: no reply for {} s", peer.name, CONTROL_SILENCE.as_secs());
                break;
            }
            // Biased: the branches in this order, not at random (the simulation replays a
            // seed exactly; a random pick between the two timers made runs differ).
            tokio::select! {
                biased;
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    if wire::write_frame(&mut writer, &request, &mut buffer).await.is_err() {
                        break;
                    }
                    lock(&silence).sent();
                }
                _ = tokio::time::sleep(RECONNECT), if replies.is_finished() => break,
                // Looks at the silence again.
                _ = tokio::time::sleep(RECONNECT) => {}
            }
        }
        replies.abort();
        tracing::info!("{}: control link down", peer.name);
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Keeps a bulk link to data peer `peer` while this agent owns `r` under `epoch`: a seed,
/// then every committed batch; acknowledgements back.
async fn ship<T: Transport>(
    service: Arc<Service>,
    transport: T,
    r: Arc<Replicated>,
    epoch: u64,
    peer: Peer,
    key: (String, u8),
) {
    let outcome = async {
        let link = link::connect(&transport, &service.me, &peer, Channel::Bulk).await?;
        let (mut reader, mut writer) = tokio::io::split(link.stream);
        let mut buffer = Vec::new();
        wire::write_frame(&mut writer, &Bulk::Start { pipeline: r.name.clone(), epoch }, &mut buffer).await?;
        let (tx, mut rx) = unbounded_channel();
        let Some(session) = r.open_session(epoch, tx) else { return Ok(()) };
        tracing::info!("{}: shipping to {} (epoch {epoch})", r.name, peer.name);
        let silence = Arc::new(Mutex::new(Silence::default()));
        let acks = {
            let (r, silence) = (r.clone(), silence.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    match wire::read_frame(&mut reader, wire::MAX_CONTROL_FRAME, &mut buffer).await {
                        Ok(Bulk::Ack { checkpoint, durable }) => {
                            if durable {
                                lock(&silence).answered();
                            } else {
                                lock(&silence).received();
                            }
                            r.on_ack(session, checkpoint, durable)
                        }
                        Ok(Bulk::Refused { reason }) => return reason,
                        Ok(_) => return "an unexpected message".to_owned(),
                        Err(e) => return e.to_string(),
                    }
                }
            })
        };
        let result: anyhow::Result<()> = async {
            loop {
                if lock(&silence).dead(BULK_SILENCE, SEED_SILENCE) {
                    anyhow::bail!("no acknowledgement for {} s", BULK_SILENCE.as_secs());
                }
                // Biased, as on the control link.
                tokio::select! {
                    biased;
                    message = rx.recv() => {
                        let Some(message) = message else { return Ok(()) };
                        wire::write_frame(&mut writer, &message, &mut buffer).await?;
                        // One durable acknowledgement per batch, and one for a whole seed.
                        match message {
                            Bulk::Batch { .. } => lock(&silence).sent(),
                            Bulk::SeedEnd => lock(&silence).sent_seed(),
                            _ => {}
                        }
                    }
                    _ = tokio::time::sleep(RECONNECT), if acks.is_finished() || r.owner() != Some(epoch) => {
                        return Ok(());
                    }
                    // Looks at the silence again.
                    _ = tokio::time::sleep(RECONNECT) => {}
                }
            }
        }
        .await;
        r.close_session(session);
        if acks.is_finished() {
            if let Ok(reason) = acks.await {
                tracing::info!("{}: {} stopped taking the shipping: {reason}", r.name, peer.name);
            }
        } else {
            acks.abort();
        }
        result
    }
    .await;
    if let Err(e) = outcome {
        tracing::info!("{}: shipping to {}: {e}", r.name, peer.name);
        tokio::time::sleep(RECONNECT).await;
    }
    lock(&service.shipping).remove(&key);
}

/// Applies what an owner ships to this agent's replica, acknowledging as it goes.
async fn replicate<S: AsyncRead + AsyncWrite + Unpin>(
    service: &Service,
    mut link: Link<S>,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    let Bulk::Start { pipeline, epoch } =
        wire::read_frame(&mut link.stream, wire::MAX_BULK_FRAME, &mut buffer).await?
    else {
        anyhow::bail!("a bulk link that does not start with Start");
    };
    let Some(r) = service.pipeline(&pipeline) else {
        let reason = format!("no pipeline {pipeline} here");
        wire::write_frame(&mut link.stream, &Bulk::Refused { reason: reason.clone() }, &mut out).await?;
        anyhow::bail!("{reason}");
    };
    if let Err(reason) = r.replica_start(epoch) {
        wire::write_frame(&mut link.stream, &Bulk::Refused { reason: reason.clone() }, &mut out).await?;
        anyhow::bail!("{reason}");
    }
    tracing::info!("{pipeline}: replica of {} (epoch {epoch})", link.peer);
    let mut seed = Vec::new();
    loop {
        let message: Bulk = wire::read_frame(&mut link.stream, wire::MAX_BULK_FRAME, &mut buffer).await?;
        let applied = match message {
            Bulk::Seed { bytes } => {
                seed.extend_from_slice(&bytes);
                continue;
            }
            Bulk::SeedEnd => {
                // Its receipt first (no checkpoint yet): installing a large seed takes a
                // while, and the owner must not take that silence for a dead link.
                wire::write_frame(&mut link.stream, &Bulk::Ack { checkpoint: 0, durable: false }, &mut out)
                    .await?;
                let (r, bytes) = (r.clone(), std::mem::take(&mut seed));
                service.disk(move || r.install_seed(&bytes)).await?
            }
            Bulk::Batch { bytes } => match r.receive(&bytes) {
                Ok((ops, received)) => {
                    if r.spec().mode == ReplicationMode::Received {
                        // `received`: the owner may complete once it is here, before it is
                        // on disk.
                        let ack = Bulk::Ack { checkpoint: received, durable: false };
                        wire::write_frame(&mut link.stream, &ack, &mut out).await?;
                    }
                    let r = r.clone();
                    service.disk(move || r.apply(&ops)).await?
                }
                Err(reason) => Err(reason),
            },
            other => anyhow::bail!("unexpected {other:?}"),
        };
        match applied {
            Ok(checkpoint) => {
                wire::write_frame(&mut link.stream, &Bulk::Ack { checkpoint, durable: true }, &mut out)
                    .await?;
            }
            Err(reason) => {
                let _ =
                    wire::write_frame(&mut link.stream, &Bulk::Refused { reason: reason.clone() }, &mut out)
                        .await;
                anyhow::bail!("{pipeline}: {reason}");
            }
        }
    }
}

/// Whether this agent is the one to start a pipeline with manual failover: the first data
/// agent by name.
pub fn first_data_agent(node: &NodeConfig) -> bool {
    let mut data: Vec<&str> =
        node.peers.iter().filter(|p| p.role == Role::Data).map(|p| p.name.as_str()).collect();
    data.push(&node.name);
    data.sort_unstable();
    data.first() == Some(&node.name.as_str())
}
