//! The names a registry call is made of, checked before they go into a URL: the registry's
//! address (and from it the scheme), a repository, a tag and a digest, by the OCI Distribution
//! spec's grammar. A name that passed here cannot add a path segment or a query to a URL.

use std::net::IpAddr;

use reqwest::Url;
use sha2::{Digest as _, Sha256, Sha512};

/// The spec's limit on a repository name (many clients apply it to host, `/` and name).
const MAX_REPOSITORY_LEN: usize = 255;
/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
const MAX_TAG_LEN: usize = 128;

/// `scheme://host[:port]` for a configured `host[:port]`.
///
/// https, except plain http for a loopback address (127.0.0.0/8, `::1`, `localhost`), as the
/// Docker engine does for a local registry: nothing on the way can read what goes over
/// loopback, and a registry started for a test or beside the engine has no certificate.
pub(super) fn base_url(address: &str) -> Result<String, &'static str> {
    if address.is_empty() {
        return Err("it is empty");
    }
    if address.contains(|c: char| "/?#@\\".contains(c) || c.is_whitespace() || c.is_control()) {
        return Err("host[:port] only: no scheme, path, user or spaces");
    }
    let url = Url::parse(&format!("https://{address}")).map_err(|_| "not a host[:port]")?;
    let host = url.host_str().ok_or("no host")?;
    let scheme = if is_loopback(host) { "http" } else { "https" };
    Ok(format!("{scheme}://{address}"))
}

/// Whether `url` may receive credentials: https, or plain http to a loopback host (the rule
/// [`base_url`] chose the registry's scheme by), and no user or password of its own.
pub(super) fn may_carry_credentials(url: &Url) -> bool {
    let loopback = url.host_str().is_some_and(is_loopback);
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    scheme_ok && url.username().is_empty() && url.password().is_none()
}

/// `host` as [`Url::host_str`] writes it (an IPv6 address in brackets).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub(super) fn check_repository(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_REPOSITORY_LEN {
        return Err("1 to 255 characters");
    }
    if name.split('/').all(is_path_component) {
        Ok(())
    } else {
        Err("lowercase letters and digits in /-separated parts, joined by '.', '_', '__' or '-'")
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alphanumeric runs joined by one separator each.
fn is_path_component(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separators_ok = part
        .split(alnum)
        .filter(|run| !run.is_empty())
        .all(|run| run == "." || run == "_" || run == "__" || run.chars().all(|c| c == '-'));
    part.starts_with(alnum) && part.ends_with(alnum) && separators_ok
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub(super) fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = tag.len() <= MAX_TAG_LEN
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    ok.then_some(())
        .ok_or("1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
}

/// `sha256:` and 64 lowercase hex digits, or `sha512:` and 128: the algorithms this client
/// can check a manifest's bytes against.
pub(super) fn check_digest(digest: &str) -> Result<(), &'static str> {
    const RULE: &str = "sha256:<64 hex> or sha512:<128 hex>";
    let (hex, len) = match digest.split_once(':') {
        Some(("sha256", hex)) => (hex, 64),
        Some(("sha512", hex)) => (hex, 128),
        _ => return Err(RULE),
    };
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (hex.len() == len && hex.chars().all(lower_hex))
        .then_some(())
        .ok_or(RULE)
}

/// The digest of `bytes` by the algorithm `digest` names (one [`check_digest`] accepted).
pub(super) fn digest_of_bytes(digest: &str, bytes: &[u8]) -> String {
    if digest.starts_with("sha512:") {
        format!("sha512:{}", hex::encode(Sha512::digest(bytes)))
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_address_is_spoken_to_over_plain_http() {
        for address in [
            "127.0.0.1:5000",
            "127.0.0.1",
            "127.8.9.10:443",
            "localhost:5000",
            "LocalHost",
            "[::1]:5000",
        ] {
            assert_eq!(
                base_url(address),
                Ok(format!("http://{address}")),
                "{address}"
            );
        }
    }

    #[test]
    fn any_other_address_is_spoken_to_over_https() {
        for address in [
            "registry.example.com",
            "registry.example.com:5000",
            "10.0.0.5:5000",
            "[2001:db8::1]:443",
            "localhost.example.com",
        ] {
            assert_eq!(
                base_url(address),
                Ok(format!("https://{address}")),
                "{address}"
            );
        }
    }

    #[test]
    fn an_address_with_a_scheme_path_user_or_space_is_refused() {
        for address in [
            "",
            "https://registry.example.com",
            "registry.example.com/v2",
            "user@registry.example.com",
            "registry.example.com?x=1",
            "registry example.com",
            "registry.example.com:notaport",
        ] {
            assert!(base_url(address).is_err(), "{address:?}");
        }
    }

    #[test]
    fn credentials_go_over_https_or_plain_http_to_loopback_only() {
        for (url, allowed) in [
            ("https://auth.example.com/token", true),
            ("http://127.0.0.1:5001/token", true),
            ("http://[::1]/token", true),
            ("http://auth.example.com/token", false),
            ("https://user:pw@auth.example.com/token", false),
            ("ftp://auth.example.com/token", false),
        ] {
            let url = Url::parse(url).unwrap();
            assert_eq!(may_carry_credentials(&url), allowed, "{url}");
        }
    }

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for (name, ok) in [
            ("t/x", true),
            ("myevents/web", true),
            ("a", true),
            ("a.b_c__d--e/f", true),
            ("", false),
            ("Upper/case", false),
            ("t//x", false),
            ("/t", false),
            ("t/", false),
            ("t/x/../y", false),
            ("a___b", false),
            ("a.-b", false),
            ("t/x?y", false),
            ("t/x:v1", false),
        ] {
            assert_eq!(check_repository(name).is_ok(), ok, "{name:?}");
        }
        assert!(
            check_repository(&"a".repeat(256)).is_err(),
            "256 characters"
        );
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for (tag, ok) in [
            ("v1", true),
            ("v1.0.0-rc.1", true),
            ("_x", true),
            ("sha-09bfeca298b5", true),
            ("", false),
            (".v1", false),
            ("-v1", false),
            ("v1/x", false),
            ("v1:x", false),
        ] {
            assert_eq!(check_tag(tag).is_ok(), ok, "{tag:?}");
        }
        assert!(check_tag(&"a".repeat(128)).is_ok(), "128 characters");
        assert!(check_tag(&"a".repeat(129)).is_err(), "129 characters");
    }

    #[test]
    fn digests_are_sha256_or_sha512_in_lowercase_hex() {
        let sha256 = format!("sha256:{}", "a1".repeat(32));
        let sha512 = format!("sha512:{}", "0f".repeat(64));
        let upper = sha256.to_uppercase();
        for (digest, ok) in [
            (sha256.as_str(), true),
            (sha512.as_str(), true),
            (&sha256[..sha256.len() - 1], false),
            (upper.as_str(), false),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", false),
            ("v1", false),
        ] {
            assert_eq!(check_digest(digest).is_ok(), ok, "{digest:?}");
        }
    }

    #[test]
    fn bytes_are_digested_by_the_algorithm_the_digest_names() {
        let empty256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(digest_of_bytes(empty256, b""), empty256);
        assert!(digest_of_bytes("sha512:00", b"").starts_with("sha512:cf83e1357eef"));
    }
}
