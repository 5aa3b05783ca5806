//! `weir agent`: runs every pipeline of a config folder until it is told to stop.
//!
//! Each `*.toml` in the folder is one pipeline, named by its file stem, with its own data
//! directory, its own supervisor tree and its own thread running
//! [`weir_runtime::pipeline::run::run`]: one failing pipeline never stops another. A pipeline
//! whose run fails (its supervisor gave up, its log failed) is started again after a backoff
//! that doubles up to a minute; one whose config is invalid waits for the file to change and a
//! SIGHUP. SIGHUP re-reads the folder: added files start, removed ones stop at a checkpoint,
//! changed ones stop and start again. SIGTERM or SIGINT stops every pipeline at a checkpoint
//! (as `weir run` does) and exits 0; a second one exits at once, which the logs survive.
//!
//! What each pipeline is doing is in its [`Live`], which the HTTP endpoint ([`http`]) serves.

pub mod http;
pub mod status;
mod systemd;
pub mod witness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use weir_runtime::pipeline::live::{Live, LiveView, Phase};
use weir_runtime::pipeline::run::{Observe, RunError, StopRequest, run};

use crate::config;

/// How `weir agent` was started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The folder of pipeline configs.
    pub config_dir: PathBuf,
    /// Where the HTTP endpoint listens.
    pub http: SocketAddr,
    /// How long a stop waits for the pipelines' final checkpoints.
    pub stop_timeout: Duration,
    /// Faults to inject, for chaos drills: (pipeline, `--inject` value of `weir run`). They
    /// are injected afresh into every run of that pipeline.
    pub inject: Vec<(String, String)>,
}

/// The longest wait before a failed pipeline is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One pipeline as the agent manages it.
pub struct Managed {
    /// Its name (the file stem).
    pub name: String,
    /// Its config file.
    pub config: PathBuf,
    /// The file's bytes when it was started (a change restarts it on SIGHUP).
    contents: Vec<u8>,
    /// Its data directory, once its config loaded.
    pub data_dir: Option<PathBuf>,
    /// Its live figures.
    pub live: Arc<Live>,
    /// How long it may run without completing a checkpoint before the agent counts as
    /// wedged (none: no periodic checkpoints).
    stall_after: Option<Duration>,
    /// Starts after a failure.
    pub retries: Arc<Mutex<Retries>>,
    /// Stops its current run.
    stop: Arc<Mutex<Arc<StopRequest>>>,
    /// Ends the retry loop.
    quit: Arc<StopRequest>,
    thread: Option<JoinHandle<()>>,
}

/// A pipeline's failed starts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Retries {
    /// Runs that failed so far.
    pub failures: u64,
    /// When the next start is due, in milliseconds from now when it was set (none: running).
    pub next_in_ms: Option<u64>,
}

/// Everything the agent runs, shared with the HTTP endpoint.
#[derive(Default)]
pub struct Agent {
    /// By name.
    pub pipelines: Mutex<BTreeMap<String, Managed>>,
    /// When the agent started.
    pub started: Option<Instant>,
    /// Its config folder.
    pub config_dir: PathBuf,
    /// `--inject`: faults by pipeline.
    pub inject: Vec<(String, String)>,
    /// The peer service, when the config folder has a `node.toml` (replicated pipelines).
    pub peers: Option<Arc<crate::peer::service::Service>>,
}

/// A pipeline's status, as `/status` serves it.
#[derive(Debug, Serialize)]
pub struct PipelineStatus {
    /// Its name.
    pub name: String,
    /// Its config file.
    pub config: String,
    /// Its data directory (none if its config did not load).
    pub data_dir: Option<String>,
    /// Failed starts.
    pub retries: Retries,
    /// `[replication]`: this agent's role, the epoch, the lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::peer::replicated::ReplicationStatus>,
    /// Its live figures.
    #[serde(flatten)]
    pub live: LiveView,
}

