//! osa's gRPC contracts.
//!
//! The generated code for package `osa.v1` lives in OUT_DIR and is re-exported
//! as [`v1`]; [`FILE_DESCRIPTOR_SET`] feeds gRPC reflection. Wire types stop at
//! the edge: [`tensor`] validates raw tensors on receipt into
//! [`tensor::HostTensor`], whose fields can be trusted.

pub mod tensor;

/// Generated protobuf and tonic types for `osa.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("osa.v1");
}

/// The encoded `FileDescriptorSet` of every `osa.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("osa_descriptor");

/// Default limit on one gRPC message, both directions, in bytes. Large enough
/// for a 12-frame clip of 512x512 RGB frames (9.4 MB) or a 10 MB image.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
