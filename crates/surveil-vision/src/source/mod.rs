//! Frame sources: ffmpeg (files, RTSP/HTTP streams), image folders, single images, and the
//! bounded queue between decoding and analysis.

pub mod ffmpeg;
pub mod images;
pub mod queue;
pub mod redact;

use std::path::Path;

pub use ffmpeg::{FfmpegOptions, FfmpegSource, ReconnectPolicy, StopSignal, StreamInfo};
pub use images::{ImageFolderSource, SingleImageSource};
pub use queue::{FrameQueue, QueuePolicy, QueueStats};
pub use redact::redact_url;

use crate::error::Result;
use crate::frame::FrameSource;

/// Opens `input` as the right kind of source: a folder → [`ImageFolderSource`] (timestamps
/// from `options.fps`, default 1 fps), an image file (png/jpg/jpeg) → [`SingleImageSource`],
/// anything else (video file, URL) → [`FfmpegSource`].
pub fn open_source(input: &str, options: &FfmpegOptions) -> Result<Box<dyn FrameSource>> {
    open_source_with_stop(input, options, &StopSignal::new())
}

/// [`open_source`] that `stop` can end: a live source still connecting (or waiting to retry)
/// returns [`crate::VisionError::Interrupted`] at once, its ffmpeg child killed and reaped, and
/// an opened ffmpeg source stops when `stop` does ([`FfmpegSource::open_with_stop`]). Image
/// sources open without waiting and ignore `stop`.
pub fn open_source_with_stop(
    input: &str,
    options: &FfmpegOptions,
    stop: &StopSignal,
) -> Result<Box<dyn FrameSource>> {
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
    Ok(Box::new(FfmpegSource::open_with_stop(
        input, options, stop,
    )?))
}
