//! Protobuf messages and gRPC stubs shared by every rethink service.
//!
//! Layout: one module per protobuf package; today that is `rethink.v1` as [`v1`]. The sources live
//! in `proto/rethink/v1/*.proto` at the repository root and are compiled by `build.rs`.
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

/// The `rethink.v1` package: messages, clients (`*_client`) and servers (`*_server`).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("rethink.v1");
}

/// Encoded `FileDescriptorSet` of every rethink proto file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rethink_descriptor");
