//! The client against a registry double (wiremock on 127.0.0.1, so plain http): what it
//! sends, the token flow, and each refusal. `tests/suite/registry.rs` runs it against the
//! real registry.

use std::time::Duration;

use secrecy::SecretString;
use wiremock::matchers::{basic_auth, bearer_token, method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;

const USER: &str = "deploybot";
const PASSWORD: &str = "registry-test-password";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Odd spacing on purpose: only the exact bytes keep the digest.
const MANIFEST: &str = "{\"schemaVersion\":2,  \"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\n \"layers\":[]}";

fn client(server: &MockServer, timeout: Duration) -> RegistryClient {
    let settings = RegistrySettings {
        address: server.address().to_string(),
        username: USER.to_owned(),
        password: Some(SecretString::from(PASSWORD)),
    };
    RegistryClient::new(&settings, timeout).unwrap()
}

fn manifest_digest() -> String {
    reference::digest_of_bytes("sha256:", MANIFEST.as_bytes())
}

fn manifest_path(reference: &str) -> String {
    format!("/v2/t/x/manifests/{reference}")
}

/// The manifest, served by digest to the configured user.
async fn serve_manifest(server: &MockServer, body: impl Into<Vec<u8>>) {
    Mock::given(method("GET"))
        .and(path(manifest_path(&manifest_digest())))
        .and(basic_auth(USER, PASSWORD))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body.into(), OCI_MANIFEST))
        .mount(server)
        .await;
}

/// A PUT of the tag `v2`, answered with `digest`, expected `times` times.
async fn accept_put(server: &MockServer, digest: &str, times: u64) {
    Mock::given(method("PUT"))
        .and(path(manifest_path("v2")))
        .respond_with(ResponseTemplate::new(201).insert_header(DIGEST_HEADER, digest))
        .expect(times)
        .mount(server)
        .await;
}

fn accepts_every_manifest_type(request: &Request) -> bool {
    let accept = request
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
    .iter()
    .all(|media_type| accept.contains(media_type))
}

#[tokio::test]
async fn a_tag_is_copied_with_the_exact_bytes_and_media_type_served() {
    // Arrange
    let server = MockServer::start().await;
    let digest = manifest_digest();
    Mock::given(method("GET"))
        .and(path(manifest_path(&digest)))
        .and(basic_auth(USER, PASSWORD))
        .and(accepts_every_manifest_type)
        .respond_with(ResponseTemplate::new(200).set_body_raw(MANIFEST, OCI_MANIFEST))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(manifest_path("v2")))
        .and(basic_auth(USER, PASSWORD))
        .and(|request: &Request| {
            request.body == MANIFEST.as_bytes()
                && request
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    == Some(OCI_MANIFEST)
        })
        .respond_with(ResponseTemplate::new(201).insert_header(DIGEST_HEADER, digest.as_str()))
        .expect(1)
        .mount(&server)
        .await;

    // Act
    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &digest, "v2")
        .await;

    // Assert
    assert!(copied.is_ok(), "{copied:?}");
}

#[tokio::test]
async fn a_put_answered_with_another_digest_fails_saying_so() {
    let server = MockServer::start().await;
    serve_manifest(&server, MANIFEST).await;
    let other = format!("sha256:{}", "0".repeat(64));
    accept_put(&server, &other, 1).await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    let error = copied.unwrap_err();
    assert!(
        matches!(&error, RegistryError::DigestMismatch { answered, .. } if *answered == other),
        "{error:?}"
    );
    assert!(error.to_string().contains(&other), "{error}");
}

