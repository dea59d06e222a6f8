//! Masking: every configured secret value becomes `***` in text deploybot keeps or shows
//! (build logs, stage details, statuses, chat, pages, the CLI), in each form a step or a tool
//! is likely to print it:
//!
//! - as configured;
//! - each line of a multi-line secret (a PEM key printed line by line, or cut into lines);
//! - base64 (standard and URL-safe), also where the secret sits inside a longer encoded value
//!   (`user:token` in a Basic authorization): base64 turns 3 bytes into 4 characters, so the
//!   secret's characters are the same at each of its 3 offsets, less the 1–2 characters at
//!   each end that it shares with its neighbours;
//! - percent-encoded (every reserved byte, as URLs and `curl --data-urlencode` write it) and
//!   form-encoded (a space as `+`).
//!
//! A form shorter than [`MIN_LEN`] is not masked: it would turn ordinary text into asterisks.
//! GitHub Actions masks the same base64 offsets; no crate found does this (`redact` and
//! `secrecy` hide values in `Debug`, not in free text).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// The shortest value (a secret, one of its lines, or an encoded form) that is masked.
pub const MIN_LEN: usize = 3;
/// The shortest line of a multi-line secret masked on its own: short lines of a key file
/// (`-----END…`, blank) are shared with every other key.
const MIN_LINE_LEN: usize = 16;
/// The shortest base64 middle masked (fewer characters match too much unrelated text).
const MIN_ENCODED_LEN: usize = 8;

/// Replaces secret values, in every form above, in text. Cheap to clone.
#[derive(Clone)]
pub struct Masker {
    forms: Arc<Vec<String>>,
}

impl Masker {
    pub fn new(secrets: Vec<String>) -> Masker {
        let mut forms: Vec<String> = secrets
            .iter()
            .filter(|s| s.len() >= MIN_LEN)
            .flat_map(|s| forms_of(s))
            .collect();
        // Longest first, so a form containing another is masked whole.
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Masker {
            forms: Arc::new(forms),
        }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        for form in self.forms.iter() {
            if masked.contains(form.as_str()) {
                masked = masked.replace(form.as_str(), "***");
            }
        }
        masked
    }
}

/// Every form of `secret` worth masking.
fn forms_of(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let lines: Vec<&str> = secret.lines().map(str::trim).collect();
    if lines.len() > 1 {
        forms.extend(
            lines
                .iter()
                .filter(|l| l.len() >= MIN_LINE_LEN)
                .map(|l| (*l).to_owned()),
        );
    }
    for offset in 0..3 {
        let standard = base64_middle(secret.as_bytes(), offset);
        if standard.len() >= MIN_ENCODED_LEN {
            forms.push(standard.replace('+', "-").replace('/', "_"));
            forms.push(standard);
        }
    }
    forms.push(utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string());
    if let Ok(form) = serde_urlencoded::to_string([("", secret)]) {
        forms.push(form.trim_start_matches('=').to_owned());
    }
    forms.retain(|f| f.len() >= MIN_LEN);
    forms
}

/// The base64 characters that only `secret`'s bits make when it follows `offset` other bytes:
/// the whole characters after the prefix's bits and before the end of the secret's.
fn base64_middle(secret: &[u8], offset: usize) -> String {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(secret);
    let encoded = STANDARD_NO_PAD.encode(&bytes);
    let first = (offset * 8).div_ceil(6);
    let last = (bytes.len() * 8) / 6;
    encoded.get(first..last).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_value_is_masked_longest_first() {
        let masker = Masker::new(vec!["s3cret".into(), "s3cret-and-more".into(), "x".into()]);
        assert_eq!(
            masker.mask("token=s3cret-and-more pw=s3cret x"),
            "token=*** pw=*** x"
        );
    }

    #[test]
    fn a_secret_is_masked_in_base64_at_every_offset_in_both_alphabets() {
        let secret = "hunter2-is-a-password?>";
        let masker = Masker::new(vec![secret.into()]);
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let text = format!("{prefix}{secret}");
            for encoded in [
                base64::engine::general_purpose::STANDARD.encode(&text),
                base64::engine::general_purpose::URL_SAFE.encode(&text),
            ] {
                let masked = masker.mask(&format!("Authorization: Basic {encoded}"));
                assert!(masked.contains("***"), "{prefix:?}: {masked}");
                let left = masked.rsplit("***").next().unwrap_or("");
                assert!(left.len() <= 4, "at most the shared tail is left: {masked}");
            }
        }
    }

    #[test]
    fn a_secret_is_masked_percent_encoded_and_form_encoded() {
        let secret = "p@ss word/with&odd=chars";
        let masker = Masker::new(vec![secret.into()]);
        let url = format!(
            "https://x/?token={}",
            utf8_percent_encode(secret, NON_ALPHANUMERIC)
        );
        assert_eq!(masker.mask(&url), "https://x/?token=***");
        let form = serde_urlencoded::to_string([("token", secret)]).unwrap();
        assert_eq!(masker.mask(&form), "token=***");
    }

    #[test]
    fn a_multi_line_secret_is_masked_line_by_line() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----\n";
        let masker = Masker::new(vec![key.into()]);
        let printed =
            "line 2 is MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nand BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
        let masked = masker.mask(printed);
        assert!(
            !masked.contains("MIIEvQ") && !masked.contains("BKcwgg"),
            "{masked}"
        );
        assert_eq!(masker.mask(key).matches("***").count(), 1, "whole first");
    }

    #[test]
    fn short_values_and_short_encodings_are_not_masked() {
        let masker = Masker::new(vec!["ab".into(), "abc".into()]);
        assert_eq!(masker.mask("ab YWJj abc"), "ab YWJj ***");
    }
}
