//! HTTP doubles of the GitHub and GitLab commit-status APIs (wiremock), checking every request
//! against the documented shape in `tests/fixtures/api/`: method, path, auth header, and a
//! JSON body with exactly the documented keys and allowed states.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use wiremock::matchers::{header, method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const STATUS_TOKEN: &str = "ghp_statusToken0123456789abcdef";

/// One status request the double accepted as well-formed.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub body: Value,
    pub at: Instant,
    pub raw: String,
}

/// Answers from a script (one status code per request, the last one repeating), records
/// every request, and answers 422 to anything not of the documented shape.
struct Scripted {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Vec<(u16, Option<u64>)>,
    keys: &'static [&'static str],
    states: &'static [&'static str],
    response: Value,
}

impl Respond for Scripted {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let raw = String::from_utf8_lossy(&request.body).into_owned();
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return ResponseTemplate::new(400).set_body_string("body is not JSON");
        };
        let Some(object) = body.as_object() else {
            return ResponseTemplate::new(400);
        };
        if object.keys().any(|k| !self.keys.contains(&k.as_str()))
            || !object
                .get("state")
                .and_then(Value::as_str)
                .is_some_and(|s| self.states.contains(&s))
        {
            return ResponseTemplate::new(422).set_body_string(format!("bad status body {body}"));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.push(Seen {
            path: request.url.path().to_owned(),
            body,
            at: Instant::now(),
            raw,
        });
        let (code, retry_after) = self.script[(seen.len() - 1).min(self.script.len() - 1)];
        let mut response = ResponseTemplate::new(code);
        if let Some(seconds) = retry_after {
            response = response.insert_header("Retry-After", seconds.to_string().as_str());
        }
        if code == 201 {
            response = response.set_body_json(self.response.clone());
        }
        response
    }
}

pub struct ForgeDouble {
    pub server: MockServer,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// `text` as a regular expression that matches only itself.
pub fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn fixture(name: &str) -> Value {
    let path = crate::common::fixtures::fixtures_dir()
        .join("api")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

impl ForgeDouble {
    /// GitHub: `POST /repos/{owner}/{repo}/statuses/{sha}`, bearer token, body keys
    /// state/target_url/description/context.
    pub async fn github(script: Vec<(u16, Option<u64>)>) -> ForgeDouble {
        ForgeDouble::github_accepting(script, STATUS_TOKEN).await
    }

    /// Like [`github`], for a GitHub App: installation tokens are handed out at
    /// `POST /app/installations/{id}/access_tokens` to a bearer JWT, and statuses must carry
    /// that installation token.
    pub async fn github_app(installation: u64, token: &str) -> ForgeDouble {
        let double = ForgeDouble::github_accepting(vec![(201, None)], token).await;
        Mock::given(method("POST"))
            .and(wiremock::matchers::path(format!(
                "/app/installations/{installation}/access_tokens"
            )))
            .and(wiremock::matchers::header_regex(
                "Authorization",
                r"^Bearer eyJ[\w-]+\.[\w-]+\.[\w-]+$",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "token": token,
                "expires_at": "2099-01-01T00:00:00Z",
                "permissions": { "statuses": "write" },
            })))
            .mount(&double.server)
            .await;
        double
    }

    async fn github_accepting(script: Vec<(u16, Option<u64>)>, token: &str) -> ForgeDouble {
        let server = MockServer::start().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let documented = fixture("github-create-status.request.json");
        let keys: Vec<&str> = documented["body"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["context", "description", "state", "target_url"]);
        Mock::given(method("POST"))
            .and(path_regex(r"^/repos/[^/]+/[^/]+/statuses/[0-9a-f]{40}$"))
            // GitHub takes either scheme; octocrab sends `token` for installation tokens.
            .and(wiremock::matchers::header_regex(
                "Authorization",
                &format!("^(Bearer|token) {}$", regex_escape(token)),
            ))
            .respond_with(Scripted {
                seen: seen.clone(),
                script,
                keys: &["context", "description", "state", "target_url"],
                states: &["error", "failure", "pending", "success"],
                response: fixture("github-create-status.response.json")["body"].clone(),
            })
            .mount(&server)
            .await;
        ForgeDouble { server, seen }
    }

    /// GitLab: `POST /api/v4/projects/:id/statuses/:sha`, `PRIVATE-TOKEN`, body with
    /// state/ref/name/target_url/description.
    pub async fn gitlab(script: Vec<(u16, Option<u64>)>) -> ForgeDouble {
        let server = MockServer::start().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        Mock::given(method("POST"))
            .and(path_regex(
                r"^/api/v4/projects/[^/]+/statuses/[0-9a-f]{40}$",
            ))
            .and(header("PRIVATE-TOKEN", STATUS_TOKEN))
            .respond_with(Scripted {
                seen: seen.clone(),
                script,
                keys: &["state", "ref", "name", "target_url", "description"],
                states: &["pending", "running", "success", "failed", "canceled"],
                response: fixture("gitlab-set-commit-status.response.json")["body"].clone(),
            })
            .mount(&server)
            .await;
        ForgeDouble { server, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to `seconds`) until `n` well-formed requests have arrived.
    pub async fn wait_for(&self, n: usize, seconds: u64) -> Vec<Seen> {
        let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let seen = self.seen();
            if seen.len() >= n || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `seconds`) until what has arrived satisfies `done`.
    pub async fn wait_until(&self, seconds: u64, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let seen = self.seen();
            if done(&seen) || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until each of `contexts` has a result (a last state other than pending). The
    /// context is the body field `key`: `context` on GitHub, `name` on GitLab.
    pub async fn wait_for_results(&self, key: &str, contexts: &[&str], seconds: u64) -> Vec<Seen> {
        self.wait_until(seconds, |seen| {
            contexts
                .iter()
                .all(|c| states(seen, key, c).last().is_some_and(|s| s != "pending"))
        })
        .await
    }

    /// Every request's body and path, to scan for secrets.
    pub async fn everything_received(&self) -> String {
        let requests = self.server.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .map(|r| format!("{} {}", r.url, String::from_utf8_lossy(&r.body)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The states `context` went through, in the order they arrived.
pub fn states(seen: &[Seen], key: &str, context: &str) -> Vec<String> {
    seen.iter()
        .filter(|s| s.body[key] == context)
        .map(|s| s.body["state"].as_str().unwrap_or("").to_owned())
        .collect()
}
