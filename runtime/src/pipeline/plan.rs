//! The topology of a running pipeline, computed from its [`PipelineSpec`] alone: which
//! subtasks there are (their participant ids, sources first, so that a source's participant
//! id is also its source index at the coordinator), which channels join them and how each
//! output is partitioned, which arbiter thread runs each subtask, and who is downstream of
//! whom (for `rest_for_one`). It is plain data from a pure function, so the channel layout is
//! tested here without actors, a log or threads; `run` builds and wires actors from it.

use std::ops::Range;

use crate::actors::Partition;
use crate::pipeline::spec::{NodeKind, NodeSpec, PipelineSpec, SourceSpec, TransformSpec};
use crate::protocol::ParticipantId;

/// One subtask of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSubtask {
    /// Index of its node in `spec.nodes`.
    pub node: usize,
    /// Its index among the node's subtasks.
    pub index: usize,
    /// The arbiter (thread) it runs on.
    pub arbiter: usize,
}

/// An output channel: where it goes and at which of the receiver's inputs it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputChannel {
    /// The receiving subtask.
    pub to: ParticipantId,
    /// Its input index at the receiver.
    pub input: usize,
}

/// An input channel: where it comes from and which of the sender's outputs it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputChannel {
    /// The sending subtask.
    pub from: ParticipantId,
    /// Its output index at the sender.
    pub output: usize,
}

/// The output channels of one subtask towards one downstream node, and how records are
/// spread over them.
#[derive(Clone, Debug)]
pub struct OutputGroup {
    /// How records are spread.
    pub partition: Partition,
    /// Output channel indices of the sender.
    pub channels: Vec<usize>,
}

/// The topology of a pipeline. Every `Vec` indexed by subtask is indexed by participant id.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every subtask, in participant id order: node by node in pipeline order.
    pub subtasks: Vec<PlannedSubtask>,
    /// Per node, the participant id of its first subtask.
    pub first: Vec<ParticipantId>,
    /// Source subtasks (participant ids `0..sources`).
    pub sources: usize,
    /// Sink subtasks.
    pub sinks: Vec<ParticipantId>,
    /// Per subtask, its inputs in input-index order: upstream node by upstream node (in the
    /// order of the node's `inputs`), subtask by subtask.
    pub inputs: Vec<Vec<InputChannel>>,
    /// Per subtask, its output channels in channel-index order.
    pub outputs: Vec<Vec<OutputChannel>>,
    /// Per subtask, its output groups, one per downstream node.
    pub groups: Vec<Vec<OutputGroup>>,
    /// Per subtask, the subtasks of every node downstream of its node, transitively.
    pub downstream: Vec<Vec<ParticipantId>>,
}

impl Plan {
    /// The plan of `spec` with subtasks placed round-robin on `threads` arbiters.
    pub fn new(spec: &PipelineSpec, threads: usize) -> Plan {
        let threads = threads.max(1);
        let mut subtasks = Vec::new();
        let mut first = Vec::new();
        for (n, node) in spec.nodes.iter().enumerate() {
            first.push(subtasks.len());
            for index in 0..node.parallelism {
                subtasks.push(PlannedSubtask { node: n, index, arbiter: subtasks.len() % threads });
            }
        }
        let kind = |s: &PlannedSubtask| &spec.nodes[s.node].kind;
        let sources = subtasks.iter().filter(|s| matches!(kind(s), NodeKind::Source(_))).count();
        let sinks =
            (0..subtasks.len()).filter(|&p| matches!(kind(&subtasks[p]), NodeKind::Sink(_))).collect();
        let mut plan = Plan {
            inputs: vec![Vec::new(); subtasks.len()],
            outputs: vec![Vec::new(); subtasks.len()],
            groups: vec![Vec::new(); subtasks.len()],
            downstream: Vec::new(),
            subtasks,
            first,
            sources,
            sinks,
        };
        for n in 0..spec.nodes.len() {
            plan.connect(spec, n);
        }
        plan.downstream = downstream(spec, &plan.first);
        plan
    }

