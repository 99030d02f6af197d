//! Still images as frame sources: one image, or every image of a folder in file-name order.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Decodes an image file to an RGB frame.
pub fn load_image_frame(path: &Path, index: u64, timestamp: Duration) -> Result<Frame> {
    let bytes = std::fs::read(path).map_err(VisionError::io("cannot read image", path))?;
    if bytes.is_empty() {
        return Err(VisionError::Image {
            path: path.to_path_buf(),
            message: "empty file (0 bytes)".to_string(),
        });
    }
    let img = image::load_from_memory(&bytes).map_err(|e| VisionError::Image {
        path: path.to_path_buf(),
        message: format!("cannot decode: {e}"),
    })?;
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

/// The images of a folder (png/jpg/jpeg), sorted by file name, as frames `index / fps` apart.
#[derive(Debug)]
pub struct ImageFolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    fps: f64,
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
        files.sort();
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
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        let index = self.next as u64;
        self.next += 1;
        let ts = Duration::from_secs_f64(index as f64 / self.fps);
        load_image_frame(path, index, ts).map(Some)
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
