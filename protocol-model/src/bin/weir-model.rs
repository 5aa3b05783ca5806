//! `weir-model`: run the protocol models from the command line.
//!
//! - `weir-model check checkpoint [--scope NAME] [--mutant NAME]`: check every property;
//!   exit 0 only when all hold. With a mutant, stop at the first violation and print its
//!   trace.
//! - `weir-model check replication [--scope sync|sync-drift|sync-solo|async|sync-nightly|async-nightly]
//!   [--mutant NAME]`: the same for the replication model (two agents and a witness).
//! - `weir-model explore checkpoint [--mutant NAME] [--address ADDR]`: serve stateright's
//!   explorer (a web UI to walk the state space by hand).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use stateright::Model;
use weir_protocol::Mutant;
use weir_protocol_model::checkpoint::{CheckpointModel, Scope};
use weir_protocol_model::replication::{ReplicationModel, ReplicationScope};
use weir_protocol_model::{Search, Traced, check};

#[derive(Parser)]
#[command(name = "weir-model", about = "Model-check Weir's protocol core with stateright", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every property of a model; exit 0 only when all hold.
    Check {
        /// The model.
        model: ModelName,
        #[command(flatten)]
        options: ModelOptions,
        /// Checker threads for the exhaustive search.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// With a mutant, explore every state and report every property it violates, instead
        /// of stopping at the first violation with the shortest trace.
        #[arg(long)]
        exhaustive: bool,
    },
    /// Serve stateright's explorer for a model on localhost.
    Explore {
        /// The model.
        model: ModelName,
        #[command(flatten)]
        options: ModelOptions,
        /// Address to serve on.
        #[arg(long, default_value = "localhost:3000")]
        address: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    /// Barrier checkpoints, two-phase sink commit, global rollback, local recovery.
    Checkpoint,
    /// Two data agents and a witness: the lease register, replication modes, failover.
    Replication,
}

#[derive(clap::Args)]
struct ModelOptions {
    /// Switch on a deliberately broken variant: no-alignment, ack-before-durable,
    /// commit-before-complete, reset-seq-on-restore, no-dedup, truncate-at-snapshot,
    /// no-determinants, no-restart-gap, router-not-restored, end-not-restored,
    /// end-before-commit; with a failover scope no-epoch-check, promote-unsynced,
    /// standby-emits, standby-own-order or warm-drops-uncovered; with the replication model
    /// no-grace, takeover-before-expiry, async-reports-sync or partial-manifest.
    #[arg(long, value_name = "NAME")]
    mutant: Option<String>,
    /// Batches each source emits [default: the scope's, 2].
    #[arg(long)]
    batches: Option<u8>,
    /// Times the checkpoint interval fires [default: the scope's, 1; nightly 2].
    #[arg(long)]
    ticks: Option<u8>,
    /// Checkpoint timeouts the environment may cause [default: the scope's, 1].
    #[arg(long)]
    timeouts: Option<u8>,
    /// Crashes, each followed by a global rollback [default: the scope's, 1; local 0].
    #[arg(long)]
    crashes: Option<u8>,
    /// Local failures of the transform or the sink, each followed by a local recovery
    /// [default: the scope's, 0; local 1].
    #[arg(long)]
    local_crashes: Option<u8>,
    /// Start from a named scope instead of the default one; the other flags given override
    /// its fields. `local` is the local-recovery scope of CI.
    #[arg(long, value_enum)]
    scope: Option<ScopeName>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeName {
    /// Two batches per source, one interval, one timeout, one crash (CI).
    Default,
    /// One batch per source, one interval, no timeout, one local failure, no crash (CI).
    Local,
    /// A second interval checkpoint (nightly).
    Nightly,
    /// The local scope with two batches per source (nightly).
    LocalNightly,
    /// The local scope with a timeout and only the final checkpoint (CI).
    LocalAbort,
    /// The local scope with the transform's output round-robin over two channels and the end
    /// of input as a sequenced item (CI).
    Routing,
    /// The routing scope with a hash edge instead of round-robin (CI).
    Hash,
    /// The local scope with the end of input as a sequenced item (CI).
    EndOfInput,
    /// The local scope with a buffer budget of one batch (CI).
    Overflow,
    /// One batch per source, only the final checkpoint, a hot standby of the transform; its
    /// primary crashes or hangs once (CI).
    Failover,
    /// The failover scope with a warm standby; the primary crashes once, and the standby may
    /// crash once before (CI).
    FailoverWarm,
    /// Replication: `sync`, one lost message, one partition, one crash (CI).
    Sync,
    /// Replication: `sync`, drifting clocks and a partition (CI).
    SyncDrift,
    /// Replication: `sync`, two checkpoints, the owner going solo and leaving it (CI).
    SyncSolo,
    /// Replication: `async`, two checkpoints, one lost message, one crash (CI).
    Async,
    /// Replication: `sync`, drifting clocks, a partition and a crash (nightly).
    SyncNightly,
    /// Replication: `async` with drifting clocks (nightly).
    AsyncNightly,
}

impl ModelOptions {
    /// The named scope (or the default one) with every flag given on the command line applied.
    fn scope(&self) -> Scope {
        let base = match self.scope {
            None | Some(ScopeName::Default) => Scope::default(),
            Some(ScopeName::Local) => Scope::local(),
            Some(ScopeName::Nightly) => Scope::nightly(),
            Some(ScopeName::LocalNightly) => Scope::local_nightly(),
            Some(ScopeName::LocalAbort) => Scope::local_abort(),
            Some(ScopeName::Routing) => Scope::routing(),
            Some(ScopeName::Hash) => Scope::hash(),
            Some(ScopeName::EndOfInput) => Scope::end_of_input(),
            Some(ScopeName::Overflow) => Scope::overflow(),
            Some(ScopeName::Failover) => Scope::failover(),
            Some(ScopeName::FailoverWarm) => Scope::failover_warm(),
            Some(_) => Scope::default(),
        };
        Scope {
            batches_per_source: self.batches.unwrap_or(base.batches_per_source),
            ticks: self.ticks.unwrap_or(base.ticks),
            timeouts: self.timeouts.unwrap_or(base.timeouts),
            crashes: self.crashes.unwrap_or(base.crashes),
            local_crashes: self.local_crashes.unwrap_or(base.local_crashes),
            ..base
        }
    }

