//! The registry client against the real registry (Debian's docker-registry with an htpasswd
//! user on 127.0.0.1), with images the docker CLI pushed there.

use std::error::Error as _;
use std::time::Duration;

use deploybot::config::RegistrySettings;
use deploybot::test_hooks::{RegistryClient, RegistryError};
use secrecy::SecretString;

use crate::common::infra::{docker_with_base_images, Registry};

const IMAGE: &str = "deploybot-local/static:latest";

fn client(registry: &Registry, password: &str) -> RegistryClient {
    let settings = RegistrySettings {
        address: registry.address.clone(),
        username: registry.username.clone(),
        password: Some(SecretString::from(password)),
    };
    RegistryClient::new(&settings, Duration::from_secs(30)).unwrap()
}

/// A registry to copy in, and the engine whose CLI pushes images there.
fn registry_and_engine() -> Option<Registry> {
    docker_with_base_images()?;
    Registry::start()
}

/// The error and every cause under it, as `main` prints them.
fn chain(error: &RegistryError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}

#[tokio::test]
async fn a_copied_tag_resolves_to_the_digest_it_was_copied_from() {
    // Arrange
    let Some(registry) = registry_and_engine() else {
        return;
    };
    let digest = registry.push(IMAGE, "t/x", "v1").await;

    // Act
    let copied = client(&registry, &registry.password)
        .copy_tag("t/x", &digest, "v2")
        .await;

    // Assert
    assert!(copied.is_ok(), "{:?}", copied.err().map(|e| chain(&e)));
    assert_eq!(registry.digest("t/x", "v2").await, Some(digest));
}

#[tokio::test]
async fn digest_of_names_the_digest_a_pushed_tag_has() {
    let Some(registry) = registry_and_engine() else {
        return;
    };
    let digest = registry.push(IMAGE, "t/x", "v1").await;

    let found = client(&registry, &registry.password)
        .digest_of("t/x", "v1")
        .await;

    assert_eq!(found.unwrap(), Some(digest));
}

#[tokio::test]
async fn digest_of_a_tag_the_registry_lacks_is_none() {
    let Some(registry) = Registry::start() else {
        return;
    };

    let found = client(&registry, &registry.password)
        .digest_of("t/x", "v1")
        .await;

    assert_eq!(found.unwrap(), None);
}

#[tokio::test]
async fn a_wrong_password_fails_naming_the_registry_and_showing_no_password() {
    // Arrange
    let Some(registry) = Registry::start() else {
        return;
    };
    let wrong = "not-the-registry-password-7f3a";
    let digest = format!("sha256:{}", "a".repeat(64));

    // Act
    let copied = client(&registry, wrong)
        .copy_tag("t/x", &digest, "v2")
        .await;

    // Assert
    let error = copied.unwrap_err();
    let text = chain(&error);
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{text}"
    );
    assert!(text.contains(&registry.address), "{text}");
    assert!(
        !text.contains(wrong) && !text.contains(&registry.password),
        "{text}"
    );
}
