//! `weir`: run and validate stream-processing pipelines described in TOML.
//!
//! Exit codes: 0 success; 1 the run failed (storage, I/O, bad input data); 2 a bad config
//! or bad flags.

mod config;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_runtime::pipeline::run::{Progress, ProgressFn, run};

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
    match cli.command {
        Command::Validate { config } => match config::load(&config, None) {
            Ok(spec) => {
                println!("{}: ok ({} nodes)", config.display(), spec.nodes.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
        Command::Run { config, data_dir, report } => {
            let spec = match config::load(&config, data_dir.as_deref()) {
                Ok(spec) => spec,
                Err(e) => return fail(2, e),
            };
            match run_pipeline(&spec, report) {
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

fn run_pipeline(
    spec: &weir_runtime::pipeline::spec::PipelineSpec,
    report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let progress: Option<ProgressFn> = terminal.then(|| {
        Box::new(|p: Progress| {
            let rate = p.records as f64 / p.elapsed.as_secs_f64().max(1e-3);
            eprint!(
                "\r{} records, {:.0} records/s, last checkpoint {}   ",
                p.records, rate, p.last_checkpoint
            );
        }) as ProgressFn
    });
    let outcome = run(spec, progress).context("run failed")?;
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
        let mut json = serde_json::to_vec_pretty(&outcome).context("encoding the report")?;
        json.push(b'\n');
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&json))
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(())
}
