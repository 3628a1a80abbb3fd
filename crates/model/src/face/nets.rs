//! The three MTCNN networks (Zhang et al. 2016, "Joint Face Detection and
//! Alignment using Multi-task Cascaded Convolutional Networks"), laid out
//! key-for-key like facenet-pytorch's `models/mtcnn.py` (`PNet`, `RNet`,
//! `ONet`) so that the package's pretrained state dicts load unchanged.
//!
//! All three take images normalised to `(x - 127.5) / 128`, NCHW.

use tch::{Tensor, nn};

/// `nn.PReLU(c)`: one learned negative slope per channel.
#[derive(Debug)]
struct Prelu {
    weight: Tensor,
}

impl Prelu {
    fn new(vs: nn::Path<'_>, channels: i64) -> Self {
        // 0.25 is torch's default init; the checkpoint overwrites it.
        Self { weight: vs.var("weight", &[channels], nn::Init::Const(0.25)) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.prelu(&self.weight)
    }
}

fn conv(vs: nn::Path<'_>, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(vs, c_in, c_out, k, Default::default())
}

/// `nn.MaxPool2d(k, s, ceil_mode=True)`: ceil mode is what the Caffe-trained
/// weights expect (it keeps the last partial window).
fn pool(x: &Tensor, k: i64, s: i64) -> Tensor {
    x.max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

/// The dense layers of R-Net and O-Net were converted from a channels-last
/// framework: upstream flattens after `permute(0, 3, 2, 1)` (N, W, H, C).
fn flatten_whc(x: &Tensor) -> Tensor {
    x.permute([0, 3, 2, 1]).contiguous().flatten(1, -1)
}

/// P-Net: fully convolutional proposal network, 12x12 receptive field,
/// stride 2.
#[derive(Debug)]
pub struct PNet {
    conv1: nn::Conv2D,
    prelu1: Prelu,
    conv2: nn::Conv2D,
    prelu2: Prelu,
    conv3: nn::Conv2D,
    prelu3: Prelu,
    conv4_1: nn::Conv2D,
    conv4_2: nn::Conv2D,
}

impl PNet {
    pub fn new(vs: nn::Path<'_>) -> Self {
        Self {
            conv1: conv(&vs / "conv1", 3, 10, 3),
            prelu1: Prelu::new(&vs / "prelu1", 10),
            conv2: conv(&vs / "conv2", 10, 16, 3),
            prelu2: Prelu::new(&vs / "prelu2", 16),
            conv3: conv(&vs / "conv3", 16, 32, 3),
            prelu3: Prelu::new(&vs / "prelu3", 32),
            conv4_1: conv(&vs / "conv4_1", 32, 2, 1),
            conv4_2: conv(&vs / "conv4_2", 32, 4, 1),
        }
    }

    /// `[N, 3, H, W]` -> (box regression `[N, 4, h, w]`, face/non-face
    /// probabilities `[N, 2, h, w]`), upstream's output order.
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = pool(&self.prelu1.forward(&x.apply(&self.conv1)), 2, 2);
        let x = self.prelu2.forward(&x.apply(&self.conv2));
        let x = self.prelu3.forward(&x.apply(&self.conv3));
        let prob = x.apply(&self.conv4_1).softmax(1, x.kind());
        let reg = x.apply(&self.conv4_2);
        (reg, prob)
    }
}

/// R-Net: refines P-Net candidates on 24x24 crops.
#[derive(Debug)]
pub struct RNet {
    conv1: nn::Conv2D,
    prelu1: Prelu,
    conv2: nn::Conv2D,
    prelu2: Prelu,
    conv3: nn::Conv2D,
    prelu3: Prelu,
    dense4: nn::Linear,
    prelu4: Prelu,
    dense5_1: nn::Linear,
    dense5_2: nn::Linear,
}

impl RNet {
    pub fn new(vs: nn::Path<'_>) -> Self {
        let lin = |name: &str, i, o| nn::linear(&vs / name, i, o, Default::default());
        Self {
            conv1: conv(&vs / "conv1", 3, 28, 3),
            prelu1: Prelu::new(&vs / "prelu1", 28),
            conv2: conv(&vs / "conv2", 28, 48, 3),
            prelu2: Prelu::new(&vs / "prelu2", 48),
            conv3: conv(&vs / "conv3", 48, 64, 2),
            prelu3: Prelu::new(&vs / "prelu3", 64),
            dense4: lin("dense4", 576, 128),
            prelu4: Prelu::new(&vs / "prelu4", 128),
            dense5_1: lin("dense5_1", 128, 2),
            dense5_2: lin("dense5_2", 128, 4),
        }
    }

