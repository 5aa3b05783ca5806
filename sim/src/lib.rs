//! A seeded simulation of whole agents (issue 13): two data agents and a witness in one
//! process, on turmoil's simulated network and clock.
//!
//! What is real: each agent's peer service ([`Service`]: its links with mutual TLS and pinned
//! certificates, the handshake, framing, the control and bulk channels, the register ticks),
//! its register member and acceptors in LMDB ([`RegisterStore`]), the witness, the owner's
//! tap (shipping, seeding, the `sync` gate, `solo`, the self-fence) and the replica applying
//! shipped log records to its own LMDB copy. What stands in for the pipeline: a counter
//! ([`owner_run`]) that writes the records a pipeline's checkpoint writes (an owner record,
//! a snapshot, a completion) to the real log, ships them through the real tap, and releases
//! each completed checkpoint's output (the running sum) to a shared "sink" only when the
//! self-fence allows it, stamped with the log's owner epoch as the MQTT sink stamps it. The
//! actix pipeline itself is not in the simulation (its own threads and real time would make
//! a run irreproducible); the end-to-end tests run it with `kill -9`.
//!
//! A run has a safety phase with faults drawn from the seed (crashes and restarts of any
//! agent, partitions, held links, disk write errors in the register store and in the
//! pipeline's log, and a clock rate per agent), then a calm phase without them. Checked:
//! every released output is the failure-free output of its checkpoint; no checkpoint is
//! released under two epochs (S18 after de-duplication); an epoch has one holder; and after
//! the calm phase the released checkpoints are 1..=K with no gap and K grew (liveness).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use weir_edge_agent::config::node::{self, NodeConfig};
use weir_edge_agent::peer::Clock;
use weir_edge_agent::peer::link::{Identity, Transport};
use weir_edge_agent::peer::replicated::Replicated;
use weir_edge_agent::peer::service::Service;
use weir_edge_agent::peer::store::RegisterStore;
use weir_edge_agent::peer::{tls, witness};
use weir_runtime::log::ship::Tap;
use weir_runtime::log::{Log, SnapshotRecord, WriteOp};
use weir_runtime::pipeline::spec::{Failover, ReplicationSpec};
use weir_runtime::protocol::replication::ReplicationMode;
use weir_runtime::protocol::{CheckpointId, ParticipantId};

/// The data agents and the witness.
const DATA: [&str; 2] = ["a", "b"];
const WITNESS: &str = "w";
const PORT: u16 = 7400;
/// The simulated pipeline.
const PIPELINE: &str = "p";
/// The counter's participant in the log.
const COUNTER: ParticipantId = 0;
/// A checkpoint every so often, as the pipeline's interval.
const INTERVAL: Duration = Duration::from_millis(100);
const MAP_SIZE: usize = 64 << 20;

/// How long each phase lasts, in simulated time.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// With faults.
    pub faults: Duration,
    /// Without them, after every fault is healed.
    pub calm: Duration,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases { faults: Duration::from_secs(12), calm: Duration::from_secs(12) }
    }
}

/// What a run did, for its checks and for comparing two runs of one seed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every event, in order, with its simulated time.
    pub trace: Vec<String>,
    /// Released checkpoints: (stamp epoch, value) per checkpoint.
    pub released: BTreeMap<u64, (u64, u64)>,
    /// The latest checkpoint released when the calm phase began.
    pub released_before_calm: u64,
    /// How many faults were injected.
    pub faults: usize,
}

/// The shared record of one run (all hosts run on this thread).
#[derive(Default)]
struct Record {
    /// The run's scratch folder, written `<scratch>` in the trace: a seed's trace is the
    /// same wherever it runs.
    root: String,
    trace: Vec<String>,
    released: BTreeMap<u64, (u64, u64)>,
    holders: BTreeMap<u64, String>,
    violations: Vec<String>,
}

type Shared = Rc<RefCell<Record>>;

fn note(record: &Shared, line: String) {
    let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
    let mut rec = record.borrow_mut();
    let line = line.replace(&rec.root, "<scratch>");
    rec.trace.push(format!("{at:>6} ms {line}"));
}

