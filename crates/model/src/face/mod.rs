//! Face detection and EchoMimic's reference preparation.
//!
//! - [`mtcnn`]: MTCNN (P-Net, R-Net, O-Net cascade) reproducing
//!   facenet-pytorch 2.6.0's `MTCNN.detect`, running the package's real
//!   pretrained weights (converted once by `scripts/convert_mtcnn.py`).
//! - [`crop`]: EchoMimic v1's `infer_audio2vid.py` preprocessing: pick the
//!   face, build the dilated face-box mask, crop a square around the face and
//!   resize both to the model size.
//! - [`nets`], [`nms`]: the three networks and the two NMS flavours the
//!   cascade uses.

pub mod crop;
pub mod mtcnn;
pub mod nets;
pub mod nms;

use std::path::PathBuf;

/// One detected face, in the image's pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// `[x1, y1, x2, y2]` after O-Net's box regression (not clipped to the
    /// image, as upstream returns it).
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub probability: f32,
    /// `[x, y]` of the left eye, right eye, nose, left and right mouth
    /// corners (image left/right as MTCNN was trained).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// Box area `(x2 - x1) * (y2 - y1)`, the size upstream ranks faces by.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("image has no pixels ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("output size must be positive, got {0}")]
    BadSize(u32),
    #[error("load MTCNN weights from {}: {source}", path.display())]
    Load { path: PathBuf, source: tch::TchError },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
