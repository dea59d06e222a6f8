//! Slack-compatible incoming webhooks (Mattermost and Rocket.Chat take the same JSON). The
//! webhook URL is a secret: it is never logged, and errors are stripped of it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{retry_after, DeliveryError, Notifier, Report};

pub struct SlackWebhook {
    client: reqwest::Client,
    url: SecretString,
}

impl SlackWebhook {
    pub fn new(url: SecretString, timeout: Duration) -> Result<SlackWebhook, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("chat client: {}", e.without_url()))?;
        Ok(SlackWebhook { client, url })
    }
}

impl Notifier for SlackWebhook {
    async fn deliver(&self, report: &Report) -> Result<(), DeliveryError> {
        let Report::Chat { message } = report else {
            return Err(DeliveryError::from_status(400, None, "not a chat message"));
        };
        let response = self
            .client
            .post(self.url.expose_secret())
            .json(message)
            .send()
            .await
            .map_err(|e| {
                DeliveryError::transient(format!("chat webhook unreachable: {}", e.without_url()))
            })?;
        let code = response.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        let wait = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        Err(DeliveryError::from_status(code, wait, &text))
    }
}
