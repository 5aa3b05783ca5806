//! systemd integration (`Type=notify`, see `deploy/weir-agent.service`): `READY=1` once no
//! pipeline is still restoring, `STATUS=` with each pipeline's phase and last checkpoint,
//! and `WATCHDOG=1` only while the pipelines make progress, so that a wedged agent is
//! restarted by systemd instead of pinging it forever. Outside systemd (`NOTIFY_SOCKET`
//! unset) every notification is a no-op.
//!
//! Progress: a running pipeline with periodic checkpoints must complete one within
//! `2 x interval + timeout` (a checkpoint that times out is aborted and the next is
//! triggered, so a healthy pipeline completes one at least that often); pipelines that
//! finished, stopped, failed (the agent retries them on its own) or have no periodic
//! checkpoints do not hold the watchdog back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use weir_runtime::pipeline::live::Phase;

use super::{Agent, lock};

/// Notify systemd from a thread of its own until the process ends.
pub(super) fn start(agent: Arc<Agent>) {
    let period = sd_notify::watchdog_enabled().map(|d| d / 2);
    let tick = period.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
    let spawned = std::thread::Builder::new().name("systemd".into()).spawn(move || {
        let mut ready = false;
        let mut progress: BTreeMap<String, (u64, Instant)> = BTreeMap::new();
        let mut last_ping = Instant::now();
        let mut last_status = String::new();
        loop {
            std::thread::sleep(tick);
            let (status, starting, stalled) = survey(&agent, &mut progress);
            if !ready && !starting {
                ready = true;
                notify(&[NotifyState::Ready]);
                tracing::info!("ready: every pipeline restored");
            }
            if status != last_status {
                notify(&[NotifyState::Status(&status)]);
                last_status = status;
            }
            if let Some(period) = period
                && last_ping.elapsed() >= period
            {
                if stalled.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                    last_ping = Instant::now();
                } else {
                    tracing::warn!(
                        "no checkpoint progress in {}: not feeding the watchdog",
                        stalled.join(", ")
                    );
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the systemd notifier: {e}");
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("systemd notify: {e}");
    }
}

/// The status line, whether any pipeline is still starting, and the pipelines whose
/// checkpoints have stalled. `progress` keeps each pipeline's last checkpoint and when it
/// last moved.
fn survey(agent: &Agent, progress: &mut BTreeMap<String, (u64, Instant)>) -> (String, bool, Vec<String>) {
    let pipelines = lock(&agent.pipelines);
    let mut parts = Vec::new();
    let mut starting = false;
    let mut stalled = Vec::new();
    let now = Instant::now();
    progress.retain(|name, _| pipelines.contains_key(name));
    for m in pipelines.values() {
        let view = m.live.view();
        starting |= view.phase == Phase::Starting;
        parts.push(format!("{} {} at checkpoint {}", m.name, view.phase.name(), view.last_checkpoint));
        let seen = progress.entry(m.name.clone()).or_insert((view.last_checkpoint, now));
        if seen.0 != view.last_checkpoint || view.phase != Phase::Running {
            *seen = (view.last_checkpoint, now);
        } else if m.stall_after.is_some_and(|limit| now.duration_since(seen.1) > limit) {
            stalled.push(m.name.clone());
        }
    }
    let status = if parts.is_empty() { "no pipelines".to_owned() } else { parts.join("; ") };
    (status, starting, stalled)
}
