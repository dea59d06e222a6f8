//! A small client of the OCI Distribution API (the Docker Registry HTTP API v2), for what
//! deploybot does in the registry itself rather than through an engine's image store: give an
//! image already pushed a new tag by copying its manifest (`copy_tag`), and read the digest a
//! tag points to (`digest_of`). Copying works where no engine is local, as on a cluster.
//!
//! A copy GETs the manifest by digest and PUTs the same bytes under the tag with the media
//! type the registry served, so the tag resolves to the very same digest; the bytes are hashed
//! before the PUT and the digest the registry answers the PUT with is checked.
//!
//! Authentication: HTTP Basic with the configured user and password (what a registry with an
//! htpasswd file wants), and the Docker token flow when a 401 carries a `Bearer` challenge: a
//! token is fetched from the challenge's realm with Basic auth, cached per scope for its
//! `expires_in`, and the request retried with it. Credentials go only into the
//! `Authorization` header of requests to the configured registry and its token realm (over
//! https, or plain http to loopback); redirects are not followed, so no header travels on.
//!
//! Bounds: every request has the client's timeout, a manifest is at most 4 MiB, a token
//! answer 64 KiB, and an error body is read up to 4 KiB and shown as a scrubbed line.

mod body;
mod challenge;
mod error;
mod reference;
#[cfg(test)]
mod tests;
mod token;

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};

use crate::config::RegistrySettings;

pub use error::{RegistryError, Step, Target};

use body::ReadError;

/// The manifest media types a copy carries over: Docker v2 schema 2 manifest and manifest
/// list, OCI image manifest and index. A registry serves one of them as stored.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";
/// The largest manifest read (the distribution registry itself refuses larger ones).
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;
/// The largest token answer read (a JWT with its claims is a few KiB).
const TOKEN_LIMIT: usize = 64 * 1024;
const DIGEST_HEADER: &str = "Docker-Content-Digest";

/// A client of one registry, with its credentials and the tokens it was given.
pub struct RegistryClient {
    http: reqwest::Client,
    /// The configured `host[:port]`, as errors name it.
    address: String,
    /// `https://host[:port]`, or `http://` for loopback (see `reference::base_url`).
    base: String,
    username: String,
    password: Option<SecretString>,
    tokens: token::TokenCache,
}

/// One request to the registry, which [`RegistryClient::send`] may make twice (again with a
/// token after a `Bearer` challenge).
struct Call<'a> {
    target: &'a Target,
    step: Step,
    method: Method,
    url: String,
    /// The token scope it needs: `repository:<name>:pull` or `…:pull,push`.
    scope: String,
    content_type: Option<HeaderValue>,
    body: Option<Bytes>,
}