    /// `[N, 3, 24, 24]` -> (box regression `[N, 4]`, probabilities `[N, 2]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = pool(&self.prelu1.forward(&x.apply(&self.conv1)), 3, 2);
        let x = pool(&self.prelu2.forward(&x.apply(&self.conv2)), 3, 2);
        let x = self.prelu3.forward(&x.apply(&self.conv3));
        let x = self.prelu4.forward(&flatten_whc(&x).apply(&self.dense4));
        let prob = x.apply(&self.dense5_1).softmax(1, x.kind());
        let reg = x.apply(&self.dense5_2);
        (reg, prob)
    }
}

/// O-Net: final scores, box regression and five landmarks on 48x48 crops.
#[derive(Debug)]
pub struct ONet {
    conv1: nn::Conv2D,
    prelu1: Prelu,
    conv2: nn::Conv2D,
    prelu2: Prelu,
    conv3: nn::Conv2D,
    prelu3: Prelu,
    conv4: nn::Conv2D,
    prelu4: Prelu,
    dense5: nn::Linear,
    prelu5: Prelu,
    dense6_1: nn::Linear,
    dense6_2: nn::Linear,
    dense6_3: nn::Linear,
}

impl ONet {
    pub fn new(vs: nn::Path<'_>) -> Self {
        let lin = |name: &str, i, o| nn::linear(&vs / name, i, o, Default::default());
        Self {
            conv1: conv(&vs / "conv1", 3, 32, 3),
            prelu1: Prelu::new(&vs / "prelu1", 32),
            conv2: conv(&vs / "conv2", 32, 64, 3),
            prelu2: Prelu::new(&vs / "prelu2", 64),
            conv3: conv(&vs / "conv3", 64, 64, 3),
            prelu3: Prelu::new(&vs / "prelu3", 64),
            conv4: conv(&vs / "conv4", 64, 128, 2),
            prelu4: Prelu::new(&vs / "prelu4", 128),
            dense5: lin("dense5", 1152, 256),
            prelu5: Prelu::new(&vs / "prelu5", 256),
            dense6_1: lin("dense6_1", 256, 2),
            dense6_2: lin("dense6_2", 256, 4),
            dense6_3: lin("dense6_3", 256, 10),
        }
    }

    /// `[N, 3, 48, 48]` -> (box regression `[N, 4]`, landmarks `[N, 10]`
    /// (five x then five y, relative to the box), probabilities `[N, 2]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let x = pool(&self.prelu1.forward(&x.apply(&self.conv1)), 3, 2);
        let x = pool(&self.prelu2.forward(&x.apply(&self.conv2)), 3, 2);
        let x = pool(&self.prelu3.forward(&x.apply(&self.conv3)), 2, 2);
        let x = self.prelu4.forward(&x.apply(&self.conv4));
        let x = self.prelu5.forward(&flatten_whc(&x).apply(&self.dense5));
        let prob = x.apply(&self.dense6_1).softmax(1, x.kind());
        let reg = x.apply(&self.dense6_2);
        let landmarks = x.apply(&self.dense6_3);
        (reg, landmarks, prob)
    }
}
