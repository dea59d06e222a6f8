use std::fmt;

use super::{CommitSha, GitRef, ParseError};

/// The forge's id for one delivery (GitHub's `X-GitHub-Delivery` GUID, GitLab's
/// `Idempotency-Key` or `X-Gitlab-Event-UUID`). A redelivery carries the same id, which is
/// what makes intake idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId(String);

impl DeliveryId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<DeliveryId, ParseError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ParseError(format!(
                "must be 1 to {} characters long",
                Self::MAX_LEN
            )));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(ParseError(
                "may only hold letters, digits, '-', '_', '.' and ':'".into(),
            ));
        }
        Ok(DeliveryId(s.to_owned()))
    }
}

impl DeliveryId {
    /// The id of a push deploybot recovered itself (no forge delivery named it): the sha and
    /// a digest of the ref, so that finding the same push again names the same delivery.
    pub fn recovered(git_ref: &GitRef, sha: &CommitSha) -> DeliveryId {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(git_ref.as_ref().as_bytes()));
        DeliveryId(format!("recovered:{sha}:{}", &digest[..16]))
    }
}

impl AsRef<str> for DeliveryId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_short_and_plain() {
        for ok in [
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
        ] {
            assert!(DeliveryId::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["", "a b", "x\n", "<script>", &"a".repeat(129)] {
            assert!(DeliveryId::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn a_recovered_push_id_parses_and_tells_refs_and_shas_apart() {
        let sha = CommitSha::parse(&"f".repeat(64)).unwrap();
        let tag = GitRef::parse("refs/tags/v1.0.0").unwrap();
        let branch = GitRef::parse("refs/heads/v1.0.0").unwrap();
        let id = DeliveryId::recovered(&tag, &sha);
        assert_eq!(DeliveryId::parse(id.as_ref()), Ok(id.clone()));
        assert_ne!(id, DeliveryId::recovered(&branch, &sha));
        assert_ne!(id, DeliveryId::recovered(&tag, &CommitSha::zero()));
    }
}
