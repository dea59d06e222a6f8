//! What proves a delivery genuine, per forge. Which secrets a forge needs is the forge's own
//! rule (`github::webhook_secrets`, `gitlab::webhook_secrets`), and the result has one variant
//! per forge, so a project of a forge can only be configured with what that forge verifies
//! with: there is no variant, and no wildcard, through which a forge with no secret slips.

use secrecy::{ExposeSecret, SecretString};

use super::{ForgeKind, SigningKey};

/// The secrets a project's configuration resolved, before its forge's rules are applied.
#[derive(Debug, Default)]
pub struct GivenSecrets {
    /// `webhook_secret`: GitHub's HMAC key, or GitLab's `X-Gitlab-Token` value.
    pub secret: Option<SecretString>,
    /// `signing_token`: a Standard Webhooks signing key (GitLab), decoded.
    pub signing_key: Option<SigningKey>,
}

/// What a project's deliveries are verified with.
#[derive(Debug)]
pub enum WebhookSecrets {
    /// `X-Hub-Signature-256`, HMAC-SHA256 with this secret.
    GitHub { secret: SecretString },
    /// `X-Gitlab-Token`, Standard Webhooks signatures, or both (at least one: see
    /// `gitlab::webhook_secrets`).
    GitLab {
        token: Option<SecretString>,
        signing_key: Option<SigningKey>,
    },
}

/// A project's secrets that do not suit its forge: the key to fix, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsProblem {
    pub key: &'static str,
    pub message: &'static str,
}

impl ForgeKind {
    /// Applies this forge's rule on which secrets it needs.
    pub fn webhook_secrets(self, given: GivenSecrets) -> Result<WebhookSecrets, SecretsProblem> {
        match self {
            ForgeKind::Github => super::github::webhook_secrets(given),
            ForgeKind::Gitlab => super::gitlab::webhook_secrets(given),
        }
    }
}

impl WebhookSecrets {
    /// Every secret value, for masking. Exposing them is the point of this function.
    pub fn values(&self) -> Vec<String> {
        match self {
            WebhookSecrets::GitHub { secret } => vec![secret.expose_secret().to_owned()],
            WebhookSecrets::GitLab { token, signing_key } => token
                .iter()
                .map(|t| t.expose_secret().to_owned())
                .chain(signing_key.iter().map(|k| k.token_text().to_owned()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse(SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap()
    }

    fn given(secret: bool, signing: bool) -> GivenSecrets {
        GivenSecrets {
            secret: secret.then(|| SecretString::from("s3cret-value")),
            signing_key: signing.then(key),
        }
    }

    #[test]
    fn each_forge_takes_exactly_the_secrets_it_verifies_with() {
        // (forge, webhook_secret given, signing_token given) → the key at fault, if any.
        let cases = [
            (ForgeKind::Github, true, false, None),
            (ForgeKind::Github, false, false, Some("webhook_secret")),
            (ForgeKind::Github, true, true, Some("signing_token")),
            (ForgeKind::Github, false, true, Some("signing_token")),
            (ForgeKind::Gitlab, true, false, None),
            (ForgeKind::Gitlab, false, true, None),
            (ForgeKind::Gitlab, true, true, None),
            (ForgeKind::Gitlab, false, false, Some("webhook_secret")),
        ];
        for (forge, secret, signing, fault) in cases {
            let result = forge.webhook_secrets(given(secret, signing));
            assert_eq!(
                result.err().map(|p| p.key),
                fault,
                "{forge} secret={secret} signing={signing}"
            );
        }
    }

    #[test]
    fn every_secret_value_is_known_for_masking() {
        let secrets = ForgeKind::Gitlab
            .webhook_secrets(given(true, true))
            .unwrap();
        assert_eq!(
            secrets.values(),
            ["s3cret-value", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        );
    }
}
