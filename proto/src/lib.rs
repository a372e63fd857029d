//! STOA's gRPC APIs, generated from `proto/stoa/v1/*.proto`.

pub mod v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("stoa.v1");
}