    /// The participant ids of node `n`'s subtasks.
    pub fn subtasks_of(&self, spec: &PipelineSpec, n: usize) -> Range<ParticipantId> {
        self.first[n]..self.first[n] + spec.nodes[n].parallelism
    }

    /// The channels from every input node of node `n` to it.
    fn connect(&mut self, spec: &PipelineSpec, n: usize) {
        let node = &spec.nodes[n];
        let key = match &node.kind {
            NodeKind::Transform(TransformSpec::Window(w)) => w.key.clone(),
            _ => None,
        };
        for up_name in &node.inputs {
            let u = node_index(spec, up_name);
            let up = &spec.nodes[u];
            // Equal parallelism without a key, or from a source already split by the key
            // exactly as the hash would route it: subtask i feeds subtask i alone.
            let co_partitioned = key.is_some() && key.as_deref() == split_by(up);
            let forward = (key.is_none() || co_partitioned) && up.parallelism == node.parallelism;
            let partition = match (&key, node.parallelism) {
                (_, 1) => Partition::Forward,
                (_, _) if forward => Partition::Forward,
                (Some(k), _) => Partition::Hash(k.clone()),
                (None, _) => Partition::RoundRobin,
            };
            for i in 0..up.parallelism {
                let from = self.first[u] + i;
                let targets: Vec<usize> = if forward || node.parallelism == 1 && up.parallelism == 1 {
                    vec![i]
                } else {
                    (0..node.parallelism).collect()
                };
                let mut channels = Vec::new();
                for j in targets {
                    let to = self.first[n] + j;
                    let output = self.outputs[from].len();
                    let input = self.inputs[to].len();
                    self.outputs[from].push(OutputChannel { to, input });
                    self.inputs[to].push(InputChannel { from, output });
                    channels.push(output);
                }
                self.groups[from].push(OutputGroup { partition: partition.clone(), channels });
            }
        }
    }
}

/// The field a node's subtasks split its records by, as a keyed edge routes them
/// (`batch::key_channel` of the field over the node's parallelism): the generator splits by
/// `sensor` (`connectors/generator.rs`).
fn split_by(node: &NodeSpec) -> Option<&'static str> {
    match &node.kind {
        NodeKind::Source(SourceSpec::Generator(_)) if node.parallelism > 1 => Some("sensor"),
        _ => None,
    }
}

/// The index of the node named `name` (the spec's inputs are resolved names).
fn node_index(spec: &PipelineSpec, name: &str) -> usize {
    spec.nodes.iter().position(|n| n.name == name).expect("inputs were resolved")
}

