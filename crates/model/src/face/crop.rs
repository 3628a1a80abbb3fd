//! EchoMimic v1's reference-image preparation (antgroup/echomimic
//! `infer_audio2vid.py` at a53e970: `select_face`, the "face musk prepare" /
//! "face crop" block of `main`, and `src/utils/util.py::crop_and_pad`).
//!
//! Given the detected faces: keep those with probability > 0.8, take the
//! largest; round its box; fill the box grown by 10 % of its height/width on
//! each side as the face mask; grow the box by 50 % the same way, clip it to
//! the image, take the largest centred square inside it; crop image and mask
//! to that square and resize both to the model size. Without a face the whole
//! image is the reference and the mask is all ones.
//!
//! Deviations, each for a reason:
//! - EchoMimic feeds `cv2.imread`'s BGR array to MTCNN; callers of
//!   [`super::mtcnn::Mtcnn::detect`] pass RGB, the channel order the weights
//!   were converted for (`facenet_pytorch.MTCNN` expects RGB).
//! - A dilated mask row/column that starts above/left of the image is
//!   clipped at 0; upstream's numpy slice would wrap the negative start
//!   around and leave the mask (partly) empty.
//! - Resizing uses half-pixel bilinear interpolation without antialiasing,
//!   the geometry of `cv2.resize(INTER_LINEAR)`, in f32 rounded to u8;
//!   OpenCV's fixed-point arithmetic can differ by one level.
//! - Without a face, upstream leaves the image uncropped for the pipeline's
//!   `VaeImageProcessor` (Lanczos) to resize and keeps a full-size mask; here
//!   both are resized to `size` x `size` bilinearly, the mask being all ones
//!   either way.

use image::{GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use super::{Face, FaceError};

/// `select_face`: faces at or below this probability are ignored.
pub const MIN_FACE_PROBABILITY: f32 = 0.8;
/// `--facemusk_dilation_ratio` default: the mask grows the face box by this
/// fraction of its height (rows) and width (columns) on each side.
pub const FACE_MASK_DILATION: f64 = 0.1;
/// `--facecrop_dilation_ratio` default: the crop rectangle grows the face
/// box by this fraction of its height/width on each side.
pub const FACE_CROP_DILATION: f64 = 0.5;
/// `-W`/`-H` default of EchoMimic (the full preset's reference size).
pub const REFERENCE_SIZE: u32 = 512;

/// The reference image and face mask handed to the network.
#[derive(Debug, Clone)]
pub struct PreparedReference {
    /// `size` x `size` RGB crop.
    pub crop: RgbImage,
    /// `size` x `size` face mask, 255 inside the dilated face box.
    pub mask: GrayImage,
    /// The square cut from the source image, `[x0, y0, x1, y1)` in source
    /// pixels (the whole image when no face was found).
    pub crop_box: [u32; 4],
    /// Whether a face drove the crop (false: the no-face fallback).
    pub face_found: bool,
}

impl PreparedReference {
    /// The mask as EchoMimic feeds the face locator: f32 `[1, 1, H, W]` in
    /// 0..1 (`mask / 255`); add the frame axis where a video layout needs it.
    pub fn mask_tensor(&self, device: Device) -> Tensor {
        let (w, h) = self.mask.dimensions();
        Tensor::from_slice(self.mask.as_raw())
            .view([1, 1, i64::from(h), i64::from(w)])
            .to_device(device)
            .to_kind(Kind::Float)
            / 255.0
    }
}

/// Integer geometry of the preparation for one face box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropGeometry {
    /// `np.round(bbox).astype(int)` (round half to even).
    pub face_box: [i64; 4],
    /// The filled mask rectangle `[x0, y0, x1, y1)`, clipped to the image.
    pub mask_box: [i64; 4],
    /// The square crop `[x0, y0, x1, y1)`.
    pub crop_box: [i64; 4],
}

/// EchoMimic's `select_face`: the largest face (box area) among those with
/// probability > 0.8; the first of equal areas.
pub fn select_face(faces: &[Face]) -> Option<&Face> {
    faces.iter().filter(|f| f.probability > MIN_FACE_PROBABILITY).fold(
        None,
        |best: Option<&Face>, f| match best {
            Some(b) if b.area() >= f.area() => Some(b),
            _ => Some(f),
        },
    )
}

