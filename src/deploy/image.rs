//! Image references as deploybot pins them, `registry/name:tag@sha256:…`: which part names
//! the content (the repository and the digest) and which is only a label (the tag).

/// The repository and digest of a pinned `reference` (`registry/name@sha256:…`, without the
/// tag); None when it is not pinned by digest.
pub(crate) fn content(reference: &str) -> Option<String> {
    let (named, digest) = reference.rsplit_once('@')?;
    let (algorithm, hex) = digest.split_once(':')?;
    if algorithm.is_empty() || hex.is_empty() {
        return None;
    }
    Some(format!("{}@{digest}", repository(named)))
}

/// Whether `a` and `b` run the same image: the same digest from the same repository, whatever
/// their tags. A digest alone is not enough: pods pull from the repository the reference
/// names, and a move to another one must reach the pod template.
pub(crate) fn same_content(a: &str, b: &str) -> bool {
    match (content(a), content(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `named` without its tag: the tag is what follows the last `:` after the last `/` (a `:`
/// before it is a registry's port).
fn repository(named: &str) -> &str {
    let name_start = named.rfind('/').map_or(0, |slash| slash + 1);
    match named[name_start..].rfind(':') {
        Some(colon) => &named[..name_start + colon],
        None => named,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef";

    #[test]
    fn the_content_of_a_pinned_reference_is_its_repository_and_digest() {
        let cases = [
            (
                "registry:5000/myevents/web:v1@",
                "registry:5000/myevents/web@",
            ),
            ("registry:5000/myevents/web@", "registry:5000/myevents/web@"),
            ("web:v1@", "web@"),
            ("127.0.0.1:5000/web:v1.0.1@", "127.0.0.1:5000/web@"),
        ];
        for (reference, expected) in cases {
            assert_eq!(
                content(&format!("{reference}{DIGEST}")),
                Some(format!("{expected}{DIGEST}")),
                "{reference}"
            );
        }
    }

    #[test]
    fn a_reference_not_pinned_by_digest_has_no_content() {
        for reference in [
            "web:v1",
            "registry:5000/web",
            "web@",
            "web@sha256:",
            "web@:abc",
        ] {
            assert_eq!(content(reference), None, "{reference}");
        }
    }

    #[test]
    fn two_tags_of_one_digest_in_one_repository_are_the_same_content() {
        assert!(same_content(
            &format!("registry:5000/web:v1.0.0@{DIGEST}"),
            &format!("registry:5000/web:v1.0.1@{DIGEST}")
        ));
    }

    #[test]
    fn another_digest_another_repository_or_no_digest_is_not_the_same_content() {
        let ours = format!("registry:5000/web:v1@{DIGEST}");
        let cases = [
            "registry:5000/web:v1@sha256:ffff".to_owned(),
            format!("other:5000/web:v1@{DIGEST}"),
            "registry:5000/web:v1".to_owned(),
        ];
        for theirs in cases {
            assert!(!same_content(&ours, &theirs), "{theirs}");
        }
    }
}
