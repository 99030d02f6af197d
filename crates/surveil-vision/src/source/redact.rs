//! Removing credentials from source addresses before they reach a log line or an error.
//!
//! `rtsp://user:pass@host/x` becomes `rtsp://user:***@host/x`; a bare token
//! (`rtsp://token@host`) becomes `rtsp://***@host`. The same rewriting is applied to every line
//! ffmpeg prints, because ffmpeg echoes the input URL in its own errors.

/// The URL with the password (or a bare user token) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    redact_text(url, &[])
}

/// Redacts every `scheme://user:pass@` in `text`, and every literal occurrence of `secrets`
/// (passwords taken from the source URL, so that a password echoed on its own is hidden too).
pub(crate) fn redact_text(text: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '\'' || c == '"'
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// The secrets of a URL (password, or bare user token), raw and percent-decoded, for
/// [`redact_text`].
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let Some(pos) = url.find("://") else {
        return Vec::new();
    };
    let tail = &url[pos + 3..];
    let end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    let authority = &tail[..end];
    let Some(at) = authority.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &authority[..at];
    let secret = match userinfo.split_once(':') {
        Some((_, pass)) => pass,
        None => userinfo,
    };
    let mut v = vec![secret.to_string()];
    let decoded = percent_decode(secret);
    if decoded != secret {
        v.push(decoded);
    }
    v
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(
            redact_url("rtsp://admin:s3cret@10.0.0.5:554/live?x=1"),
            "rtsp://admin:***@10.0.0.5:554/live?x=1"
        );
        assert_eq!(redact_url("rtsp://tok3n@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redact_url("rtsp://cam.local/x"), "rtsp://cam.local/x");
        assert_eq!(redact_url("/videos/a.mp4"), "/videos/a.mp4");
        // password containing '@'
        assert_eq!(redact_url("http://u:p@ss@h/"), "http://u:***@h/");
    }

    #[test]
    fn redacts_ffmpeg_lines_and_echoed_secrets() {
        let url = "rtsp://user:pa%40ss@127.0.0.1:9/stream";
        let secrets = url_secrets(url);
        assert_eq!(secrets, vec!["pa%40ss".to_string(), "pa@ss".to_string()]);
        let line = format!("[error] {url}: Connection refused; auth pa@ss rejected");
        let red = redact_text(&line, &secrets);
        assert_eq!(
            red,
            "[error] rtsp://user:***@127.0.0.1:9/stream: Connection refused; auth *** rejected"
        );
        assert!(!red.contains("pa%40ss") && !red.contains("pa@ss"));
    }
}