/// Mask and crop rectangles for a face box in a `width` x `height` image.
pub fn crop_geometry(bbox: [f32; 4], width: u32, height: u32) -> CropGeometry {
    let (w, h) = (i64::from(width), i64::from(height));
    let [cb, rb, ce, re] = bbox.map(|v| v.round_ties_even() as i64);
    // Python's int() truncates toward zero.
    let grow = |extent: i64, ratio: f64| (extent as f64 * ratio) as i64;
    let (r_pad, c_pad) = (grow(re - rb, FACE_MASK_DILATION), grow(ce - cb, FACE_MASK_DILATION));
    let mask_box = [
        (cb - c_pad).clamp(0, w),
        (rb - r_pad).clamp(0, h),
        (ce + c_pad).clamp(0, w),
        (re + r_pad).clamp(0, h),
    ];
    let (r_pad, c_pad) = (grow(re - rb, FACE_CROP_DILATION), grow(ce - cb, FACE_CROP_DILATION));
    let rect = [0.max(cb - c_pad), 0.max(rb - r_pad), (ce + c_pad).min(w), (re + r_pad).min(h)];
    CropGeometry { face_box: [cb, rb, ce, re], mask_box, crop_box: square_in(rect, w, h) }
}

/// `crop_and_pad` (which crops only): the largest square centred in `rect`
/// (clipped to the image), shifted/shrunk to stay inside it.
fn square_in(rect: [i64; 4], w: i64, h: i64) -> [i64; 4] {
    let (x0, y0) = (rect[0].max(0), rect[1].max(0));
    let (x1, y1) = (rect[2].min(w), rect[3].min(h));
    let side = (x1 - x0).min(y1 - y0);
    // Python `//` floors; `div_euclid` by a positive divisor does too.
    let (cx, cy) = ((x0 + x1).div_euclid(2), (y0 + y1).div_euclid(2));
    let nx0 = 0.max(cx - side.div_euclid(2));
    let ny0 = 0.max(cy - side.div_euclid(2));
    let mut nx1 = w.min(nx0 + side);
    let mut ny1 = h.min(ny0 + side);
    if nx1 - nx0 != ny1 - ny0 {
        let side = (nx1 - nx0).min(ny1 - ny0);
        nx1 = nx0 + side;
        ny1 = ny0 + side;
    }
    [nx0, ny0, nx1, ny1]
}

/// Largest-face helper for callers holding all detections:
/// [`select_face`] then [`prepare_reference`].
pub fn prepare_from_detections(
    image: &RgbImage,
    faces: &[Face],
    size: u32,
) -> Result<PreparedReference, FaceError> {
    prepare_reference(image, select_face(faces), size)
}

/// Crops `image` around `face` and builds the face mask, both resized to
/// `size` x `size` (512 for the full preset, 64 for the tiny one). `None`, or
/// a face whose square crop is empty, gives the no-face fallback.
pub fn prepare_reference(
    image: &RgbImage,
    face: Option<&Face>,
    size: u32,
) -> Result<PreparedReference, FaceError> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(FaceError::EmptyImage { width, height });
    }
    if size == 0 {
        return Err(FaceError::BadSize(size));
    }
    let _guard = tch::no_grad_guard();
    let img = Tensor::from_slice(image.as_raw())
        .view([i64::from(height), i64::from(width), 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float);
    let geometry = face.map(|f| crop_geometry(f.bbox, width, height));
    let Some(CropGeometry { mask_box, crop_box: [x0, y0, x1, y1], .. }) =
        geometry.filter(|g| g.crop_box[2] > g.crop_box[0] && g.crop_box[3] > g.crop_box[1])
    else {
        let mask = Tensor::full(
            [1, i64::from(height), i64::from(width)],
            255.0,
            (Kind::Float, Device::Cpu),
        );
        return Ok(PreparedReference {
            crop: to_rgb(&resize(&img, size))?,
            mask: to_gray(&resize(&mask, size))?,
            crop_box: [0, 0, width, height],
            face_found: false,
        });
    };
    let (side_w, side_h) = (x1 - x0, y1 - y0);
    let crop = img.narrow(1, y0, side_h).narrow(2, x0, side_w);
    // The mask rectangle in crop coordinates (possibly empty).
    let mask = Tensor::zeros([1, side_h, side_w], (Kind::Float, Device::Cpu));
    let (mx0, my0) = ((mask_box[0] - x0).clamp(0, side_w), (mask_box[1] - y0).clamp(0, side_h));
    let (mx1, my1) = ((mask_box[2] - x0).clamp(0, side_w), (mask_box[3] - y0).clamp(0, side_h));
    if mx1 > mx0 && my1 > my0 {
        let _ = mask.narrow(1, my0, my1 - my0).narrow(2, mx0, mx1 - mx0).fill_(255.0);
    }
    let as_u32 = |v: i64| u32::try_from(v).expect("crop box lies inside the image");
    Ok(PreparedReference {
        crop: to_rgb(&resize(&crop, size))?,
        mask: to_gray(&resize(&mask, size))?,
        crop_box: [as_u32(x0), as_u32(y0), as_u32(x1), as_u32(y1)],
        face_found: true,
    })
}

