//! Property tests of every parser of outside input: signature headers, GitHub and GitLab
//! payloads (JSON and form-encoded), `.deploybot.toml`, the configuration file, Dockerfiles,
//! ref patterns, and the smaller values at the edge (refs, shas, delivery ids, a remote's ref
//! listing, a `Link` header). Each runs on arbitrary input and on mutations of the published
//! fixtures, and must not panic; where an answer is known it is checked (a signature verifies
//! iff it is the HMAC of the exact bytes; a pattern matches as its regular expression does).
//!
//! CI runs proptest's default number of cases; `bench/fuzz.sh MINUTES` runs them again and
//! again with `PROPTEST_CASES` raised and fresh seeds. A failure proptest finds is saved in
//! `tests/fuzz/regressions.txt` (commit it: its cases run first from then on) and becomes a named
//! case in the parser's own tests.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use secrecy::SecretString;

use crate::forge::{BodyEncoding, Forge, GitHub, GitLab};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_default()
}

const GITHUB_FIXTURES: [&str; 6] = [
    "github/push.tag.json",
    "github/push.branch.json",
    "github/push.branch-created.json",
    "github/push.branch-deleted.json",
    "github/ping.repository.json",
    "github/pull_request.opened.json",
];
const GITLAB_FIXTURES: [&str; 5] = [
    "gitlab/push.branch.json",
    "gitlab/tag_push.created.json",
    "gitlab/tag_push.deleted.json",
    "gitlab/push.hook-log.json",
    "gitlab/merge_request.opened.json",
];

/// A byte edit: overwrite, insert or delete at a position (taken modulo the length).
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
        ],
        1..8,
    )
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match *edit {
            Edit::Set(i, b) if !bytes.is_empty() => bytes[i % len] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            _ => {}
        }
    }
    bytes
}

/// An event name: each forge's known ones, or anything.
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("push".to_owned()),
        Just("ping".to_owned()),
        Just("Push Hook".to_owned()),
        Just("Tag Push Hook".to_owned()),
        Just("Merge Request Hook".to_owned()),
        ".{0,40}",
    ]
}

fn parse_both(event: &str, body: &[u8]) {
    for encoding in [BodyEncoding::Json, BodyEncoding::Form] {
        let _ = GitHub.parse(event, encoding, body);
        let _ = GitLab.parse(event, encoding, body);
    }
}

