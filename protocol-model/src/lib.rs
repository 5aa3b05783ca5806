//! # weir-protocol-model
//!
//! Stateright models that drive `weir-runtime`'s own protocol core (`runtime/protocol/src/`)
//! through every interleaving of a small pipeline, with crashes, and check the properties
//! stated in this crate's README. The model holds the runtime's types, not a copy of them:
//! when the protocol changes, the model checks the change.
//!
//! - [`checkpoint`]: the checkpoint model (sources, a two-input subtask, a sink, the
//!   coordinator; global rollback after a crash, local recovery after a failure of the
//!   transform or the sink).
//! - [`failover`]: its failover scopes' part (a standby of the transform, the epoch
//!   authority, a crashed or hung primary).
//! - [`props`]: its properties.
//! - [`replication`]: the replication model (two data agents and a witness; the lease
//!   register, replication modes, crashes, partitions, lost messages and clock drift).
//! - [`check`]: runs a checker and turns its result into a [`Report`] with readable traces.
//! - [`fuzzing`]: the same model driven by arbitrary bytes, for cargo-fuzz and its corpus.

pub mod checkpoint;
pub mod failover;
pub mod fuzzing;
pub mod props;
pub mod replication;

use std::fmt::Write as _;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, HasDiscoveries, Model};

use checkpoint::{Action, CheckpointModel, Log, State};

/// The outcome of one property.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The property's name, as in the README.
    pub name: &'static str,
    /// `always` (a safety or terminal-state property) or `sometimes` (a witness).
    pub sometimes: bool,
    /// Whether the property holds: no counterexample for `always`, a witness for `sometimes`.
    pub holds: bool,
    /// For a violated `always` property, the counterexample as numbered steps.
    pub trace: Option<String>,
}

/// What a check found.
#[derive(Clone, Debug)]
pub struct Report {
    /// States generated, repeats included.
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The longest path explored.
    pub max_depth: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether every reachable state was explored (false when stopped at a violation).
    pub exhaustive: bool,
    /// One outcome per property.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Whether every property holds.
    pub fn all_hold(&self) -> bool {
        self.outcomes.iter().all(|o| o.holds)
    }

    /// The names of the `always` properties that were violated.
    pub fn violated(&self) -> Vec<&'static str> {
        self.outcomes.iter().filter(|o| !o.holds && !o.sometimes).map(|o| o.name).collect()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = if self.exhaustive { "whole state space" } else { "stopped at the first violation" };
        writeln!(
            f,
            "states explored: {}\nunique states: {}\nmax depth: {}\nseconds: {:.2}\nexploration: {scope}",
            self.states,
            self.unique_states,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )?;
        for o in &self.outcomes {
            let verdict = match (o.sometimes, o.holds) {
                (false, true) => "holds",
                (false, false) => "VIOLATED",
                (true, true) => "witnessed",
                (true, false) if self.exhaustive => "NEVER WITNESSED",
                (true, false) => "not witnessed (search stopped early)",
            };
            writeln!(f, "  {verdict:<16} {}", o.name)?;
        }
        for o in self.outcomes.iter().filter(|o| o.trace.is_some()) {
            writeln!(f, "\ncounterexample for \"{}\":", o.name)?;
            f.write_str(o.trace.as_deref().unwrap_or_default())?;
        }
        Ok(())
    }
}

/// How to search.
#[derive(Clone, Copy, Debug)]
pub enum Search {
    /// Depth-first on `threads` threads over every reachable state: the exhaustive check.
    Exhaustive {
        /// Checker threads.
        threads: usize,
    },
    /// Breadth-first on one thread, stopping at the first violation: short counterexamples.
    FirstViolation,
}

/// A model whose paths can be told as numbered steps.
pub trait Traced: Model + Clone + Send + Sync + 'static
where
    Self::State: Hash + Send + Sync + Clone + PartialEq + std::fmt::Debug + 'static,
    Self::Action: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    /// What taking `action` from `state` does, one line per effect (the first says what the
    /// environment did).
    fn explain(&self, state: &Self::State, action: &Self::Action) -> Vec<String>;

    /// A path (each state with the action taken from it) as numbered steps.
    fn trace_path(&self, path: Vec<(Self::State, Option<Self::Action>)>) -> String {
        let mut out = String::new();
        let mut n = 0;
        for (state, action) in path {
            let Some(action) = action else { continue };
            n += 1;
            let mut lines = self.explain(&state, &action).into_iter();
            let head = lines.next().unwrap_or_else(|| format!("{action:?}"));
            let _ = writeln!(out, "{n:>3}. {head}");
            for line in lines {
                let _ = writeln!(out, "       {line}");
            }
        }
        out
    }
}

impl Traced for CheckpointModel {
    fn explain(&self, state: &State, action: &Action) -> Vec<String> {
        let mut next = state.clone();
        let mut log = Log::recording();
        self.step(&mut next, action, &mut log);
        log.lines
    }
}

impl Traced for replication::ReplicationModel {
    fn explain(&self, state: &replication::State, action: &replication::Action) -> Vec<String> {
        let mut next = state.clone();
        let mut lines = Vec::new();
        self.step(&mut next, action, &mut lines);
        lines
    }
}

/// Run a model's checker and report every property.
pub fn check<M: Traced>(model: M, search: Search) -> Report
where
    M::State: Hash + Send + Sync + Clone + PartialEq + std::fmt::Debug + 'static,
    M::Action: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    let start = Instant::now();
    let properties = model.properties();
    let builder = model.clone().checker();
    let (states, unique_states, max_depth, discoveries, done) = match search {
        Search::Exhaustive { threads } => {
            let c = builder.threads(threads).spawn_dfs().join();
            (c.state_count(), c.unique_state_count(), c.max_depth(), c.discoveries(), c.is_done())
        }
        Search::FirstViolation => {
            let c = builder.finish_when(HasDiscoveries::AnyFailures).spawn_bfs().join();
            (c.state_count(), c.unique_state_count(), c.max_depth(), c.discoveries(), c.is_done())
        }
    };
    let any_failure =
        properties.iter().any(|p| p.expectation.discovery_is_failure() && discoveries.contains_key(p.name));
    let outcomes = properties
        .iter()
        .map(|p| {
            let sometimes = matches!(p.expectation, Expectation::Sometimes);
            let found = discoveries.get(p.name);
            Outcome {
                name: p.name,
                sometimes,
                holds: found.is_some() == sometimes,
                trace: found.filter(|_| !sometimes).map(|path| model.trace_path(path.clone().into_vec())),
            }
        })
        .collect();
    Report {
        states,
        unique_states,
        max_depth,
        elapsed: start.elapsed(),
        exhaustive: done && (matches!(search, Search::Exhaustive { .. }) || !any_failure),
        outcomes,
    }
}

/// A path of the checkpoint model as numbered steps: what the environment did, then what
/// each node did in response.
pub fn trace(model: &CheckpointModel, steps: impl IntoIterator<Item = (State, Option<Action>)>) -> String {
    model.trace_path(steps.into_iter().collect())
}