/// The agent's status.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// The agent's version.
    pub version: &'static str,
    /// Since it started.
    pub uptime_ms: u64,
    /// Its config folder.
    pub config_dir: String,
    /// Every pipeline, by name.
    pub pipelines: Vec<PipelineStatus>,
}

impl Agent {
    /// Every pipeline's status now.
    pub fn status(&self) -> AgentStatus {
        let pipelines = lock(&self.pipelines);
        AgentStatus {
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: self.started.map_or(0, |t| t.elapsed().as_millis() as u64),
            config_dir: self.config_dir.display().to_string(),
            pipelines: pipelines
                .values()
                .map(|m| PipelineStatus {
                    name: m.name.clone(),
                    config: m.config.display().to_string(),
                    data_dir: m.data_dir.as_ref().map(|d| d.display().to_string()),
                    retries: lock(&m.retries).clone(),
                    replication: self.peers.as_ref().and_then(|s| s.pipeline(&m.name)).map(|r| r.status()),
                    live: m.live.view(),
                })
                .collect(),
        }
    }

    /// `weir promote NAME`: this agent takes the replicated pipeline `name` over (its
    /// owner is gone and failover is manual, or the voters lost their majority). The new
    /// epoch.
    pub fn promote(&self, name: &str) -> Result<u64, String> {
        let Some(service) = &self.peers else {
            return Err(format!(
                "this agent has no node.toml in {}: nothing here is replicated",
                self.config_dir.display()
            ));
        };
        let Some(pipeline) = service.pipeline(name) else {
            return Err(format!("no replicated pipeline {name} runs on this agent"));
        };
        pipeline.promote()
    }

    /// Whether every pipeline has restored its state and runs (or has finished).
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let pipelines = lock(&self.pipelines);
        let waiting: Vec<String> = (pipelines.values())
            .filter_map(|m| {
                let phase = m.live.view().phase;
                (!matches!(phase, Phase::Running | Phase::Finished))
                    .then(|| format!("{}: {}", m.name, phase.name()))
            })
            .collect();
        if waiting.is_empty() { Ok(()) } else { Err(waiting) }
    }
}

