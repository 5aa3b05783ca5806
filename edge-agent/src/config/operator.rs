//! The config layer's one call into the operators: build a transform's operator once, to learn
//! its output schema and to surface the errors its builder finds (unknown fields, type
//! mismatches in expressions and aggregates). The operator itself is dropped; `weir run`
//! builds its own per subtask.

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
