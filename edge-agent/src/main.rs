//! `weir`: run and validate stream-processing pipelines described in TOML.
//!
//! Exit codes: 0 success; 1 the run failed (storage, I/O, bad input data); 2 a bad config
//! or bad flags.

mod config;
mod sigbus;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_runtime::log::LogError;
use weir_runtime::pipeline::faults::Injection;
use weir_runtime::pipeline::run::{Progress, ProgressFn, RunError, RunReport, run};
use weir_runtime::pipeline::spec::PipelineSpec;

#[derive(Parser)]
#[command(name = "weir", version, about = "Exactly-once stream processing for edge hosts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its sources are exhausted. Run it again after a crash or kill -9
    /// to resume from the last completed checkpoint.
    Run {
        /// The pipeline config (TOML).
        config: PathBuf,
        /// Where the log lives (overrides `data_dir` in the config).
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Write a JSON run report to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Inject a fault (repeatable), for tests and chaos drills: `KIND:NODE:N` fires once in
        /// subtask 0 of NODE (`KIND:NODE/S:N` in subtask S). `panic`: after N records;
        /// `snapshot`: inside its N-th snapshot; `commit`: a sink, between pre-commit and its
        /// N-th commit; `write-error`: its N-th log write fails.
        #[arg(long, value_name = "FAULT")]
        inject: Vec<String>,
        /// Start afresh: remove what the data directory holds (the checkpoints of an earlier
        /// run, possibly of a different pipeline) and write the output again from the start.
        #[arg(long)]
        fresh: bool,
    },
    /// Check a pipeline config without running it.
    Validate {
        /// The pipeline config (TOML).
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                // Quiet unless asked: a failure is the one `weir: ` line on stderr.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    // Panics in operator code are caught and healed by the supervisor, which logs them; the
    // default hook would print a backtrace for each. Keep one line, with the location.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    match cli.command {
        Command::Validate { config } => match config::load(&config, None) {
            Ok(spec) => {
                println!("{}: ok ({} nodes)", config.display(), spec.nodes.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
        Command::Run { config, data_dir, report, inject, fresh } => {
            let spec = match config::load(&config, data_dir.as_deref()) {
                Ok(spec) => spec,
                Err(e) => return fail(2, e),
            };
            let faults = match faults(&spec, &inject) {
                Ok(faults) => faults,
                Err(e) => return fail(2, e),
            };
            sigbus::explain_as_damaged_log(&spec.data_dir);
            match run_pipeline(&spec, report, &faults, fresh) {
                Ok(()) => ExitCode::SUCCESS,
                // Another process holds the data directory, or it belongs to another pipeline:
                // usage mistakes, as a bad flag is.
                Err(e)
                    if matches!(
                        e.downcast_ref(),
                        Some(RunError::Log(LogError::Locked { .. } | LogError::OtherPipeline { .. }))
                    ) =>
                {
                    fail(2, causes(&e))
                }
                Err(e) => fail(1, causes(&e)),
            }
        }
    }
}

/// An error and its causes on one line, each cause once: a cause whose text its message
/// already contains (`log: cannot open X: MDB_INVALID` over `MDB_INVALID`) is not repeated.
fn causes(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn fail(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("weir: {error}");
    ExitCode::from(code)
}

/// `--inject` values, checked against the pipeline.
fn faults(spec: &PipelineSpec, inject: &[String]) -> Result<Vec<Arc<Injection>>, String> {
    inject
        .iter()
        .map(|text| {
            let fault = Injection::parse(text).map_err(|e| format!("--inject: {e}"))?;
            let node = spec
                .nodes
                .iter()
                .find(|n| n.name == fault.node)
                .ok_or_else(|| format!("--inject {text}: no node \"{}\" in the pipeline", fault.node))?;
            if fault.subtask >= node.parallelism {
                return Err(format!(
                    "--inject {text}: node \"{}\" has {} subtask(s), numbered from 0",
                    fault.node, node.parallelism
                ));
            }
            Ok(Arc::new(fault))
        })
        .collect()
}

fn write_report(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(report).context("encoding the report")?;
    json.push(b'\n');
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&json))
        .with_context(|| format!("cannot write report {}", path.display()))
}

fn run_pipeline(
    spec: &PipelineSpec,
    report: Option<PathBuf>,
    faults: &[Arc<Injection>],
    fresh: bool,
) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let progress: Option<ProgressFn> = terminal.then(|| {
        Arc::new(|p: Progress| {
            let rate = p.records as f64 / p.elapsed.as_secs_f64().max(1e-3);
            eprint!(
                "\r{} records, {:.0} records/s, last checkpoint {}   ",
                p.records, rate, p.last_checkpoint
            );
        }) as ProgressFn
    });
    let outcome = match run(spec, progress, faults, fresh) {
        Ok(outcome) => outcome,
        Err(RunError::Escalated { message, report: partial }) => {
            if let Some(path) = &report {
                write_report(path, &partial)?;
            }
            anyhow::bail!("{message}");
        }
        Err(e) => return Err(e).context("run failed"),
    };
    if terminal {
        eprintln!();
    }
    let records: u64 = outcome.nodes.iter().filter(|n| n.records_in == 0).map(|n| n.records_out).sum();
    tracing::info!(
        "done: {records} records in {} ms, {} checkpoints{}",
        outcome.wall_ms,
        outcome.checkpoints.len(),
        outcome.restored_from.map(|c| format!(", resumed from checkpoint {c}")).unwrap_or_default()
    );
    if let Some(path) = report {
        write_report(&path, &outcome)?;
    }
    Ok(())
}
