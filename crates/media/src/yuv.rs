//! RGB24 -> I420 (yuv420p) conversion.
//!
//! BT.601 matrix, limited ("TV") range: Y in 16..=235, Cb/Cr in 16..=240.
//! That is what H.264 decoders assume when a stream says nothing else, and
//! the encoder also writes it into the SPS's VUI (colour_primaries,
//! transfer and matrix = SMPTE 170M, video_full_range_flag = 0), so players
//! that honour the VUI and players that ignore it show the same colours.
//! Chroma is the mean of each 2x2 block (centre siting), computed from the
//! RGB sums so no precision is lost before rounding. The integer
//! coefficients are the usual 8-bit fixed-point BT.601 ones (x/256).

use crate::frame::{RgbFrame, VideoSize};

/// A planar 4:2:0 picture: full-size Y, half-width half-height U and V.
#[derive(Debug, Clone)]
pub struct I420 {
    size: VideoSize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl I420 {
    /// An all-zero picture of `size`, to be filled by [`I420::fill_from_rgb`].
    pub fn new(size: VideoSize) -> Self {
        let (w, h) = (size.width() as usize, size.height() as usize);
        Self { size, y: vec![0; w * h], u: vec![0; w * h / 4], v: vec![0; w * h / 4] }
    }

    /// Converts `frame` into a new picture.
    pub fn from_rgb(frame: &RgbFrame<'_>) -> Self {
        let mut out = Self::new(frame.size());
        out.fill_from_rgb(frame);
        out
    }

    /// Converts `frame` into this picture, reusing its buffers. If the sizes
    /// differ the buffers are resized first.
    pub fn fill_from_rgb(&mut self, frame: &RgbFrame<'_>) {
        if self.size != frame.size() {
            *self = Self::new(frame.size());
        }
        let w = self.size.width() as usize;
        let rgb = frame.data();
        let row_bytes = w * 3;
        // Two RGB rows make one chroma row; VideoSize guarantees even sides.
        for (cy, rows) in rgb.chunks_exact(2 * row_bytes).enumerate() {
            let (top, bottom) = rows.split_at(row_bytes);
            let y_top = &mut self.y[2 * cy * w..(2 * cy + 1) * w];
            luma_row(top, y_top);
            let y_bottom = &mut self.y[(2 * cy + 1) * w..(2 * cy + 2) * w];
            luma_row(bottom, y_bottom);
            let u_row = &mut self.u[cy * w / 2..(cy + 1) * w / 2];
            let v_row = &mut self.v[cy * w / 2..(cy + 1) * w / 2];
            for (cx, (u, v)) in u_row.iter_mut().zip(v_row.iter_mut()).enumerate() {
                let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
                for row in [top, bottom] {
                    for px in row[6 * cx..6 * cx + 6].chunks_exact(3) {
                        r += i32::from(px[0]);
                        g += i32::from(px[1]);
                        b += i32::from(px[2]);
                    }
                }
                // Sums of four pixels: scale by 1/1024 instead of 1/256.
                // The +128<<10 offset keeps the value positive before the shift.
                *u = ((-38 * r - 74 * g + 112 * b + (128 << 10) + 512) >> 10) as u8;
                *v = ((112 * r - 94 * g - 18 * b + (128 << 10) + 512) >> 10) as u8;
            }
        }
    }

    /// The picture's size.
    pub const fn size(&self) -> VideoSize {
        self.size
    }

    /// The Y, U and V planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.y, &self.u, &self.v)
    }
}

fn luma_row(rgb: &[u8], y: &mut [u8]) {
    for (out, px) in y.iter_mut().zip(rgb.chunks_exact(3)) {
        let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
        *out = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(rgb: [u8; 3]) -> (u8, u8, u8) {
        let data: Vec<u8> = rgb.iter().copied().cycle().take(2 * 2 * 3).collect();
        let frame = RgbFrame::new(2, 2, &data).unwrap();
        let yuv = I420::from_rgb(&frame);
        let (y, u, v) = yuv.planes();
        (y[0], u[0], v[0])
    }

    #[test]
    fn limited_range_extremes() {
        assert_eq!(convert([0, 0, 0]), (16, 128, 128));
        assert_eq!(convert([255, 255, 255]), (235, 128, 128));
        // Pure red: Y 81, Cb 90, Cr 240 in BT.601 limited range.
        let (y, u, v) = convert([255, 0, 0]);
        assert!((i32::from(y) - 81).abs() <= 1, "{y}");
        assert!((i32::from(u) - 90).abs() <= 1, "{u}");
        assert!((i32::from(v) - 240).abs() <= 1, "{v}");
    }
}
