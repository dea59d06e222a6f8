//! Bearer tokens of the Docker token flow: the realm's answer (`token`, or OAuth 2's
//! `access_token`; `expires_in` seconds, 60 when absent, as the token spec says) and a cache
//! of them per scope, used until shortly before they expire.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::Deserialize;

/// The token spec's lifetime for an answer without `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// A token is not used this close to its expiry: the request it goes with may take that long.
const MARGIN: Duration = Duration::from_secs(10);
/// Past this many scopes the cache starts over (a client copies within a few repositories).
const MAX_SCOPES: usize = 256;

#[derive(Deserialize)]
struct Answer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A token and how long it is good for from when it was asked for.
pub(super) struct Token {
    pub value: SecretString,
    pub lifetime: Duration,
}

/// The realm's JSON answer; `Ok(None)` when it holds no non-empty token.
pub(super) fn parse(body: &[u8]) -> Result<Option<Token>, serde_json::Error> {
    let answer: Answer = serde_json::from_slice(body)?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()));
    Ok(token.map(|token| Token {
        value: SecretString::from(token),
        lifetime: answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs),
    }))
}

/// Tokens by scope (`repository:t/x:pull,push`), each with the instant it stops being used.
#[derive(Default)]
pub(super) struct TokenCache {
    entries: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl TokenCache {
    /// The token for `scope`, unless it is within [`MARGIN`] of expiring at `now`.
    pub fn get(&self, scope: &str, now: Instant) -> Option<SecretString> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(scope)
            .filter(|(_, until)| now < *until)
            .map(|(token, _)| token.clone())
    }

    /// Keeps `token` for `scope`, asked for at `asked` (so the realm's clock starts no
    /// earlier than ours). A token too short-lived to outlast the margin is not kept.
    pub fn put(&self, scope: &str, token: &Token, asked: Instant) {
        let Some(until) = token
            .lifetime
            .checked_sub(MARGIN)
            .and_then(|usable| asked.checked_add(usable))
        else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (_, kept_until)| asked < *kept_until);
        if entries.len() >= MAX_SCOPES {
            entries.clear();
        }
        entries.insert(scope.to_owned(), (token.value.clone(), until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn token(value: &str, seconds: u64) -> Token {
        Token {
            value: SecretString::from(value),
            lifetime: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn the_realm_answers_token_and_expires_in() {
        let answer =
            parse(br#"{"token":"t1","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}"#);

        let token = answer.unwrap().unwrap();
        assert_eq!(token.value.expose_secret(), "t1");
        assert_eq!(token.lifetime, Duration::from_secs(300));
    }

    #[test]
    fn an_oauth_access_token_is_taken_when_there_is_no_token() {
        let answer = parse(br#"{"access_token":"a1"}"#);

        assert_eq!(answer.unwrap().unwrap().value.expose_secret(), "a1");
    }

    #[test]
    fn a_token_without_expires_in_lives_sixty_seconds() {
        let answer = parse(br#"{"token":"t1"}"#);

        assert_eq!(answer.unwrap().unwrap().lifetime, Duration::from_secs(60));
    }

    #[test]
    fn an_answer_without_a_token_holds_none() {
        assert!(parse(br#"{"token":"","expires_in":60}"#).unwrap().is_none());
    }

    #[test]
    fn an_answer_that_is_not_json_is_an_error() {
        assert!(parse(b"<html>login</html>").is_err());
    }

    #[test]
    fn a_cached_token_is_used_until_ten_seconds_before_it_expires() {
        let cache = TokenCache::default();
        let asked = Instant::now();
        cache.put("repository:t/x:pull", &token("t1", 60), asked);

        let fresh = cache.get("repository:t/x:pull", asked + Duration::from_secs(49));
        let stale = cache.get("repository:t/x:pull", asked + Duration::from_secs(50));

        assert_eq!(fresh.unwrap().expose_secret(), "t1");
        assert!(stale.is_none());
    }

    #[test]
    fn a_token_is_cached_for_its_own_scope_only() {
        let cache = TokenCache::default();
        let asked = Instant::now();
        cache.put("repository:t/x:pull", &token("t1", 60), asked);

        assert!(cache.get("repository:t/x:pull,push", asked).is_none());
        assert!(cache.get("repository:t/y:pull", asked).is_none());
    }

    #[test]
    fn a_token_living_no_longer_than_the_margin_is_not_cached() {
        let cache = TokenCache::default();
        let asked = Instant::now();
        cache.put("repository:t/x:pull", &token("t1", 10), asked);

        assert!(cache.get("repository:t/x:pull", asked).is_none());
    }
}
