use std::fmt;

use super::ParseError;

/// A project's name: the `{project}` segment of `POST /hooks/{project}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn parse(s: &str) -> Result<ProjectName, ParseError> {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if s.is_empty() || s.len() > 63 {
            return Err(ParseError(format!(
                "\"{s}\" must be 1 to 63 characters long"
            )));
        }
        if !s.chars().all(ok_char) {
            return Err(ParseError(format!(
                "\"{s}\" may only hold lowercase letters, digits, '-' and '_' (it is a URL segment)"
            )));
        }
        Ok(ProjectName(s.to_owned()))
    }
}

impl AsRef<str> for ProjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS-1123 label: lowercase letters, digits and `-`, at most 63, not starting or ending
/// with `-`. Kubernetes names Deployments, containers and namespaces this way, and a service's
/// name becomes a Deployment's, so all four are this type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DnsLabel(String);

impl DnsLabel {
    pub fn parse(s: &str) -> Result<DnsLabel, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !ok {
            return Err(ParseError(format!(
                "\"{}\" is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
                s.chars().take(80).collect::<String>()
            )));
        }
        Ok(DnsLabel(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A label reads as the text it is wherever a name is wanted (stage rows, messages, paths).
impl std::ops::Deref for DnsLabel {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DnsLabel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository's path on its forge: GitHub's `full_name` (`owner/name`) or GitLab's
/// `path_with_namespace` (`group/subgroup/name`). Forges treat it case-insensitively.
#[derive(Debug, Clone)]
pub struct RepoSlug(String);

impl RepoSlug {
    pub fn parse(s: &str) -> Result<RepoSlug, ParseError> {
        let segments: Vec<&str> = s.split('/').collect();
        let segment_ok = |seg: &&str| {
            !seg.is_empty()
                && seg != &"."
                && seg != &".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if segments.len() < 2 || !segments.iter().all(segment_ok) || s.len() > 255 {
            return Err(ParseError(format!(
                "\"{s}\" is not a repository path like owner/name"
            )));
        }
        Ok(RepoSlug(s.to_owned()))
    }

    /// The same repository, whatever the letter case.
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq for RepoSlug {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for RepoSlug {}

impl AsRef<str> for RepoSlug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` with every character outside `[A-Za-z0-9_.-]` replaced by `-`, cut at `max`: what both a
/// Docker tag (128) and a Kubernetes label value (63) allow.
pub fn tag_safe(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_what_kubernetes_accepts_as_names() {
        for good in ["web", "event-service", "a", "x1", &"a".repeat(63)] {
            assert!(DnsLabel::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Web",
            "event_service",
            "-web",
            "web-",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(DnsLabel::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn project_names_are_url_segments() {
        for ok in ["myevents", "team-a_1", "x"] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["", "My", "a/b", "a b", "ü", &"x".repeat(64)] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn repository_paths_need_an_owner_and_a_name() {
        for ok in ["octocat/Hello-World", "group/sub/project.js", "a_b/c-d"] {
            assert!(RepoSlug::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["hello", "/x", "x/", "a//b", "a/../b", "a/b c", "a/b?x"] {
            assert!(RepoSlug::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn repository_paths_compare_without_case() {
        let slug = RepoSlug::parse("Octocat/Hello-World").unwrap();
        assert!(slug.matches("octocat/hello-world"));
        assert!(!slug.matches("octocat/hello"));
    }
}
