//! The agent's HTTP endpoint (loopback unless `--http` says otherwise): `GET /metrics`
//! (OpenMetrics text, which Prometheus reads; names prefixed `weir_`, labels pipeline, node
//! and subtask, never a key), `GET /healthz` (the agent answers), `GET /readyz` (every
//! pipeline restored and running, or finished) and `GET /status` (JSON, what `weir status`
//! prints), and `POST /promote/NAME` (`weir promote`, taken only from loopback: this agent
//! takes over replicated pipeline NAME). One thread serves it; every answer is a copy of the pipelines' live figures made
//! under short locks, so a scrape never waits for a pipeline.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tiny_http::{Header, Method, Response, Server};
use weir_runtime::pipeline::live::Phase;

use super::{Agent, AgentStatus};
use crate::peer::replicated::ReplicationStatus;

/// Serve `agent` on `addr` from a thread of its own.
pub fn serve(addr: SocketAddr, agent: Arc<Agent>) -> anyhow::Result<JoinHandle<()>> {
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("--http {addr}: cannot listen: {e}"))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(agent.clone())));
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let local = request.remote_addr().is_some_and(|a| a.ip().is_loopback());
                let (status, content_type, body) =
                    answer(request.method(), request.url(), local, &agent, &registry);
                let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
                let response = Response::from_string(body).with_status_code(status).with_header(header);
                if let Err(e) = request.respond(response) {
                    tracing::debug!("http: {e}");
                }
            }
        })
        .context("starting the HTTP thread")
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status code, content type and body for one request.
/// `local`: the request comes from this machine (only such may change anything).
fn answer(
    method: &Method,
    url: &str,
    local: bool,
    agent: &Agent,
    registry: &Registry,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or_default();
    if let Some(name) = path.strip_prefix("/promote/") {
        return match (method, local) {
            (Method::Post, true) => match agent.promote(name) {
                Ok(epoch) => (200, TEXT, format!("{name}: this agent owns it now (epoch {epoch})\n")),
                Err(e) => (409, TEXT, format!("{e}\n")),
            },
            (Method::Post, false) => {
                (403, TEXT, "promote is taken only from this machine (loopback)\n".into())
            }
            _ => (405, TEXT, "promote: only POST\n".into()),
        };
    }
    if *method != Method::Get && *method != Method::Head {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match agent.ready() {
            Ok(()) => (200, TEXT, "ready\n".into()),
            Err(waiting) => (503, TEXT, format!("not ready: {}\n", waiting.join(", "))),
        },
        "/status" => match serde_json::to_string_pretty(&agent.status()) {
            Ok(json) => (200, JSON, json + "\n"),
            Err(e) => (500, TEXT, format!("encoding the status: {e}\n")),
        },
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (200, OPENMETRICS, text),
                Err(e) => (500, TEXT, format!("encoding the metrics: {e}\n")),
            }
        }
        "/" => (200, TEXT, "weir agent: /metrics /healthz /readyz /status (POST /promote/NAME)\n".into()),
        other => {
            let mut body = String::new();
            let _ = writeln!(body, "no {other}: try /metrics /healthz /readyz /status");
            (404, TEXT, body)
        }
    }
}

