//! Decoded frames and the trait every frame source implements.

use std::time::Duration;

use crate::error::{Result, VisionError};

/// One decoded frame: 8-bit RGB, row-major, no padding between rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Position in the source, counting from 0 (frames dropped by a queue keep their index).
    pub index: u64,
    /// Time of the frame relative to the start of the source (video files: the frame's
    /// presentation time, so a variable-frame-rate file keeps its irregular times; with a
    /// fixed output rate, or where the file carries none, index / fps; image folders:
    /// index / fps; live sources: wall-clock time since the source was opened).
    pub timestamp: Duration,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, R, G, B.
    pub data: Vec<u8>,
}

impl Frame {
    /// A frame after checking that the buffer matches the size and the size is not zero.
    pub fn new(
        index: u64,
        timestamp: Duration,
        width: u32,
        height: u32,
        data: Vec<u8>,
    ) -> Result<Self> {
        let frame = Self {
            index,
            timestamp,
            width,
            height,
            data,
        };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks that the frame has pixels and a buffer of `width * height * 3` bytes.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(VisionError::InvalidFrame {
                index: self.index,
                message: format!("zero-size frame {}x{}", self.width, self.height),
            });
        }
        let expected = self.width as usize * self.height as usize * 3;
        if self.data.len() != expected {
            return Err(VisionError::InvalidFrame {
                index: self.index,
                message: format!(
                    "buffer has {} bytes, {}x{} RGB needs {expected}",
                    self.data.len(),
                    self.width,
                    self.height
                ),
            });
        }
        Ok(())
    }

    /// The frame as an `image` buffer (copies the pixels).
    pub fn to_rgb_image(&self) -> Result<image::RgbImage> {
        self.validate()?;
        image::RgbImage::from_raw(self.width, self.height, self.data.clone()).ok_or_else(|| {
            VisionError::InvalidFrame {
                index: self.index,
                message: "buffer does not match the frame size".to_string(),
            }
        })
    }
}

/// A source of frames: a video file or stream, a folder of images, a single image.
///
/// `next_frame` returns `Ok(None)` at the end (end of file, or after `interrupt`). Live sources
/// reconnect internally and only return an error when they give up.
pub trait FrameSource: Send {
    /// A description for logs and errors, credentials redacted.
    fn describe(&self) -> String;

    /// Whether this is a live source (a camera): frames arrive in real time and are not replayed.
    fn is_live(&self) -> bool;

    /// Nominal frames per second, when known.
    fn fps(&self) -> Option<f64>;

    /// The next frame, `Ok(None)` at the end.
    fn next_frame(&mut self) -> Result<Option<Frame>>;

    /// Frames this source could not decode and skipped so far (an image folder's unreadable
    /// images); 0 for sources that never skip.
    fn skipped_frames(&self) -> u64 {
        0
    }

    /// Decode errors the source met so far without failing (ffmpeg's error lines on a damaged
    /// or truncated file, which ends early); 0 for sources that never report any.
    fn decode_errors(&self) -> u64 {
        0
    }

    /// A handle that makes a blocked `next_frame` return `Ok(None)` soon, from another thread.
    fn interrupt_handle(&self) -> Option<InterruptHandle> {
        None
    }
}

impl<T: FrameSource + ?Sized> FrameSource for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
    fn fps(&self) -> Option<f64> {
        (**self).fps()
    }
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        (**self).next_frame()
    }
    fn skipped_frames(&self) -> u64 {
        (**self).skipped_frames()
    }
    fn decode_errors(&self) -> u64 {
        (**self).decode_errors()
    }
    fn interrupt_handle(&self) -> Option<InterruptHandle> {
        (**self).interrupt_handle()
    }
}

/// Iterator over the frames of a source; an error ends the iteration after it is yielded.
pub struct Frames<'a, S: FrameSource + ?Sized> {
    source: &'a mut S,
    done: bool,
}

impl<S: FrameSource + ?Sized> Iterator for Frames<'_, S> {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.source.next_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Iteration over any frame source.
pub trait FrameSourceExt: FrameSource {
    /// The frames of this source as an iterator of results.
    fn frames(&mut self) -> Frames<'_, Self> {
        Frames {
            source: self,
            done: false,
        }
    }
}

impl<T: FrameSource + ?Sized> FrameSourceExt for T {}

/// Stops a source from another thread (see [`FrameSource::interrupt_handle`]).
#[derive(Clone)]
pub struct InterruptHandle {
    action: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl InterruptHandle {
    /// A handle that runs `action` when interrupted.
    pub fn new(action: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            action: std::sync::Arc::new(action),
        }
    }

    /// Asks the source to stop.
    pub fn interrupt(&self) {
        (self.action)()
    }
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterruptHandle")
    }
}
