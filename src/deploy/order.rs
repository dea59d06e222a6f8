//! Which of two deploys of one Deployment is the newer, so that a tag arriving late never
//! overwrites a newer one already running.

use crate::config::DeployOrder;

/// A deploy's place in line: its tag and when its push was received (RFC 3339, fixed width,
/// so the text sorts as time does).
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    pub tag: &'a str,
    pub pushed_at: &'a str,
}

/// True if `candidate` is older than `deployed` and must not replace it.
pub fn is_older(candidate: Version<'_>, deployed: Version<'_>, order: DeployOrder) -> bool {
    if order == DeployOrder::Semver {
        if let (Some(a), Some(b)) = (semver_of(candidate.tag), semver_of(deployed.tag)) {
            return a < b;
        }
    }
    candidate.pushed_at < deployed.pushed_at
}

fn semver_of(tag: &str) -> Option<semver::Version> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    semver::Version::parse(bare).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v<'a>(tag: &'a str, pushed_at: &'a str) -> Version<'a> {
        Version { tag, pushed_at }
    }

    #[test]
    fn semver_tags_are_ordered_by_version_not_by_arrival() {
        let late_old = v("v1.2.0", "2026-01-02T00:00:00.000Z");
        let early_new = v("v1.10.0", "2026-01-01T00:00:00.000Z");
        assert!(is_older(late_old, early_new, DeployOrder::Semver));
        assert!(!is_older(early_new, late_old, DeployOrder::Semver));
    }

    #[test]
    fn pre_releases_come_before_their_release() {
        let rc = v("v2.0.0-rc.1", "2026-01-02T00:00:00.000Z");
        let release = v("v2.0.0", "2026-01-01T00:00:00.000Z");
        assert!(is_older(rc, release, DeployOrder::Semver));
    }

    #[test]
    fn tags_that_are_not_semver_are_ordered_by_push_time() {
        let a = v("release-b", "2026-01-01T00:00:00.000Z");
        let b = v("release-a", "2026-01-02T00:00:00.000Z");
        assert!(is_older(a, b, DeployOrder::Semver));
        assert!(!is_older(b, a, DeployOrder::Semver));
    }

    #[test]
    fn push_time_order_ignores_versions() {
        let late_old = v("v1.2.0", "2026-01-02T00:00:00.000Z");
        let early_new = v("v1.10.0", "2026-01-01T00:00:00.000Z");
        assert!(!is_older(late_old, early_new, DeployOrder::PushTime));
    }

    #[test]
    fn the_same_version_again_is_not_older() {
        let a = v("v1.0.0", "2026-01-01T00:00:00.000Z");
        assert!(!is_older(a, a, DeployOrder::Semver));
    }
}