/// The failure-free output of checkpoint `c`: the sum of every input up to it.
pub fn expected(c: u64) -> u64 {
    (1..=c).map(input).sum()
}

/// The input the counter reads for checkpoint `c`.
fn input(c: u64) -> u64 {
    c.wrapping_mul(2_654_435_761) % 1000 + 1
}

/// Deterministic randomness for the fault schedule (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// turmoil's TCP as the agents' transport.
#[derive(Clone, Copy, Debug)]
struct Net;

impl Transport for Net {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    async fn connect(&self, address: &str) -> std::io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(address.to_owned()).await
    }

    async fn bind(&self, address: SocketAddr) -> std::io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(address).await
    }

    async fn accept(listener: &Self::Listener) -> std::io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }
}

/// One certificate and key per agent, made once per process (key generation is slow and
/// not part of what is simulated).
fn certificates() -> &'static BTreeMap<&'static str, (String, String)> {
    static CERTS: OnceLock<BTreeMap<&'static str, (String, String)>> = OnceLock::new();
    CERTS.get_or_init(|| {
        DATA.iter()
            .chain([&WITNESS])
            .map(|&name| (name, tls::generate(name).expect("a certificate")))
            .collect()
    })
}

/// Writes agent `name`'s config folder under `root`: node.toml, the certificates.
fn config_folder(root: &Path, name: &str) -> anyhow::Result<NodeConfig> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    for (agent, (cert, key)) in certificates() {
        std::fs::write(dir.join(format!("{agent}.crt")), cert)?;
        if *agent == name {
            std::fs::write(dir.join(format!("{agent}.key")), key)?;
        }
    }
    let mut text = format!(
        "name = \"{name}\"\nlisten = \"0.0.0.0:{PORT}\"\ncert = \"{name}.crt\"\nkey = \"{name}.key\"\ndata_dir = \"data\"\n"
    );
    for peer in DATA.iter().chain([&WITNESS]).filter(|&&p| p != name) {
        let role = if *peer == WITNESS { "witness" } else { "data" };
        text.push_str(&format!(
            "\n[peers.{peer}]\naddress = \"{peer}:{PORT}\"\ncert = \"{peer}.crt\"\nrole = \"{role}\"\n"
        ));
    }
    std::fs::write(dir.join("node.toml"), text)?;
    Ok(node::load(&dir)?.expect("node.toml was just written"))
}

/// What the fault schedule can do to a data agent's pipeline.
#[derive(Default)]
struct Injected {
    /// The next log write of the owner's run fails.
    log_write: bool,
    /// Its register store was made to fail a write: it stops taking part in the ownership
    /// until it is restarted, which the calm phase does (as a person or systemd would).
    store_failed: bool,
}

/// One data agent: its config and the parts that outlive a crash (its disk).
struct Agent {
    name: &'static str,
    node: NodeConfig,
    store: RegisterStore,
    pipeline_dir: PathBuf,
    /// Its clock's rate, in thousandths of the simulation's.
    rate: u64,
    injected: Rc<RefCell<Injected>>,
}

