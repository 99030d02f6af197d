//! Reading ffmpeg's stderr (run with `-loglevel level+info`): the output stream report gives
//! the frame size, `showinfo` lines give each frame's presentation time, and warning/error
//! lines are kept (credentials redacted) for error messages. Every line is outside input: the
//! parsers accept any text and return `None` for what they do not recognise.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::source::redact::redact_text;

/// What ffmpeg reported about its output stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamInfo {
    /// Output width in pixels (> 0).
    pub width: u32,
    /// Output height in pixels (> 0).
    pub height: u32,
    /// Nominal output frame rate (frames per second, finite and > 0), when reported. A
    /// variable-frame-rate source reports its guessed base rate here; the frames themselves
    /// keep their own times.
    pub fps: Option<f64>,
}

/// Parses the output stream line of ffmpeg's report, e.g.
/// `Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, ...), 416x416, q=2-31, ..., 5 fps, 5 tbn`.
///
/// `None` when the line has no `Video:` part or no `WxH` field with both sides > 0; a rate
/// that is not a finite number > 0 is dropped (`fps: None`).
pub fn parse_stream_line(line: &str) -> Option<StreamInfo> {
    let video = &line[line.find("Video:")? + "Video:".len()..];
    // Split on commas outside parentheses and brackets.
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0i64, 0usize);
    for (i, ch) in video.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                fields.push(video[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(video[start..].trim());
    let mut size = None;
    let mut fps = None;
    for f in fields {
        let first = f.split_whitespace().next().unwrap_or("");
        if size.is_none() {
            if let Some((w, h)) = first.split_once('x') {
                if let (Ok(w), Ok(h)) = (w.parse::<u32>(), h.parse::<u32>()) {
                    size = Some((w, h));
                    continue;
                }
            }
        }
        if let Some(v) = f.strip_suffix(" fps") {
            fps = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0);
        }
    }
    let (width, height) = size.filter(|(w, h)| *w > 0 && *h > 0)?;
    Some(StreamInfo { width, height, fps })
}

/// A line of ffmpeg's `showinfo` filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShowinfoLine {
    /// `config in time_base: NUM/DEN`: the time base of the `pts` values that follow
    /// (both > 0).
    TimeBase {
        /// Numerator.
        num: i64,
        /// Denominator.
        den: i64,
    },
    /// `n: N pts: P pts_time: T ...`: one frame leaving the filter.
    Frame {
        /// Frame number in this ffmpeg run, from 0.
        n: u64,
        /// Presentation time in time-base units; `None` for `NOPTS`.
        pts: Option<i64>,
        /// The same time in seconds as printed (finite; only 6 significant digits, so `pts`
        /// with the time base is preferred).
        pts_time: Option<f64>,
    },
}

/// The value after `key` in `text`, up to the next whitespace.
fn token_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    rest.split_whitespace().next()
}

/// Parses a `showinfo` line (`[Parsed_showinfo_N @ 0x...] [info] ...`), anywhere in `line`.
/// `None` for other lines and for values that do not parse.
pub fn parse_showinfo_line(line: &str) -> Option<ShowinfoLine> {
    let rest = &line[line.find("Parsed_showinfo")?..];
    if let Some(tb) = token_after(rest, "config in time_base:") {
        let (num, den) = tb.trim_end_matches(',').split_once('/')?;
        let (num, den) = (num.parse::<i64>().ok()?, den.parse::<i64>().ok()?);
        return (num > 0 && den > 0).then_some(ShowinfoLine::TimeBase { num, den });
    }
    let n = token_after(rest, " n:")?.parse::<u64>().ok()?;
    let pts = token_after(rest, " pts:").and_then(|p| p.parse::<i64>().ok());
    let pts_time = token_after(rest, " pts_time:")
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|t| t.is_finite());
    Some(ShowinfoLine::Frame { n, pts, pts_time })
}

