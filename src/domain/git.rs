use std::fmt;

use serde::{Deserialize, Serialize};

use super::ParseError;

/// A commit id: 40 hex digits (SHA-1), or 64 for SHA-256 repositories; kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(s: &str) -> Result<CommitSha, ParseError> {
        let hex = s.chars().all(|c| c.is_ascii_hexdigit());
        if !hex || !(s.len() == 40 || s.len() == 64) {
            return Err(ParseError(format!(
                "\"{}\" is not a commit id (40 or 64 hex digits)",
                s.chars().take(80).collect::<String>()
            )));
        }
        Ok(CommitSha(s.to_ascii_lowercase()))
    }

    /// Git's "no commit" (40 zeros): the `before` of a new ref.
    pub fn zero() -> CommitSha {
        CommitSha("0".repeat(40))
    }

    /// Git writes all zeros for "no commit": the `before` of a new ref, the `after` of a
    /// deleted one.
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }

    pub fn short(&self) -> &str {
        &self.0[..7]
    }

    /// The first `len` digits (all of them when there are fewer).
    pub fn prefix(&self, len: usize) -> &str {
        self.0.get(..len).unwrap_or(&self.0)
    }
}

impl AsRef<str> for CommitSha {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    Branch,
    Tag,
    /// The head of a pull request (GitHub) or merge request (GitLab), kept by the forge in the
    /// base repository: built and checked, never pushed or deployed.
    Pull,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
            RefKind::Pull => "pull",
        }
    }
}

/// The forges' refs for a pull request's head: GitHub's and GitLab's.
const PULL_PREFIXES: [&str; 2] = ["refs/pull/", "refs/merge-requests/"];

/// A branch or tag ref (`refs/heads/<name>`, `refs/tags/<name>`) or a pull request's head
/// (`refs/pull/<N>/head`, `refs/merge-requests/<N>/head`). Other refs (notes, a pull
/// request's merge ref) are not something deploybot builds, so they do not parse.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GitRef {
    full: String,
    kind: RefKind,
}

impl GitRef {
    pub fn parse(s: &str) -> Result<GitRef, ParseError> {
        if PULL_PREFIXES.iter().any(|prefix| s.starts_with(prefix)) {
            return parse_pull(s);
        }
        let (kind, name) = if let Some(name) = s.strip_prefix("refs/heads/") {
            (RefKind::Branch, name)
        } else if let Some(name) = s.strip_prefix("refs/tags/") {
            (RefKind::Tag, name)
        } else {
            return Err(ParseError(format!(
                "\"{}\" is neither refs/heads/... nor refs/tags/...",
                s.chars().take(80).collect::<String>()
            )));
        };
        // The rules of git-check-ref-format that matter for names we later put in image tags,
        // paths and log lines.
        let bad = name.is_empty()
            || name.len() > 200
            || name.starts_with('/')
            || name.ends_with('/')
            || name.ends_with(".lock")
            || name.contains("..")
            || name.contains("//")
            || name.contains("@{")
            || name
                .chars()
                .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
        if bad {
            return Err(ParseError(format!("\"{s}\" is not a valid ref name")));
        }
        Ok(GitRef {
            full: s.to_owned(),
            kind,
        })
    }

    pub fn kind(&self) -> RefKind {
        self.kind
    }

    /// The branch or tag name, without `refs/heads/` or `refs/tags/`; a pull request's number.
    pub fn name(&self) -> &str {
        match self.kind {
            RefKind::Branch => &self.full["refs/heads/".len()..],
            RefKind::Tag => &self.full["refs/tags/".len()..],
            RefKind::Pull => self.full.rsplit('/').nth(1).unwrap_or_default(),
        }
    }

    /// What people call it: the branch or tag name, `pull request #N` (GitHub) or `merge
    /// request !N` (GitLab).
    pub fn label(&self) -> String {
        match self.kind {
            RefKind::Pull if self.full.starts_with("refs/pull/") => {
                format!("pull request #{}", self.name())
            }
            RefKind::Pull => format!("merge request !{}", self.name()),
            RefKind::Branch | RefKind::Tag => self.name().to_owned(),
        }
    }
}

/// `refs/pull/<N>/head` or `refs/merge-requests/<N>/head`, N a number as the forges write it.
fn parse_pull(s: &str) -> Result<GitRef, ParseError> {
    let number = PULL_PREFIXES
        .iter()
        .find_map(|prefix| s.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix("/head"));
    match number {
        Some(n)
            if (1..=12).contains(&n.len())
                && !n.starts_with('0')
                && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(GitRef {
                full: s.to_owned(),
                kind: RefKind::Pull,
            })
        }
        _ => Err(ParseError(format!(
            "\"{}\" is not a pull request's head (refs/pull/N/head or refs/merge-requests/N/head)",
            s.chars().take(80).collect::<String>()
        ))),
    }
}

impl AsRef<str> for GitRef {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for GitRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

/// Stored values parse again on the way in: a stored event with a ref or commit id that does
/// not parse is an error, not a string taken on trust.
impl<'de> Deserialize<'de> for GitRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GitRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for CommitSha {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CommitSha::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_forty_or_sixty_four_hex_digits() {
        let sha = CommitSha::parse("0D1A26E67D8F5EAF1F6BA5C57FC3C7D91AC0FD1C").unwrap();
        assert_eq!(sha.as_ref(), "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
        assert_eq!(sha.short(), "0d1a26e");
        assert!(CommitSha::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "abc", &"g".repeat(40), &"a".repeat(41)] {
            assert!(CommitSha::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(CommitSha::parse(&"0".repeat(40)).unwrap().is_zero());
    }

    #[test]
    fn branch_and_tag_refs_parse_into_kind_and_name() {
        let tag = GitRef::parse("refs/tags/v1.2.3").unwrap();
        assert_eq!((tag.kind(), tag.name()), (RefKind::Tag, "v1.2.3"));
        let branch = GitRef::parse("refs/heads/feature/x").unwrap();
        assert_eq!(
            (branch.kind(), branch.name()),
            (RefKind::Branch, "feature/x")
        );
    }

    #[test]
    fn pull_and_merge_request_heads_parse_into_their_number() {
        let pull = GitRef::parse("refs/pull/42/head").unwrap();
        assert_eq!((pull.kind(), pull.name()), (RefKind::Pull, "42"));
        assert_eq!(pull.label(), "pull request #42");
        let merge = GitRef::parse("refs/merge-requests/7/head").unwrap();
        assert_eq!((merge.kind(), merge.name()), (RefKind::Pull, "7"));
        assert_eq!(merge.label(), "merge request !7");
    }

    #[test]
    fn other_refs_and_bad_names_do_not_parse() {
        for bad in [
            "refs/pull/1/merge",
            "refs/pull//head",
            "refs/pull/01/head",
            "refs/pull/1a/head",
            "refs/pull/1/head/x",
            "refs/merge-requests/1/merge",
            "refs/pull/1234567890123/head",
            "master",
            "refs/heads/",
            "refs/tags/a..b",
            "refs/heads/a b",
            "refs/heads/x.lock",
            "refs/heads/a@{b",
        ] {
            assert!(GitRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
