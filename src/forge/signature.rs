//! The signature schemes forges use, each verified in constant time over the exact raw body:
//! GitHub's `sha256=<hex HMAC-SHA256>`, GitLab's shared token, and Standard Webhooks
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, GitLab's signing token).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::HookError;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail; the error type exists for other MACs.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Checks GitHub's `X-Hub-Signature-256` value against the body.
pub fn verify_github(
    header: &'static str,
    value: &str,
    secret: &SecretString,
    body: &[u8],
) -> Result<(), HookError> {
    let hex_digest = value
        .strip_prefix("sha256=")
        .ok_or(HookError::BadSignature(header))?;
    let claimed = hex::decode(hex_digest).map_err(|_| HookError::BadSignature(header))?;
    let mut mac = mac(secret.expose_secret().as_bytes());
    mac.update(body);
    mac.verify_slice(&claimed)
        .map_err(|_| HookError::BadSignature(header))
}

/// What GitHub would send in `X-Hub-Signature-256` for this body (for tests and benchmarks).
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Compares a shared token in constant time. Both sides are hashed first so that neither the
/// content nor the length of the configured token shows in the timing.
pub fn token_matches(expected: &SecretString, got: &str) -> bool {
    let a = Sha256::digest(expected.expose_secret().as_bytes());
    let b = Sha256::digest(got.as_bytes());
    a.ct_eq(&b).into()
}

