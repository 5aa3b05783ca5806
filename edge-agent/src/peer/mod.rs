//! Agents talking to agents (SPEC §12): links with mutual TLS and pinned certificates
//! ([`tls`], [`link`]), framed messages ([`wire`]), the durable register acceptors
//! ([`store`]) and the witness, an agent that is an acceptor and nothing else ([`witness`]).
//!
//! The data agents' side: [`service`] (the links and ticks) and [`replicated`] (one
//! pipeline's register member, its owner's tap and its replica). Every lease is timed on a
//! [`Clock`], which the simulation (`sim/`) replaces by its own.

pub mod link;
pub mod replicated;
pub mod service;
pub mod store;
pub mod tls;
pub mod wire;
pub mod witness;

/// Runs `work` (a disk write) on tokio's blocking threads, or on the calling task when
/// `inline` (the seeded simulation: one thread, so a run does not depend on when a real
/// thread finishes).
pub(crate) async fn on_disk<R: Send + 'static>(
    inline: bool,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    if inline { Ok(work()) } else { tokio::task::spawn_blocking(work).await }
}

/// An agent's monotonic clock, in milliseconds since the agent started: every lease is timed
/// on it. The agent's is [`Clock::monotonic`]; the simulation gives each agent a simulated
/// one that runs at its own rate (clock drift).
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The machine's monotonic clock, from now.
    pub fn monotonic() -> Clock {
        let start = std::time::Instant::now();
        Clock::new(move || start.elapsed().as_millis() as u64)
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(std::sync::Arc::new(now))
    }

    /// Milliseconds since it started.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}
