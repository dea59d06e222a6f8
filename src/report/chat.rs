//! Slack-compatible incoming webhooks (Mattermost and Rocket.Chat take the same JSON). The
//! webhook URL is a secret: it is never logged, and errors are stripped of it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{send, DeliveryError, Notifier, Report};

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
        let request = self.client.post(self.url.expose_secret()).json(message);
        send(request, "chat webhook").await
    }
}
