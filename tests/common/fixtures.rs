//! Real published payloads (tests/fixtures/, see its README for provenance) and the headers
//! that came with them.

use std::path::PathBuf;

use deploybot::forge::github_signature;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The exact bytes of `tests/fixtures/<name>.json`.
pub fn fixture_body(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The delivery headers published with a fixture (`<name>.headers.json`), in file order.
pub fn fixture_headers(name: &str) -> Vec<(String, String)> {
    let path = fixtures_dir().join(format!("{name}.headers.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("headers file is a JSON object");
    map.into_iter()
        .map(|(k, v)| (k, v.as_str().expect("header value is a string").to_owned()))
        .collect()
}

/// A request to send: headers and body, changed as a test needs.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivery {
    /// A fixture exactly as published: its body and headers (signed with the test secret).
    pub fn fixture(name: &str) -> Delivery {
        Delivery {
            headers: fixture_headers(name),
            body: fixture_body(name),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    /// Gives the delivery an id of its own (every fixture shares one), in whichever header
    /// its forge uses.
    pub fn with_unique_id(self) -> Delivery {
        self.with_delivery_id(&super::unique_delivery_id())
    }

    pub fn with_delivery_id(mut self, id: &str) -> Delivery {
        for name in [
            "X-GitHub-Delivery",
            "Idempotency-Key",
            "X-Gitlab-Event-UUID",
        ] {
            if self.header(name).is_some() {
                self = self.with_header(name, id);
            }
        }
        self
    }

    /// Replaces the body and signs it as GitHub would, with `secret`.
    pub fn with_github_body(self, body: Vec<u8>, secret: &str) -> Delivery {
        let signature = github_signature(secret, &body);
        let mut delivery = self.with_header("X-Hub-Signature-256", &signature);
        delivery.body = body;
        delivery
    }
}

/// A GitLab delivery signed now with the test signing token, as GitLab's signed webhooks do.
pub fn signed_now(fixture: &str, id: &str) -> Delivery {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    signed_at(fixture, id, now)
}

/// A GitLab delivery signed with the test signing token at `timestamp` (Unix seconds).
pub fn signed_at(fixture: &str, id: &str, timestamp: u64) -> Delivery {
    let token = secrecy::SecretString::from(super::TEST_SIGNING_TOKEN);
    let key = deploybot::forge::SigningKey::parse(token).expect("the test token parses");
    let delivery = Delivery::fixture(fixture)
        .without_header("X-Gitlab-Token")
        .with_delivery_id(id);
    let signature = deploybot::forge::standard_webhooks_signature(
        &key,
        id,
        &timestamp.to_string(),
        &delivery.body,
    );
    delivery
        .with_header("webhook-id", id)
        .with_header("webhook-timestamp", &timestamp.to_string())
        .with_header("webhook-signature", &signature)
}
