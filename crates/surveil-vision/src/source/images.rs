//! Still images as frame sources: one image, or every image of a folder in natural file-name
//! order (digit runs compare by their value: `frame2.png` before `frame10.png`).
//!
//! Every image is decoded by [`load_image_frame`], which applies the EXIF orientation, so a
//! phone photo is analysed the way it is displayed. An image folder skips an image it cannot
//! read or decode (a warning names the file; [`FrameSource::skipped_frames`] counts it) and
//! fails only when none of its images can be decoded.

use std::cmp::Ordering;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Whether `path` has an image extension.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes an image file to an RGB frame, upright: the EXIF `Orientation` tag (JPEG APP1,
/// PNG `eXIf`) is applied, so the frame is the image as a viewer displays it (orientations
/// 5..=8 swap width and height).
///
/// Errors ([`VisionError::Io`], [`VisionError::Image`]): the file cannot be read, is empty, is
/// not a PNG/JPEG the decoder accepts, or decodes to zero pixels. An unreadable orientation tag
/// is not an error: the image is used as stored, with a warning.
pub fn load_image_frame(path: &Path, index: u64, timestamp: Duration) -> Result<Frame> {
    let bytes = std::fs::read(path).map_err(VisionError::io("cannot read image", path))?;
    if bytes.is_empty() {
        return Err(VisionError::Image {
            path: path.to_path_buf(),
            message: "empty file (0 bytes)".to_string(),
        });
    }
    let cannot_decode = |e: &dyn std::fmt::Display| VisionError::Image {
        path: path.to_path_buf(),
        message: format!("cannot decode: {e}"),
    };
    let mut decoder = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| cannot_decode(&e))?
        .into_decoder()
        .map_err(|e| cannot_decode(&e))?;
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "unreadable EXIF orientation: image used as stored");
        image::metadata::Orientation::NoTransforms
    });
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| cannot_decode(&e))?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(VisionError::Image {
            path: path.to_path_buf(),
            message: format!("zero-size image {w}x{h}"),
        });
    }
    Frame::new(index, timestamp, w, h, rgb.into_raw())
}

/// Natural order of two file names: runs of ASCII digits compare by their numeric value
/// (`frame2` < `frame10`, any length, no overflow), everything else byte by byte. Names that
/// differ only in leading zeros (`f01`, `f1`) are ordered by the bytes, so the order is total.
/// Works on the raw bytes, so names that are not UTF-8 are ordered too.
pub fn natural_name_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let end_a = i + a[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let end_b = j + b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            let zeros = |s: &[u8]| s.iter().take_while(|&&c| c == b'0').count();
            let (run_a, run_b) = (&a[i..end_a], &b[j..end_b]);
            let (va, vb) = (&run_a[zeros(run_a)..], &run_b[zeros(run_b)..]);
            // Without leading zeros, a longer run is a larger number; same length: byte order.
            let by_value = va.len().cmp(&vb.len()).then_with(|| va.cmp(vb));
            if by_value != Ordering::Equal {
                return by_value;
            }
            i = end_a;
            j = end_b;
        } else {
            // A digit against a non-digit compares as bytes: every digit falls on the same side
            // of a non-digit byte, so a number's first digit stands for the whole number.
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

/// The images of a folder (png/jpg/jpeg) in natural file-name order ([`natural_name_cmp`]:
/// `frame1.png, frame2.png, …, frame10.png`), as frames `index / fps` apart, where `index` is
/// the image's position in that order.
///
/// An image that cannot be read or decoded is skipped with a warning naming the file, and
/// counted ([`FrameSource::skipped_frames`]); the frames after it keep their own index and
/// time. When no image of the folder can be decoded, the source fails at the end with the
/// first file's error.
#[derive(Debug)]
pub struct ImageFolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    fps: f64,
    decoded: u64,
    skipped: u64,
    first_error: Option<VisionError>,
}

