//! Non-maximum suppression as facenet-pytorch's detector runs it: the IoU
//! variant is torchvision's `batched_nms` (CPU kernel
//! `torchvision/csrc/ops/cpu/nms_kernel.cpp`), the "Min" variant is
//! `nms_numpy` in `facenet_pytorch/models/utils/detect_face.py`.
//!
//! A single image means a single NMS class, so the per-class offset trick
//! of both upstream functions adds zero and is left out. Arithmetic is f32
//! in the upstream order so that borderline overlaps resolve the same way;
//! the candidate lists are short (hundreds), so plain loops are fine here.

use tch::Tensor;

/// `[x1, y1, x2, y2]` in pixels.
pub type Box4 = [f32; 4];

/// torchvision `nms`: boxes in descending score order (libtorch's own sort,
/// so ties break exactly as upstream), a box is dropped when its IoU with a
/// kept one exceeds `threshold`. Areas are `(x2 - x1) * (y2 - y1)`.
/// Returns kept indices, highest score first.
pub fn nms_iou(boxes: &[Box4], scores: &[f32], threshold: f64) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len());
    if boxes.is_empty() {
        return Vec::new();
    }
    let scores_t = Tensor::from_slice(scores);
    let order = argsort_desc(&scores_t);
    let area: Vec<f32> = boxes.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = boxes[i];
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (area[i] + area[j] - inter);
            // The kernel compares the f32 overlap with the f64 threshold.
            if f64::from(ovr) > threshold {
                suppressed[j] = true;
            }
        }
    }
    // Above 1000 boxes (4000 coordinates) on CPU, `batched_nms` switches to
    // its per-class path, which re-sorts the kept indices by score.
    if boxes.len() * 4 > 4000 {
        let kept_scores: Vec<f32> = keep.iter().map(|&i| scores[i]).collect();
        let resorted = argsort_desc(&Tensor::from_slice(&kept_scores));
        keep = resorted.into_iter().map(|k| keep[k]).collect();
    }
    keep
}

/// facenet-pytorch `nms_numpy(..., method)`: repeatedly takes the last
/// index of an ascending argsort (the highest score), drops every box whose
/// overlap with it exceeds `threshold`. `min_overlap` divides the
/// intersection by the smaller area ("Min"), otherwise by the union. Areas
/// use the inclusive-pixel convention `(x2 - x1 + 1) * (y2 - y1 + 1)`.
/// Returns kept indices, highest score first.
pub fn nms_numpy(boxes: &[Box4], scores: &[f32], threshold: f32, min_overlap: bool) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len());
    // Upstream's tie order is unspecified: numpy's default argsort is not
    // stable and, with x86-simd-sort on AVX-512 CPUs, even 4 equal scores may
    // come out in any order. Exact ties (saturated probabilities) are the
    // only case where this matters; a stable sort makes ours deterministic.
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let area: Vec<f32> = boxes.iter().map(|b| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)).collect();
    let mut keep = Vec::new();
    while let Some(i) = order.pop() {
        keep.push(i);
        let bi = boxes[i];
        order.retain(|&j| {
            let bj = boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
            let inter = w * h;
            let o = if min_overlap {
                inter / area[i].min(area[j])
            } else {
                inter / (area[i] + area[j] - inter)
            };
            o <= threshold
        });
    }
    keep
}

/// Indices sorting `scores` (1-D f32, CPU) in descending order, as
/// `Tensor::sort(0, descending=True)` orders them.
fn argsort_desc(scores: &Tensor) -> Vec<usize> {
    let (_, idx) = scores.sort(0, true);
    Vec::<i64>::try_from(idx)
        .expect("sort indices are i64")
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_keeps_best_of_overlapping_pair_and_distant_box() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]];
        let keep = nms_iou(&boxes, &[0.8, 0.9, 0.7], 0.5);
        assert_eq!(keep, vec![1, 2]);
        // IoU 81/119 = 0.68: a 0.7 threshold keeps both.
        assert_eq!(nms_iou(&boxes, &[0.8, 0.9, 0.7], 0.7), vec![1, 0, 2]);
    }

    #[test]
    fn min_overlap_drops_box_inside_another() {
        // The inner box has IoU 0.36 but a Min overlap of 1 with the outer.
        let boxes = [[0.0, 0.0, 9.0, 9.0], [2.0, 2.0, 7.0, 7.0]];
        assert_eq!(nms_numpy(&boxes, &[0.9, 0.95], 0.7, true), vec![1]);
        assert_eq!(nms_numpy(&boxes, &[0.9, 0.95], 0.7, false), vec![1, 0]);
    }
}
