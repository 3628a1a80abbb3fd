//! The OSA-LCM network in tch (libtorch), laid out key-for-key like EchoMimic
//! v1 so that its public checkpoints load.
//!
//! Plain synchronous code: no async runtime, no gRPC. Services own a model on
//! a dedicated OS thread (tch tensors are `Send` but not `Sync`).
//!
//! Module map (one block per file, upstream-shaped):
//! - [`nn`]: building blocks shared by the VAE and the UNets (diffusers
//!   `resnet.py`, `attention.py`, `embeddings.py`).
//! - [`vae`]: `AutoencoderKL` (sd-vae-ft-mse).
//! - [`unet2d`]: the 2D UNet (reference UNet, EchoMimic's
//!   `unet_2d_condition.py`) with reference "write".
//! - [`unet3d`], [`motion`], [`face_locator`]: the denoising UNet inflated to
//!   video, AnimateDiff motion modules, the face-mask encoder.
//! - [`audio`]: whisper-tiny log-mel front end, encoder and EchoMimic's
//!   per-frame feature windows.
//! - [`face`]: MTCNN face detection and EchoMimic's crop and face mask.
//! - [`scheduler`], [`rolling`]: v-prediction zero-SNR DDIM (teacher), LCM
//!   consistency sampling (student), EFT rolling state.
//! - [`preset`], [`weights`], [`pipeline`]: consistent configs per size,
//!   the weights directory, and the whole inference path on one thread.

pub mod audio;
pub mod convert;
pub mod device;
pub mod face;
pub mod face_locator;
pub mod motion;
pub mod nn;
pub mod pipeline;
pub mod preset;
pub mod rolling;
pub mod scheduler;
pub mod taesd;
pub mod unet2d;
pub mod unet3d;
pub mod vae;
pub mod weights;
