//! Darknet `letterbox_image`: aspect-preserving resize into the network input, padded with 0.5.
//!
//! The resize is Darknet's `resize_image` (separable bilinear, align-corners sampling,
//! horizontal pass first, all in f32, no fused multiply-add), transcribed exactly so that the
//! network input matches the reference bit for bit. It is not OpenCV's half-pixel bilinear.

/// Where the frame lands inside the network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetterboxGeometry {
    /// Frame width.
    pub frame_w: usize,
    /// Frame height.
    pub frame_h: usize,
    /// Network input width.
    pub net_w: usize,
    /// Network input height.
    pub net_h: usize,
    /// Width of the resized frame inside the input.
    pub new_w: usize,
    /// Height of the resized frame inside the input.
    pub new_h: usize,
    /// Left padding.
    pub pad_x: usize,
    /// Top padding.
    pub pad_y: usize,
}

impl LetterboxGeometry {
    /// Darknet's integer geometry for a `frame_w x frame_h` frame in a `net_w x net_h` input.
    /// All sizes must be > 0.
    pub fn new(frame_w: usize, frame_h: usize, net_w: usize, net_h: usize) -> Self {
        let (new_w, new_h) = if (net_w as f32 / frame_w as f32) < (net_h as f32 / frame_h as f32) {
            (net_w, (frame_h * net_w) / frame_w)
        } else {
            ((frame_w * net_h) / frame_h, net_h)
        };
        // A very thin frame can round to 0 rows; keep one.
        let (new_w, new_h) = (new_w.max(1), new_h.max(1));
        Self {
            frame_w,
            frame_h,
            net_w,
            net_h,
            new_w,
            new_h,
            pad_x: (net_w - new_w) / 2,
            pad_y: (net_h - new_h) / 2,
        }
    }

    /// Maps a point in network-input pixels to frame pixels.
    pub fn to_frame(&self, x: f64, y: f64) -> (f64, f64) {
        (
            (x - self.pad_x as f64) * self.frame_w as f64 / self.new_w as f64,
            (y - self.pad_y as f64) * self.frame_h as f64 / self.new_h as f64,
        )
    }

    /// Maps a size in network-input pixels to frame pixels.
    pub fn size_to_frame(&self, w: f64, h: f64) -> (f64, f64) {
        (
            w * self.frame_w as f64 / self.new_w as f64,
            h * self.frame_h as f64 / self.new_h as f64,
        )
    }
}

/// Fill value of the padding.
pub const LETTERBOX_FILL: f32 = 0.5;

/// Letterboxes an RGB frame (`w * h * 3` bytes) into `out`, a CHW f32 buffer of
/// `3 * net_h * net_w` values. The caller checks the buffer sizes and that `w, h > 0`.
pub fn letterbox_into(rgb: &[u8], geom: &LetterboxGeometry, out: &mut [f32]) {
    let (w, h) = (geom.frame_w, geom.frame_h);
    let (nw, nh) = (geom.new_w, geom.new_h);
    let plane = geom.net_w * geom.net_h;
    debug_assert_eq!(rgb.len(), w * h * 3);
    debug_assert_eq!(out.len(), 3 * plane);
    out.fill(LETTERBOX_FILL);

    let w_scale = if nw > 1 {
        (w - 1) as f32 / (nw - 1) as f32
    } else {
        0.0
    };
    let h_scale = if nh > 1 {
        (h - 1) as f32 / (nh - 1) as f32
    } else {
        0.0
    };
    // Column sampling table, shared by every row and channel.
    let cols: Vec<(usize, f32)> = (0..nw)
        .map(|c| {
            if c == nw - 1 || w == 1 {
                (w - 1, 0.0)
            } else {
                let sx = c as f32 * w_scale;
                let ix = sx as usize;
                (ix, sx - ix as f32)
            }
        })
        .collect();

    // Horizontal pass: tmp[k][r][c], h rows of nw columns per channel.
    let mut tmp = vec![0f32; 3 * h * nw];
    for r in 0..h {
        let row = &rgb[r * w * 3..(r + 1) * w * 3];
        for (c, &(ix, dx)) in cols.iter().enumerate() {
            for k in 0..3 {
                let v0 = row[ix * 3 + k] as f32 / 255.0;
                let val = if c == nw - 1 || w == 1 {
                    v0
                } else {
                    let v1 = row[(ix + 1) * 3 + k] as f32 / 255.0;
                    (1.0 - dx) * v0 + dx * v1
                };
                tmp[(k * h + r) * nw + c] = val;
            }
        }
    }

    // Vertical pass into the canvas.
    for k in 0..3 {
        for r in 0..nh {
            let sy = r as f32 * h_scale;
            let iy = sy as usize;
            let dy = sy - iy as f32;
            let dst_row = k * plane + (r + geom.pad_y) * geom.net_w + geom.pad_x;
            let src0 = (k * h + iy) * nw;
            let last = r == nh - 1 || h == 1;
            for c in 0..nw {
                let mut val = (1.0 - dy) * tmp[src0 + c];
                if !last {
                    val += dy * tmp[src0 + nw + c];
                }
                out[dst_row + c] = val;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_vtest() {
        let g = LetterboxGeometry::new(768, 576, 416, 416);
        assert_eq!((g.new_w, g.new_h, g.pad_x, g.pad_y), (416, 312, 0, 52));
        let (x, y) = g.to_frame(208.0, 52.0);
        assert!((x - 384.0).abs() < 1e-9 && y.abs() < 1e-9);
        let g = LetterboxGeometry::new(100, 400, 416, 416);
        assert_eq!((g.new_w, g.new_h, g.pad_x, g.pad_y), (104, 416, 156, 0));
    }

    #[test]
    fn identity_size_copies_and_pads() {
        // 4x2 frame into a 4x4 input: new 4x2, pad_y 1; same size means an exact copy.
        let rgb: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
        let g = LetterboxGeometry::new(4, 2, 4, 4);
        let mut out = vec![0f32; 48];
        letterbox_into(&rgb, &g, &mut out);
        assert_eq!(out[0..4], [0.5; 4]);
        for r in 0..2 {
            for c in 0..4 {
                for k in 0..3 {
                    let want = rgb[(r * 4 + c) * 3 + k] as f32 / 255.0;
                    assert_eq!(out[k * 16 + (r + 1) * 4 + c], want);
                }
            }
        }
        assert_eq!(out[12..16], [0.5; 4]);
    }

    #[test]
    fn downscale_uses_align_corners() {
        // 3 columns -> 2 columns: samples at x = 0 and x = 2 (the last column), not 0.25/1.75.
        let rgb = [0u8, 0, 0, 255, 255, 255, 51, 51, 51];
        let g = LetterboxGeometry::new(3, 1, 2, 2);
        assert_eq!((g.new_w, g.new_h), (2, 1));
        let mut out = vec![0f32; 12];
        letterbox_into(&rgb, &g, &mut out);
        assert_eq!(out[0..4], [0.0, 51.0 / 255.0, 0.5, 0.5]);
    }
}
