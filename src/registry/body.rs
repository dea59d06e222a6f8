//! Reading a registry's answers within bounds: a body up to a limit (a manifest, a token), and
//! an error body as a short one-line excerpt with every credential taken out.

use bytes::{Bytes, BytesMut};

/// How much of an error body is read.
const ERROR_BODY_LIMIT: usize = 4 * 1024;
/// How much of it an error shows.
const EXCERPT_CHARS: usize = 300;

pub(super) enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// The whole body, or [`ReadError::TooLarge`] as soon as it is known to exceed `limit`.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ReadError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    // The announced length fits in `limit`, so this allocation is bounded too.
    let mut body = BytesMut::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The start of an error body as one line, `secrets` replaced: a registry or realm may echo
/// what it was sent. Reading stops at [`ERROR_BODY_LIMIT`]; a failed read ends the excerpt.
pub(super) async fn excerpt(mut response: reqwest::Response, secrets: &[&str]) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    scrub(&String::from_utf8_lossy(&body), secrets)
}

/// `text` with each of `secrets` replaced, control characters and runs of whitespace made one
/// space, cut at [`EXCERPT_CHARS`].
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    if line.is_empty() {
        return "(no body)".to_owned();
    }
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_secret_in_an_error_body_is_redacted() {
        let body = r#"{"errors":[{"message":"bad password hunter2 for dXNlcjpodW50ZXIy"}]}"#;

        let line = scrub(body, &["hunter2", "dXNlcjpodW50ZXIy"]);

        assert_eq!(
            line,
            r#"{"errors":[{"message":"bad password [redacted] for [redacted]"}]}"#
        );
    }

    #[test]
    fn an_error_body_becomes_one_line() {
        assert_eq!(
            scrub("a\r\n\tb\u{0}c   d\n", &[]),
            "a b c d",
            "control characters and whitespace runs"
        );
    }

    #[test]
    fn a_long_error_body_is_cut_with_an_ellipsis() {
        let line = scrub(&"é".repeat(1000), &[]);

        assert_eq!(line.chars().count(), EXCERPT_CHARS + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn an_empty_error_body_says_so() {
        assert_eq!(scrub(" \n", &[]), "(no body)");
    }
}
