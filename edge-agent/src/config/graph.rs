//! The pipeline as a graph: `inputs` resolved to nodes, cycles refused, nodes put in
//! topological order, and schemas carried from the sources through every transform (each
//! transform's operator is built once, which is where field and type errors are found).

use std::collections::{BTreeSet, HashMap};

use weir_runtime::batch::{Schema, SchemaRef};
use weir_runtime::pipeline::spec::{NodeKind, NodeSpec, SourceSpec, sensors_schema};

use super::ConfigError;
use super::doc::closest;
use super::nodes::{Draft, Section};
use super::operator;

/// The nodes in topological order, after checking their wiring and schemas. `drafts` are in
/// file order, and ties in the order are broken by section (sources, transforms, sinks), then
/// by file order.
pub(super) fn assemble(drafts: Vec<Draft<'_>>) -> Result<Vec<NodeSpec>, ConfigError> {
    let upstream = resolve_inputs(&drafts)?;
    let order = topological_order(&drafts, &upstream)?;

    let mut schemas: Vec<Option<SchemaRef>> = vec![None; drafts.len()];
    for &i in &order {
        let draft = &drafts[i];
        schemas[i] = match &draft.kind {
            NodeKind::Source(SourceSpec::Generator(_)) => Some(sensors_schema()),
            NodeKind::Source(SourceSpec::File(file)) => Some(file.schema.clone()),
            NodeKind::Source(SourceSpec::Mqtt(mqtt)) => Some(mqtt.schema.clone()),
            NodeKind::Transform(spec) => {
                let input = input_schema(&drafts, &upstream, &schemas, i)?;
                // One subtask of this node reads from every subtask upstream (all-to-all for a
                // keyed window; for forward edges the same sum is an upper bound).
                let channels = upstream[i].iter().map(|&j| drafts[j].parallelism).sum();
                let schema =
                    operator::output_schema(&draft.name, spec, input, channels).map_err(|problem| {
                        let path = match problem.key.as_str() {
                            "" => draft.item.path(),
                            key => format!("{}.{key}", draft.item.path()),
                        };
                        // The builder's messages are one line; make sure.
                        let message = problem.message.replace(['\n', '\r'], " ");
                        ConfigError::at(&path, message, draft.item.line_of(&problem.key))
                    })?;
                Some(schema)
            }
            NodeKind::Sink(_) => {
                input_schema(&drafts, &upstream, &schemas, i)?;
                None
            }
        };
    }

    let mut slots: Vec<Option<Draft<'_>>> = drafts.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| {
            let draft = slots[i].take().expect("topological order lists each node once");
            NodeSpec {
                name: draft.name,
                inputs: draft.inputs.into_iter().map(|input| input.value).collect(),
                parallelism: draft.parallelism,
                kind: draft.kind,
            }
        })
        .collect())
}

/// For each node, the indices of its inputs, in the order written.
fn resolve_inputs(drafts: &[Draft<'_>]) -> Result<Vec<Vec<usize>>, ConfigError> {
    let index: HashMap<&str, usize> = drafts.iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();
    drafts
        .iter()
        .map(|draft| {
            let path = draft.item.path();
            let mut resolved = Vec::with_capacity(draft.inputs.len());
            for (k, input) in draft.inputs.iter().enumerate() {
                let name = input.value.as_str();
                if draft.inputs[..k].iter().any(|earlier| earlier.value == name) {
                    return Err(ConfigError::at(
                        &path,
                        format!("input {name:?} is listed twice"),
                        input.line,
                    ));
                }
                match index.get(name) {
                    Some(&j) if drafts[j].section == Section::Sink => {
                        return Err(ConfigError::at(
                            &path,
                            format!("input {name:?} is a sink, which has no output"),
                            input.line,
                        ));
                    }
                    Some(&j) => resolved.push(j),
                    None => {
                        let outputs =
                            drafts.iter().filter(|d| d.section != Section::Sink).map(|d| d.name.as_str());
                        let error = ConfigError::at(&path, format!("unknown input {name:?}"), input.line);
                        return Err(match closest(name, outputs) {
                            Some(hint) => error.with_hint(hint),
                            None => error,
                        });
                    }
                }
            }
            Ok(resolved)
        })
        .collect()
}

/// Kahn's algorithm, always taking the ready node that comes first by (section, file order).
fn topological_order(drafts: &[Draft<'_>], upstream: &[Vec<usize>]) -> Result<Vec<usize>, ConfigError> {
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
    for (i, inputs) in upstream.iter().enumerate() {
        for &j in inputs {
            downstream[j].push(i);
        }
    }
    let mut waiting: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<(Section, usize)> =
        (0..drafts.len()).filter(|&i| waiting[i] == 0).map(|i| (drafts[i].section, i)).collect();
    let mut order = Vec::with_capacity(drafts.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for &k in &downstream[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert((drafts[k].section, k));
            }
        }
    }
    if order.len() < drafts.len() {
        return Err(ConfigError::Cycle { nodes: find_cycle(drafts, upstream, &waiting) });
    }
    Ok(order)
}

/// A cycle among the nodes Kahn's algorithm could not order (`waiting[i] > 0`), named in the
/// direction data flows and starting at the node written first: `a -> b -> a`.
fn find_cycle(drafts: &[Draft<'_>], upstream: &[Vec<usize>], waiting: &[usize]) -> Vec<String> {
    // Every unordered node reads from at least one unordered node, so walking upstream from one
    // never stops, and must come back to a node it has seen.
    let stuck = |i: usize| waiting[i] > 0;
    let mut walk = vec![(0..drafts.len()).find(|&i| stuck(i)).expect("a node is left unordered")];
    let start = loop {
        let last = *walk.last().expect("the walk is not empty");
        let next =
            *upstream[last].iter().find(|&&j| stuck(j)).expect("an unordered node has an unordered input");
        if let Some(pos) = walk.iter().position(|&i| i == next) {
            break pos;
        }
        walk.push(next);
    };
    let mut cycle: Vec<usize> = walk[start..].iter().rev().copied().collect();
    let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).expect("a cycle has a node");
    cycle.rotate_left(first);
    cycle.push(cycle[0]);
    cycle.into_iter().map(|i| drafts[i].name.clone()).collect()
}

/// The schema node `i` reads: that of its inputs, which must all agree.
fn input_schema(
    drafts: &[Draft<'_>],
    upstream: &[Vec<usize>],
    schemas: &[Option<SchemaRef>],
    i: usize,
) -> Result<SchemaRef, ConfigError> {
    let schema_of = |j: usize| schemas[j].clone().expect("inputs come before the nodes that read them");
    let first = upstream[i][0];
    let schema = schema_of(first);
    for (k, &j) in upstream[i].iter().enumerate().skip(1) {
        let other = schema_of(j);
        if other != schema {
            let draft = &drafts[i];
            return Err(ConfigError::at(
                &draft.item.path(),
                format!(
                    "input \"{}\" has fields {} but input \"{}\" has {}",
                    drafts[j].name,
                    describe(&other),
                    drafts[first].name,
                    describe(&schema)
                ),
                draft.inputs[k].line,
            ));
        }
    }
    Ok(schema)
}

/// `(sensor: string, ts: int, value: float)`.
fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema.fields().iter().map(|f| format!("{}: {}", f.name, f.ty)).collect();
    format!("({})", fields.join(", "))
}
