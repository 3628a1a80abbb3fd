//! MTCNN face detection, following facenet-pytorch 2.6.0
//! (`facenet_pytorch/models/utils/detect_face.py::detect_face` and
//! `models/mtcnn.py::MTCNN.detect` with its defaults and `keep_all=True`).
//!
//! The cascade, step for step as upstream runs it:
//! 1. Image pyramid: scales `12 / min_face_size * factor^k` while the short
//!    side stays >= 12 px; each level is resampled with area interpolation
//!    (`F.interpolate(mode="area")` = adaptive average pooling) to
//!    `int(side * scale + 1)`.
//! 2. P-Net on every level; cells with face probability >= 0.6 become 12x12
//!    windows (stride 2) mapped back to the image; NMS 0.5 within the level,
//!    NMS 0.7 across levels, box regression, squared (`rerec`).
//! 3. R-Net on 24x24 crops (clipped to the image as upstream's `pad` does):
//!    keep > 0.7, NMS 0.7, regression, squared.
//! 4. O-Net on 48x48 crops: keep > 0.7, landmarks from the pre-regression
//!    box, regression, NMS 0.7 with the "Min" overlap.
//! 5. Faces ordered largest box first (`select_largest=True`).
//!
//! Numbers stay f32 and each step uses the upstream operation order (and,
//! for tensor steps, the same libtorch operation) so that thresholds and
//! NMS decisions fall the same way as in the reference.
//!
//! Weights: the pretrained P/R/O-Net state dicts shipped in the PyPI package
//! facenet-pytorch (`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT
//! licensed), merged into one safetensors file (`pnet.*`, `rnet.*`,
//! `onet.*`) by `scripts/convert_mtcnn.py` at setup or test time; the
//! package and the converted file are never committed.

use std::path::Path;

use image::RgbImage;
use tch::{Device, Kind, Tensor, nn};

use super::nets::{ONet, PNet, RNet};
use super::nms::{Box4, nms_iou, nms_numpy};
use super::{Face, FaceError};

/// Detector settings; `Default` is facenet-pytorch `MTCNN()`'s (the values
/// EchoMimic passes explicitly).
#[derive(Debug, Clone, PartialEq)]
pub struct MtcnnConfig {
    /// Smallest face side searched for, in pixels (sets the first scale).
    pub min_face_size: f64,
    /// Probability thresholds of P-Net (>=), R-Net (>) and O-Net (>).
    pub thresholds: [f64; 3],
    /// Ratio between consecutive pyramid scales.
    pub factor: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        Self { min_face_size: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

/// upstream's `fixed_batch_process` runs R-Net and O-Net in chunks of 512
/// crops to bound memory.
const CROP_BATCH: i64 = 512;
/// P-Net's receptive field and stride, in pyramid-level pixels.
const CELL_SIZE: f64 = 12.0;
const CELL_STRIDE: f64 = 2.0;

/// The three networks plus the cascade around them.
#[derive(Debug)]
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    config: MtcnnConfig,
    device: Device,
}

/// A candidate box between stages: coordinates, score and the regression
/// offsets predicted for it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    bbox: Box4,
    score: f32,
    reg: [f32; 4],
}

impl Mtcnn {
    /// Builds the nets under `vs` (`vs / "pnet"`, `"rnet"`, `"onet"`) with the
    /// default config; load weights into the VarStore afterwards.
    pub fn new(vs: nn::Path<'_>) -> Self {
        Self::with_config(vs, MtcnnConfig::default())
    }

    pub fn with_config(vs: nn::Path<'_>, config: MtcnnConfig) -> Self {
        Self {
            pnet: PNet::new(&vs / "pnet"),
            rnet: RNet::new(&vs / "rnet"),
            onet: ONet::new(&vs / "onet"),
            config,
            device: vs.device(),
        }
    }