/// A Standard Webhooks signing token (`whsec_` + base64 key), decoded once at startup.
pub struct SigningKey {
    key: SecretBox<Vec<u8>>,
    token: SecretString,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`. The message never contains the token.
    pub fn parse(token: SecretString) -> Result<SigningKey, String> {
        let text = token.expose_secret();
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (a Standard Webhooks signing token)")?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; expected 24 to 64 (GitLab issues 32)",
                key.len()
            ));
        }
        Ok(SigningKey {
            key: SecretBox::new(Box::new(key)),
            token,
        })
    }

    /// The token as configured; only for redaction lists.
    pub fn token_text(&self) -> &str {
        self.token.expose_secret()
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = mac(self.key.expose_secret());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The three Standard Webhooks headers of one delivery.
pub struct StandardHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// Senders put one entry per signing key in `webhook-signature`: a handful while keys rotate.
pub const MAX_SIGNATURE_ENTRIES: usize = 10;
/// Ten entries of the longest kind (`v1a,` + an Ed25519 signature, 92 bytes) fit in this.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;

/// Verifies a Standard Webhooks signature: the timestamp must lie within `tolerance` of
/// `now`, and one of the space-separated `v1,<base64>` entries must match. The header is
/// bounded (entries and bytes) and the MAC over the body is computed once, whatever the number
/// of entries: otherwise each entry would cost a pass over the whole body.
pub fn verify_standard(
    key: &SigningKey,
    headers: &StandardHeaders<'_>,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), HookError> {
    let sent: u64 = headers
        .timestamp
        .parse()
        .map_err(|_| HookError::BadHeader {
            header: TIMESTAMP_HEADER,
            reason: "not a Unix time in seconds".into(),
        })?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(sent) > tolerance.as_secs() {
        return Err(HookError::StaleTimestamp(TIMESTAMP_HEADER));
    }
    let claimed = v1_entries(headers.signature)?;
    let expected = key
        .mac(headers.id, headers.timestamp, body)
        .finalize()
        .into_bytes();
    // Every entry is compared, in constant time, so the timing says nothing about which one
    // (or whether any) matched.
    let matched = claimed.iter().fold(subtle::Choice::from(0), |any, entry| {
        any | entry.as_slice().ct_eq(expected.as_slice())
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(HookError::BadSignature(SIGNATURE_HEADER))
    }
}

/// The decoded `v1,` entries of `webhook-signature`, once the header is known to be within its
/// bounds. Entries of other schemes (`v1a,`) and undecodable ones are skipped.
fn v1_entries(header: &str) -> Result<Vec<Vec<u8>>, HookError> {
    if header.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(HookError::BadHeader {
            header: SIGNATURE_HEADER,
            reason: format!(
                "{} bytes; at most {MAX_SIGNATURE_HEADER_BYTES} are accepted",
                header.len()
            ),
        });
    }
    let entries: Vec<&str> = header.split(' ').filter(|e| !e.is_empty()).collect();
    if entries.len() > MAX_SIGNATURE_ENTRIES {
        return Err(HookError::BadHeader {
            header: SIGNATURE_HEADER,
            reason: format!(
                "{} entries; at most {MAX_SIGNATURE_ENTRIES} are accepted (one per signing key)",
                entries.len()
            ),
        });
    }
    Ok(entries
        .into_iter()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .collect())
}

/// What a Standard Webhooks sender puts in `webhook-signature` (for tests and benchmarks).
pub fn standard_webhooks_signature(
    key: &SigningKey,
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    let digest = key.mac(id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", BASE64.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from shared fixtures/signatures.json (GitHub docs, Standard Webhooks' own tests).
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_EXPECTED: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn the_github_docs_vector_verifies() {
        let secret = SecretString::from(GITHUB_SECRET);
        assert!(verify_github("h", GITHUB_EXPECTED, &secret, b"Hello, World!").is_ok());
        assert_eq!(
            github_signature(GITHUB_SECRET, b"Hello, World!"),
            GITHUB_EXPECTED
        );
    }

    #[test]
    fn any_flipped_byte_of_body_or_signature_fails() {
        let secret = SecretString::from(GITHUB_SECRET);
        let body = b"Hello, World!".to_vec();
        for i in 0..body.len() {
            let mut tampered = body.clone();
            tampered[i] ^= 0x01;
            assert!(verify_github("h", GITHUB_EXPECTED, &secret, &tampered).is_err());
        }
        let hex_start = "sha256=".len();
        for i in hex_start..GITHUB_EXPECTED.len() {
            let mut sig = GITHUB_EXPECTED.as_bytes().to_vec();
            sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
            let sig = String::from_utf8(sig).unwrap();
            assert!(verify_github("h", &sig, &secret, &body).is_err(), "{sig}");
        }
    }

    #[test]
    fn a_signature_without_the_sha256_prefix_fails() {
        let secret = SecretString::from(GITHUB_SECRET);
        let bare = GITHUB_EXPECTED.trim_start_matches("sha256=");
        assert!(verify_github("h", bare, &secret, b"Hello, World!").is_err());
    }

    #[test]
    fn tokens_compare_exactly() {
        let expected = SecretString::from("deploybot-test-secret");
        assert!(token_matches(&expected, "deploybot-test-secret"));
        assert!(!token_matches(&expected, "deploybot-test-secre"));
        assert!(!token_matches(&expected, ""));
    }

    fn standard_vector_key() -> SigningKey {
        SigningKey::parse(SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap()
    }

    #[test]
    fn the_standard_webhooks_vector_verifies_at_its_own_time() {
        let key = standard_vector_key();
        let headers = StandardHeaders {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: "1614265330",
            signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        };
        let at = UNIX_EPOCH + Duration::from_secs(1614265330);
        let body = br#"{"test": 2432232314}"#;
        assert!(verify_standard(&key, &headers, body, at, Duration::from_secs(300)).is_ok());
        assert_eq!(
            standard_webhooks_signature(&key, headers.id, headers.timestamp, body),
            headers.signature
        );
    }

    #[test]
    fn a_standard_signature_outside_the_tolerance_is_refused_as_stale() {
        let key = standard_vector_key();
        let headers = StandardHeaders {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: "1614265330",
            signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        };
        let later = UNIX_EPOCH + Duration::from_secs(1614265330 + 301);
        let err = verify_standard(
            &key,
            &headers,
            br#"{"test": 2432232314}"#,
            later,
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert_eq!(err, HookError::StaleTimestamp(TIMESTAMP_HEADER));
    }

    #[test]
    fn one_matching_entry_among_several_is_enough() {
        let key = standard_vector_key();
        let headers = StandardHeaders {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: "1614265330",
            signature: "v1,AAAA v2,xyz v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        };
        let at = UNIX_EPOCH + Duration::from_secs(1614265330);
        assert!(verify_standard(
            &key,
            &headers,
            br#"{"test": 2432232314}"#,
            at,
            Duration::from_secs(5)
        )
        .is_ok());
    }

    fn vector_headers(signature: &str) -> StandardHeaders<'_> {
        StandardHeaders {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: "1614265330",
            signature,
        }
    }

    fn verify_vector(signature: &str) -> Result<(), HookError> {
        let at = UNIX_EPOCH + Duration::from_secs(1614265330);
        verify_standard(
            &standard_vector_key(),
            &vector_headers(signature),
            br#"{"test": 2432232314}"#,
            at,
            Duration::from_secs(5),
        )
    }

    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn a_signature_header_with_more_entries_than_key_rotation_needs_is_refused_naming_it() {
        let mut entries = vec!["v1,AAAA"; MAX_SIGNATURE_ENTRIES];
        entries.push(VECTOR_SIGNATURE);

        let err = verify_vector(&entries.join(" ")).unwrap_err();

        let HookError::BadHeader { header, reason } = err else {
            panic!("expected a bad header, got {err:?}");
        };
        assert_eq!(header, SIGNATURE_HEADER);
        assert!(reason.contains("entries"), "{reason}");
    }

    #[test]
    fn a_signature_header_longer_than_its_bound_is_refused_naming_it() {
        let long = format!(
            "{VECTOR_SIGNATURE} v1,{}",
            "A".repeat(MAX_SIGNATURE_HEADER_BYTES)
        );

        let err = verify_vector(&long).unwrap_err();

        let HookError::BadHeader { header, reason } = err else {
            panic!("expected a bad header, got {err:?}");
        };
        assert_eq!(header, SIGNATURE_HEADER);
        assert!(reason.contains("bytes"), "{reason}");
    }

    #[test]
    fn the_last_entry_within_the_bound_still_counts() {
        let mut entries = vec!["v1,AAAA"; MAX_SIGNATURE_ENTRIES - 1];
        entries.push(VECTOR_SIGNATURE);

        assert!(verify_vector(&entries.join(" ")).is_ok());
    }

    #[test]
    fn signing_tokens_must_be_whsec_base64() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_AAAA",
        ] {
            let err = SigningKey::parse(SecretString::from(bad)).unwrap_err();
            assert!(
                !err.contains(bad),
                "the message must not echo the token: {err}"
            );
        }
    }
}
