//! A running `weir agent` for the end-to-end tests: started on a free loopback port, read
//! through its own `/status` and `/metrics`, signalled, killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_edge_agent::agent::status;

use crate::weir_bin;

/// How long a condition may take before a test gives up: a hang, not a slow machine.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A free loopback port (bound, then released for the agent), below the kernel's range of
/// ephemeral ports: a port picked from that range may be taken before the agent binds it by
/// any outgoing connection, even by a connection to that very port (a TCP self-connect
/// while an agent that will listen there is down: agents keep reconnecting to their peers).
/// The replication test's async case failed once that way in a clean clone.
pub fn free_addr() -> std::net::SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // Ports 10000..low, from a start that differs between test processes.
    let span = low.saturating_sub(10_000).max(1);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span.min(2000) {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 10_000 + (start + offset.wrapping_mul(97)) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr().expect("its address");
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// A running agent.
pub struct Agent {
    child: Child,
    /// Its HTTP address.
    pub addr: std::net::SocketAddr,
    /// Where its stderr goes.
    stderr: tempfile::NamedTempFile,
}

impl Agent {
    /// `weir agent --config-dir conf` on a free port, once its endpoint answers.
    pub fn start(conf: &Path) -> Agent {
        Agent::start_with_env(conf, &[])
    }

    /// [`Agent::start`] with environment variables `env` set (a config's `${VAR}`s).
    pub fn start_with_env(conf: &Path, env: &[(&str, &str)]) -> Agent {
        Agent::start_with(conf, env, &[])
    }

    /// [`Agent::start`] with environment variables `env` and more arguments `args`.
    ///
    /// The port is free when picked, but another process may take it before the agent binds
    /// it (an outgoing connection's ephemeral port): an agent that exits before it answers
    /// is started again on another port, three times at most; its stderr is in the panic.
    pub fn start_with(conf: &Path, env: &[(&str, &str)], args: &[&str]) -> Agent {
        for _ in 0..3 {
            let addr = free_addr();
            let stderr = tempfile::NamedTempFile::new().expect("a file for stderr");
            let child = Command::new(weir_bin())
                .envs(env.iter().copied())
                .args(["agent", "--config-dir"])
                .arg(conf)
                .arg("--http")
                .arg(addr.to_string())
                .args(args)
                .stdout(Stdio::null())
                .stderr(stderr.reopen().expect("stderr file"))
                .spawn()
                .expect("weir agent starts");
            let mut agent = Agent { child, addr, stderr };
            let start = Instant::now();
            loop {
                if agent.status().is_some() {
                    return agent;
                }
                if let Some(code) = agent.child.try_wait().expect("the agent's exit status") {
                    let stderr = agent.stderr();
                    assert!(
                        stderr.contains("in use"),
                        "the agent exited ({code}) before its endpoint answered: {stderr}"
                    );
                    eprintln!("agent: {addr} was taken before the agent bound it; another port");
                    break;
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "waited {PATIENCE:?} for the HTTP endpoint: {}",
                    agent.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("three free ports were taken before the agent could bind them")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// `kill -9`, and wait for it.
    pub fn kill_9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Its `/status`, if it answers.
    pub fn status(&self) -> Option<Value> {
        status::fetch(self.addr).ok()
    }

    /// One pipeline's entry in `/status`.
    pub fn pipeline(&self, name: &str) -> Option<Value> {
        let status = self.status()?;
        status["pipelines"].as_array()?.iter().find(|p| p["name"] == name).cloned()
    }

    /// Wait until `done` holds for the agent's status; the status then.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(status) = self.status()
                && done(&status)
            {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}; status: {:?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `done` holds for pipeline `name`; its entry then.
    pub fn wait_for_pipeline(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let status = self.wait_for(&format!("{name}: {what}"), |s| {
            s["pipelines"].as_array().into_iter().flatten().any(|p| p["name"] == name && done(p))
        });
        status["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
    }

    /// Send it `signal`.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill");
    }

    /// SIGTERM; the exit code and stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("the agent exits");
        (status.code(), self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records read by a pipeline's sources, from its `/status` entry.
pub fn source_out(p: &Value) -> u64 {
    let subtasks = p["subtasks"].as_array().unwrap();
    subtasks.iter().filter(|s| s["kind"] == "source").map(|s| s["records_out"].as_u64().unwrap()).sum()
}

/// Records written by a pipeline's sinks, from its `/status` entry.
pub fn sink_out(p: &Value) -> u64 {
    let subtasks = p["subtasks"].as_array().unwrap();
    subtasks.iter().filter(|s| s["kind"] == "sink").map(|s| s["records_out"].as_u64().unwrap()).sum()
}

/// The value of the sample `name{labels}` in OpenMetrics text.
pub fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}