    /// Loads the converted safetensors file (see the module doc) onto
    /// `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, FaceError> {
        let mut vs = nn::VarStore::new(device);
        let model = Self::new(vs.root());
        vs.load(path).map_err(|source| FaceError::Load { path: path.to_path_buf(), source })?;
        Ok(model)
    }

    pub fn pnet(&self) -> &PNet {
        &self.pnet
    }

    pub fn rnet(&self) -> &RNet {
        &self.rnet
    }

    pub fn onet(&self) -> &ONet {
        &self.onet
    }

    pub fn config(&self) -> &MtcnnConfig {
        &self.config
    }

    /// All faces in `image`, largest box first, as
    /// `facenet_pytorch.MTCNN(keep_all=True).detect(img, landmarks=True)`.
    /// An image smaller than `min_face_size` has no pyramid level and so no
    /// face (upstream raises there).
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Face>, FaceError> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(FaceError::EmptyImage { width, height });
        }
        let _guard = tch::no_grad_guard();
        // NHWC bytes viewed as NCHW, as upstream's permute(0, 3, 1, 2): the
        // strides (and so libtorch's kernel choice) match the reference.
        let img = Tensor::from_slice(image.as_raw())
            .view([1, i64::from(height), i64::from(width), 3])
            .to_device(self.device)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let (w, h) = (i64::from(width), i64::from(height));

        let boxes = self.stage_pnet(&img, w, h)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let boxes = self.stage_rnet(&img, &boxes, w, h)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let mut faces = self.stage_onet(&img, &boxes, w, h)?;
        // `select_largest`: numpy argsort of the areas, reversed. Equal areas
        // have no defined order upstream (see `nms_numpy`); ours end up in
        // reverse detection order.
        faces.sort_by(|a, b| a.area().total_cmp(&b.area()));
        faces.reverse();
        Ok(faces)
    }

    /// Pyramid scales (upstream computes them in f64).
    fn scales(&self, w: i64, h: i64) -> Vec<f64> {
        let m = CELL_SIZE / self.config.min_face_size;
        let mut minl = w.min(h) as f64 * m;
        let mut scale = m;
        let mut scales = Vec::new();
        while minl >= CELL_SIZE {
            scales.push(scale);
            scale *= self.config.factor;
            minl *= self.config.factor;
        }
        scales
    }

    /// Stage 1: P-Net proposals, NMS per level then across levels,
    /// regression, squared boxes.
    fn stage_pnet(&self, img: &Tensor, w: i64, h: i64) -> Result<Vec<Box4WithScore>, FaceError> {
        let mut all: Vec<Candidate> = Vec::new();
        for scale in self.scales(w, h) {
            let size = [(h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64];
            let level = normalize(&img.adaptive_avg_pool2d(size));
            let (reg, prob) = self.pnet.forward(&level);
            let level_boxes = cells_to_boxes(&reg, &prob, scale, self.config.thresholds[0])?;
            let (b, s) = split(&level_boxes);
            let keep = nms_iou(&b, &s, 0.5);
            all.extend(keep.into_iter().map(|i| level_boxes[i]));
        }
        let (b, s) = split(&all);
        let keep = nms_iou(&b, &s, 0.7);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = all[i];
                // Stage-1 regression scales by the exclusive width (no +1).
                let [x1, y1, x2, y2] = c.bbox;
                let (rw, rh) = (x2 - x1, y2 - y1);
                let bbox = [
                    x1 + c.reg[0] * rw,
                    y1 + c.reg[1] * rh,
                    x2 + c.reg[2] * rw,
                    y2 + c.reg[3] * rh,
                ];
                Box4WithScore { bbox: rerec(bbox), score: c.score }
            })
            .collect())
    }

    /// Stage 2: R-Net on 24x24 crops, threshold, NMS, regression, squares.
    fn stage_rnet(
        &self,
        img: &Tensor,
        boxes: &[Box4WithScore],
        w: i64,
        h: i64,
    ) -> Result<Vec<Box4WithScore>, FaceError> {
        let (boxes, crops) = crops(img, boxes, w, h, 24)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let mut regs = Vec::new();
        let mut probs = Vec::new();
        for chunk in crops.split(CROP_BATCH, 0) {
            let (reg, prob) = self.rnet.forward(&chunk);
            regs.push(reg);
            probs.push(prob);
        }
        let reg = rows::<4>(&Tensor::cat(&regs, 0))?;
        let score = column(&Tensor::cat(&probs, 0), 1)?;
        let threshold = self.config.thresholds[1] as f32;
        let pass: Vec<Candidate> = (0..boxes.len())
            .filter(|&i| score[i] > threshold)
            .map(|i| Candidate { bbox: boxes[i].bbox, score: score[i], reg: reg[i] })
            .collect();
        let (b, s) = split(&pass);
        let keep = nms_iou(&b, &s, 0.7);
        Ok(keep
            .into_iter()
            .map(|i| Box4WithScore {
                bbox: rerec(bbreg(pass[i].bbox, pass[i].reg)),
                score: pass[i].score,
            })
            .collect())
    }

    /// Stage 3: O-Net on 48x48 crops, threshold, landmarks, regression,
    /// "Min" NMS.
    fn stage_onet(
        &self,
        img: &Tensor,
        boxes: &[Box4WithScore],
        w: i64,
        h: i64,
    ) -> Result<Vec<Face>, FaceError> {
        let (boxes, crops) = crops(img, boxes, w, h, 48)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let mut regs = Vec::new();
        let mut marks = Vec::new();
        let mut probs = Vec::new();
        for chunk in crops.split(CROP_BATCH, 0) {
            let (reg, lm, prob) = self.onet.forward(&chunk);
            regs.push(reg);
            marks.push(lm);
            probs.push(prob);
        }
        let reg = rows::<4>(&Tensor::cat(&regs, 0))?;
        let lm = rows::<10>(&Tensor::cat(&marks, 0))?;
        let score = column(&Tensor::cat(&probs, 0), 1)?;
        let threshold = self.config.thresholds[2] as f32;
        let faces: Vec<Face> = (0..boxes.len())
            .filter(|&i| score[i] > threshold)
            .map(|i| {
                let [x1, y1, x2, y2] = boxes[i].bbox;
                // Landmarks are relative to the box before regression, with
                // inclusive-pixel sides and a 1-based origin.
                let (bw, bh) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
                let landmarks = std::array::from_fn(|k| {
                    [bw * lm[i][k] + x1 - 1.0, bh * lm[i][k + 5] + y1 - 1.0]
                });
                Face { bbox: bbreg(boxes[i].bbox, reg[i]), probability: score[i], landmarks }
            })
            .collect();
        let b: Vec<Box4> = faces.iter().map(|f| f.bbox).collect();
        let s: Vec<f32> = faces.iter().map(|f| f.probability).collect();
        let keep = nms_numpy(&b, &s, 0.7, true);
        Ok(keep.into_iter().map(|i| faces[i].clone()).collect())
    }
}

