//! MTCNN with the real pretrained weights (facenet-pytorch 2.6.0's
//! data/{pnet,rnet,onet}.pt, converted by scripts/convert_mtcnn.py) against
//! `facenet_pytorch.MTCNN(keep_all=True).detect(img, landmarks=True)`, and
//! EchoMimic's reference crop / face mask against a Python reimplementation.
//! Reference: tests/reference/mtcnn.py.

mod common;

use std::collections::HashMap;

use image::{GrayImage, RgbImage};
use osa_model::face::{
    Face,
    crop::{CropGeometry, crop_geometry, prepare_reference, select_face},
    mtcnn::Mtcnn,
};
use tch::{Device, Kind, Tensor};

struct Fixture {
    model: Mtcnn,
    io: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let f = common::fixture("mtcnn.py", "mtcnn", &[]);
    let model = Mtcnn::load(&f.weights, Device::Cpu).expect("load converted MTCNN weights");
    Fixture { model, io: common::read(&f.io) }
}

fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    io.get(key).unwrap_or_else(|| panic!("fixture has no {key}"))
}

fn rgb(t: &Tensor) -> RgbImage {
    let size = t.size();
    let raw = Vec::<u8>::try_from(t.contiguous().view([-1])).unwrap();
    RgbImage::from_raw(size[1] as u32, size[0] as u32, raw).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

/// Runs our detector on the fixture image `case` and compares every face:
/// boxes and landmarks within 1 px, probabilities within 1e-4, same order.
fn check_case(f: &Fixture, case: &str) -> Vec<Face> {
    let image = rgb(get(&f.io, &format!("{case}.image")));
    let faces = f.model.detect(&image).expect("detect");
    let boxes = floats(get(&f.io, &format!("{case}.boxes")));
    let probs = floats(get(&f.io, &format!("{case}.probs")));
    let points = floats(get(&f.io, &format!("{case}.points")));
    assert_eq!(faces.len(), probs.len(), "{case}: face count (ours {faces:?})");
    let (mut box_err, mut point_err, mut prob_err) = (0f32, 0f32, 0f32);
    for (i, face) in faces.iter().enumerate() {
        for k in 0..4 {
            box_err = box_err.max((face.bbox[k] - boxes[i * 4 + k]).abs());
        }
        for k in 0..5 {
            for d in 0..2 {
                point_err =
                    point_err.max((face.landmarks[k][d] - points[i * 10 + k * 2 + d]).abs());
            }
        }
        prob_err = prob_err.max((face.probability - probs[i]).abs());
    }
    eprintln!(
        "{case}: {} faces, max |box| {box_err:.2e} px, |landmark| {point_err:.2e} px, |p| {prob_err:.2e}",
        faces.len()
    );
    assert!(box_err <= 1.0, "{case}: box error {box_err} px");
    assert!(point_err <= 1.0, "{case}: landmark error {point_err} px");
    assert!(prob_err <= 1e-4, "{case}: probability error {prob_err}");
    faces
}

#[test]
fn raw_nets_match_facenet_pytorch() {
    let f = fixture();
    let io = &f.io;
    let (reg, prob) = f.model.pnet().forward(get(io, "pnet.in"));
    common::assert_close("pnet reg", &reg, get(io, "pnet.out_reg"), 1e-4);
    common::assert_close("pnet prob", &prob, get(io, "pnet.out_prob"), 1e-4);
    let (reg, prob) = f.model.rnet().forward(get(io, "rnet.in"));
    common::assert_close("rnet reg", &reg, get(io, "rnet.out_reg"), 1e-4);
    common::assert_close("rnet prob", &prob, get(io, "rnet.out_prob"), 1e-4);
    let (reg, lm, prob) = f.model.onet().forward(get(io, "onet.in"));
    common::assert_close("onet reg", &reg, get(io, "onet.out_reg"), 1e-4);
    common::assert_close("onet landmarks", &lm, get(io, "onet.out_landmarks"), 1e-4);
    common::assert_close("onet prob", &prob, get(io, "onet.out_prob"), 1e-4);

    // Batch equals single: each item alone gives its row of the batch.
    let x = get(io, "onet.in");
    let (_, lm_batch, _) = f.model.onet().forward(x);
    for i in 0..x.size()[0] {
        let (_, lm_one, _) = f.model.onet().forward(&x.narrow(0, i, 1));
        common::assert_close("onet batch vs single", &lm_one, &lm_batch.narrow(0, i, 1), 1e-5);
    }
    let x = get(io, "pnet.in");
    let (reg_batch, _) = f.model.pnet().forward(x);
    let (reg_one, _) = f.model.pnet().forward(&x.narrow(0, 1, 1));
    common::assert_close("pnet batch vs single", &reg_one, &reg_batch.narrow(0, 1, 1), 1e-5);
}

#[test]
fn detects_the_astronaut_like_facenet_pytorch() {
    let f = fixture();
    let faces = check_case(&f, "astronaut");
    assert_eq!(faces.len(), 1);
}

#[test]
fn no_face_in_coffee() {
    let f = fixture();
    assert!(check_case(&f, "coffee").is_empty());
}

#[test]
fn two_faces_side_by_side() {
    let f = fixture();
    let faces = check_case(&f, "twins");
    assert_eq!(faces.len(), 2);
    // One face in each half of the tiled image.
    assert!(faces.iter().any(|f| f.bbox[2] < 512.0) && faces.iter().any(|f| f.bbox[0] > 512.0));
}

#[test]
fn face_cut_by_the_corner() {
    // Boxes with negative coordinates: crops clipped as upstream's `pad`.
    let f = fixture();
    let faces = check_case(&f, "edge");
    assert_eq!(faces.len(), 1);
    assert!(faces[0].bbox[0] < 0.0 && faces[0].bbox[1] < 0.0);
}

#[test]
fn small_face_near_minimum_size() {
    let f = fixture();
    assert_eq!(check_case(&f, "small").len(), 1);
}

/// Crop geometry from the reference's own box (`<prefix>.bbox`) on the
/// fixture image `case`: the crop box and the full-resolution cropped mask
/// must be integer-exact.
fn check_geometry(io: &HashMap<String, Tensor>, case: &str, prefix: &str) -> CropGeometry {
    let image = rgb(get(io, &format!("{case}.image")));
    let bbox: [f32; 4] = floats(get(io, &format!("{prefix}.bbox"))).try_into().unwrap();
    let geometry = crop_geometry(bbox, image.width(), image.height());
    let want: Vec<i64> = Vec::try_from(get(io, &format!("{prefix}.box"))).unwrap();
    assert_eq!(geometry.crop_box.to_vec(), want, "{prefix}: crop box");
    let [x0, y0, x1, y1] = geometry.crop_box;
    // The mask rectangle intersected with the crop, in crop coordinates.
    let [mx0, my0, mx1, my1] = geometry.mask_box;
    let (mx0, mx1) = ((mx0 - x0).clamp(0, x1 - x0), (mx1 - x0).clamp(0, x1 - x0));
    let (my0, my1) = ((my0 - y0).clamp(0, y1 - y0), (my1 - y0).clamp(0, y1 - y0));
    let ours = Tensor::zeros([y1 - y0, x1 - x0], (Kind::Uint8, Device::Cpu));
    let _ = ours.narrow(0, my0, my1 - my0).narrow(1, mx0, mx1 - mx0).fill_(255);
    assert!(
        ours.equal(get(io, &format!("{prefix}.mask_full"))),
        "{prefix}: mask before resize differs"
    );
    geometry
}

#[test]
fn echomimic_geometry_at_the_image_corner() {
    let f = fixture();
    let g = check_geometry(&f.io, "edge", "edge_crop");
    assert_eq!(g.mask_box[0], 0, "mask clipped at the left edge");
    // Upstream's negative slice start wraps around and leaves no mask at all
    // here: the documented deviation (face/crop.rs).
    assert_eq!(get(&f.io, "edge_crop.upstream_mask_full").sum(Kind::Int64).int64_value(&[]), 0);
}

#[test]
fn echomimic_crop_and_mask_match_reference() {
    let f = fixture();
    let io = &f.io;
    let image = rgb(get(io, "astronaut.image"));
    let faces = f.model.detect(&image).unwrap();
    let face = select_face(&faces).expect("a confident face");

    // Geometry from the reference's own box: integer-exact, and the square
    // crop before resizing pixel-exact.
    let geometry = check_geometry(io, "astronaut", "crop");
    let want = geometry.crop_box.to_vec();
    let [x0, y0, x1, y1] = geometry.crop_box;
    let crop_full = Tensor::from_slice(image.as_raw())
        .view([512, 512, 3])
        .narrow(0, y0, y1 - y0)
        .narrow(1, x0, x1 - x0);
    assert!(crop_full.equal(get(io, "crop.image_full")), "crop before resize differs");

    // End to end from our own detection (within 1 px of the reference box,
    // so the integer geometry may shift by a pixel at most).
    let size = u32::try_from(get(io, "crop.image").size()[0]).unwrap();
    let prepared = prepare_reference(&image, Some(face), size).unwrap();
    assert!(prepared.face_found);
    let got_box: Vec<i64> = prepared.crop_box.iter().map(|&v| i64::from(v)).collect();
    let shift = got_box.iter().zip(&want).map(|(a, b)| (a - b).abs()).max().unwrap();
    assert!(shift <= 1, "crop box {got_box:?} vs {want:?}");
    if shift == 0 {
        let img_err = max_abs_diff_rgb(&prepared.crop, get(io, "crop.image"));
        let mask_err = max_abs_diff_gray(&prepared.mask, get(io, "crop.mask"));
        eprintln!("crop: max |pixel| {img_err}, max |mask| {mask_err}");
        assert!(
            img_err <= 1 && mask_err <= 1,
            "resized crop {img_err} / mask {mask_err} levels off"
        );
    }
    let mask = prepared.mask_tensor(Device::Cpu);
    assert_eq!(mask.size(), [1, 1, i64::from(size), i64::from(size)]);
    assert!(mask.max().double_value(&[]) == 1.0 && mask.min().double_value(&[]) == 0.0);

    // No face: the whole image and a full mask.
    let fallback = prepare_reference(&image, None, size).unwrap();
    assert!(!fallback.face_found);
    assert_eq!(fallback.crop_box, [0, 0, 512, 512]);
    assert!(fallback.mask.pixels().all(|p| p.0[0] == 255));
}

fn max_abs_diff_rgb(ours: &RgbImage, want: &Tensor) -> i64 {
    let ours = Tensor::from_slice(ours.as_raw()).to_kind(Kind::Int64);
    (ours - want.contiguous().view([-1]).to_kind(Kind::Int64)).abs().max().int64_value(&[])
}

fn max_abs_diff_gray(ours: &GrayImage, want: &Tensor) -> i64 {
    let ours = Tensor::from_slice(ours.as_raw()).to_kind(Kind::Int64);
    (ours - want.contiguous().view([-1]).to_kind(Kind::Int64)).abs().max().int64_value(&[])
}
