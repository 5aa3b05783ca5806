//! The config layer's calls into the operators: build a transform's operator once, to learn
//! its output schema and to surface the errors its builder finds (unknown fields, type
//! mismatches in expressions and aggregates), and check its parallelism (a window without a
//! key must run as one subtask). The operator itself is dropped; `weir run` builds its own per
//! subtask, after the same checks.

use weir_runtime::batch::SchemaRef;
use weir_runtime::operators;
use weir_runtime::pipeline::spec::TransformSpec;

/// What the builder refused, and the key of the transform's table it is about (relative to the
/// table: `"aggregates"`, `"compute.doubled"`; empty for the table as a whole).
pub(super) struct OperatorProblem {
    pub(super) key: String,
    pub(super) message: String,
}

/// The output schema of transform `node` reading `input` from `inputs` upstream subtasks.
pub(super) fn output_schema(
    node: &str,
    spec: &TransformSpec,
    input: SchemaRef,
    inputs: usize,
) -> Result<SchemaRef, OperatorProblem> {
    match operators::build(node, spec, input, inputs) {
        Ok(operator) => Ok(operator.output_schema()),
        Err(error) => Err(OperatorProblem { key: error.key, message: error.message }),
    }
}

/// Whether transform `spec` can run as `parallelism` subtasks without wrong output.
pub(super) fn check_parallelism(spec: &TransformSpec, parallelism: usize) -> Result<(), OperatorProblem> {
    operators::check_parallelism(spec, parallelism)
        .map_err(|error| OperatorProblem { key: error.key, message: error.message })
}
