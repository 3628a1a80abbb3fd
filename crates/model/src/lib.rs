//! The OSA-LCM network in tch (libtorch), laid out key-for-key like EchoMimic
//! v1 so that its public checkpoints load.
//!
//! Plain synchronous code: no async runtime, no gRPC. Services own a model on
//! a dedicated OS thread (tch tensors are `Send` but not `Sync`).

pub mod device;
