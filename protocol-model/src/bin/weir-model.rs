//! `weir-model`: run the protocol models from the command line.
//!
//! - `weir-model check checkpoint [--mutant NAME]`: check every property; exit 0 only when
//!   all hold. With a mutant, stop at the first violation and print its trace.
//! - `weir-model explore checkpoint [--mutant NAME] [--address ADDR]`: serve stateright's
//!   explorer (a web UI to walk the state space by hand).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use stateright::Model;
use weir_protocol_model::checkpoint::{CheckpointModel, Scope};
use weir_protocol_model::{Search, check};
use weir_runtime::protocol::Mutant;

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
    /// Barrier checkpoints, two-phase sink commit, global rollback.
    Checkpoint,
}

#[derive(clap::Args)]
struct ModelOptions {
    /// Switch on a deliberately broken variant: no-alignment, ack-before-durable,
    /// commit-before-complete or reset-seq-on-restore.
    #[arg(long, value_name = "NAME")]
    mutant: Option<String>,
    /// Batches each source emits.
    #[arg(long, default_value_t = Scope::default().batches_per_source)]
    batches: u8,
    /// Times the checkpoint interval fires.
    #[arg(long, default_value_t = Scope::default().ticks)]
    ticks: u8,
    /// Checkpoint timeouts the environment may cause.
    #[arg(long, default_value_t = Scope::default().timeouts)]
    timeouts: u8,
    /// Crashes (each followed by a global rollback).
    #[arg(long, default_value_t = Scope::default().crashes)]
    crashes: u8,
}

impl ModelOptions {
    fn model(&self) -> Result<(CheckpointModel, Option<Mutant>)> {
        let scope = Scope {
            batches_per_source: self.batches,
            ticks: self.ticks,
            timeouts: self.timeouts,
            crashes: self.crashes,
        };
        let model = CheckpointModel::new(scope);
        match self.mutant.as_deref() {
            None => Ok((model, None)),
            Some(name) => match Mutant::from_name(name) {
                Some(m) => Ok((model.with_mutant(m), Some(m))),
                None => {
                    let known: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                    bail!("unknown mutant \"{name}\" (known: {})", known.join(", "))
                }
            },
        }
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { model: ModelName::Checkpoint, options, threads, exhaustive } => {
            let (model, mutant) = options.model()?;
            println!("model: checkpoint {:?}", model.scope);
            if let Some(m) = mutant {
                println!("mutant: {}", m.name());
            }
            let search = if mutant.is_some() && !exhaustive {
                Search::FirstViolation
            } else {
                Search::Exhaustive { threads }
            };
            let report = check(model, search);
            print!("{report}");
            Ok(if report.all_hold() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Explore { model: ModelName::Checkpoint, options, address } => {
            let (model, _) = options.model()?;
            println!("serving the explorer of the checkpoint model on http://{address}");
            model.checker().serve(address.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}
