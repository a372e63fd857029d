//! STOA controller: turns a folder of policy YAML into node snapshots and streams them
//! to agents over gRPC.
//!
//! - [`policy`]: the document types (strict YAML, validated while parsing);
//! - [`load`]: a folder of files → a checked [`load::PolicySet`], with every error found;
//! - [`compile`]: policy set → [`stoa_proto::v1::Snapshot`], stable numeric ids;
//! - [`refs`]: references between documents (contracts, operations, tools, consumers);
//! - [`watch`]: the folder as a live source feeding a `tokio::sync::watch` channel;
//! - [`server`]: the `PolicyDistribution` gRPC service;
//! - [`telemetry`]: metric names.

pub mod compile;
pub mod load;
pub mod policy;
pub mod refs;
pub mod server;
pub mod telemetry;
pub mod watch;

#[cfg(test)]
mod test_fixtures;