/// The agent's software, from a (re)start: the peer service, the pipeline's member, and the
/// owner's pipeline whenever the register gives it the pipeline.
async fn agent(agent: Rc<Agent>, record: Shared) -> turmoil::Result {
    let start = turmoil::elapsed();
    let rate = agent.rate;
    let clock = Clock::new(move || {
        let since = turmoil::elapsed().saturating_sub(start).as_micros() as u64;
        since * rate / 1000 / 1000
    });
    let me = Identity::load(&agent.node)?;
    let service = Service::new(agent.node.clone(), me, agent.store.clone(), clock.clone(), true);
    let spec = ReplicationSpec { mode: ReplicationMode::Sync, failover: Failover::Witness };
    let r = Replicated::open(PIPELINE, spec, &agent.pipeline_dir, MAP_SIZE, &service)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    service.register(r.clone());
    let listener = Net.bind(agent.node.listen).await?;
    tokio::spawn(service.clone().run(Net, listener));
    note(&record, format!("{} starts", agent.name));
    let mut waited = 0;
    loop {
        let Some(epoch) = r.owner() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
            if waited % 100 == 0 {
                let s = r.status();
                let line = format!(
                    "{} waits: {} sees epoch {} owner {:?} solo {} error {:?}",
                    agent.name, s.role, s.epoch, s.owner, s.solo, s.error
                );
                note(&record, line);
            }
            continue;
        };
        {
            let mut rec = record.borrow_mut();
            let holder = rec.holders.entry(epoch).or_insert_with(|| agent.name.to_owned()).clone();
            if holder != agent.name {
                rec.violations.push(format!("epoch {epoch} held by both {holder} and {}", agent.name));
            }
        }
        note(&record, format!("{} owns epoch {epoch}", agent.name));
        let ended = owner_run(&agent, &r, epoch, &clock, &record).await;
        note(&record, format!("{}: run of epoch {epoch} ended: {ended}", agent.name));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The counter as a pipeline's run under `epoch`: restore from the log, then a checkpoint
/// every [`INTERVAL`], each shipped, gated, and released if the lease allows. Returns why it
/// ended.
async fn owner_run(agent: &Agent, r: &Arc<Replicated>, epoch: u64, clock: &Clock, record: &Shared) -> String {
    r.close_replica();
    let log = match Log::open(&agent.pipeline_dir, MAP_SIZE) {
        Ok(log) => log,
        Err(e) => return format!("cannot open the log: {e}"),
    };
    let tap = r.owner_tap(epoch);
    let step = async {
        let restored = log.completed().map_err(|e| e.to_string())?.map_or(0, |c| c.0);
        let mut sum = if restored == 0 {
            0
        } else {
            state(&log.read_snapshot(COUNTER, CheckpointId(restored)).map_err(|e| e.to_string())?)
        };
        let owner = vec![WriteOp::Owner { from: CheckpointId(restored + 1), epoch }];
        log.write_now(&owner).map_err(|e| e.to_string())?;
        tap.ship(&log, &[owner])?;
        if restored > 0 {
            // Its commit may not have been released before the previous run ended.
            release(agent, &log, &tap, restored, record)?;
        }
        let mut c = restored;
        loop {
            tokio::time::sleep(INTERVAL).await;
            c += 1;
            sum += input(c);
            let ops = vec![
                WriteOp::Snapshot {
                    participant: COUNTER,
                    checkpoint: CheckpointId(c),
                    record: SnapshotRecord {
                        positions: vec![c],
                        out_seqs: Vec::new(),
                        state: sum.to_le_bytes().to_vec(),
                    },
                },
                WriteOp::Completion(CheckpointId(c)),
            ];
            if std::mem::take(&mut agent.injected.borrow_mut().log_write) {
                return Err::<(), String>(format!("checkpoint {c}: an injected log write error"));
            }
            log.write_now(&ops).map_err(|e| e.to_string())?;
            tap.ship(&log, &[ops])?;
            let since = clock.now();
            while !tap.try_complete(&log, CheckpointId(c), since)? {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            release(agent, &log, &tap, c, record)?;
        }
    };
    match step.await {
        Ok(()) => "finished".into(),
        Err(e) => e,
    }
}

fn state(snapshot: &SnapshotRecord) -> u64 {
    u64::from_le_bytes(snapshot.state.as_slice().try_into().unwrap_or_default())
}

/// Releases checkpoint `c`'s output if the self-fence allows it, stamped as the MQTT sink
/// stamps it; records a violation if it is not the failure-free output or was released
/// under another epoch.
fn release(agent: &Agent, log: &Log, tap: &impl Tap, c: u64, record: &Shared) -> Result<(), String> {
    tap.may_release()?;
    let stamp = log.owner_epoch(CheckpointId(c)).map_err(|e| e.to_string())?.unwrap_or(0);
    let value = state(&log.read_snapshot(COUNTER, CheckpointId(c)).map_err(|e| e.to_string())?);
    let mut rec = record.borrow_mut();
    if value != expected(c) {
        rec.violations.push(format!(
            "{} released checkpoint {c} as {value}, expected {}",
            agent.name,
            expected(c)
        ));
    }
    match rec.released.get(&c) {
        Some(&(earlier, _)) if earlier != stamp => rec.violations.push(format!(
            "checkpoint {c} released under epoch {earlier} and again by {} under epoch {stamp}",
            agent.name
        )),
        _ => {
            rec.released.insert(c, (stamp, value));
        }
    }
    Ok(())
}

/// Runs seed `seed`; Err names the first violation (with the trace's end).
pub fn run(seed: u64, phases: Phases) -> Result<Outcome, String> {
    let root = scratch().map_err(|e| format!("seed {seed}: scratch dir: {e}"))?;
    let record: Shared = Rc::default();
    record.borrow_mut().root = root.path().display().to_string();
    let mut rng = Rng(seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(phases.faults + phases.calm + Duration::from_secs(5))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(seed)
        .enable_random_order()
        .build();
    let mut agents = Vec::new();
    for name in DATA {
        let node = config_folder(root.path(), name).map_err(|e| format!("seed {seed}: {e}"))?;
        let store = RegisterStore::open(&node.data_dir).map_err(|e| e.to_string())?;
        let pipeline_dir = node.data_dir.join(PIPELINE);
        // Clock rates within ±10% (leases are timed on each agent's own clock; the grace,
        // a quarter of the lease, covers two clocks drifting apart by up to 20%).
        let rate = 900 + rng.below(201);
        let agent = Rc::new(Agent { name, node, store, pipeline_dir, rate, injected: Rc::default() });
        let (a, rec) = (agent.clone(), record.clone());
        sim.host(name, move || self::agent(a.clone(), rec.clone()));
        agents.push(agent);
    }
    let witness_node = config_folder(root.path(), WITNESS).map_err(|e| format!("seed {seed}: {e}"))?;
    let witness_store = RegisterStore::open(&witness_node.data_dir).map_err(|e| e.to_string())?;
    {
        let (node, store) = (witness_node.clone(), witness_store.clone());
        sim.host(WITNESS, move || {
            let (node, store) = (node.clone(), store.clone());
            async move {
                let me = Identity::load(&node)?;
                witness::serve(Net, &node, me, store, true).await?;
                Ok(())
            }
        });
    }
    let hosts = [DATA[0], DATA[1], WITNESS];
    // Pending heals: (at, what).
    let mut heals: Vec<(Duration, Heal)> = Vec::new();
    let mut faults = 0;
    let mut next_fault = Duration::from_millis(500);
    let end_of_faults = phases.faults;
    let end = phases.faults + phases.calm;
    let mut released_before_calm = None;
    let fail = |record: &Shared, message: String| {
        let rec = record.borrow();
        let tail: Vec<&String> = rec
            .trace
            .iter()
            .rev()
            .take(if std::env::var_os("WEIR_SIM_SEED").is_some() { usize::MAX } else { 30 })
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        format!(
            "seed {seed}: {message}\n  replay: WEIR_SIM_SEED={seed} cargo test --profile model -p weir-sim -- --nocapture\n  last events:\n    {}",
            tail.join("\n    ")
        )
    };
    while sim.elapsed() < end {
        sim.step().map_err(|e| fail(&record, format!("a host failed: {e}")))?;
        if let Some(v) = record.borrow().violations.first() {
            return Err(fail(&record, v.clone()));
        }
        let now = sim.elapsed();
        let (due, pending): (Vec<_>, Vec<_>) = heals.into_iter().partition(|(at, _)| *at <= now);
        heals = pending;
        for (_, heal) in due {
            heal.apply(&mut sim);
        }
        if now < end_of_faults && now >= next_fault {
            next_fault = now + Duration::from_millis(250);
            let host = hosts[rng.below(3) as usize];
            let other =
                hosts[(hosts.iter().position(|h| *h == host).unwrap() + 1 + rng.below(2) as usize) % 3];
            let later = |rng: &mut Rng, max_ms: u64| now + Duration::from_millis(100 + rng.below(max_ms));
            let line = match rng.below(100) {
                0..8 if sim.is_host_running(host) => {
                    sim.crash(host);
                    heals.push((later(&mut rng, 4000), Heal::Bounce(host)));
                    Some(format!("fault: crash {host}"))
                }
                8..16 => {
                    sim.partition(host, other);
                    heals.push((later(&mut rng, 3000), Heal::Repair(host, other)));
                    Some(format!("fault: partition {host} | {other}"))
                }
                16..20 => {
                    sim.hold(host, other);
                    heals.push((later(&mut rng, 1000), Heal::Release(host, other)));
                    Some(format!("fault: hold {host} - {other}"))
                }
                20..23 if host != WITNESS => {
                    // The register store's next write fails: the agent stops taking part in
                    // the ownership until it is restarted.
                    let agent = &agents[DATA.iter().position(|a| *a == host).unwrap()];
                    agent.store.fail_writes(1);
                    agent.injected.borrow_mut().store_failed = true;
                    heals.push((later(&mut rng, 3000), Heal::Bounce(host)));
                    Some(format!("fault: register store write error at {host}"))
                }
                23..27 if host != WITNESS => {
                    agents[DATA.iter().position(|a| *a == host).unwrap()].injected.borrow_mut().log_write =
                        true;
                    Some(format!("fault: log write error at {host}"))
                }
                _ => None,
            };
            if let Some(line) = line {
                faults += 1;
                record.borrow_mut().trace.push(format!("{:>6} ms {line}", now.as_millis()));
            }
        }
        if now >= end_of_faults && released_before_calm.is_none() {
            // The calm phase: every fault healed.
            for (_, heal) in heals.drain(..) {
                heal.apply(&mut sim);
            }
            for agent in &agents {
                agent.store.fail_writes(0);
                let mut injected = agent.injected.borrow_mut();
                injected.log_write = false;
                if std::mem::take(&mut injected.store_failed) {
                    sim.bounce(agent.name);
                }
            }
            for host in hosts {
                sim.repair(host, hosts[(hosts.iter().position(|h| *h == host).unwrap() + 1) % 3]);
                sim.release(host, hosts[(hosts.iter().position(|h| *h == host).unwrap() + 1) % 3]);
            }
            let last = record.borrow().released.keys().next_back().copied().unwrap_or(0);
            released_before_calm = Some(last);
            record
                .borrow_mut()
                .trace
                .push(format!("{:>6} ms calm (released through {last})", now.as_millis()));
        }
    }
    let rec = record.borrow();
    let released_before_calm = released_before_calm.unwrap_or(0);
    let last = rec.released.keys().next_back().copied().unwrap_or(0);
    if let Some(gap) = (1..=last).find(|c| !rec.released.contains_key(c)) {
        drop(rec);
        return Err(fail(&record, format!("checkpoint {gap} was never released (released through {last})")));
    }
    // Liveness: the calm phase releases checkpoints at the interval, less the time to find
    // dead links (CONTROL_SILENCE, BULK_SILENCE), a lease and grace for a takeover, a seed.
    let calm_checkpoints = (phases.calm.as_millis() / INTERVAL.as_millis()) as u64;
    if last < released_before_calm + calm_checkpoints / 4 {
        drop(rec);
        return Err(fail(
            &record,
            format!(
                "no progress after the faults: released through {released_before_calm}, then only through {last}"
            ),
        ));
    }
    Ok(Outcome { trace: rec.trace.clone(), released: rec.released.clone(), released_before_calm, faults })
}

/// A fault's end.
#[derive(Clone, Copy, Debug)]
enum Heal {
    Bounce(&'static str),
    Repair(&'static str, &'static str),
    Release(&'static str, &'static str),
}

impl Heal {
    fn apply(self, sim: &mut turmoil::Sim<'_>) {
        match self {
            Heal::Bounce(host) => sim.bounce(host),
            Heal::Repair(a, b) => sim.repair(a, b),
            Heal::Release(a, b) => sim.release(a, b),
        }
    }
}

/// A scratch folder, on tmpfs when there is one (fsyncs are the simulation's cost).
fn scratch() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new().prefix("weir-sim-").tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
}
