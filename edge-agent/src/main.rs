//! `weir`: run and validate stream-processing pipelines described in TOML.
//!
//! Exit codes: 0 success (also a run stopped at a checkpoint by SIGTERM or SIGINT); 1 the
//! run failed (storage, I/O, bad input data); 2 a bad config or bad flags; 143 or 130 a
//! second SIGTERM or SIGINT stopped it at once.

mod config;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_runtime::pipeline::faults::Injection;
use weir_runtime::pipeline::run::{Progress, ProgressFn, RunError, RunReport, StopRequest, run};
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
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
        Command::Run { config, data_dir, report, inject } => {
            let spec = match config::load(&config, data_dir.as_deref()) {
                Ok(spec) => spec,
                Err(e) => return fail(2, e),
            };
            let faults = match faults(&spec, &inject) {
                Ok(faults) => faults,
                Err(e) => return fail(2, e),
            };
            match run_pipeline(&spec, report, &faults) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, format!("{e:#}")),
            }
        }
    }
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
            fault.check_node(&node.kind).map_err(|e| format!("--inject {text}: {e}"))?;
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
    let stop = stop_on_signals()?;
    let outcome = match run(spec, progress, faults, &stop) {
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
    if let Some(signal) = &outcome.stopped {
        let at =
            outcome.stopped_at.map_or("before the first checkpoint".into(), |c| format!("at checkpoint {c}"));
        eprintln!("weir: {signal}: stopped {at}; run the same command to resume");
    }
    let ended = if outcome.stopped.is_some() { "the run stopped first" } else { "the run ended first" };
    for fault in outcome.injections.iter().filter(|f| !f.fired) {
        eprintln!("weir: warning: --inject {} did not fire ({ended})", fault.fault);
    }
    Ok(())
}

/// The first SIGTERM or SIGINT stops the run at a checkpoint (exit 0); a second one exits at
/// once, as kill -9 would, which the log survives. SIGHUP is ignored: a closed terminal or
/// a reload request must not throw away work.
fn stop_on_signals() -> anyhow::Result<Arc<StopRequest>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    let stop = Arc::new(StopRequest::default());
    let request = stop.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let name = match signal {
                SIGTERM => "SIGTERM",
                SIGINT => "SIGINT",
                _ => {
                    tracing::info!("SIGHUP ignored");
                    continue;
                }
            };
            if request.request(name) {
                tracing::info!("{name}: stopping at the next checkpoint (again to stop at once)");
            } else {
                eprintln!("weir: {name} again: stopped at once; run the same command to resume");
                signal_hook::low_level::exit(128 + signal);
            }
        }
    });
    Ok(stop)
}