/// A replicated pipeline's MQTT sinks: every agent publishes under the same stream
/// (`PIPELINE/NODE`, the consumer's de-duplication key), each with a client id of its own:
/// `weir-AGENT-PIPELINE-NODE`, or the configured `client_id` with `-AGENT` appended (two
/// agents with one id would take the broker's session from each other in a partition).
///
/// Its MQTT sources, the other way round: every agent subscribes in the same broker session
/// (`weir-PIPELINE-NODE` unless configured), so that what the broker keeps for it while the
/// owner is away goes to whichever agent owns it next.
fn mqtt_identities(spec: &mut weir_runtime::pipeline::spec::PipelineSpec, pipeline: &str, agent: &str) {
    use weir_runtime::pipeline::spec::{NodeKind, SinkSpec, SourceSpec};
    for node in &mut spec.nodes {
        if let NodeKind::Source(SourceSpec::Mqtt(m)) = &mut node.kind
            && m.client_id.is_empty()
        {
            m.client_id = format!("weir-{pipeline}-{}", node.name);
        }
        if let NodeKind::Sink(SinkSpec::Mqtt(m)) = &mut node.kind {
            m.stream = format!("{pipeline}/{}", node.name);
            m.client_id = if m.client_id.is_empty() {
                format!("weir-{agent}-{pipeline}-{}", node.name)
            } else {
                format!("{}-{agent}", m.client_id)
            };
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A signal, as the agent's main loop sees it.
enum Signal {
    Reload,
    Stop(&'static str, i32),
}

/// Run the agent until SIGTERM or SIGINT.
pub fn run_agent(options: &Options) -> anyhow::Result<()> {
    let dir = &options.config_dir;
    if !dir.is_dir() {
        anyhow::bail!("--config-dir {}: not a folder", dir.display());
    }
    // A bad node.toml stops the agent before anything runs: its peers and identity are wrong.
    let peers = match config::node::load(dir)? {
        Some(node) => {
            tracing::info!("agent {} (voters {})", node.name, node.voters().join(", "));
            let node_file = dir.join(config::node::FILE);
            let me = crate::peer::link::Identity::load(&node)
                .with_context(|| format!("{}", node_file.display()))?;
            let store = crate::peer::store::RegisterStore::open(&node.data_dir)?;
            Some(crate::peer::service::Service::start(node, me, store)?)
        }
        None => None,
    };
    let agent = Arc::new(Agent {
        started: Some(Instant::now()),
        config_dir: dir.clone(),
        inject: options.inject.clone(),
        peers,
        ..Agent::default()
    });
    let signals = signals()?;
    let _server = http::serve(options.http, agent.clone())?;
    tracing::info!("listening on http://{}", options.http);
    reconcile(&agent, dir);
    for (pipeline, fault) in &options.inject {
        if !lock(&agent.pipelines).contains_key(pipeline) {
            eprintln!(
                "weir: warning: --inject {pipeline}={fault}: no pipeline {pipeline} in {}",
                dir.display()
            );
        }
    }
    systemd::start(agent.clone());
    loop {
        match signals.recv() {
            Ok(Signal::Reload) => {
                tracing::info!("SIGHUP: reading {} again", dir.display());
                reconcile(&agent, dir);
            }
            Ok(Signal::Stop(name, _)) => {
                tracing::info!("{name}: stopping every pipeline at its next checkpoint");
                return shutdown(&agent, name, options.stop_timeout, &signals);
            }
            Err(_) => anyhow::bail!("the signal thread ended"),
        }
    }
}

/// Stop every pipeline and wait for them, at most `timeout`; a second signal exits at once.
fn shutdown(
    agent: &Agent,
    reason: &str,
    timeout: Duration,
    signals: &mpsc::Receiver<Signal>,
) -> anyhow::Result<()> {
    let mut stopping: Vec<Managed> = std::mem::take(&mut *lock(&agent.pipelines)).into_values().collect();
    for m in &stopping {
        m.request_stop(reason);
    }
    // The pipelines stay visible (phase "stopping") while they stop.
    let deadline = Instant::now() + timeout;
    let (done_tx, done_rx) = mpsc::channel();
    let waiters: Vec<_> = stopping
        .iter_mut()
        .filter_map(|m| m.thread.take().map(|t| (m.name.clone(), t)))
        .map(|(name, thread)| {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let _ = thread.join();
                let _ = done.send(name);
            })
        })
        .collect();
    drop(done_tx);
    let mut left = waiters.len();
    while left > 0 {
        if let Ok(Signal::Stop(name, signal)) = signals.try_recv() {
            eprintln!("weir: {name} again: stopped at once; start the agent again to resume");
            std::process::exit(128 + signal);
        }
        let now = Instant::now();
        if now >= deadline {
            let names: Vec<String> = stopping
                .iter()
                .filter(|m| m.live.view().phase == Phase::Stopping)
                .map(|m| m.name.clone())
                .collect();
            eprintln!(
                "weir: warning: {} did not stop within {} s; they resume from their last completed checkpoint",
                names.join(", "),
                timeout.as_secs()
            );
            return Ok(());
        }
        match done_rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
            Ok(_) => left -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}

/// Installs the handlers; the first SIGTERM or SIGINT and every SIGHUP arrive on the
/// returned channel.
fn signals() -> anyhow::Result<mpsc::Receiver<Signal>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let event = match signal {
                SIGTERM => Signal::Stop("SIGTERM", signal),
                SIGINT => Signal::Stop("SIGINT", signal),
                _ => Signal::Reload,
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The `*.toml` files of `dir` by pipeline name, with their bytes.
fn scan(dir: &Path) -> Result<BTreeMap<String, (PathBuf, Vec<u8>)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut found = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") || !path.is_file() {
            continue;
        }
        // The agent's own settings, not a pipeline.
        if path.file_name().is_some_and(|n| n == config::node::FILE) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            tracing::warn!("{}: the file name is not UTF-8; skipped", path.display());
            continue;
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                found.insert(name, (path, bytes));
            }
            Err(e) => tracing::warn!("cannot read {}: {e}; skipped", path.display()),
        }
    }
    Ok(found)
}

