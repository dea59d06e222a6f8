//! Ref patterns for push policy: `*` matches any run of characters, `?` one character,
//! everything else itself (`v*`, `release-?`, `main`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("\"{s}\" is not a ref pattern"));
        }
        Ok(Pattern(s.to_owned()))
    }

    pub fn any() -> Pattern {
        Pattern("*".into())
    }

    pub fn matches(&self, name: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = name.chars().collect();
        matches(&pattern, &text)
    }
}

/// By characters, not bytes: `?` is one character of a name, however many bytes it takes.
fn matches(pattern: &[char], text: &[char]) -> bool {
    // Iterative wildcard match with one backtrack point: linear enough for ref names.
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_shell_globs() {
        let cases = [
            ("v*", "v1.2.3", true),
            ("v*", "release", false),
            ("*", "", true),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("main", "main", true),
            ("*-rc*", "v1-rc2", true),
            // Found by src/fuzz.rs: `?` is one character, not one byte.
            ("?é*", "éé", true),
            ("release-?", "release-é", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().matches(name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }
}