/// `[C, H, W]` f32 -> `[C, size, size]` rounded to 0..255, half-pixel
/// bilinear without antialiasing (cv2 INTER_LINEAR's sampling grid).
fn resize(x: &Tensor, size: u32) -> Tensor {
    let s = i64::from(size);
    x.unsqueeze(0)
        .upsample_bilinear2d([s, s], false, None, None)
        .squeeze_dim(0)
        .round()
        .clamp(0.0, 255.0)
}

fn to_rgb(x: &Tensor) -> Result<RgbImage, FaceError> {
    let (h, w) = (x.size()[1], x.size()[2]);
    let raw =
        Vec::<u8>::try_from(x.permute([1, 2, 0]).contiguous().to_kind(Kind::Uint8).view([-1]))?;
    Ok(RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer matches its dimensions"))
}

fn to_gray(x: &Tensor) -> Result<GrayImage, FaceError> {
    let (h, w) = (x.size()[1], x.size()[2]);
    let raw = Vec::<u8>::try_from(x.contiguous().to_kind(Kind::Uint8).view([-1]))?;
    Ok(GrayImage::from_raw(w as u32, h as u32, raw).expect("buffer matches its dimensions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(bbox: [f32; 4], probability: f32) -> Face {
        Face { bbox, probability, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn select_face_prefers_largest_confident_face() {
        let faces = [
            face([0.0, 0.0, 10.0, 10.0], 0.99),
            face([0.0, 0.0, 50.0, 50.0], 0.75),
            face([0.0, 0.0, 20.0, 20.0], 0.9),
        ];
        assert_eq!(select_face(&faces), Some(&faces[2]));
        assert_eq!(select_face(&faces[1..2]), None);
    }

    #[test]
    fn geometry_of_centred_face() {
        // Face 100x120 at (200, 150): mask grows 10/12 px, crop 50/60 px.
        let g = crop_geometry([199.6, 150.4, 300.2, 270.5], 640, 480);
        assert_eq!(g.face_box, [200, 150, 300, 270]);
        assert_eq!(g.mask_box, [190, 138, 310, 282]);
        // Rect [150, 90, 350, 330]: 200 wide, 240 high -> 200 square centred.
        assert_eq!(g.crop_box, [150, 110, 350, 310]);
    }

    #[test]
    fn no_face_fallback_is_full_image_and_full_mask() {
        let img = RgbImage::from_pixel(30, 20, image::Rgb([10, 20, 30]));
        let r = prepare_reference(&img, None, 8).unwrap();
        assert!(!r.face_found);
        assert_eq!(r.crop_box, [0, 0, 30, 20]);
        assert_eq!(r.crop.dimensions(), (8, 8));
        assert!(r.mask.pixels().all(|p| p.0[0] == 255));
        assert!(r.crop.pixels().all(|p| p.0 == [10, 20, 30]));
        assert_eq!(r.mask_tensor(Device::Cpu).size(), [1, 1, 8, 8]);
        assert!(matches!(prepare_reference(&img, None, 0), Err(FaceError::BadSize(0))));
    }
}