/// Bring the running pipelines in line with the folder: start the new, stop the removed,
/// restart the changed.
fn reconcile(agent: &Agent, dir: &Path) {
    let found = match scan(dir) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("{e}; the pipelines run on as they are");
            eprintln!("weir: {e}; the pipelines run on as they are");
            return;
        }
    };
    let mut pipelines = lock(&agent.pipelines);
    let gone: Vec<String> = (pipelines.iter())
        .filter(|(name, m)| found.get(*name).is_none_or(|(_, bytes)| *bytes != m.contents))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        let mut m = pipelines.remove(&name).expect("listed");
        if let Some(peers) = &agent.peers {
            peers.unregister(&name);
        }
        tracing::info!("{name}: {} changed or was removed; stopping it", m.config.display());
        m.request_stop("SIGHUP");
        if let Some(thread) = m.thread.take() {
            let _ = thread.join();
        }
    }
    for (name, (path, contents)) in found {
        if pipelines.contains_key(&name) {
            continue;
        }
        let inject: Vec<String> =
            agent.inject.iter().filter(|(p, _)| *p == name).map(|(_, fault)| fault.clone()).collect();
        let m = Managed::start(name.clone(), path, contents, &pipelines, inject, agent.peers.as_ref());
        pipelines.insert(name, m);
    }
}

impl Managed {
    /// Load and start a pipeline on its own thread.
    fn start(
        name: String,
        config_path: PathBuf,
        contents: Vec<u8>,
        others: &BTreeMap<String, Managed>,
        inject: Vec<String>,
        peers: Option<&Arc<crate::peer::service::Service>>,
    ) -> Managed {
        let live = Arc::new(Live::default());
        let retries = Arc::new(Mutex::new(Retries::default()));
        let stop = Arc::new(Mutex::new(Arc::new(StopRequest::default())));
        let quit = Arc::new(StopRequest::default());
        let loaded = config::load(&config_path, None).map_err(|e| e.to_string()).and_then(|spec| {
            let data_dir = std::path::absolute(&spec.data_dir).unwrap_or(spec.data_dir.clone());
            match others.values().find(|m| m.data_dir.as_ref() == Some(&data_dir)) {
                Some(other) => Err(format!(
                    "data_dir {} is already used by pipeline {} ({}); give each pipeline its own",
                    data_dir.display(),
                    other.name,
                    other.config.display()
                )),
                None => Ok((spec, data_dir)),
            }
        });
        // The faults are checked once here, and parsed afresh for every run (each fires once
        // per run).
        let loaded = loaded.and_then(|(spec, data_dir)| {
            weir_runtime::pipeline::faults::Injection::parse_all(&spec, &inject)?;
            Ok((spec, data_dir))
        });
        // A replicated pipeline runs only while the ownership register says this agent owns it.
        let loaded = loaded.and_then(|(mut spec, data_dir)| {
            let replicated = match (&spec.replication, peers) {
                (None, _) => None,
                (Some(_), None) => return Err("[replication] needs the agent's node.toml, read when the agent starts: restart the agent".to_owned()),
                (Some(_), Some(service)) => {
                    let r = crate::peer::replicated::Replicated::new(&name, &spec, service)?;
                    mqtt_identities(&mut spec, &name, &service.node().name);
                    service.register(r.clone());
                    Some(r)
                }
            };
            Ok((spec, data_dir, replicated))
        });
        let stall_after = loaded.as_ref().ok().and_then(|(spec, _, _)| {
            let interval = spec.checkpoint.interval_ms?;
            Some(Duration::from_millis(2 * interval + spec.checkpoint.timeout_ms))
        });
        let (thread, data_dir) = match loaded {
            Err(e) => {
                let message = format!("{}: {e}", config_path.display());
                eprintln!("weir: {name}: {message}");
                live.fail(message);
                (None, None)
            }
            Ok((spec, data_dir, replicated)) => {
                let shared = (name.clone(), live.clone(), retries.clone(), stop.clone(), quit.clone());
                let thread = std::thread::Builder::new().name(format!("pipeline {name}")).spawn(move || {
                    let (name, live, retries, stop, quit) = shared;
                    keep_running(&name, (&spec, &inject), &live, &retries, &stop, &quit, replicated.as_ref());
                });
                match thread {
                    Ok(thread) => (Some(thread), Some(data_dir)),
                    Err(e) => {
                        live.fail(format!("cannot start a thread: {e}"));
                        (None, Some(data_dir))
                    }
                }
            }
        };
        Managed {
            name,
            config: config_path,
            contents,
            data_dir,
            live,
            stall_after,
            retries,
            stop,
            quit,
            thread,
        }
    }

