//! Where events go. The pipeline produces [`Event`]s; sinks decide what to write: JSON lines
//! flushed per event, annotated frames for alerts, and the run summary written atomically.
//!
//! Files are never left half-written where a good one was: the events file is created new
//! (an existing one is an error, never truncated), each line goes out in one `write` and is
//! flushed, and the summary is written to a temporary file in the same directory, synced and
//! renamed over the final name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::decision::AlertLevel;
use crate::event::Event;
use crate::{OrchestratorError, Result};

/// Receives every event of a run, in order.
pub trait EventSink: Send {
    /// Record one event. An error stops the run (the caller decides).
    fn write(&mut self, event: &Event) -> Result<()>;
    /// Called once at the end of the run.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// A section this sink adds to the run summary: `(name, value)` becomes the top-level key
    /// `name` of `summary.json` (the MQTT sink's `mqtt`). Asked once, after
    /// [`EventSink::finish`]; `None` (the default) adds nothing. A name the summary already
    /// has is ignored.
    fn summary_section(&self) -> Option<(String, serde_json::Value)> {
        None
    }
}

/// Any `FnMut(&Event) -> Result<()>` closure that can move between threads is a sink without
/// buffered output.
impl<F> EventSink for F
where
    F: FnMut(&Event) -> Result<()> + Send,
{
    fn write(&mut self, event: &Event) -> Result<()> {
        self(event)
    }
}

fn io_err(path: &Path, source: std::io::Error) -> OrchestratorError {
    OrchestratorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `events.jsonl`: one JSON object per line, flushed as written.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
    lines: u64,
}

impl JsonlSink {
    /// Create `path`; fails when it already exists (a previous run's events are never
    /// overwritten).
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lines: 0,
        })
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

impl EventSink for JsonlSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(event).map_err(|e| {
            io_err(
                &self.path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        line.push(b'\n');
        // One write per line: a crash leaves whole lines only (O_APPEND is not needed, the
        // file is ours alone).
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| io_err(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }
}

/// Serialise `value` as pretty JSON to `path` atomically, through
/// [`AtomicOutputFile`](surveil_vision::pipeline::AtomicOutputFile): a temporary file with an
/// unpredictable name in the same directory, synced, then renamed over `path` (a link at `path`
/// is replaced, never written through).
///
/// Errors: [`OrchestratorError::Io`] naming `path` when serialising or writing fails (`path` is
/// then left as it was), [`OrchestratorError::Vision`] when the temporary file cannot be made or
/// renamed.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |out| {
        serde_json::to_writer_pretty(&mut *out, value)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        out.write_all(b"\n")
    })
}

/// Writes `path` through an [`AtomicOutputFile`](surveil_vision::pipeline::AtomicOutputFile)
/// filled by `fill`: the previous file stays until the new one is complete and synced.
///
/// Errors: as [`write_json_atomic`].
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut surveil_vision::pipeline::AtomicOutputFile) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = surveil_vision::pipeline::AtomicOutputFile::create(path)?;
    if let Err(e) = fill(&mut out) {
        out.abandon();
        return Err(io_err(path, e));
    }
    out.commit()?;
    Ok(())
}

/// Colour of an alert level on annotated frames.
pub(crate) fn level_color(level: AlertLevel) -> Rgb<u8> {
    match level {
        AlertLevel::Normal => Rgb([40, 180, 60]),
        AlertLevel::Attention => Rgb([240, 200, 0]),
        AlertLevel::Alert => Rgb([250, 120, 0]),
        AlertLevel::Critical => Rgb([220, 20, 30]),
    }
}

/// Draw a closed polygon (pixel coordinates) with 2-pixel lines.
pub(crate) fn draw_polygon(img: &mut RgbImage, points: &[(f32, f32)], color: Rgb<u8>) {
    if points.len() < 2 {
        return;
    }
    for i in 0..points.len() {
        let a = points[i];
        let b = points[(i + 1) % points.len()];
        draw_line(img, a, b, color);
        draw_line(img, (a.0 + 1.0, a.1), (b.0 + 1.0, b.1), color);
    }
}