/// A box and its current score.
#[derive(Debug, Clone, Copy)]
struct Box4WithScore {
    bbox: Box4,
    score: f32,
}

/// `(x - 127.5) * 0.0078125`: MTCNN's input normalisation (1/128).
fn normalize(x: &Tensor) -> Tensor {
    (x - 127.5) * 0.0078125
}

/// upstream `generateBoundingBox`: every P-Net cell whose face probability
/// reaches `threshold` becomes the image-space window
/// `floor((stride * cell + 1) / scale)` .. `floor((stride * cell + 12) / scale)`
/// (row-major cell order, as `nonzero` returns them).
fn cells_to_boxes(
    reg: &Tensor,
    prob: &Tensor,
    scale: f64,
    threshold: f64,
) -> Result<Vec<Candidate>, FaceError> {
    let face = prob.select(1, 1); // [1, h, w]
    let mask = face.ge(threshold);
    let idx = mask.nonzero(); // [K, 3]: (image, y, x)
    let score = face.masked_select(&mask);
    let reg =
        reg.permute([1, 0, 2, 3]).masked_select(&mask.unsqueeze(0)).view([4, -1]).transpose(0, 1);
    let cell = idx.narrow(1, 1, 2).to_kind(Kind::Float).flip([1]); // (x, y)
    let q1 = ((&cell * CELL_STRIDE + 1.0) / scale).floor();
    let q2 = ((&cell * CELL_STRIDE + CELL_SIZE - 1.0 + 1.0) / scale).floor();
    let corners = rows::<4>(&Tensor::cat(&[q1, q2], 1))?;
    let score = Vec::<f32>::try_from(score.to_device(Device::Cpu))?;
    let reg = rows::<4>(&reg)?;
    Ok(corners
        .into_iter()
        .zip(score)
        .zip(reg)
        .map(|((bbox, score), reg)| Candidate { bbox, score, reg })
        .collect())
}