impl RegistryClient {
    /// A client of `settings.address` whose every request (token requests too) is bounded by
    /// `timeout`.
    pub fn new(
        settings: &RegistrySettings,
        timeout: Duration,
    ) -> Result<RegistryClient, RegistryError> {
        let address = settings.address.clone();
        let base = reference::base_url(&address).map_err(|rule| RegistryError::Address {
            address: address.clone(),
            rule,
        })?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect is an error: credentials stay with the registry and its realm.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deploybot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RegistryError::Client {
                registry: address.clone(),
                source: source.without_url(),
            })?;
        Ok(RegistryClient {
            http,
            address,
            base,
            username: settings.username.clone(),
            password: settings.password.clone(),
            tokens: token::TokenCache::default(),
        })
    }

    /// Gives the manifest `repository@digest` the tag `tag` too, within the registry: the same
    /// bytes under the same media type, so `tag` resolves to `digest`.
    pub async fn copy_tag(
        &self,
        repository: &str,
        digest: &str,
        tag: &str,
    ) -> Result<(), RegistryError> {
        let source = self.target(repository, digest);
        let destination = self.target(repository, tag);
        check(
            &source,
            "repository",
            reference::check_repository(repository),
        )?;
        check(&source, "digest", reference::check_digest(digest))?;
        check(&destination, "tag", reference::check_tag(tag))?;
        let (content_type, manifest) = self.read_manifest(&source).await?;
        self.write_manifest(&destination, digest, content_type, manifest)
            .await
    }

    /// The digest `repository:tag` resolves to, or None when the registry has no such tag (or
    /// no such repository).
    pub async fn digest_of(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, RegistryError> {
        let target = self.target(repository, tag);
        check(
            &target,
            "repository",
            reference::check_repository(repository),
        )?;
        check(&target, "tag", reference::check_tag(tag))?;
        let call = self.call(&target, Step::CheckManifest, Method::HEAD, "pull");
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.success(&target, call.step, response).await?;
        answered_digest(&target, call.step, &response).map(Some)
    }

    /// GETs the manifest `target` names by digest and checks its bytes hash to that digest.
    async fn read_manifest(&self, target: &Target) -> Result<(HeaderValue, Bytes), RegistryError> {
        // The scope includes push so that the PUT that follows reuses the same token.
        let call = self.call(target, Step::ReadManifest, Method::GET, "pull,push");
        let response = self.send(&call).await?;
        let response = self.success(target, call.step, response).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .ok_or_else(|| header_error(target, call.step, "Content-Type", "missing"))?;
        let manifest = body::read_limited(response, MANIFEST_LIMIT)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => RegistryError::TooLarge {
                    target: Box::new(target.clone()),
                    limit: MANIFEST_LIMIT,
                },
                ReadError::Transport(source) => transport(target, call.step, source),
            })?;
        let actual = reference::digest_of_bytes(&target.reference, &manifest);
        if actual != target.reference {
            return Err(RegistryError::ContentMismatch {
                target: Box::new(target.clone()),
                actual,
            });
        }
        Ok((content_type, manifest))
    }

    /// PUTs `manifest` under the tag `target` names and checks the registry stored it as
    /// `digest`.
    async fn write_manifest(
        &self,
        target: &Target,
        digest: &str,
        content_type: HeaderValue,
        manifest: Bytes,
    ) -> Result<(), RegistryError> {
        let mut call = self.call(target, Step::WriteManifest, Method::PUT, "pull,push");
        call.content_type = Some(content_type);
        call.body = Some(manifest);
        let response = self.send(&call).await?;
        let response = self.success(target, call.step, response).await?;
        let answered = answered_digest(target, call.step, &response)?;
        if answered != digest {
            return Err(RegistryError::DigestMismatch {
                target: Box::new(target.clone()),
                expected: digest.to_owned(),
                answered,
            });
        }
        Ok(())
    }

    fn target(&self, repository: &str, reference: &str) -> Target {
        Target {
            registry: self.address.clone(),
            repository: repository.to_owned(),
            reference: reference.to_owned(),
        }
    }

    /// A manifest request for `target` (its repository and reference already checked).
    fn call<'a>(&self, target: &'a Target, step: Step, method: Method, actions: &str) -> Call<'a> {
        Call {
            target,
            step,
            method,
            url: format!(
                "{}/v2/{}/manifests/{}",
                self.base, target.repository, target.reference
            ),
            scope: format!("repository:{}:{actions}", target.repository),
            content_type: None,
            body: None,
        }
    }

    /// Sends `call` with a cached token for its scope, else with Basic auth (or none when no
    /// password is configured). A 401 with a `Bearer` challenge gets a token from the realm
    /// and one retry; any other 401 is [`RegistryError::Unauthorized`].
    async fn send(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        let cached = self.tokens.get(&call.scope, Instant::now());
        let response = self.execute(call, cached.as_ref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = challenge::bearer(response.headers()) else {
            return Err(self
                .unauthorized(call.target, call.step, response, cached.as_ref())
                .await);
        };
        let token = self.fetch_token(call, &challenge).await?;
        let response = self.execute(call, Some(&token)).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self
                .unauthorized(call.target, call.step, response, Some(&token))
                .await);
        }
        Ok(response)
    }

    /// Sends `call` once, with `token` if given, else as [`RegistryClient::basic`] says.
    async fn execute(
        &self,
        call: &Call<'_>,
        token: Option<&SecretString>,
    ) -> Result<Response, RegistryError> {
        let mut request = self
            .http
            .request(call.method.clone(), &call.url)
            .header(ACCEPT, MANIFEST_TYPES);
        if let Some(content_type) = &call.content_type {
            request = request.header(CONTENT_TYPE, content_type.clone());
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        request = match token {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => self.basic(request),
        };
        request
            .send()
            .await
            .map_err(|e| transport(call.target, call.step, e))
    }

    /// `request` with the configured user and password, if a password is configured.
    fn basic(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.password {
            Some(password) => request.basic_auth(&self.username, Some(password.expose_secret())),
            None => request,
        }
    }

    /// Asks the challenge's realm for a token for the call's scope, with Basic auth, and
    /// caches it. The scope is the call's own (not the challenge's), so the token cached under
    /// it is the one asked for.
    async fn fetch_token(
        &self,
        call: &Call<'_>,
        challenge: &challenge::Bearer,
    ) -> Result<SecretString, RegistryError> {
        let (target, step) = (call.target, Step::Token);
        let url = realm_url(challenge, &call.scope).map_err(|problem| RegistryError::Realm {
            target: Box::new(target.clone()),
            problem,
        })?;
        let asked = Instant::now();
        let response = self
            .basic(self.http.get(url))
            .send()
            .await
            .map_err(|e| transport(target, step, e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(target, step, response, None).await);
        }
        let response = self.success(target, step, response).await?;
        let answer = body::read_limited(response, TOKEN_LIMIT)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => token_answer(target, None),
                ReadError::Transport(source) => transport(target, step, source),
            })?;
        let token = token::parse(&answer)
            .map_err(|e| token_answer(target, Some(e)))?
            .ok_or_else(|| token_answer(target, None))?;
        self.tokens.put(&call.scope, &token, asked);
        Ok(token.value)
    }

    /// `response` if it is a success; else the error naming its status and an excerpt.
    async fn success(
        &self,
        target: &Target,
        step: Step,
        response: Response,
    ) -> Result<Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let secrets = self.secrets(None);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        Err(RegistryError::Status {
            target: Box::new(target.clone()),
            step,
            status,
            detail: body::excerpt(response, &secrets).await,
        })
    }

    async fn unauthorized(
        &self,
        target: &Target,
        step: Step,
        response: Response,
        token: Option<&SecretString>,
    ) -> RegistryError {
        let secrets = self.secrets(token);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        RegistryError::Unauthorized {
            target: Box::new(target.clone()),
            step,
            username: self.username.clone(),
            detail: body::excerpt(response, &secrets).await,
        }
    }

    /// What an error body must not show: the password, the Basic credentials as sent, and
    /// the token a request carried.
    fn secrets(&self, token: Option<&SecretString>) -> Vec<String> {
        use base64::Engine as _;
        let mut secrets = Vec::new();
        if let Some(password) = &self.password {
            let password = password.expose_secret();
            let basic = format!("{}:{password}", self.username);
            secrets.push(base64::engine::general_purpose::STANDARD.encode(basic));
            secrets.push(password.to_owned());
        }
        if let Some(token) = token {
            secrets.push(token.expose_secret().to_owned());
        }
        secrets
    }
}