    /// Ask its run to stop at the next checkpoint and its retry loop to end.
    fn request_stop(&self, reason: &str) {
        if matches!(self.live.view().phase, Phase::Starting | Phase::Running | Phase::Restarting) {
            self.live.set_phase(Phase::Stopping);
        }
        self.quit.request(reason);
        lock(&self.stop).request(reason);
    }
}

/// A pipeline's thread: run it; after a failure run it again after a backoff, until it
/// finishes or is told to quit.
fn keep_running(
    name: &str,
    (spec, inject): (&weir_runtime::pipeline::spec::PipelineSpec, &[String]),
    live: &Arc<Live>,
    retries: &Mutex<Retries>,
    stop: &Mutex<Arc<StopRequest>>,
    quit: &StopRequest,
    replicated: Option<&Arc<crate::peer::replicated::Replicated>>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let request = Arc::new(StopRequest::default());
        *lock(stop) = request.clone();
        if let Some(reason) = quit.reason() {
            request.request(&reason);
            live.set_phase(Phase::Stopped);
            return;
        }
        let mut tap = None;
        if let Some(r) = replicated {
            if r.owner().is_none() {
                live.set_phase(Phase::Replica);
            }
            let Some(epoch) = r.wait_owner(quit) else { continue };
            live.set_phase(Phase::Starting);
            if let Err(e) = r.prepare_run(spec) {
                eprintln!("weir: {name}: cannot take it over: {e}");
                live.fail(e);
                if quit.wait(backoff) {
                    return;
                }
                continue;
            }
            tap = Some(r.tap(epoch));
        }
        let observe = Observe { progress: None, live: Some(live.clone()), tap };
        let started = Instant::now();
        let faults = weir_runtime::pipeline::faults::Injection::parse_all(spec, inject).unwrap_or_default();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(spec, &observe, &faults, &request, false)
        }))
        .unwrap_or_else(|payload| {
            let message = weir_runtime::actors::panic_message(&*payload);
            Err(RunError::Failed(format!("internal error (a bug in weir, please report it): {message}")))
        });
        match outcome {
            Ok(report) => {
                lock(retries).next_in_ms = None;
                match (&report.stopped, report.stopped_at) {
                    (Some(why), Some(c)) => eprintln!("weir: {name}: {why}: stopped at checkpoint {c}"),
                    (Some(why), None) => {
                        eprintln!("weir: {name}: {why}: stopped before its first checkpoint")
                    }
                    (None, _) => {
                        tracing::info!("{name}: finished (its input ended and its output is committed)")
                    }
                }
                return;
            }
            Err(_) if replicated.is_some_and(|r| r.owner().is_none()) => {
                // Deposed: another agent owns it now; this one becomes its replica.
                continue;
            }
            Err(e) => {
                let message = e.to_string();
                if started.elapsed() > MAX_BACKOFF * 2 {
                    backoff = Duration::from_secs(1);
                }
                {
                    let mut r = lock(retries);
                    r.failures += 1;
                    r.next_in_ms = Some(backoff.as_millis() as u64);
                }
                eprintln!("weir: {name}: {message}; starting it again in {} s", backoff.as_secs());
                live.fail(message);
                if quit.wait(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
