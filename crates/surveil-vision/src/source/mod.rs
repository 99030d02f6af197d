//! Frame sources: ffmpeg (files, RTSP/HTTP streams), image folders, single images, and the
//! bounded queue between decoding and analysis.

pub mod ffmpeg;
pub mod images;
pub mod queue;
pub mod redact;

use std::path::Path;

pub use ffmpeg::{FfmpegOptions, FfmpegSource, ReconnectPolicy, StreamInfo};
pub use images::{ImageFolderSource, SingleImageSource};
pub use queue::{FrameQueue, QueuePolicy, QueueStats};
pub use redact::{redact_text, redact_url};

use crate::error::Result;
use crate::frame::FrameSource;

/// Opens `input` as the right kind of source: a folder → [`ImageFolderSource`] (timestamps
/// from `options.fps`, default 1 fps), an image file (png/jpg/jpeg) → [`SingleImageSource`],
/// anything else (video file, URL) → [`FfmpegSource`].
pub fn open_source(input: &str, options: &FfmpegOptions) -> Result<Box<dyn FrameSource>> {
    let path = Path::new(input);
    if ffmpeg::url_scheme(input).is_none() {
        if path.is_dir() {
            return Ok(Box::new(ImageFolderSource::open(
                path,
                options.fps.unwrap_or(1.0),
            )?));
        }
        if images::is_image_path(path) {
            return Ok(Box::new(SingleImageSource::open(path)?));
        }
    }
    Ok(Box::new(FfmpegSource::open(input, options)?))
}