/// `pattern` as the regular expression it means: `*` any run, `?` one character.
fn pattern_regex(pattern: &str) -> regex::Regex {
    let mut expression = String::from("(?s)^");
    for c in pattern.chars() {
        match c {
            '*' => expression.push_str(".*"),
            '?' => expression.push('.'),
            other => expression.push_str(&regex::escape(&other.to_string())),
        }
    }
    expression.push('$');
    regex::Regex::new(&expression).unwrap_or_else(|e| panic!("{pattern:?}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/fuzz/regressions.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_github_signature_verifies_iff_it_is_the_hmac_of_the_exact_bytes(
        secret in ".{1,64}",
        body in prop::collection::vec(any::<u8>(), 0..2048),
        flip in any::<(usize, u8)>(),
        claimed in ".{0,80}",
    ) {
        let key = SecretString::from(secret.clone());
        let signature = crate::forge::github_signature(&secret, &body);
        prop_assert!(crate::forge::signature::verify_github("h", &signature, &key, &body).is_ok());
        let mut other = body.clone();
        if other.is_empty() {
            other.push(flip.1);
        } else {
            let at = flip.0 % other.len();
            other[at] ^= flip.1.max(1);
        }
        prop_assert!(crate::forge::signature::verify_github("h", &signature, &key, &other).is_err());
        let verdict = crate::forge::signature::verify_github("h", &claimed, &key, &body);
        prop_assert_eq!(verdict.is_ok(), claimed == signature);
    }

    #[test]
    fn a_standard_webhooks_signature_header_never_panics_and_verifies_only_the_senders_mac(
        header in ".{0,1100}",
        timestamp in prop_oneof![Just("1614265330".to_owned()), ".{0,24}"],
        id in "[a-z0-9_]{1,32}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        noise in prop::collection::vec("v1,[A-Za-z0-9+/=]{0,60}", 0..9),
    ) {
        let key = crate::forge::SigningKey::parse(SecretString::from(
            "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q=",
        ))
        .map_err(TestCaseError::fail)?;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let tolerance = Duration::from_secs(300);
        let arbitrary = crate::forge::signature::StandardHeaders {
            id: &id,
            timestamp: &timestamp,
            signature: &header,
        };
        let _ = crate::forge::signature::verify_standard(&key, &arbitrary, &body, now, tolerance);
        let genuine = crate::forge::standard_webhooks_signature(&key, &id, "1614265330", &body);
        let mut entries = noise.clone();
        entries.push(genuine);
        let signature = entries.join(" ");
        let headers = crate::forge::signature::StandardHeaders {
            id: &id,
            timestamp: "1614265330",
            signature: &signature,
        };
        prop_assert!(crate::forge::signature::verify_standard(&key, &headers, &body, now, tolerance).is_ok());
        let forged = crate::forge::signature::StandardHeaders {
            id: &id,
            timestamp: "1614265330",
            signature: &noise.join(" "),
        };
        prop_assert!(crate::forge::signature::verify_standard(&key, &forged, &body, now, tolerance).is_err());
    }

    #[test]
    fn forge_payloads_never_panic_whatever_the_bytes(
        event in event_name(),
        body in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        parse_both(&event, &body);
    }

    #[test]
    fn a_published_payload_with_its_bytes_edited_never_panics(
        which in 0..(GITHUB_FIXTURES.len() + GITLAB_FIXTURES.len()),
        event in event_name(),
        edits in edits(),
    ) {
        let name = GITHUB_FIXTURES.iter().chain(GITLAB_FIXTURES.iter()).nth(which).copied().unwrap_or_default();
        let body = mutate(fixture(name), &edits);
        parse_both(&event, &body);
        let form = serde_urlencoded::to_string([("payload", String::from_utf8_lossy(&body))]).unwrap_or_default();
        parse_both(&event, form.as_bytes());
    }

    #[test]
    fn a_form_encoded_payload_parses_as_its_json_does(which in 0..GITHUB_FIXTURES.len()) {
        let json = fixture(GITHUB_FIXTURES[which]);
        let text = String::from_utf8_lossy(&json).into_owned();
        let form = serde_urlencoded::to_string([("payload", text)]).unwrap_or_default();
        for event in ["push", "ping", "create"] {
            let from_json = GitHub.parse(event, BodyEncoding::Json, &json);
            let from_form = GitHub.parse(event, BodyEncoding::Form, form.as_bytes());
            prop_assert_eq!(format!("{from_json:?}"), format!("{from_form:?}"));
        }
    }

    #[test]
    fn a_pipeline_file_never_panics(text in ".{0,2000}") {
        let _ = crate::pipeline::definition::parse(&text);
    }

    #[test]
    fn a_published_pipeline_file_with_its_bytes_edited_never_panics(edits in edits()) {
        for name in ["myevents/.deploybot.toml", "hello/.deploybot.toml"] {
            let text = mutate(fixture(name), &edits);
            let _ = crate::pipeline::definition::parse(&String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn a_configuration_file_never_panics(text in ".{0,1500}", edits in edits()) {
        for toml in [text, String::from_utf8_lossy(&mutate(fixture("../../config/deploybot.toml"), &edits)).into_owned()] {
            let _ = crate::config::Settings::from_sources(crate::config::Sources {
                file: None,
                inline_toml: Some(&toml),
                env: std::collections::HashMap::new(),
            });
        }
    }

    #[test]
    fn a_dockerfile_never_panics_and_finds_every_from_image(
        text in ".{0,2000}",
        images in prop::collection::vec("[a-z0-9]{1,12}(/[a-z0-9]{1,12})?(:[a-z0-9.]{1,8})?", 1..4),
    ) {
        let parsed = crate::pipeline::dockerfile::Dockerfile::parse(&text);
        let _ = parsed.base_images();
        let _ = parsed.first_command();
        let file: String = images.iter().map(|i| format!("FROM {i}\nCOPY . /app\n")).collect();
        let found = crate::pipeline::dockerfile::Dockerfile::parse(&file).base_images();
        prop_assert_eq!(found, Some(images));
    }

    #[test]
    fn a_ref_pattern_matches_exactly_as_its_regular_expression_does(
        pattern in "[a-zé*?./-]{1,12}",
        name in "[a-zé./-]{0,16}",
    ) {
        if let Ok(parsed) = crate::pipeline::Pattern::parse(&pattern) {
            prop_assert_eq!(parsed.matches(&name), pattern_regex(&pattern).is_match(&name), "{} vs {}", pattern, name);
        }
    }

    #[test]
    fn a_ref_pattern_or_name_never_panics(pattern in ".{0,260}", name in ".{0,260}") {
        if let Ok(parsed) = crate::pipeline::Pattern::parse(&pattern) {
            let _ = parsed.matches(&name);
        }
    }

    #[test]
    fn refs_shas_and_delivery_ids_parse_or_refuse_without_panicking(text in ".{0,300}") {
        let _ = crate::domain::GitRef::parse(&text);
        let _ = crate::domain::CommitSha::parse(&text);
        let _ = crate::domain::RepoSlug::parse(&text);
        let _ = crate::domain::DnsLabel::parse(&text);
        let id = crate::domain::DeliveryId::parse(&text);
        let plain = !text.is_empty() && text.len() <= 128
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        prop_assert_eq!(id.is_ok(), plain);
    }
}
