//! HTTP doubles of GitHub's and GitLab's webhook delivery logs (wiremock): the list answers
//! only a request of the documented shape (`tests/fixtures/api/github-list-hook-deliveries.*`,
//! `gitlab-list-hook-events.*`: method, path, auth and version headers, query), with entries
//! made from the documented example; the redeliver/resend call answers as documented (202,
//! 201) and is recorded. Anything else gets wiremock's 404.

use serde_json::Value;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fixtures::fixtures_dir;
use super::forge_double::regex_escape;

pub const HOOK_TOKEN: &str = "ghp_hookToken0123456789abcdefABCDEF";

fn documented(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join("api").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One attempt in GitHub's list: the documented example's first entry with these values.
pub fn github_attempt(id: u64, guid: &str, event: &str, ok: bool) -> Value {
    let mut attempt = documented("github-list-hook-deliveries.response.json")["body"][0].clone();
    attempt["id"] = id.into();
    attempt["guid"] = guid.into();
    attempt["event"] = event.into();
    attempt["action"] = Value::Null;
    attempt["status"] = if ok {
        "OK"
    } else {
        "failed to connect to host"
    }
    .into();
    attempt["status_code"] = if ok { 200 } else { 0 }.into();
    attempt
}

/// One event in GitLab's list: the documented example's first event with these values.
pub fn gitlab_event(id: u64, trigger: &str, idempotency_key: &str) -> Value {
    let mut event = documented("gitlab-list-hook-events.response.json")["body"][0].clone();
    event["id"] = id.into();
    event["trigger"] = trigger.into();
    event["response_status"] = "internal error".into();
    event["request_headers"]["Idempotency-Key"] = idempotency_key.into();
    event
}

pub struct HookDouble {
    pub server: MockServer,
}

impl HookDouble {
    /// GitHub's repository hook `hook_id` of `repository`, listing `attempts` (newest first).
    pub async fn github(repository: &str, hook_id: u64, attempts: Vec<Value>) -> HookDouble {
        let server = MockServer::start().await;
        let deliveries = format!("/repos/{repository}/hooks/{hook_id}/deliveries");
        let authorized = || {
            Mock::given(header(
                "authorization",
                format!("Bearer {HOOK_TOKEN}").as_str(),
            ))
            .and(header("accept", "application/vnd.github+json"))
            .and(header("x-github-api-version", "2022-11-28"))
        };
        authorized()
            .and(method("GET"))
            .and(path(deliveries.as_str()))
            .and(query_param("per_page", "100"))
            .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(attempts)))
            .mount(&server)
            .await;
        let redeliver = documented("github-redeliver-hook-delivery.response.json");
        authorized()
            .and(method("POST"))
            .and(wiremock::matchers::path_regex(format!(
                "^{}/[0-9]+/attempts$",
                regex_escape(&deliveries)
            )))
            .respond_with(
                ResponseTemplate::new(redeliver["status"].as_u64().unwrap() as u16)
                    .set_body_json(redeliver["body"].clone()),
            )
            .mount(&server)
            .await;
        HookDouble { server }
    }

    /// GitLab's project hook `hook_id` of `repository` (`group/project`), listing `events`
    /// (newest first) as failed with the server.
    pub async fn gitlab(repository: &str, hook_id: u64, events: Vec<Value>) -> HookDouble {
        let server = MockServer::start().await;
        let project = repository.replace('/', "%2F");
        let events_path = format!("/api/v4/projects/{project}/hooks/{hook_id}/events");
        Mock::given(method("GET"))
            .and(header("PRIVATE-TOKEN", HOOK_TOKEN))
            .and(path(events_path.as_str()))
            .and(query_param("status", "server_failure"))
            .and(query_param("per_page", "20"))
            .and(query_param("page", "1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(events)))
            .mount(&server)
            .await;
        let resend = documented("gitlab-resend-hook-event.response.json");
        Mock::given(method("POST"))
            .and(header("PRIVATE-TOKEN", HOOK_TOKEN))
            .and(wiremock::matchers::path_regex(format!(
                "^{}/[0-9]+/resend$",
                regex_escape(&events_path)
            )))
            .respond_with(
                ResponseTemplate::new(resend["status"].as_u64().unwrap() as u16)
                    .set_body_json(resend["body"].clone()),
            )
            .mount(&server)
            .await;
        HookDouble { server }
    }

    /// The paths of the redeliveries asked so far, in order.
    pub async fn redeliveries(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.method.as_str() == "POST")
            .map(|r| r.url.path().to_owned())
            .collect()
    }

    /// How many times the list was asked for.
    pub async fn listings(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .count()
    }
}
