//! The ffmpeg command line for one source, and what goes to ffmpeg's stdin.
//!
//! Frames leave ffmpeg as raw RGB24 on stdout, one per decoded frame at its own time
//! (`-fps_mode passthrough`; ffmpeg's default for the rawvideo muxer is a constant rate, which
//! duplicates frames of a variable-frame-rate file). The last filter is `showinfo`, whose
//! per-frame line on stderr carries the frame's presentation time (see [`super::stderr`]).
//!
//! A URL that can carry a secret (user info `user:pass@`, or a query string) never appears in
//! the command line, which every user of the machine can read (`ps`, `/proc/PID/cmdline`):
//! ffmpeg reads it from a one-entry concat script on its stdin (`-f concat -safe 0 -i pipe:0`,
//! the script's `option` lines carry the per-input options). Other inputs are passed with `-i`.

use super::FfmpegOptions;
use crate::error::{Result, VisionError};
use crate::source::redact::{redact_text, url_secrets};

/// The URL scheme of an input (`rtsp`, `http`, ...), or `None` for a plain path.
pub fn url_scheme(input: &str) -> Option<&str> {
    let (scheme, _) = input.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
    .then_some(scheme)
}

/// Whether a scheme is a live stream by default.
pub(crate) fn scheme_is_live(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "rtsp" | "rtsps" | "rtmp" | "rtmps" | "http" | "https" | "udp" | "rtp" | "srt" | "tcp"
    )
}

/// How frames keep their own timing: `-fps_mode passthrough` (ffmpeg >= 5.1) or the older
/// spelling `-vsync passthrough` (deprecated since 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameSync {
    /// `-fps_mode passthrough`.
    FpsMode,
    /// `-vsync passthrough`.
    Vsync,
}

/// What ffmpeg prints when it does not know `-fps_mode` (before 5.1).
pub(crate) const FPS_MODE_UNKNOWN: &str = "Unrecognized option 'fps_mode'";

/// The protocols a URL read from the concat script may use. ffmpeg's default list for an
/// input read from a pipe is `crypto,data`, so the network protocols are named; `file` is not
/// (a remote playlist must not read local files).
const NETWORK_PROTOCOLS: &str = "pipe,tcp,udp,rtp,srtp,tls,http,https,httpproxy,rtmp,rtmps,\
rtmpt,rtmpts,rtmpe,rtmpte,srt,hls,crypto,data";

/// One ffmpeg invocation: the arguments and, for inputs read from stdin, the script to write
/// there (then stdin is closed).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invocation {
    /// Arguments after the program name.
    pub(crate) args: Vec<String>,
    /// The concat script for stdin, when the input is read from there.
    pub(crate) stdin: Option<String>,
}

/// Whether a URL can carry a secret that must stay out of the command line: user info
/// (`user:pass@`, `token@`) or a query string (`?token=...`).
pub(crate) fn url_may_hold_secret(input: &str) -> bool {
    let Some(pos) = input.find("://") else {
        return false;
    };
    let tail = &input[pos + 3..];
    let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    tail[..authority_end].contains('@') || tail.contains('?')
}

/// Per-input options for a URL with this scheme: RTSP transport and socket timeout, or the
/// generic read/write timeout of the other protocols (microseconds).
fn input_options(scheme: &str, options: &FfmpegOptions) -> Vec<(&'static str, String)> {
    let timeout_us = options.io_timeout_ms.saturating_mul(1000).to_string();
    match scheme.to_ascii_lowercase().as_str() {
        "rtsp" | "rtsps" => vec![
            ("rtsp_transport", options.rtsp_transport.clone()),
            ("timeout", timeout_us),
        ],
        _ => vec![("rw_timeout", timeout_us)],
    }
}

