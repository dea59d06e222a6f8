//! The `WWW-Authenticate` challenge a registry answers 401 with: RFC 7235's syntax
//! (`scheme param="value", …`, several challenges in one header or in several headers), of
//! which the Docker token flow needs the `Bearer` one: `realm`, `service` and `scope`.

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

/// A `Bearer` challenge: where to get a token (`realm`) and what to ask it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bearer {
    /// None when the registry named no realm (nowhere to ask: an error for the caller).
    pub realm: Option<String>,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// The first `Bearer` challenge in the answer's `WWW-Authenticate` headers, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<Bearer> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(challenges)
        .find(|challenge| challenge.scheme.eq_ignore_ascii_case("bearer"))
        .map(|challenge| Bearer {
            realm: challenge.param("realm"),
            service: challenge.param("service"),
            scope: challenge.param("scope"),
        })
}

#[derive(Debug)]
struct Challenge {
    scheme: String,
    /// Names lowercased (they are case-insensitive), values unquoted.
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// Every challenge in one header value. Commas separate both challenges and parameters, so
/// an item that starts with a bare token (`Bearer realm=…`) opens a challenge and an item
/// that is only `name=value` adds to the one before.
fn challenges(value: &str) -> Vec<Challenge> {
    let mut found: Vec<Challenge> = Vec::new();
    for item in split_outside_quotes(value) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match opening_scheme(item) {
            Some((scheme, rest)) => found.push(Challenge {
                scheme: scheme.to_owned(),
                params: param(rest).into_iter().collect(),
            }),
            None => {
                if let (Some(last), Some(param)) = (found.last_mut(), param(item)) {
                    last.params.push(param);
                }
            }
        }
    }
    found
}

/// `Bearer realm="…"` → (`Bearer`, `realm="…"`); `realm = "…"` → None (a parameter, which
/// may have spaces around its `=`).
fn opening_scheme(item: &str) -> Option<(&str, &str)> {
    let end = item
        .find(|c: char| c.is_ascii_whitespace() || c == '=')
        .unwrap_or(item.len());
    let (scheme, rest) = item.split_at(end);
    let rest = rest.trim_start();
    (!rest.starts_with('=')).then_some((scheme, rest))
}

/// `name=value` or `name="quoted \"value\""`, the name lowercased.
fn param(text: &str) -> Option<(String, String)> {
    let (name, value) = text.split_once('=')?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let value = value.trim();
    let value = match value.strip_prefix('"') {
        Some(quoted) => unquote(quoted),
        None => value.to_owned(),
    };
    Some((name, value))
}

/// The rest of a quoted-string after its opening quote, up to the closing one, with
/// backslash escapes (`\"`, `\\`) resolved.
fn unquote(quoted: &str) -> String {
    let mut value = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => value.extend(chars.next()),
            c => value.push(c),
        }
    }
    value
}

/// `value` split at the commas that are not inside a quoted-string.
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn bearer_of(values: &[&str]) -> Option<Bearer> {
        bearer(&headers(values))
    }

    #[test]
    fn a_bearer_challenge_gives_its_realm_service_and_scope() {
        let challenge = bearer_of(&[
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:samalba/my-app:pull,push""#,
        ]);

        assert_eq!(
            challenge,
            Some(Bearer {
                realm: Some("https://auth.example.com/token".into()),
                service: Some("registry.example.com".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
    }

    #[test]
    fn the_scheme_and_parameter_names_are_matched_regardless_of_case() {
        let challenge = bearer_of(&[r#"bEARER Realm="https://a.example/t",SERVICE="reg""#]);

        let challenge = challenge.unwrap();
        assert_eq!(challenge.realm.as_deref(), Some("https://a.example/t"));
        assert_eq!(challenge.service.as_deref(), Some("reg"));
    }

    #[test]
    fn a_bearer_challenge_after_another_scheme_in_one_header_is_found() {
        let challenge = bearer_of(&[
            r#"Basic realm="basic, with a comma", Bearer realm="https://a.example/t",scope="s""#,
        ]);

        let challenge = challenge.unwrap();
        assert_eq!(challenge.realm.as_deref(), Some("https://a.example/t"));
        assert_eq!(challenge.scope.as_deref(), Some("s"));
    }

    #[test]
    fn a_bearer_challenge_in_a_second_header_is_found() {
        let challenge = bearer_of(&[
            r#"Basic realm="registry""#,
            r#"Bearer realm="https://a.example/t""#,
        ]);

        assert_eq!(
            challenge.unwrap().realm.as_deref(),
            Some("https://a.example/t")
        );
    }

    #[test]
    fn a_basic_challenge_alone_is_no_bearer_challenge() {
        assert_eq!(bearer_of(&[r#"Basic realm="deploybot-tests""#]), None);
    }

    #[test]
    fn no_header_is_no_bearer_challenge() {
        assert_eq!(bearer_of(&[]), None);
    }

    #[test]
    fn escaped_characters_in_a_quoted_value_are_unescaped() {
        let challenge =
            bearer_of(&[r#"Bearer realm="https://a.example/t",service="a \"b\" \\ c""#]);

        assert_eq!(challenge.unwrap().service.as_deref(), Some(r#"a "b" \ c"#));
    }

    #[test]
    fn unquoted_values_and_spaces_around_the_equals_sign_are_read() {
        let challenge = bearer_of(&["Bearer realm = https://a.example/t , service=reg"]);

        let challenge = challenge.unwrap();
        assert_eq!(challenge.realm.as_deref(), Some("https://a.example/t"));
        assert_eq!(challenge.service.as_deref(), Some("reg"));
    }

    #[test]
    fn a_bearer_challenge_without_a_realm_has_none() {
        let challenge = bearer_of(&[r#"Bearer service="reg""#]);

        assert_eq!(challenge.unwrap().realm, None);
    }
}