/// The realm URL with the challenge's `service` and the call's `scope` added to its query,
/// if the realm may receive the credentials.
fn realm_url(challenge: &challenge::Bearer, scope: &str) -> Result<Url, &'static str> {
    let realm = challenge
        .realm
        .as_deref()
        .ok_or("its challenge names no realm")?;
    let mut url = Url::parse(realm).map_err(|_| "its realm is not a URL")?;
    if !reference::may_carry_credentials(&url) {
        return Err("its realm is neither https nor loopback, or carries a user");
    }
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &challenge.service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
    }
    Ok(url)
}

/// `Invalid` for a name that broke its `rule`.
fn check(
    target: &Target,
    what: &'static str,
    rule: Result<(), &'static str>,
) -> Result<(), RegistryError> {
    rule.map_err(|rule| RegistryError::Invalid {
        target: Box::new(target.clone()),
        what,
        rule,
    })
}

/// The answer's `Docker-Content-Digest`, which must be a digest.
fn answered_digest(
    target: &Target,
    step: Step,
    response: &Response,
) -> Result<String, RegistryError> {
    let digest = response
        .headers()
        .get(DIGEST_HEADER)
        .ok_or_else(|| header_error(target, step, DIGEST_HEADER, "missing"))?
        .to_str()
        .ok()
        .filter(|d| reference::check_digest(d).is_ok())
        .ok_or_else(|| header_error(target, step, DIGEST_HEADER, "not a digest"))?;
    Ok(digest.to_owned())
}

fn header_error(
    target: &Target,
    step: Step,
    header: &'static str,
    problem: &'static str,
) -> RegistryError {
    RegistryError::Header {
        target: Box::new(target.clone()),
        step,
        header,
        problem,
    }
}

/// A failed request, kept without its URL (a realm's URL is the registry's to choose).
fn transport(target: &Target, step: Step, source: reqwest::Error) -> RegistryError {
    RegistryError::Transport {
        target: Box::new(target.clone()),
        step,
        source: source.without_url(),
    }
}

fn token_answer(target: &Target, source: Option<serde_json::Error>) -> RegistryError {
    RegistryError::TokenAnswer {
        target: Box::new(target.clone()),
        source,
    }
}