/// Quotes a token for an ffconcat script: inside single quotes everything is literal, and a
/// single quote is written as `'\''` (ffmpeg's `av_get_token` rules).
fn concat_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The one-entry concat script that opens `url` with `options`.
///
/// Errors: [`VisionError::InvalidOption`] when the URL or an option value contains a control
/// character (a line break would end the directive and start another one).
fn concat_script(url: &str, options: &[(&'static str, String)]) -> Result<String> {
    if url.chars().any(char::is_control) {
        return Err(VisionError::InvalidOption {
            name: "input",
            value: redact_text(url, &url_secrets(url))
                .escape_debug()
                .to_string(),
            message: "a URL must not contain control characters".to_string(),
        });
    }
    if let Some((name, value)) = options
        .iter()
        .find(|(_, v)| v.chars().any(char::is_control))
    {
        return Err(VisionError::InvalidOption {
            name,
            value: value.escape_debug().to_string(),
            message: "must not contain control characters".to_string(),
        });
    }
    let mut script = String::from("ffconcat version 1.0\n");
    script.push_str(&format!("file {}\n", concat_quote(url)));
    for (name, value) in options {
        script.push_str(&format!("option {name} {}\n", concat_quote(value)));
    }
    Ok(script)
}

/// The filter chain: the optional fixed rate and size, then `showinfo` (without checksums)
/// so that each output frame reports its presentation time.
fn filters(options: &FfmpegOptions) -> String {
    let mut filters = Vec::new();
    if let Some(fps) = options.fps {
        filters.push(format!("fps={fps}"));
    }
    match (options.width, options.height) {
        (None, None) => {}
        (w, h) => filters.push(format!(
            "scale={}:{}",
            w.map_or("-2".to_string(), |v| v.to_string()),
            h.map_or("-2".to_string(), |v| v.to_string())
        )),
    }
    filters.push("showinfo=checksum=0".to_string());
    filters.join(",")
}

/// The ffmpeg invocation for `input` (a path or URL).
///
/// Errors: [`VisionError::InvalidOption`] when a URL read from stdin, or an option written
/// into the script, contains a control character.
pub(crate) fn invocation(
    input: &str,
    options: &FfmpegOptions,
    sync: FrameSync,
) -> Result<Invocation> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "level+info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut stdin = None;
    match url_scheme(input) {
        Some(scheme) if url_may_hold_secret(input) => {
            stdin = Some(concat_script(input, &input_options(scheme, options))?);
            a.extend(
                [
                    "-f",
                    "concat",
                    "-safe",
                    "0",
                    "-protocol_whitelist",
                    NETWORK_PROTOCOLS,
                    "-i",
                    "pipe:0",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        Some(scheme) => {
            for (name, value) in input_options(scheme, options) {
                a.push(format!("-{name}"));
                a.push(value);
            }
            a.extend(["-i".to_string(), input.to_string()]);
        }
        None => a.extend(["-i".to_string(), input.to_string()]),
    }
    a.extend(["-map".into(), "0:v:0".into()]);
    a.extend(["-vf".into(), filters(options)]);
    match sync {
        FrameSync::FpsMode => a.extend(["-fps_mode".into(), "passthrough".into()]),
        FrameSync::Vsync => a.extend(["-vsync".into(), "passthrough".into()]),
    }
    a.extend(
        [
            "-an", "-sn", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Ok(Invocation { args: a, stdin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_by_scheme() {
        assert_eq!(url_scheme("rtsp://h/x"), Some("rtsp"));
        assert_eq!(url_scheme("/a/b.mp4"), None);
        assert_eq!(url_scheme("C:/x"), None);
        assert!(scheme_is_live("RTSP") && scheme_is_live("https") && !scheme_is_live("file"));
    }

    #[test]
    fn secrets_go_to_stdin_never_to_the_arguments() {
        let o = FfmpegOptions::default();
        let url = "rtsp://admin:pa'ss@10.0.0.5:554/live";
        let inv = invocation(url, &o, FrameSync::FpsMode).unwrap();
        let args = inv.args.join(" ");
        assert!(
            !args.contains("pa'ss") && !args.contains("10.0.0.5"),
            "{args}"
        );
        assert!(
            args.contains("-f concat -safe 0 -protocol_whitelist pipe,"),
            "{args}"
        );
        assert!(args.contains("-i pipe:0"), "{args}");
        assert_eq!(
            inv.stdin.as_deref(),
            Some(
                "ffconcat version 1.0\nfile 'rtsp://admin:pa'\\''ss@10.0.0.5:554/live'\n\
                 option rtsp_transport 'tcp'\noption timeout '10000000'\n"
            )
        );
        // A token in the query string is a secret too.
        let inv = invocation("https://cam/x.m3u8?token=abc", &o, FrameSync::FpsMode).unwrap();
        assert!(!inv.args.join(" ").contains("token=abc"));
        assert!(inv.stdin.unwrap().contains("option rw_timeout '10000000'"));
        // A line break cannot smuggle a directive into the script.
        let err = invocation("http://u:p@h/x\nfile '/etc/passwd'", &o, FrameSync::FpsMode);
        assert!(
            matches!(err, Err(VisionError::InvalidOption { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn plain_inputs_keep_their_own_argument() {
        let o = FfmpegOptions {
            fps: Some(12.5),
            width: Some(320),
            ..FfmpegOptions::default()
        };
        let inv = invocation("/videos/a b.mp4", &o, FrameSync::Vsync).unwrap();
        assert_eq!(inv.stdin, None);
        let args = inv.args;
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(at("-i").as_deref(), Some("/videos/a b.mp4"));
        assert_eq!(
            at("-vf").as_deref(),
            Some("fps=12.5,scale=320:-2,showinfo=checksum=0")
        );
        assert_eq!(at("-vsync").as_deref(), Some("passthrough"));
        assert_eq!(at("-fps_mode"), None);
        let inv = invocation(
            "rtsp://cam/live",
            &FfmpegOptions::default(),
            FrameSync::FpsMode,
        )
        .unwrap();
        let args = inv.args.join(" ");
        assert!(
            args.contains("-rtsp_transport tcp -timeout 10000000 -i rtsp://cam/live"),
            "{args}"
        );
        assert!(
            args.contains("-vf showinfo=checksum=0 -fps_mode passthrough"),
            "{args}"
        );
    }
}