/// upstream `bbreg` (stages 2 and 3): offsets scaled by inclusive sides.
fn bbreg(b: Box4, reg: [f32; 4]) -> Box4 {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// upstream `rerec`: the square of side max(w, h) sharing the box centre.
fn rerec(b: Box4) -> Box4 {
    let h = b[3] - b[1];
    let w = b[2] - b[0];
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// Crops each box (truncated to integers and clipped to the image as
/// upstream's `pad`: 1-based, inclusive) and area-resamples it to
/// `size`x`size`. Upstream would misalign boxes and crops if a box lay
/// entirely outside the image; such boxes are dropped here instead.
fn crops(
    img: &Tensor,
    boxes: &[Box4WithScore],
    w: i64,
    h: i64,
    size: i64,
) -> Result<(Vec<Box4WithScore>, Tensor), FaceError> {
    let mut kept = Vec::with_capacity(boxes.len());
    let mut tiles = Vec::with_capacity(boxes.len());
    for b in boxes {
        // `trunc().int()`: toward zero, then clipped.
        let [x, y, ex, ey] = b.bbox.map(|v| v.trunc() as i64);
        let (x, y, ex, ey) = (x.max(1), y.max(1), ex.min(w), ey.min(h));
        if ey > y - 1 && ex > x - 1 {
            let tile = img.narrow(2, y - 1, ey - (y - 1)).narrow(3, x - 1, ex - (x - 1));
            tiles.push(tile.adaptive_avg_pool2d([size, size]));
            kept.push(*b);
        }
    }
    if tiles.is_empty() {
        return Ok((kept, Tensor::empty([0, 3, size, size], (Kind::Float, img.device()))));
    }
    Ok((kept, normalize(&Tensor::cat(&tiles, 0))))
}

fn split<T: HasBox>(items: &[T]) -> (Vec<Box4>, Vec<f32>) {
    (items.iter().map(|c| c.bbox()).collect(), items.iter().map(|c| c.score()).collect())
}

trait HasBox {
    fn bbox(&self) -> Box4;
    fn score(&self) -> f32;
}

impl HasBox for Candidate {
    fn bbox(&self) -> Box4 {
        self.bbox
    }
    fn score(&self) -> f32 {
        self.score
    }
}

impl HasBox for Box4WithScore {
    fn bbox(&self) -> Box4 {
        self.bbox
    }
    fn score(&self) -> f32 {
        self.score
    }
}

/// A `[N, K]` f32 tensor as N rows of K values, on the CPU.
fn rows<const K: usize>(t: &Tensor) -> Result<Vec<[f32; K]>, FaceError> {
    let flat = Vec::<f32>::try_from(t.to_device(Device::Cpu).contiguous().view([-1]))?;
    Ok(flat.chunks_exact(K).map(|c| std::array::from_fn(|k| c[k])).collect())
}

/// Column `k` of a `[N, C]` tensor, on the CPU.
fn column(t: &Tensor, k: i64) -> Result<Vec<f32>, FaceError> {
    Ok(Vec::<f32>::try_from(t.select(1, k).to_device(Device::Cpu).contiguous())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_matches_upstream_loop() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Mtcnn::new(vs.root());
        // 512 px short side: 512 * 0.6 = 307.2 shrinking by 0.709 while >= 12.
        let s = m.scales(640, 512);
        assert_eq!(s.len(), 10);
        assert!((s[0] - 0.6).abs() < 1e-12);
        assert!((s[9] - 0.6 * 0.709f64.powi(9)).abs() < 1e-12);
        assert!(m.scales(19, 100).is_empty());
    }

    #[test]
    fn rerec_squares_around_centre() {
        assert_eq!(rerec([10.0, 20.0, 30.0, 60.0]), [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn empty_image_is_an_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Mtcnn::new(vs.root());
        assert!(matches!(m.detect(&RgbImage::new(0, 4)), Err(FaceError::EmptyImage { .. })));
        assert!(m.detect(&RgbImage::new(10, 10)).unwrap().is_empty());
    }

    #[test]
    fn missing_weights_file_is_a_load_error() {
        let err =
            Mtcnn::load(Path::new("/nonexistent/mtcnn.safetensors"), Device::Cpu).unwrap_err();
        assert!(matches!(err, FaceError::Load { .. }), "{err}");
    }
}
