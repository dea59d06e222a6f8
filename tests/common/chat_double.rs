//! A Slack-compatible incoming webhook (wiremock): answers `ok` to POSTs on a secret path and
//! hands back the JSON messages it received.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const CHAT_PATH: &str = "/hooks/oncall-secret-path";

pub struct ChatDouble {
    server: MockServer,
}

impl ChatDouble {
    pub async fn start() -> ChatDouble {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(CHAT_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        ChatDouble { server }
    }

    /// The webhook URL, a secret.
    pub fn url(&self) -> String {
        format!("{}{CHAT_PATH}", self.server.uri())
    }

    /// A `[[chat]]` table named `oncall` posting here.
    pub fn config(&self) -> String {
        format!(
            "\n[[chat]]\nname = \"oncall\"\nwebhook_url = \"{}\"\n",
            self.url()
        )
    }

    /// The messages received once at least one has come (up to 10 s).
    pub async fn messages(&self) -> Vec<Value> {
        for _ in 0..100 {
            let received = self.server.received_requests().await.unwrap_or_default();
            if !received.is_empty() {
                return received
                    .iter()
                    .map(|r| serde_json::from_slice(&r.body).unwrap())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }
}
