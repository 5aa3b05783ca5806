//! `weir`: run and validate stream-processing pipelines described in TOML, or run a folder of
//! them as an agent (`weir agent`) and look at it (`weir status`, `weir top`).
//!
//! Exit codes: 0 success (also a run stopped at a checkpoint by SIGTERM or SIGINT); 1 the
//! run failed (storage, I/O, bad input data); 2 a bad config or bad flags; 143 or 130 a
//! second SIGTERM or SIGINT stopped it at once.

mod sigbus;

use weir_edge_agent::{agent, config};

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_runtime::log::LogError;
use weir_runtime::pipeline::faults::Injection;
use weir_runtime::pipeline::run::{Observe, Progress, ProgressFn, RunError, RunReport, StopRequest, run};
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
        /// N-th commit; `write-error`: its N-th log write fails; `credit`: a source or
        /// transform panics as it handles its N-th flow-control credit; `hang`: after N records
        /// its thread blocks for 3 s (with a standby, the progress timeout has it taken over).
        #[arg(long, value_name = "FAULT")]
        inject: Vec<String>,
        /// Start afresh: remove what the data directory holds (the checkpoints of an earlier
        /// run, possibly of a different pipeline) and write the output again from the start.
        #[arg(long)]
        fresh: bool,
    },
    /// Check a pipeline config without running it: its keys, wiring and schemas, and what this
    /// machine must provide (input files, the data directory, address space for the log).
    Validate {
        /// The pipeline config (TOML).
        config: PathBuf,
        /// The data directory to check, as `run --data-dir` (overrides `data_dir` in the config).
        #[arg(long, env = "WEIR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Also say how each transform recovers from a failure: which has a standby, which
        /// `recovery.key_operator = "auto"` would choose, and why.
        #[arg(long)]
        explain: bool,
    },
    /// Run every pipeline (`*.toml`) in a folder until SIGTERM or SIGINT, each isolated, with
    /// metrics and status over HTTP. SIGHUP reads the folder again: added pipelines start,
    /// removed ones stop, changed ones restart.
    Agent {
        /// The folder of pipeline configs.
        #[arg(long, value_name = "DIR")]
        config_dir: PathBuf,
        /// Where to serve /metrics, /healthz, /readyz and /status (default: node.toml's
        /// `http`, else 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR:PORT")]
        http: Option<std::net::SocketAddr>,
        /// How long SIGTERM waits for the pipelines' final checkpoints before exiting anyway
        /// (the logs survive; each pipeline resumes from its last completed checkpoint).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        stop_timeout: u64,
        /// Inject a fault into every run of one pipeline (repeatable), for tests and chaos
        /// drills: `PIPELINE=FAULT`, FAULT as `weir run --inject` takes it.
        #[arg(long, value_name = "PIPELINE=FAULT", value_parser = pipeline_fault)]
        inject: Vec<(String, String)>,
    },
    /// Make a self-signed certificate and key for agent NAME (NAME.crt, NAME.key), for the
    /// peer links of node.toml: give NAME.crt to every peer (`[peers.NAME] cert`), keep
    /// NAME.key on NAME's box.
    Cert {
        /// The agent's name, as node.toml's `name` has it.
        name: String,
        /// Where to write the two files.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Run a witness: the third voter for two data agents' pipelines (it keeps only their
    /// ownership registers, no data), as set in DIR/node.toml.
    Witness {
        /// The folder holding node.toml.
        #[arg(long, value_name = "DIR")]
        config_dir: PathBuf,
    },
    /// Make this agent the owner of replicated PIPELINE, whose owner is gone: with
    /// `failover = "manual"` (the default with two agents) nothing takes over until a person
    /// runs this on the survivor. Refused while the owner is seen renewing its lease. From
    /// then on this agent decides alone: a returning agent follows it (re-seeded).
    Promote {
        /// The pipeline's name (its config file's stem).
        pipeline: String,
        /// The agent's HTTP address (its node.toml `http`); only loopback is accepted.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_HTTP)]
        http: std::net::SocketAddr,
    },
    /// Print a running agent's status.
    Status {
        /// The agent's HTTP address.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_HTTP)]
        http: std::net::SocketAddr,
        /// Print the agent's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// A running agent's status, refreshed every second, with rates (Ctrl-C to quit).
    Top {
        /// The agent's HTTP address.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_HTTP)]
        http: std::net::SocketAddr,
    },
}

/// The agent's HTTP address unless told otherwise: loopback only.
const DEFAULT_HTTP: &str = "127.0.0.1:9464";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: their text, to stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(2, cli_error(&e)),
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
        Command::Validate { config, .. } if config.file_name().is_some_and(|n| n == config::node::FILE) => {
            let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            match config::node::load(dir) {
                Ok(Some(node)) => {
                    let voters = node.voters().join(", ");
                    println!("{}: ok (agent {}, voters {voters})", config.display(), node.name);
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    fail(2, format!("config: cannot read {}: No such file or directory", config.display()))
                }
                Err(e) => fail(2, e),
            }
        }
        Command::Validate { config, data_dir, explain } => match config::load(&config, data_dir.as_deref()) {
            Ok(spec) => {
                println!("{}: ok ({} nodes)", config.display(), spec.nodes.len());
                if explain {
                    config::explain(&spec).iter().for_each(|line| println!("{line}"));
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
        Command::Agent { config_dir, http, stop_timeout, inject } => {
            let stop_timeout = Duration::from_secs(stop_timeout);
            let http = match http {
                Some(http) => http,
                None => match config::node::load(&config_dir) {
                    Ok(node) => node
                        .and_then(|n| n.http)
                        .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("a valid address")),
                    Err(e) => return fail(2, e),
                },
            };
            let options = agent::Options { config_dir, http, stop_timeout, inject };
            match agent::run_agent(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, causes(&e)),
            }
        }
        Command::Cert { name, out } => match agent::witness::cert(&name, &out) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
        Command::Witness { config_dir } => match agent::witness::run(&config_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, causes(&e)),
        },
        Command::Promote { pipeline, http } => {
            match agent::status::request(http, "POST", &format!("/promote/{pipeline}")) {
                Ok(answer) => {
                    print!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, format!("promote {pipeline}: {}", causes(&e))),
            }
        }
        Command::Status { http, json } => match agent::status::fetch(http) {
            Ok(status) if json => {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(status) => {
                print!("{}", agent::status::render(&status, None));
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, causes(&e)),
        },
        Command::Top { http } => match agent::status::top(http, Duration::from_secs(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, causes(&e)),
        },
        Command::Run { config, data_dir, report, inject, fresh } => {
            let spec = match config::load(&config, data_dir.as_deref()) {
                Ok(spec) => spec,
                Err(e) => return fail(2, e),
            };
            if spec.replication.is_some() {
                // weir run holds no ownership: beside an agent that owns the pipeline, both
                // would write its sinks.
                return fail(
                    2,
                    format!(
                        "config: {}: a pipeline with [replication] runs under `weir agent` only (weir run would write its sinks without owning it)",
                        config.display()
                    ),
                );
            }
            let faults = match Injection::parse_all(&spec, &inject) {
                Ok(faults) => faults,
                Err(e) => return fail(2, e),
            };
            sigbus::explain_as_damaged_log(&spec.data_dir);
            // Panics in operator code are caught where they happen; one that reaches this far
            // is a bug in weir, and still gets its one line (the hook above is silent).
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_pipeline(&spec, report, &faults, fresh)
            }))
            .unwrap_or_else(|payload| {
                let message = weir_runtime::actors::panic_message(&*payload);
                Err(anyhow::anyhow!("internal error (a bug in weir, please report it): {message}"))
            });
            match outcome {
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

/// Prints `weir: {error}` as exactly one line: control characters in it (a path or a value
/// may hold a line break or a terminal escape) are shown escaped, never sent to the terminal.
fn fail(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("weir: {}", escape_controls(&error.to_string()));
    ExitCode::from(code)
}

/// `text` with every control character written as an escape: `\n`, `\r`, `\t`, `\x1b`, `\u{85}`.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A command-line mistake as one line: clap's message, its tips, and the usage of the
/// (sub)command, without the blank lines and the pointer to `--help` around them.
fn cli_error(error: &clap::Error) -> String {
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let names: Vec<String> = <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        let (last, first) = names.split_last().expect("weir has subcommands");
        let names = if first.is_empty() { last.clone() } else { format!("{} or {last}", first.join(", ")) };
        return format!("missing subcommand: expected {names}; see weir --help");
    }
    // `render` is plain text (clap drops terminal escapes); its lines are "error: ...",
    // indented details and tips, "Usage: ..." and "For more information, try '--help'.". Any
    // other line was cut from the one before by a line break inside an argument, and is put
    // back with it (for `fail` to show escaped).
    let text = error.render().to_string();
    let mut message = String::new();
    for raw in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("For more information")) {
        let line = raw.trim();
        let (separator, part) = if let Some(usage) = raw.strip_prefix("Usage: ") {
            ("; ", format!("usage: {usage}"))
        } else if let Some(first) = raw.strip_prefix("error: ") {
            ("", first.to_owned())
        } else if !raw.starts_with(char::is_whitespace) {
            ("\n", raw.to_owned())
        } else if line.starts_with("tip: ") {
            ("; ", line.to_owned())
        } else if message.ends_with(':') {
            (" ", line.to_owned())
        } else {
            (", ", line.to_owned())
        };
        if !message.is_empty() {
            message.push_str(separator);
        }
        message.push_str(&part);
    }
    message
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
    let stop = stop_on_signals()?;
    let outcome = match run(spec, &Observe { progress, live: None, tap: None }, faults, &stop, fresh) {
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

/// `weir agent --inject PIPELINE=FAULT`.
fn pipeline_fault(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((pipeline, fault)) if !pipeline.is_empty() && !fault.is_empty() => {
            Ok((pipeline.to_owned(), fault.to_owned()))
        }
        _ => Err(format!("expected PIPELINE=FAULT (e.g. bad=panic:windows:1000), found {text:?}")),
    }
}