impl ImageFolderSource {
    /// Lists the folder. An empty folder is an error; `fps` (> 0) sets the timestamps.
    pub fn open(dir: &Path, fps: f64) -> Result<Self> {
        if !(fps.is_finite() && fps > 0.0) {
            return Err(VisionError::InvalidOption {
                name: "fps",
                value: fps.to_string(),
                message: "must be > 0".to_string(),
            });
        }
        let entries = std::fs::read_dir(dir).map_err(VisionError::io("cannot list", dir))?;
        let mut files = Vec::new();
        for e in entries {
            let e = e.map_err(VisionError::io("cannot list", dir))?;
            let p = e.path();
            if p.is_file() && is_image_path(&p) {
                files.push(p);
            }
        }
        files.sort_by(|a, b| {
            let name = |p: &PathBuf| p.file_name().map(|n| n.as_encoded_bytes().to_vec());
            natural_name_cmp(
                name(a).as_deref().unwrap_or_default(),
                name(b).as_deref().unwrap_or_default(),
            )
        });
        if files.is_empty() {
            return Err(VisionError::Image {
                path: dir.to_path_buf(),
                message: format!("no images ({}) in folder", IMAGE_EXTENSIONS.join(", ")),
            });
        }
        tracing::info!(dir = %dir.display(), images = files.len(), "image folder source opened");
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            fps,
            decoded: 0,
            skipped: 0,
            first_error: None,
        })
    }

    /// The image files, in the order they are read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for ImageFolderSource {
    fn describe(&self) -> String {
        format!("{} ({} images)", self.dir.display(), self.files.len())
    }

    fn is_live(&self) -> bool {
        false
    }

    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        while let Some(path) = self.files.get(self.next) {
            let index = self.next as u64;
            self.next += 1;
            let ts = Duration::from_secs_f64(index as f64 / self.fps);
            match load_image_frame(path, index, ts) {
                Ok(frame) => {
                    self.decoded += 1;
                    return Ok(Some(frame));
                }
                Err(e) => {
                    self.skipped += 1;
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        skipped = self.skipped,
                        "image skipped: cannot be read or decoded"
                    );
                    self.first_error.get_or_insert(e);
                }
            }
        }
        if self.decoded == 0 {
            if let Some(first) = self.first_error.take() {
                let (path, cause) = match first {
                    VisionError::Image { path, message } => (path, message),
                    VisionError::Io {
                        action,
                        path,
                        source,
                    } => (path, format!("{action}: {source}")),
                    other => (self.dir.clone(), other.to_string()),
                };
                return Err(VisionError::Image {
                    path,
                    message: format!(
                        "{cause} (the first of the folder's {} images, none of which could be \
                         decoded)",
                        self.files.len()
                    ),
                });
            }
        }
        Ok(None)
    }

    fn skipped_frames(&self) -> u64 {
        self.skipped
    }
}

/// One image as a one-frame source.
#[derive(Debug)]
pub struct SingleImageSource {
    path: PathBuf,
    frame: Option<Frame>,
}

impl SingleImageSource {
    /// Decodes the image now, so a bad file fails at open.
    pub fn open(path: &Path) -> Result<Self> {
        let frame = load_image_frame(path, 0, Duration::ZERO)?;
        Ok(Self {
            path: path.to_path_buf(),
            frame: Some(frame),
        })
    }
}

impl FrameSource for SingleImageSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_live(&self) -> bool {
        false
    }

    fn fps(&self) -> Option<f64> {
        None
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        Ok(self.frame.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<&str> = names.to_vec();
        v.sort_by(|a, b| natural_name_cmp(a.as_bytes(), b.as_bytes()));
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn digit_runs_compare_by_value() {
        assert_eq!(
            sorted(&["frame10.png", "frame2.png", "frame1.png", "frame9.png"]),
            ["frame1.png", "frame2.png", "frame9.png", "frame10.png"]
        );
        // Several runs; numbers longer than u64; a name that is a prefix of another.
        assert_eq!(
            sorted(&[
                "cam2_10.jpg",
                "cam10_1.jpg",
                "cam2_9.jpg",
                "cam2",
                "x99999999999999999999999",
                "x100000000000000000000000"
            ]),
            [
                "cam2",
                "cam2_9.jpg",
                "cam2_10.jpg",
                "cam10_1.jpg",
                "x99999999999999999999999",
                "x100000000000000000000000"
            ]
        );
        // Equal values: leading zeros decide by bytes, so the order is total.
        assert_eq!(
            sorted(&["f1.png", "f001.png", "f01.png"]),
            ["f001.png", "f01.png", "f1.png"]
        );
        assert_eq!(natural_name_cmp(b"a7", b"a7"), Ordering::Equal);
        // A digit against a letter or a dot: as bytes ('.' < '0'..'9' < 'a').
        assert_eq!(sorted(&["a1", "a.", "aa"]), ["a.", "a1", "aa"]);
        // Not UTF-8.
        assert_eq!(natural_name_cmp(b"\xff2", b"\xff10"), Ordering::Less);
    }
}