/// The part of segment `a`–`b` inside `[0, w] × [0, h]` (Liang–Barsky), or `None`.
fn clip_segment(a: (f32, f32), b: (f32, f32), w: f64, h: f64) -> Option<((f64, f64), (f64, f64))> {
    let (x0, y0) = (f64::from(a.0), f64::from(a.1));
    let (dx, dy) = (f64::from(b.0) - x0, f64::from(b.1) - y0);
    if !(x0.is_finite() && y0.is_finite() && dx.is_finite() && dy.is_finite()) {
        return None;
    }
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, x0), (dx, w - x0), (-dy, y0), (dy, h - y0)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some(((x0 + t0 * dx, y0 + t0 * dy), (x0 + t1 * dx, y0 + t1 * dy)))
}

/// Bresenham line, clipped to the image first (so any coordinates cost at most the image's
/// size in steps).
fn draw_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), color: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let Some((p, q)) = clip_segment(a, b, (w - 1).max(0) as f64, (h - 1).max(0) as f64) else {
        return;
    };
    let (mut x0, mut y0) = (p.0.round() as i64, p.1.round() as i64);
    let (x1, y1) = (q.0.round() as i64, q.1.round() as i64);
    let dx = (x1 - x0).abs();
    let dy = -(y1 - y0).abs();
    let sx = if x0 < x1 { 1 } else { -1 };
    let sy = if y0 < y1 { 1 } else { -1 };
    let mut err = dx + dy;
    for _ in 0..=(dx - dy) {
        if (0..w).contains(&x0) && (0..h).contains(&y0) {
            img.put_pixel(x0 as u32, y0 as u32, color);
        }
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// A border of the level's colour around the whole frame, thicker for higher levels, and a
/// bar of `level + 1` blocks in the top-left corner (readable without a font).
pub(crate) fn draw_level(img: &mut RgbImage, level: AlertLevel) {
    let color = level_color(level);
    let rank = level as u32 + 1;
    let t = 2 + 2 * rank;
    let (w, h) = (img.width(), img.height());
    for y in 0..h {
        for x in 0..w {
            if x < t || y < t || x + t >= w || y + t >= h {
                img.put_pixel(x, y, color);
            }
        }
    }
    for i in 0..rank {
        let x0 = t + 4 + i * 18;
        for y in t + 4..(t + 18).min(h) {
            for x in x0..(x0 + 14).min(w) {
                img.put_pixel(x, y, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_replaces_a_link_and_never_writes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, "keep me").unwrap();
        let p = dir.path().join("summary.json");
        std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep me");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["a"], 3);
    }

    #[test]
    fn events_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        std::fs::write(&p, "previous\n").unwrap();
        assert!(JsonlSink::create(&p).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "previous\n");
    }

    #[test]
    fn lines_clip_to_the_image() {
        let mut img = RgbImage::new(20, 10);
        let red = Rgb([255, 0, 0]);
        // Far outside on three sides; the first edge crosses the image along y = 5.
        draw_polygon(&mut img, &[(-50.0, 5.0), (1e6, 5.0), (10.0, 1e6)], red);
        assert_eq!(img.get_pixel(0, 5).0, red.0);
        assert_eq!(img.get_pixel(19, 5).0, red.0);
        assert_eq!(img.get_pixel(3, 1).0, [0, 0, 0]);
        // Entirely outside: nothing drawn, and no time spent walking the far coordinates.
        let mut empty = RgbImage::new(20, 10);
        draw_polygon(&mut empty, &[(-1e9, -1e9), (-1e9, 1e9), (-5.0, 0.0)], red);
        assert!(empty.pixels().all(|p| p.0 == [0, 0, 0]));
        draw_level(&mut img, AlertLevel::Critical);
        assert_eq!(img.get_pixel(0, 0).0, level_color(AlertLevel::Critical).0);
    }
}