    fn model(&self) -> Result<(CheckpointModel, Option<Mutant>)> {
        if self.replication_scope().is_some() {
            bail!("--scope {} is a scope of the replication model", self.scope_name());
        }
        let model = CheckpointModel::new(self.scope());
        Ok(match self.mutant()? {
            None => (model, None),
            Some(m) => (model.with_mutant(m), Some(m)),
        })
    }

    fn mutant(&self) -> Result<Option<Mutant>> {
        match self.mutant.as_deref() {
            None => Ok(None),
            Some(name) => match Mutant::from_name(name) {
                Some(m) => Ok(Some(m)),
                None => {
                    let known: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                    bail!("unknown mutant \"{name}\" (known: {})", known.join(", "))
                }
            },
        }
    }

    fn scope_name(&self) -> String {
        self.scope.and_then(|s| s.to_possible_value()).map_or("default".into(), |v| v.get_name().to_string())
    }

    fn replication_scope(&self) -> Option<ReplicationScope> {
        match self.scope? {
            ScopeName::Sync => Some(ReplicationScope::sync()),
            ScopeName::SyncDrift => Some(ReplicationScope::sync_drift()),
            ScopeName::SyncSolo => Some(ReplicationScope::sync_solo()),
            ScopeName::Async => Some(ReplicationScope::asynchronous()),
            ScopeName::SyncNightly => Some(ReplicationScope::sync_nightly()),
            ScopeName::AsyncNightly => Some(ReplicationScope::async_nightly()),
            _ => None,
        }
    }

    /// The replication model of `--scope` (`sync` when none is given).
    fn replication(&self) -> Result<(ReplicationModel, Option<Mutant>)> {
        let scope = match (self.scope, self.replication_scope()) {
            (None, _) => ReplicationScope::sync(),
            (Some(_), Some(scope)) => scope,
            (Some(_), None) => bail!("--scope {} is a scope of the checkpoint model", self.scope_name()),
        };
        if self.batches.is_some()
            || self.ticks.is_some()
            || self.timeouts.is_some()
            || self.crashes.is_some()
            || self.local_crashes.is_some()
        {
            bail!("--batches, --ticks, --timeouts, --crashes and --local-crashes are the checkpoint model's");
        }
        let model = ReplicationModel::new(scope);
        Ok(match self.mutant()? {
            None => (model, None),
            Some(m) => (model.with_mutant(m), Some(m)),
        })
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir-model: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Check `model` (to the first violation with a mutant, unless `exhaustive`), print the
/// report, and exit 0 only when every property holds.
fn check_and_print<M: Traced>(model: M, mutant: Option<Mutant>, threads: usize, exhaustive: bool) -> ExitCode
where
    M::State: std::hash::Hash + Send + Sync + Clone + PartialEq + std::fmt::Debug + 'static,
    M::Action: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    if let Some(m) = mutant {
        println!("mutant: {}", m.name());
    }
    let search =
        if mutant.is_some() && !exhaustive { Search::FirstViolation } else { Search::Exhaustive { threads } };
    let report = check(model, search);
    print!("{report}");
    if report.all_hold() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { model: ModelName::Checkpoint, options, threads, exhaustive } => {
            let (model, mutant) = options.model()?;
            println!("model: checkpoint {:?}", model.scope);
            Ok(check_and_print(model, mutant, threads, exhaustive))
        }
        Command::Check { model: ModelName::Replication, options, threads, exhaustive } => {
            let (model, mutant) = options.replication()?;
            println!("model: replication {:?}", model.scope);
            Ok(check_and_print(model, mutant, threads, exhaustive))
        }
        Command::Explore { model: ModelName::Replication, options, address } => {
            let (model, _) = options.replication()?;
            println!("serving the explorer of the replication model on http://{address}");
            model.checker().serve(address.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Explore { model: ModelName::Checkpoint, options, address } => {
            let (model, _) = options.model()?;
            println!("serving the explorer of the checkpoint model on http://{address}");
            model.checker().serve(address.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}
