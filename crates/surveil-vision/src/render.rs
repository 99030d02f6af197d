//! Drawing tracks onto a frame: a rectangle per track in a colour derived from its id, and the
//! id in a tiny built-in digit font on a filled label. Saved as PNG.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Result, VisionError};
use crate::frame::Frame;
use crate::track::TrackedObject;

/// 3x5 bitmaps of the digits 0-9, one row per entry, bit 2 = left column.
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// Pixel scale of the digit font.
const FONT_SCALE: u32 = 2;
const BOX_THICKNESS: i64 = 2;

/// A distinct, saturated colour for a track id.
pub fn track_color(id: u64) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 190],
    ];
    Rgb(PALETTE[(id % PALETTE.len() as u64) as usize])
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draws a rectangle outline (corners inclusive, clipped to the image).
pub(crate) fn draw_rect(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, c: Rgb<u8>) {
    for t in 0..BOX_THICKNESS {
        for x in x1..=x2 {
            put(img, x, y1 + t, c);
            put(img, x, y2 - t, c);
        }
        for y in y1..=y2 {
            put(img, x1 + t, y, c);
            put(img, x2 - t, y, c);
        }
    }
}

/// Draws a non-negative number with its top-left corner at `(x, y)`; returns its width.
pub(crate) fn draw_number(img: &mut RgbImage, x: i64, y: i64, n: u64, c: Rgb<u8>) -> i64 {
    let s = FONT_SCALE as i64;
    let text = n.to_string();
    for (k, ch) in text.bytes().enumerate() {
        let glyph = DIGITS[(ch - b'0') as usize];
        let gx = x + k as i64 * 4 * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    fill_rect(
                        img,
                        gx + col * s,
                        y + row as i64 * s,
                        gx + (col + 1) * s,
                        y + (row as i64 + 1) * s,
                        c,
                    );
                }
            }
        }
    }
    text.len() as i64 * 4 * s - s
}

/// The frame with every track's box and id drawn on it.
pub fn draw_tracks(frame: &Frame, tracks: &[TrackedObject]) -> Result<RgbImage> {
    let mut img = frame.to_rgb_image()?;
    let s = FONT_SCALE as i64;
    for t in tracks {
        let c = track_color(t.track_id);
        let b = t.bbox;
        let (x1, y1, x2, y2) = (
            b.x1.round() as i64,
            b.y1.round() as i64,
            b.x2.round() as i64,
            b.y2.round() as i64,
        );
        draw_rect(&mut img, x1, y1, x2, y2, c);
        let label_w = (t.track_id.to_string().len() as i64) * 4 * s + s;
        let label_h = 7 * s;
        let ly = if y1 - label_h >= 0 { y1 - label_h } else { y1 };
        fill_rect(&mut img, x1, ly, x1 + label_w, ly + label_h, c);
        draw_number(&mut img, x1 + s, ly + s, t.track_id, Rgb([0, 0, 0]));
    }
    Ok(img)
}

/// Draws the tracks and saves the result as a PNG.
pub fn save_tracks_png(frame: &Frame, tracks: &[TrackedObject], path: &Path) -> Result<()> {
    let img = draw_tracks(frame, tracks)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| VisionError::Image {
            path: path.to_path_buf(),
            message: format!("cannot write PNG: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BBox;
    use std::time::Duration;

    #[test]
    fn draws_box_and_id() {
        let frame = Frame::new(0, Duration::ZERO, 60, 40, vec![255; 60 * 40 * 3]).unwrap();
        let t = TrackedObject {
            track_id: 7,
            class_id: 0,
            bbox: BBox::new(10.0, 20.0, 30.0, 35.0),
            score: 0.9,
        };
        let img = draw_tracks(&frame, &[t]).unwrap();
        let c = track_color(7);
        assert_eq!(*img.get_pixel(10, 28), c, "left edge");
        assert_eq!(*img.get_pixel(30, 35), c, "bottom-right corner");
        assert_eq!(
            *img.get_pixel(20, 28),
            Rgb([255, 255, 255]),
            "inside untouched"
        );
        // Label above the box (rows 6..20): digit 7's top row is black at x = 12..18.
        assert_eq!(*img.get_pixel(12, 8), Rgb([0, 0, 0]));
        assert_eq!(*img.get_pixel(11, 8), c);
        // Boxes partly outside the frame do not panic.
        let far = TrackedObject {
            bbox: BBox::new(-50.0, -50.0, 500.0, 500.0),
            ..t
        };
        draw_tracks(&frame, &[far]).unwrap();
    }

    #[test]
    fn digit_font_shapes() {
        let mut img = RgbImage::new(40, 12);
        let w = draw_number(&mut img, 0, 0, 10, Rgb([9, 9, 9]));
        assert_eq!(w, 14);
        // "1": middle column lit on the first row, left column dark.
        assert_eq!(*img.get_pixel(2, 0), Rgb([9, 9, 9]));
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
        // "0": hollow centre.
        assert_eq!(*img.get_pixel(8 + 2, 4), Rgb([0, 0, 0]));
        assert_eq!(*img.get_pixel(8, 4), Rgb([9, 9, 9]));
    }
}