/// Per subtask, the subtasks of the nodes downstream of its node, transitively, in
/// participant id order.
fn downstream(spec: &PipelineSpec, first: &[ParticipantId]) -> Vec<Vec<ParticipantId>> {
    // Nodes are in topological order: walking backwards, a node's own set is complete
    // before it is added to its inputs'.
    let mut below: Vec<Vec<usize>> = vec![Vec::new(); spec.nodes.len()];
    for (n, node) in spec.nodes.iter().enumerate().rev() {
        for input in &node.inputs {
            let u = node_index(spec, input);
            let mut more = vec![n];
            more.extend(below[n].iter().copied());
            for m in more {
                if !below[u].contains(&m) {
                    below[u].push(m);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (n, node) in spec.nodes.iter().enumerate() {
        let mut nodes = below[n].clone();
        nodes.sort_unstable();
        let subtasks: Vec<ParticipantId> =
            nodes.iter().flat_map(|&m| first[m]..first[m] + spec.nodes[m].parallelism).collect();
        out.extend(std::iter::repeat_n(subtasks, node.parallelism));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::{
        CheckpointMode, CheckpointSpec, FileFormat, GeneratorSpec, MapSpec, NodeSpec, OutputFormat, SinkSpec,
        SourceSpec, SupervisionSpec, WindowKind, WindowSpec,
    };

    fn node(name: &str, inputs: &[&str], parallelism: usize, kind: NodeKind) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            inputs: inputs.iter().map(|s| (*s).into()).collect(),
            parallelism,
            kind,
        }
    }

    fn spec(nodes: Vec<NodeSpec>) -> PipelineSpec {
        PipelineSpec {
            data_dir: "/tmp/unused".into(),
            map_size: 1 << 20,
            checkpoint: CheckpointSpec {
                interval_ms: None,
                mode: CheckpointMode::ExactlyOnce,
                timeout_ms: 1,
            },
            supervision: SupervisionSpec::default(),
            standby: Default::default(),
            replication: None,
            nodes,
        }
    }

    fn source() -> NodeKind {
        NodeKind::Source(SourceSpec::Generator(GeneratorSpec {
            records: 1,
            sensors: 1,
            rate: None,
            batch_size: 1,
        }))
    }

    fn window(key: Option<&str>) -> NodeKind {
        NodeKind::Transform(TransformSpec::Window(WindowSpec {
            key: key.map(str::to_owned),
            time_field: "ts".into(),
            kind: WindowKind::Tumbling { size_ms: 10 },
            max_out_of_order_ms: 0,
            aggregates: Vec::new(),
        }))
    }

    fn sink() -> NodeKind {
        let format = OutputFormat { encoding: FileFormat::Csv, float_precision: None };
        NodeKind::Sink(SinkSpec::Stdout { format })
    }

    /// Each group as `partition: [(to, input), ...]`.
    fn groups(plan: &Plan, p: ParticipantId) -> Vec<String> {
        plan.groups[p]
            .iter()
            .map(|g| {
                let to: Vec<_> =
                    g.channels.iter().map(|&c| plan.outputs[p][c]).map(|c| (c.to, c.input)).collect();
                format!("{:?}: {to:?}", g.partition)
            })
            .collect()
    }

    /// source → filter p=1 → map p=2 → window p=2 keyed → sink.
    fn chain() -> PipelineSpec {
        spec(vec![
            node("gen", &[], 1, source()),
            node(
                "keep",
                &["gen"],
                1,
                NodeKind::Transform(TransformSpec::Filter { condition: "true".into() }),
            ),
            node("shape", &["keep"], 2, NodeKind::Transform(TransformSpec::Map(MapSpec::default()))),
            node("win", &["shape"], 2, window(Some("sensor"))),
            node("out", &["win"], 1, sink()),
        ])
    }

    #[test]
    fn a_chain_gets_participant_ids_in_pipeline_order_and_its_channel_layout() {
        let plan = Plan::new(&chain(), 2);
        let at: Vec<(usize, usize)> = plan.subtasks.iter().map(|s| (s.node, s.index)).collect();
        assert_eq!(at, [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0)]);
        assert_eq!(plan.first, [0, 1, 2, 4, 6]);
        assert_eq!((plan.sources, plan.sinks.clone()), (1, vec![6]));
        assert_eq!(plan.subtasks.iter().map(|s| s.arbiter).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1, 0]);
        // gen → keep: one to one.
        assert_eq!(groups(&plan, 0), ["Forward: [(1, 0)]"]);
        // keep (p=1) → shape (p=2), no key: batches in turn to both.
        assert_eq!(groups(&plan, 1), ["RoundRobin: [(2, 0), (3, 0)]"]);
        // shape → win, keyed: every map subtask to every window subtask by key; window
        // subtask j hears shape/0 on input 0 and shape/1 on input 1.
        assert_eq!(groups(&plan, 2), ["Hash(\"sensor\"): [(4, 0), (5, 0)]"]);
        assert_eq!(groups(&plan, 3), ["Hash(\"sensor\"): [(4, 1), (5, 1)]"]);
        // win → out: both into the one sink, on inputs 0 and 1.
        assert_eq!(groups(&plan, 4), ["Forward: [(6, 0)]"]);
        assert_eq!(groups(&plan, 5), ["Forward: [(6, 1)]"]);
        assert!(plan.groups[6].is_empty());
        // The inputs mirror the outputs.
        let inputs = |p: usize| plan.inputs[p].iter().map(|i| (i.from, i.output)).collect::<Vec<_>>();
        assert!(inputs(0).is_empty());
        assert_eq!(inputs(3), [(1, 1)]);
        assert_eq!(inputs(5), [(2, 1), (3, 1)]);
        assert_eq!(inputs(6), [(4, 0), (5, 0)]);
        for (p, outputs) in plan.outputs.iter().enumerate() {
            for (ch, o) in outputs.iter().enumerate() {
                assert_eq!(plan.inputs[o.to][o.input], InputChannel { from: p, output: ch });
            }
        }
        // rest_for_one: everything after each node.
        assert_eq!(plan.downstream[0], [1, 2, 3, 4, 5, 6]);
        assert_eq!(plan.downstream[3], [4, 5, 6]);
        assert_eq!(plan.downstream[5], [6]);
        assert!(plan.downstream[6].is_empty());
        assert_eq!(plan.subtasks_of(&chain(), 3), 4..6);
    }

    #[test]
    fn equal_parallelism_without_a_key_is_forward_and_a_key_is_all_to_all() {
        let plan = Plan::new(
            &spec(vec![
                node("gen", &[], 2, source()),
                node("shape", &["gen"], 2, NodeKind::Transform(TransformSpec::Map(MapSpec::default()))),
                node("win", &["shape"], 2, window(None)),
                node("byk", &["shape"], 2, window(Some("k"))),
                node("out", &["win", "byk"], 1, sink()),
            ]),
            1,
        );
        assert_eq!(plan.sources, 2);
        assert_eq!(groups(&plan, 0), ["Forward: [(2, 0)]"]);
        assert_eq!(groups(&plan, 1), ["Forward: [(3, 0)]"]);
        // shape/1 feeds win/1 alone (no key), and both byk subtasks by key.
        assert_eq!(groups(&plan, 3), ["Forward: [(5, 0)]", "Hash(\"k\"): [(6, 1), (7, 1)]"]);
        // The sink hears win/0, win/1, byk/0, byk/1 in that order.
        let inputs: Vec<_> = plan.inputs[8].iter().map(|i| i.from).collect();
        assert_eq!(inputs, [4, 5, 6, 7]);
        assert_eq!(plan.downstream[0], [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(plan.downstream[4], [8]);
        assert!(plan.subtasks.iter().all(|s| s.arbiter == 0));
    }

    /// A generator with parallelism n is split by `sensor` exactly as a keyed edge routes, so
    /// it feeds a window keyed by `sensor` with the same parallelism one to one; any other
    /// key or parallelism is hashed all to all.
    #[test]
    fn a_generator_split_by_the_windows_key_feeds_it_one_to_one() {
        let plan_of = |key, parallelism| {
            let nodes = vec![
                node("gen", &[], 2, source()),
                node("win", &["gen"], parallelism, window(Some(key))),
                node("out", &["win"], 1, sink()),
            ];
            Plan::new(&spec(nodes), 2)
        };
        let plan = plan_of("sensor", 2);
        assert_eq!(groups(&plan, 0), ["Forward: [(2, 0)]"]);
        assert_eq!(groups(&plan, 1), ["Forward: [(3, 0)]"]);
        let plan = plan_of("ts", 2);
        assert_eq!(groups(&plan, 0), ["Hash(\"ts\"): [(2, 0), (3, 0)]"]);
        let plan = plan_of("sensor", 3);
        assert_eq!(groups(&plan, 1), ["Hash(\"sensor\"): [(2, 1), (3, 1), (4, 1)]"]);
    }
}