#[tokio::test]
async fn a_put_answered_without_a_digest_fails_saying_so() {
    let server = MockServer::start().await;
    serve_manifest(&server, MANIFEST).await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    let error = copied.unwrap_err().to_string();
    assert!(
        error.contains("Docker-Content-Digest header is missing"),
        "{error}"
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_hash_to_its_digest_is_not_written() {
    let server = MockServer::start().await;
    serve_manifest(&server, format!("{MANIFEST} ")).await;
    accept_put(&server, &manifest_digest(), 0).await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    assert!(
        matches!(copied, Err(RegistryError::ContentMismatch { .. })),
        "{copied:?}"
    );
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused() {
    let server = MockServer::start().await;
    serve_manifest(&server, vec![b' '; MANIFEST_LIMIT + 1]).await;
    accept_put(&server, &manifest_digest(), 0).await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    assert!(
        matches!(copied, Err(RegistryError::TooLarge { .. })),
        "{copied:?}"
    );
}

/// The registry answers 401 with a `Bearer` challenge unless a request carries `tok`; its
/// realm hands `tok` to the configured user, for the scope a copy asks for, `realm_calls`
/// times.
async fn token_registry(server: &MockServer, realm_calls: u64) {
    let challenge = format!(
        r#"Bearer realm="{}/token",service="test-registry",scope="repository:t/x:pull""#,
        server.uri()
    );
    Mock::given(path_regex("^/v2/"))
        .respond_with(ResponseTemplate::new(401).insert_header("WWW-Authenticate", challenge))
        .with_priority(10)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(basic_auth(USER, PASSWORD))
        .and(query_param("service", "test-registry"))
        .and(query_param("scope", "repository:t/x:pull,push"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"token":"tok","expires_in":300}"#, "application/json"),
        )
        .expect(realm_calls)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(manifest_path(&manifest_digest())))
        .and(bearer_token("tok"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(MANIFEST, OCI_MANIFEST))
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("PUT"))
        .and(path(manifest_path("v2")))
        .and(bearer_token("tok"))
        .respond_with(
            ResponseTemplate::new(201).insert_header(DIGEST_HEADER, manifest_digest().as_str()),
        )
        .with_priority(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_bearer_challenge_is_met_with_a_token_the_realm_gives_the_configured_user() {
    let server = MockServer::start().await;
    token_registry(&server, 1).await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    assert!(copied.is_ok(), "{copied:?}");
}

#[tokio::test]
async fn a_token_is_reused_for_its_scope_while_it_lasts() {
    let server = MockServer::start().await;
    token_registry(&server, 1).await;
    let client = client(&server, Duration::from_secs(5));

    let first = client.copy_tag("t/x", &manifest_digest(), "v2").await;
    let second = client.copy_tag("t/x", &manifest_digest(), "v2").await;

    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    let sent_the_password = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.url.path().starts_with("/v2/")
                && r.headers
                    .get("authorization")
                    .is_some_and(|v| v.as_bytes().starts_with(b"Basic"))
        })
        .count();
    assert_eq!(
        sent_the_password, 1,
        "only the first request goes without the token"
    );
}

#[tokio::test]
async fn a_realm_over_plain_http_to_another_host_is_not_sent_the_credentials() {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/v2/"))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            r#"Bearer realm="http://auth.example.com/token",service="test-registry""#,
        ))
        .mount(&server)
        .await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    assert!(
        matches!(copied, Err(RegistryError::Realm { .. })),
        "{copied:?}"
    );
}

#[tokio::test]
async fn an_error_body_echoing_the_credentials_does_not_reach_the_error() {
    use base64::Engine as _;
    let server = MockServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500).set_body_string(format!(
            "internal error: password {PASSWORD} in header Basic {basic}"
        )))
        .mount(&server)
        .await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    let error = copied.unwrap_err().to_string();
    assert!(error.contains("500 Internal Server Error"), "{error}");
    assert!(
        !error.contains(PASSWORD) && !error.contains(&basic),
        "{error}"
    );
}

#[tokio::test]
async fn a_redirect_is_an_error_and_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(manifest_path(&manifest_digest())))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("Location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;

    let copied = client(&server, Duration::from_secs(5))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    assert!(
        matches!(&copied, Err(RegistryError::Status { status, .. }) if status.as_u16() == 307),
        "{copied:?}"
    );
}

#[tokio::test]
async fn a_registry_slower_than_the_timeout_fails_naming_the_step() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;

    let copied = client(&server, Duration::from_millis(200))
        .copy_tag("t/x", &manifest_digest(), "v2")
        .await;

    let error = copied.unwrap_err();
    assert!(
        matches!(
            &error,
            RegistryError::Transport {
                step: Step::ReadManifest,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("GET manifest"), "{error}");
}

#[tokio::test]
async fn names_outside_the_distribution_grammar_are_refused_before_any_request() {
    let server = MockServer::start().await;
    let client = client(&server, Duration::from_secs(5));
    let digest = manifest_digest();

    for (repository, digest, tag) in [
        ("../x", digest.as_str(), "v2"),
        ("t/x", "latest", "v2"),
        ("t/x", digest.as_str(), "v2/../../x"),
    ] {
        let copied = client.copy_tag(repository, digest, tag).await;
        assert!(
            matches!(copied, Err(RegistryError::Invalid { .. })),
            "{repository} {digest} {tag}: {copied:?}"
        );
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_tag_has_no_digest() {
    let server = MockServer::start().await;
    Mock::given(method("HEAD"))
        .and(path(manifest_path("v9")))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;

    let digest = client(&server, Duration::from_secs(5))
        .digest_of("t/x", "v9")
        .await;

    assert_eq!(digest.unwrap(), None);
}

#[test]
fn an_address_that_is_not_host_and_port_is_refused_naming_it() {
    let settings = RegistrySettings {
        address: "https://registry.example.com/v2".to_owned(),
        username: USER.to_owned(),
        password: None,
    };

    let built = RegistryClient::new(&settings, Duration::from_secs(5));

    let error = built.err().unwrap().to_string();
    assert!(
        error.contains("\"https://registry.example.com/v2\""),
        "{error}"
    );
}