/// The metrics, read from the agent's status at each scrape.
#[derive(Debug)]
struct Metrics(Arc<Agent>);

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config_dir", &self.config_dir).finish()
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, unit): (&str, &str, Option<&Unit>),
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut descriptor = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in samples {
        metric.encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

fn pipeline(name: &str) -> Labels {
    vec![("pipeline", name.to_owned())]
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let AgentStatus { pipelines, uptime_ms, .. } = self.0.status();
        let e = &mut encoder;
        let secs = |ms: u64| ms as f64 / 1000.0;
        let counter = |v: u64| ConstCounter::new(v);
        let uptime = ConstGauge::new(secs(uptime_ms));
        uptime.encode(e.encode_descriptor(
            "weir_agent_uptime",
            "Since the agent started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        let phases = [
            Phase::Starting,
            Phase::Replica,
            Phase::Running,
            Phase::Restarting,
            Phase::Stopping,
            Phase::Finished,
            Phase::Stopped,
            Phase::Failed,
        ];
        family(
            e,
            ("weir_pipeline_phase", "1 for the phase each pipeline is in, 0 for the others", None),
            MetricType::Gauge,
            pipelines.iter().flat_map(|p| {
                phases.iter().map(move |&phase| {
                    let mut labels = pipeline(&p.name);
                    labels.push(("phase", phase.name().to_owned()));
                    (labels, ConstGauge::new(i64::from(p.live.phase == phase)))
                })
            }),
        )?;
        let subtask = |p: &super::PipelineStatus, s: &weir_runtime::pipeline::live::SubtaskView| {
            let mut labels = pipeline(&p.name);
            labels.push(("node", s.node.clone()));
            labels.push(("subtask", s.subtask.to_string()));
            labels
        };
        family(
            e,
            ("weir_records_in", "Records received by a subtask (sources: 0)", None),
            MetricType::Counter,
            pipelines
                .iter()
                .flat_map(|p| p.live.subtasks.iter().map(move |s| (subtask(p, s), counter(s.records_in)))),
        )?;
        family(
            e,
            ("weir_records_out", "Records sent by a subtask (sinks: written)", None),
            MetricType::Counter,
            pipelines
                .iter()
                .flat_map(|p| p.live.subtasks.iter().map(move |s| (subtask(p, s), counter(s.records_out)))),
        )?;
        family(
            e,
            ("weir_late_records", "Records a window dropped as late (restored with its snapshots)", None),
            MetricType::Counter,
            pipelines.iter().flat_map(|p| {
                (p.live.subtasks.iter().filter(|s| s.kind == "transform"))
                    .map(move |s| (subtask(p, s), counter(s.late_records)))
            }),
        )?;
        type SubtaskFigure = fn(&weir_runtime::pipeline::live::SubtaskView) -> u64;
        let subtask_gauges: [(&str, &str, SubtaskFigure); 2] = [
            ("weir_buffer_queue_bytes", "Bytes a subtask's buffer queues hold for local recovery", |s| {
                s.buffer_bytes
            }),
            ("weir_snapshot_bytes", "Bytes of a subtask's largest snapshot state in this run", |s| {
                s.snapshot_bytes
            }),
        ];
        for (name, help, figure) in subtask_gauges {
            family(
                e,
                (name, help, None),
                MetricType::Gauge,
                pipelines.iter().flat_map(|p| {
                    (p.live.subtasks.iter().filter(|s| s.kind != "source"))
                        .map(move |s| (subtask(p, s), ConstGauge::new(figure(s) as i64)))
                }),
            )?;
        }
        family(
            e,
            (
                "weir_lmdb_used_bytes",
                "Bytes of a pipeline's LMDB map in use (its pages' high-water mark)",
                None,
            ),
            MetricType::Gauge,
            pipelines.iter().map(|p| (pipeline(&p.name), ConstGauge::new(p.live.lmdb_used_bytes as i64))),
        )?;
        family(
            e,
            ("weir_lmdb_map_size_bytes", "The size of a pipeline's LMDB map (map_size_mb)", None),
            MetricType::Gauge,
            pipelines.iter().map(|p| (pipeline(&p.name), ConstGauge::new(p.live.lmdb_map_bytes as i64))),
        )?;
        let replicated: Vec<(&str, &ReplicationStatus)> =
            pipelines.iter().filter_map(|p| Some((p.name.as_str(), p.replication.as_ref()?))).collect();
        type ReplicationFigure = fn(&ReplicationStatus) -> u64;
        let replication_gauges: [(&str, &str, ReplicationFigure); 4] = [
            ("weir_replication_epoch", "The latest ownership epoch this agent knows of", |r| r.epoch),
            ("weir_replication_owner", "1 if this agent owns the replicated pipeline", |r| {
                u64::from(r.role == "owner")
            }),
            (
                "weir_replication_lag_checkpoints",
                "Owner: checkpoints completed here and not yet durable on a data peer",
                |r| r.lag_checkpoints.unwrap_or(0),
            ),
            (
                "weir_replication_lag_bytes",
                "Owner: bytes of log records committed here and not yet durable on a data peer",
                |r| r.lag_bytes.unwrap_or(0),
            ),
        ];
        for (name, help, figure) in replication_gauges {
            family(
                e,
                (name, help, None),
                MetricType::Gauge,
                replicated.iter().map(|(p, r)| (pipeline(p), ConstGauge::new(figure(r) as i64))),
            )?;
        }
        family(
            e,
            ("weir_checkpoints_completed", "Checkpoints completed", None),
            MetricType::Counter,
            pipelines.iter().map(|p| (pipeline(&p.name), counter(p.live.checkpoints_completed))),
        )?;
        family(
            e,
            ("weir_checkpoints_aborted", "Checkpoints aborted (a timeout, a failure)", None),
            MetricType::Counter,
            pipelines.iter().map(|p| (pipeline(&p.name), counter(p.live.checkpoints_aborted))),
        )?;
        family(
            e,
            (
                "weir_checkpoint_duration",
                "Sum of the completed checkpoints' durations, trigger to durable completion",
                Some(&Unit::Seconds),
            ),
            MetricType::Counter,
            pipelines
                .iter()
                .map(|p| (pipeline(&p.name), ConstCounter::new(secs(p.live.checkpoint_duration_ms_sum)))),
        )?;
        family(
            e,
            ("weir_last_checkpoint", "The latest completed checkpoint's id (0: none)", None),
            MetricType::Gauge,
            pipelines.iter().map(|p| (pipeline(&p.name), ConstGauge::new(p.live.last_checkpoint as i64))),
        )?;
        family(
            e,
            (
                "weir_last_checkpoint_duration",
                "How long the latest completed checkpoint took",
                Some(&Unit::Seconds),
            ),
            MetricType::Gauge,
            pipelines
                .iter()
                .map(|p| (pipeline(&p.name), ConstGauge::new(secs(p.live.last_checkpoint_duration_ms)))),
        )?;
        let levels = ["local", "failover", "global"];
        family(
            e,
            ("weir_restarts", "Restarts by the supervisor, by how they recovered", None),
            MetricType::Counter,
            pipelines.iter().flat_map(|p| {
                levels.iter().map(move |&level| {
                    let n = p.live.restarts.iter().filter(|r| r.recovery == level).count();
                    let mut labels = pipeline(&p.name);
                    labels.push(("recovery", level.to_owned()));
                    (labels, counter(n as u64))
                })
            }),
        )?;
        family(
            e,
            (
                "weir_last_recovery_duration",
                "The latest restart's time until running again",
                Some(&Unit::Seconds),
            ),
            MetricType::Gauge,
            pipelines.iter().filter_map(|p| {
                let last = p.live.restarts.last()?;
                Some((pipeline(&p.name), ConstGauge::new(secs(last.duration_ms))))
            }),
        )?;
        let mqtt = |p: &super::PipelineStatus, m: &weir_runtime::pipeline::live::MqttView| {
            let mut labels = pipeline(&p.name);
            labels.push(("node", m.node.clone()));
            labels
        };
        let sources = || pipelines.iter().flat_map(|p| p.live.mqtt.iter().map(move |m| (p, m)));
        family(
            e,
            ("weir_mqtt_connected", "1 while an MQTT source is connected to its broker", None),
            MetricType::Gauge,
            sources().map(|(p, m)| (mqtt(p, m), ConstGauge::new(i64::from(m.connected)))),
        )?;
        family(
            e,
            ("weir_mqtt_disconnects", "Connections of an MQTT source to its broker that were lost", None),
            MetricType::Counter,
            sources().map(|(p, m)| (mqtt(p, m), counter(m.disconnects))),
        )?;
        family(
            e,
            ("weir_mqtt_received", "Messages an MQTT source wrote to its write-ahead log", None),
            MetricType::Counter,
            sources().map(|(p, m)| (mqtt(p, m), counter(m.received))),
        )?;
        family(
            e,
            ("weir_mqtt_duplicates", "Messages sent again that the write-ahead log had (by dedup_key)", None),
            MetricType::Counter,
            sources().map(|(p, m)| (mqtt(p, m), counter(m.duplicates))),
        )?;
        family(
            e,
            ("weir_mqtt_bad_payloads", "Payloads that did not fit the schema (skipped)", None),
            MetricType::Counter,
            sources().map(|(p, m)| (mqtt(p, m), counter(m.bad_payloads))),
        )?;
        family(
            e,
            ("weir_source_wal_entries", "Entries in a source's write-ahead log not yet released", None),
            MetricType::Gauge,
            sources().map(|(p, m)| (mqtt(p, m), ConstGauge::new(m.wal_entries as i64))),
        )?;
        let sinks = || pipelines.iter().flat_map(|p| p.live.mqtt_sinks.iter().map(move |m| (p, m)));
        let sink_labels = |p: &super::PipelineStatus, node: &str| {
            let mut labels = pipeline(&p.name);
            labels.push(("node", node.to_owned()));
            labels
        };
        type SinkFigure = fn(&weir_runtime::pipeline::live::OutboxView) -> u64;
        let sink_counters: [(&str, &str, SinkFigure); 6] = [
            (
                "weir_mqtt_sink_disconnects",
                "Connections of an MQTT sink to its broker lost or given up",
                |m| m.disconnects,
            ),
            (
                "weir_mqtt_sink_published",
                "Messages an MQTT sink sent (again after a reconnect included)",
                |m| m.published,
            ),
            ("weir_mqtt_sink_acknowledged", "Messages of an MQTT sink the broker acknowledged", |m| {
                m.acknowledged
            }),
            ("weir_mqtt_sink_resent", "Messages an MQTT sink sent again after a reconnect", |m| m.resent),
            (
                "weir_mqtt_sink_dropped",
                "Committed messages an MQTT sink dropped because its outbox was full",
                |m| m.dropped,
            ),
            (
                "weir_mqtt_sink_refused",
                "Acknowledgements with an error reason (the message is sent again)",
                |m| m.refused,
            ),
        ];
        for (name, help, figure) in sink_counters {
            family(
                e,
                (name, help, None),
                MetricType::Counter,
                sinks().map(|(p, m)| (sink_labels(p, &m.node), counter(figure(m)))),
            )?;
        }
        let sink_gauges: [(&str, &str, Option<&Unit>, SinkFigure); 4] = [
            ("weir_mqtt_sink_connected", "1 while an MQTT sink is connected to its broker", None, |m| {
                u64::from(m.connected)
            }),
            ("weir_outbox_bytes", "Bytes of committed messages in an MQTT sink's outbox", None, |m| {
                m.outbox_bytes
            }),
            ("weir_outbox_chunks", "Commits whose messages wait in an MQTT sink's outbox", None, |m| {
                m.outbox_chunks
            }),
            (
                "weir_outbox_oldest_age",
                "How long the oldest output in an MQTT sink's outbox has waited",
                Some(&Unit::Seconds),
                |m| m.outbox_oldest_age_ms,
            ),
        ];
        for (name, help, unit, figure) in sink_gauges {
            let seconds = unit.is_some();
            family(
                e,
                (name, help, unit),
                MetricType::Gauge,
                sinks().map(|(p, m)| {
                    let value = figure(m);
                    (
                        sink_labels(p, &m.node),
                        ConstGauge::new(if seconds { secs(value) } else { value as f64 }),
                    )
                }),
            )?;
        }
        family(
            e,
            ("weir_pipeline_failures", "Runs of a pipeline that failed (the agent starts it again)", None),
            MetricType::Counter,
            pipelines.iter().map(|p| (pipeline(&p.name), counter(p.retries.failures))),
        )?;
        Ok(())
    }
}
