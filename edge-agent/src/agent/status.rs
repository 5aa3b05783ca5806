//! `weir status` and `weir top`: the agent's `/status` for a person. The client is a plain
//! HTTP/1.1 GET over loopback (the endpoint is the agent's own; no TLS, no redirects), so
//! the `weir` binary needs no HTTP client library for it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// `GET path` from the agent at `addr`: the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(addr, "GET", path)
}

/// `method path` to the agent at `addr`: the body of a 200 answer (any other is an error
/// carrying the agent's one-line reason).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| {
        format!("no agent answers on {addr} (is `weir agent` running, with this --http?)")
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8(raw).with_context(|| format!("{addr}{path}: the answer is not UTF-8"))?;
    let (head, body) =
        text.split_once("\r\n\r\n").with_context(|| format!("{addr}{path}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status == "409" {
        // The agent refused (promote): its reason is the message.
        anyhow::bail!("{}", body.trim());
    }
    if status != "200" {
        anyhow::bail!("{addr}{path}: HTTP {status}: {}", body.trim());
    }
    // tiny_http answers with a length, or chunked for a long body.
    if head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")) {
        return dechunk(body).with_context(|| format!("{addr}{path}: a broken chunked answer"));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// The agent's status, parsed.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<Value> {
    let body = get(addr, "/status")?;
    serde_json::from_str(&body).with_context(|| format!("{addr}/status: not the agent's JSON"))
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Records read by a pipeline's sources and written by its sinks.
fn flow(p: &Value) -> (u64, u64) {
    let subtasks = p.get("subtasks").and_then(Value::as_array).cloned().unwrap_or_default();
    let out = |kind: &str| -> u64 {
        subtasks
            .iter()
            .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
            .map(|s| u(s, "records_out"))
            .sum()
    };
    (out("source"), out("sink"))
}

/// The status as a table, one line per pipeline; `previous` (the status `seconds` ago) adds
/// rates.
pub fn render(status: &Value, previous: Option<(&Value, f64)>) -> String {
    let mut out = String::new();
    let uptime = u(status, "uptime_ms") / 1000;
    let version = status.get("version").and_then(Value::as_str).unwrap_or("?");
    let dir = status.get("config_dir").and_then(Value::as_str).unwrap_or("?");
    out.push_str(&format!("weir agent {version}, up {uptime} s, configs in {dir}\n"));
    let pipelines = status.get("pipelines").and_then(Value::as_array).cloned().unwrap_or_default();
    if pipelines.is_empty() {
        out.push_str("no pipelines (no *.toml in the config folder)\n");
        return out;
    }
    let rate_header = if previous.is_some() { format!("{:>12}", "read/s") } else { String::new() };
    out.push_str(&format!(
        "{:<20} {:<11} {:>12} {:>12}{rate_header} {:>10} {:>9}  {}\n",
        "PIPELINE", "PHASE", "READ", "WRITTEN", "CHECKPOINT", "RESTARTS", "NOTE"
    ));
    for p in &pipelines {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
        let phase = p.get("phase").and_then(Value::as_str).unwrap_or("?");
        let (read, written) = flow(p);
        let restarts = p.get("restarts").and_then(Value::as_array).map_or(0, Vec::len);
        let note = match (p.get("error").and_then(Value::as_str), p.get("retries")) {
            (Some(error), Some(r)) if phase == "failed" => {
                match r.get("next_in_ms").and_then(Value::as_u64) {
                    Some(ms) => format!("{error} (starting again in {} s)", ms / 1000),
                    None => error.to_owned(),
                }
            }
            _ => replication_note(p),
        };
        let rate = previous.map_or(String::new(), |(before, seconds)| {
            let earlier = (before.get("pipelines").and_then(Value::as_array).into_iter().flatten())
                .find(|q| q.get("name").and_then(Value::as_str) == Some(name))
                .map_or(read, |q| flow(q).0);
            format!("{:>12.0}", read.saturating_sub(earlier) as f64 / seconds.max(1e-3))
        });
        out.push_str(&format!(
            "{name:<20} {phase:<11} {read:>12} {written:>12}{rate} {:>10} {restarts:>9}  {note}\n",
            u(p, "last_checkpoint")
        ));
    }
    out
}

/// A replicated pipeline's role, epoch and lag, for the NOTE column.
fn replication_note(p: &Value) -> String {
    let Some(r) = p.get("replication") else { return String::new() };
    let text = |key: &str| r.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
    let (mode, epoch) = (text("mode"), u(r, "epoch"));
    let solo = if r.get("solo").and_then(Value::as_bool) == Some(true) { ", solo" } else { "" };
    match text("role").as_str() {
        "owner" => format!(
            "owner, epoch {epoch}, {mode}{solo}, lag {} checkpoints / {} bytes, {} peers",
            u(r, "lag_checkpoints"),
            u(r, "lag_bytes"),
            u(r, "peers_connected")
        ),
        "replica" if epoch == 0 => format!("replica ({mode}), nobody owns it yet"),
        "replica" => format!(
            "replica of {} (epoch {epoch}{solo}), checkpoint {} applied",
            text("owner"),
            u(r, "applied")
        ),
        _ => format!("stopped: {}", text("error")),
    }
}

/// `weir top`: the status, refreshed every `every` until interrupted.
pub fn top(addr: SocketAddr, every: Duration) -> anyhow::Result<()> {
    let mut previous: Option<(Value, std::time::Instant)> = None;
    loop {
        let status = fetch(addr)?;
        let now = std::time::Instant::now();
        let before = previous.as_ref().map(|(v, at)| (v, now.duration_since(*at).as_secs_f64()));
        let table = render(&status, before);
        // Clear the screen and go home, then the table.
        print!("\x1b[2J\x1b[H{table}");
        std::io::stdout().flush()?;
        previous = Some((status, now));
        std::thread::sleep(every);
    }
}