/// The time of `pts` units of `num/den` seconds, exact to the nanosecond (rounded down);
/// negative times are clamped to zero, `None` when it does not fit a [`Duration`].
pub(crate) fn pts_to_duration(pts: i64, num: i64, den: i64) -> Option<Duration> {
    if den <= 0 || num <= 0 {
        return None;
    }
    let nanos = i128::from(pts.max(0))
        .checked_mul(i128::from(num))?
        .checked_mul(1_000_000_000)?
        / i128::from(den);
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// What the stderr reader reports, in the order ffmpeg printed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum StderrEvent {
    /// The output stream (once per run).
    Stream(StreamInfo),
    /// Frame `n` of this run left the filters at `time` (`None` when ffmpeg gave no usable
    /// time).
    Frame { n: u64, time: Option<Duration> },
}

/// Warning and error lines of one ffmpeg run, redacted, the last few kept.
#[derive(Debug, Default)]
pub(crate) struct StderrLog {
    lines: VecDeque<String>,
    /// Lines at error or fatal level.
    pub(crate) errors: u64,
}

const STDERR_KEEP: usize = 12;

impl StderrLog {
    /// The kept lines, oldest first.
    pub(crate) fn tail(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn push(&mut self, line: String) {
        if self.lines.len() == STDERR_KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// Reads ffmpeg's stderr line by line until it closes: reports the output stream and each
/// frame's time on `events`, keeps warnings/errors in `log`.
pub(crate) fn read_stderr(
    stderr: impl std::io::Read,
    log: Arc<Mutex<StderrLog>>,
    secrets: Vec<String>,
    label: String,
    events: mpsc::Sender<StderrEvent>,
) {
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    let mut in_output = false;
    let mut stream_sent = false;
    let mut time_base: Option<(i64, i64)> = None;
    let mut level = "info";
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&raw);
        for part in text.split('\r') {
            let line = part.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(l) = [
                "[fatal]",
                "[error]",
                "[warning]",
                "[info]",
                "[verbose]",
                "[debug]",
            ]
            .iter()
            .find(|t| line.contains(*t))
            {
                level = &l[1..l.len() - 1];
            }
            if level == "info" {
                match parse_showinfo_line(line) {
                    Some(ShowinfoLine::TimeBase { num, den }) => time_base = Some((num, den)),
                    Some(ShowinfoLine::Frame { n, pts, pts_time }) => {
                        let time = match (pts, time_base) {
                            (Some(p), Some((num, den))) => pts_to_duration(p, num, den),
                            _ => {
                                pts_time.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
                            }
                        };
                        // The receiver is gone when the source ended; keep draining stderr.
                        let _ = events.send(StderrEvent::Frame { n, time });
                    }
                    None if line.contains("Output #0") => in_output = true,
                    None if in_output && !stream_sent && line.contains("Stream #") => {
                        if let Some(info) = parse_stream_line(line) {
                            stream_sent = events.send(StderrEvent::Stream(info)).is_ok();
                        }
                    }
                    None => {}
                }
                continue;
            }
            if level == "fatal" || level == "error" || level == "warning" {
                let line = redact_text(line, &secrets);
                if level != "warning" {
                    tracing::debug!(source = %label, "ffmpeg: {line}");
                }
                if let Ok(mut l) = log.lock() {
                    if level != "warning" {
                        l.errors += 1;
                    }
                    l.push(line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_stream_line() {
        let l = "[info]   Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, gbr/unknown/unknown, progressive), 416x416, q=2-31, 20766 kb/s, 5 fps, 5 tbn";
        assert_eq!(
            parse_stream_line(l),
            Some(StreamInfo {
                width: 416,
                height: 416,
                fps: Some(5.0)
            })
        );
        let l = "Stream #0:0: Video: rawvideo, rgb24, 768x576 [SAR 1:1 DAR 4:3], q=2-31, 29.97 fps";
        let i = parse_stream_line(l).unwrap();
        assert_eq!((i.width, i.height, i.fps), (768, 576, Some(29.97)));
        assert_eq!(parse_stream_line("Stream #0:1: Audio: aac, 44100 Hz"), None);
    }

    #[test]
    fn parses_showinfo_lines_of_ffmpeg_5() {
        let tb = "[Parsed_showinfo_1 @ 0x55ae56794dc0] [info] config in time_base: 1/90000, frame_rate: 10/1";
        assert_eq!(
            parse_showinfo_line(tb),
            Some(ShowinfoLine::TimeBase { num: 1, den: 90000 })
        );
        let out = "[Parsed_showinfo_1 @ 0x55ae56794dc0] [info] config out time_base: 0/0, frame_rate: 0/0";
        assert_eq!(parse_showinfo_line(out), None);
        let f = "[Parsed_showinfo_1 @ 0x55ae56794dc0] [info] n:  12 pts: 876543 pts_time:9.73937 pos: 44556 fmt:yuv420p sar:1/1 s:768x576 i:P iskey:0 type:P ";
        assert_eq!(
            parse_showinfo_line(f),
            Some(ShowinfoLine::Frame {
                n: 12,
                pts: Some(876543),
                pts_time: Some(9.73937)
            })
        );
        let f = "[Parsed_showinfo_0 @ 0x1] [info] n:   3 pts:NOPTS pts_time:NOPTS pos: -1";
        assert_eq!(
            parse_showinfo_line(f),
            Some(ShowinfoLine::Frame {
                n: 3,
                pts: None,
                pts_time: None
            })
        );
        let side = "[Parsed_showinfo_0 @ 0x1] [info] color_range:pc color_space:gbr";
        assert_eq!(parse_showinfo_line(side), None);
        assert_eq!(parse_showinfo_line("[info] n: 1 pts: 2"), None);
    }

    #[test]
    fn pts_in_time_base_units_are_exact() {
        // 876543 / 90000 s = 9.739366666... s
        assert_eq!(
            pts_to_duration(876_543, 1, 90_000),
            Some(Duration::new(9, 739_366_666))
        );
        assert_eq!(pts_to_duration(3, 1, 5), Some(Duration::from_millis(600)));
        assert_eq!(pts_to_duration(-40, 1, 1000), Some(Duration::ZERO));
        assert_eq!(pts_to_duration(1, 0, 1), None);
        assert!(pts_to_duration(i64::MAX, i64::MAX, 1).is_none());
    }

    #[test]
    fn reader_reports_stream_and_frames_in_order() {
        let text = "[info] Input #0, matroska\n\
            [Parsed_showinfo_0 @ 0x1] [info] config in time_base: 1/1000, frame_rate: 10/1\n\
            [Parsed_showinfo_0 @ 0x1] [info] n:   0 pts:      0 pts_time:0 pos: 1\n\
            [info] Output #0, rawvideo, to 'pipe:1':\n\
            [info]   Stream #0:0: Video: rawvideo, rgb24, 64x48, q=2-31, 10 fps, 10 tbn\n\
            [Parsed_showinfo_0 @ 0x1] [info] n:   1 pts:    394 pts_time:0.394 pos: 2\n\
            [error] http://u:hunter22@h/x: End of file\n";
        let log = Arc::new(Mutex::new(StderrLog::default()));
        let (tx, rx) = mpsc::channel();
        read_stderr(
            text.as_bytes(),
            log.clone(),
            vec!["hunter22".into()],
            "t".into(),
            tx,
        );
        let events: Vec<_> = rx.iter().collect();
        assert_eq!(
            events,
            vec![
                StderrEvent::Frame {
                    n: 0,
                    time: Some(Duration::ZERO)
                },
                StderrEvent::Stream(StreamInfo {
                    width: 64,
                    height: 48,
                    fps: Some(10.0)
                }),
                StderrEvent::Frame {
                    n: 1,
                    time: Some(Duration::from_millis(394))
                },
            ]
        );
        let log = log.lock().unwrap();
        assert_eq!(log.errors, 1);
        assert_eq!(log.tail(), "[error] http://u:***@h/x: End of file");
    }
}
