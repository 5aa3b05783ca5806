//! The weir agent as a library: the config layer ([`config`]) that turns a pipeline's TOML
//! into a validated [`weir_runtime::pipeline::spec::PipelineSpec`], kept apart from the `weir`
//! binary so that it can be fuzzed and embedded.

pub mod agent;
pub mod config;
pub mod peer;
