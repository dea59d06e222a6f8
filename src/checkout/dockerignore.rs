//! `.dockerignore` as the docker CLI applies it when it sends a build context (moby's
//! `patternmatcher` and `ignorefile`, walked as `archive.TarWithOptions` walks), so a
//! repository's context leaves deploybot exactly as it would leave `docker build`.
//!
//! The rules, each pinned by a case below that the docker CLI itself decided:
//! - A line starting with `#` is a comment (only at the very start: ` #x` is a pattern). Each
//!   other line is trimmed; `!` makes it an exception; the pattern is cleaned like Go's
//!   `filepath.Clean` and one leading `/` is dropped, so `/a`, `./a` and `a/` all mean `a`.
//! - A pattern is anchored at the context root and matches a path or any directory above it:
//!   `*` and `?` stop at `/`, `[...]` is a class, `\` escapes, `**` matches any number of
//!   directories. moby's shortcuts are kept: a pattern that starts with `**` and has no other
//!   wildcard only compares suffixes (`**.log` matches `a/x.log`), one that ends with `**`
//!   and has none before it only compares prefixes (`foo**` matches `foobar/x`).
//! - The last line that matches decides, so a later `!` line takes a path back.
//! - A directory that is left out is not walked, unless an exception's text starts with that
//!   directory's path (`!docs/README.md` opens `docs`; `!**/README.md` does not): the CLI's
//!   literal prefix test, not "could any exception match below".
//! - The Dockerfile and `.dockerignore` are sent even when excluded ([`DockerIgnore::keep`]);
//!   the engine drops them from what `COPY` sees when the file excludes them.
//!
//! Why not a crate: `globset` (and `ignore`'s gitignore) have other rules (`[!a]` negates,
//! `**` only as a whole component, unanchored names, no parent inheritance or prefix test),
//! `use-dockerignore` only classifies lines, and no maintained port of `patternmatcher` exists.
//! The `regex` crate (already built for tracing's filters) runs the translated patterns, as Go's
//! `regexp` does in moby.

use regex::Regex;

/// What a glob is refused for, in Go's words where Go has them.
const BAD_PATTERN: &str = "syntax error in pattern";

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("line {line}: illegal exclusion pattern \"!\"")]
    BareExclamation { line: usize },
    #[error("line {line}: \"{pattern}\": {reason}")]
    BadPattern {
        line: usize,
        pattern: String,
        reason: String,
    },
}

/// A parsed `.dockerignore`: its rules in file order.
#[derive(Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    exception: bool,
    /// The cleaned pattern, without its `!`.
    pattern: String,
    matcher: Matcher,
}

/// How moby compares a pattern with a path: plain text where it can, a regex otherwise.
#[derive(Debug)]
enum Matcher {
    Exact,
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

/// Which rules a directory matched (itself or through a directory above it), carried down the
/// walk so each entry inherits them as moby's `MatchesUsingParentResults` does.
#[derive(Debug, Clone, Default)]
pub struct Matched(Vec<bool>);

/// What the walk does with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent; a directory is walked.
    Send,
    /// Left out, with everything below it.
    Leave,
    /// A directory left out itself but walked, because an exception names a path inside it.
    Descend,
}

impl DockerIgnore {
    /// Reads a `.dockerignore` text; a bad pattern is an error naming its line, as the CLI
    /// refuses to build with one.
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if let Some(rule) = Rule::parse(line, index + 1)? {
                rules.push(rule);
            }
        }
        Ok(DockerIgnore { rules })
    }

    /// Adds an exception for `path` when the rules exclude it, as the CLI does for the
    /// Dockerfile and `.dockerignore` so that they are always sent. The CLI judges this with
    /// `patternmatcher.Matches` (the path, or its parent of each rule's depth), and so does this.
    pub fn keep(&mut self, path: &str) {
        if self.excludes_shallow(path) {
            self.rules.push(Rule {
                exception: true,
                pattern: path.to_owned(),
                matcher: Matcher::Exact,
            });
        }
    }

    /// The state the context root hands its entries: no rule matched yet.
    pub fn root(&self) -> Matched {
        Matched(vec![false; self.rules.len()])
    }

    /// Decides one entry of the walk, `path` relative to the context, from what its directory
    /// matched; returns what this entry matched for a directory's own entries.
    pub fn entry(&self, path: &str, is_dir: bool, parent: &Matched) -> (Verdict, Matched) {
        let mut excluded = false;
        let mut matched = vec![false; self.rules.len()];
        for (i, rule) in self.rules.iter().enumerate() {
            // A rule the directory matched holds below it; another is only tried when it could
            // change the answer so far, and then only on the path itself.
            let hit = parent.0.get(i).copied().unwrap_or(false)
                || (rule.exception == excluded && rule.matches(path));
            matched[i] = hit;
            if hit {
                excluded = !rule.exception;
            }
        }
        let verdict = match (excluded, is_dir) {
            (false, _) => Verdict::Send,
            (true, true) if self.exception_inside(path) => Verdict::Descend,
            (true, _) => Verdict::Leave,
        };
        (verdict, Matched(matched))
    }

    /// Whether some exception's text starts with `dir/`: the CLI's test for walking into a
    /// directory that is left out.
    fn exception_inside(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.rules
            .iter()
            .any(|r| r.exception && format!("{}/", r.pattern).starts_with(&prefix))
    }

    /// moby's deprecated `Matches`: a rule is tried on the path, then on the path's leading
    /// directories as deep as the rule has components.
    fn excludes_shallow(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for rule in &self.rules {
            if rule.exception != excluded {
                continue;
            }
            let depth = rule.pattern.split('/').count();
            let hit = rule.matches(path)
                || (!parents.is_empty()
                    && depth <= parents.len()
                    && rule.matches(&parents[..depth].join("/")));
            if hit {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

impl Rule {
    /// One line: `ignorefile.ReadAll`'s reading, then `patternmatcher.New`'s.
    fn parse(line: &str, number: usize) -> Result<Option<Rule>, IgnoreError> {
        let Some(read) = read_line(line) else {
            return Ok(None);
        };
        let cleaned = clean(read.trim());
        let (exception, pattern) = match cleaned.strip_prefix('!') {
            Some("") => return Err(IgnoreError::BareExclamation { line: number }),
            Some(rest) => (true, rest.to_owned()),
            None => (false, cleaned),
        };
        let bad = |reason: &str| IgnoreError::BadPattern {
            line: number,
            pattern: pattern.clone(),
            reason: reason.to_owned(),
        };
        if !is_valid_glob(&pattern) {
            return Err(bad(BAD_PATTERN));
        }
        let matcher =
            Matcher::compile(&pattern).map_err(|e| bad(&format!("{BAD_PATTERN} ({e})")))?;
        Ok(Some(Rule {
            exception,
            pattern,
            matcher,
        }))
    }

    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.pattern,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Matcher::Regex(regex) => regex.is_match(path),
        }
    }
}

/// `ignorefile.ReadAll` for one line: None for a comment or a blank line, else the pattern with
/// its `!`, cleaned and without a leading `/`.
fn read_line(line: &str) -> Option<String> {
    if line.starts_with('#') {
        return None;
    }
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (bang, pattern) = match line.strip_prefix('!') {
        Some(rest) => ("!", rest.trim()),
        None => ("", line),
    };
    if pattern.is_empty() {
        return Some(bang.to_owned());
    }
    let cleaned = clean(pattern);
    let relative = match cleaned.strip_prefix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => &cleaned,
    };
    Some(format!("{bang}{relative}"))
}

/// Go's `filepath.Clean` on a `/`-separated path: no empty or `.` components, `..` folded
/// into the component before it, `.` for nothing.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Whether Go's `filepath.Match` accepts `pattern` (moby checks it so before using it): every
/// `\` escapes something, and every `[...]` is closed and holds at least one character or
/// range, none starting with an unescaped `-` or `]`.
fn is_valid_glob(pattern: &str) -> bool {
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return false,
            '[' if !is_valid_class(&mut chars) => return false,
            _ => {}
        }
    }
    true
}

/// The rest of a `[...]` after its `[`, consumed up to its `]`.
fn is_valid_class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    if chars.peek() == Some(&'^') {
        chars.next();
    }
    let mut ranges = 0;
    loop {
        if ranges > 0 && chars.peek() == Some(&']') {
            chars.next();
            return true;
        }
        if !class_char(chars) {
            return false;
        }
        if chars.peek() == Some(&'-') {
            chars.next();
            if !class_char(chars) {
                return false;
            }
        }
        ranges += 1;
    }
}

/// Go's `getEsc`: one (possibly escaped) character of a class, which must not end the pattern.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    match chars.next() {
        None | Some('-' | ']') => return false,
        Some('\\') if chars.next().is_none() => return false,
        Some(_) => {}
    }
    chars.peek().is_some()
}

impl Matcher {
    /// moby's `Pattern.compile`: the pattern as a regex, or as a plain comparison when it
    /// has no wildcard except a leading or trailing `**`.
    fn compile(pattern: &str) -> Result<Matcher, String> {
        let Translation { mut regex, kind } = Translation::of(pattern);
        Ok(match kind {
            Kind::Exact => Matcher::Exact,
            // Both shortcuts compare the pattern's text without its two `*`s, as moby does.
            Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_owned()),
            Kind::Suffix => Matcher::Suffix(pattern[2..].to_owned()),
            Kind::Regex => {
                regex.push('$');
                Matcher::Regex(Regex::new(&regex).map_err(|e| regex_reason(&e.to_string()))?)
            }
        })
    }
}

/// How a pattern compares, as moby decides it while it reads the pattern.
#[derive(PartialEq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// moby's translation of a pattern into a regex, one wildcard or character at a time.
struct Translation {
    regex: String,
    kind: Kind,
}

impl Translation {
    fn of(pattern: &str) -> Translation {
        let mut translation = Translation {
            regex: String::from("^"),
            kind: Kind::Exact,
        };
        let mut chars = pattern.chars().peekable();
        let mut first = true;
        while let Some(ch) = chars.next() {
            match ch {
                '*' if chars.next_if_eq(&'*').is_some() => {
                    chars.next_if_eq(&'/');
                    translation.double_star(chars.peek().is_none(), first);
                }
                '*' => translation.wildcard("[^/]*"),
                '?' => translation.wildcard("[^/]"),
                '[' => translation.wildcard("["),
                ']' => translation.wildcard("]"),
                '\\' => match chars.next() {
                    Some(next) => {
                        push_escaped(&mut translation.regex, next);
                        translation.kind = Kind::Regex;
                    }
                    // Unreachable after `is_valid_glob`; moby writes the `\` as it is.
                    None => translation.regex.push('\\'),
                },
                _ => push_literal(&mut translation.regex, ch),
            }
            first = false;
        }
        translation
    }

    fn wildcard(&mut self, regex: &str) {
        self.regex.push_str(regex);
        self.kind = Kind::Regex;
    }

    /// `**` (with the `/` after it): any directories, or anything at the end of the pattern.
    fn double_star(&mut self, at_end: bool, first: bool) {
        if !at_end {
            self.wildcard("(.*/)?");
        } else if self.kind == Kind::Exact {
            self.kind = Kind::Prefix;
        } else {
            self.wildcard(".*");
        }
        // moby's shortcut: a pattern starting with `**` compares suffixes, unless a later
        // wildcard makes it a regex.
        if first {
            self.kind = Kind::Suffix;
        }
    }
}

/// A pattern character outside any wildcard. moby escapes `.+()|{}$` and passes the rest to Go's
/// regexp as they are; `&` and `~` are escaped too, because in a class Rust's regex reads `&&`
/// and `~~` as set operations where Go's reads characters.
fn push_literal(regex: &mut String, ch: char) {
    if ".+()|{}$&~".contains(ch) {
        regex.push('\\');
    }
    regex.push(ch);
}

/// The character after a `\`. Go's regexp reads an escaped punctuation character as itself;
/// Rust's would read `\<` and `\>` as word boundaries, so punctuation is escaped its way.
fn push_escaped(regex: &mut String, ch: char) {
    if ch.is_ascii_punctuation() {
        regex.push_str(&regex::escape(&ch.to_string()));
    } else {
        regex.push('\\');
        regex.push(ch);
    }
}

/// The last line of a regex error, which says what is wrong (the lines above draw the pattern).
fn regex_reason(message: &str) -> String {
    let last = message.lines().last().unwrap_or(message);
    last.trim().trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A context as the docker CLI saw it: `files` (empty) and `dockerignore` beside a
    /// Dockerfile at `dockerfile` that says `FROM deploybot-local/static:latest` and
    /// `COPY . /ctx`. `sent` is what `find /ctx` listed in the image built by
    /// `DOCKER_BUILDKIT=0 docker build` (docker CLI 28.2.2, engine 20.10.24), without the
    /// Dockerfile and `.dockerignore` themselves (the engine drops those when they are
    /// excluded). `scripts/dockerignore-cases.py` builds every case again and compares.
    struct Case {
        name: &'static str,
        dockerignore: &'static str,
        dockerfile: &'static str,
        files: &'static [&'static str],
        sent: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "a pattern is anchored at the context root",
            dockerignore: "*.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "b.txt", "d/c.log"],
            sent: &["b.txt", "d", "d/c.log"],
        },
        Case {
            name: "a double star matches at any depth",
            dockerignore: "**/*.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "b.txt", "d/c.log", "d/e/f.log"],
            sent: &["b.txt", "d", "d/e"],
        },
        Case {
            name: "a later exception takes a path back",
            dockerignore: "**/*.log\n!keep.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "keep.log", "d/keep.log"],
            sent: &["d", "keep.log"],
        },
        Case {
            name: "an exception with a double star takes back every depth",
            dockerignore: "**/*.log\n!**/keep.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "keep.log", "d/keep.log"],
            sent: &["d", "d/keep.log", "keep.log"],
        },
        Case {
            name: "the last matching line wins over an earlier exception",
            dockerignore: "!keep.log\n*.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "keep.log", "b.txt"],
            sent: &["b.txt"],
        },
        Case {
            name: "a leading slash is dropped",
            dockerignore: "/build\n",
            dockerfile: "Dockerfile",
            files: &["build/x", "src/build/y"],
            sent: &["src", "src/build", "src/build/y"],
        },
        Case {
            name: "a leading dot slash and a trailing slash are dropped",
            dockerignore: "./build/\n",
            dockerfile: "Dockerfile",
            files: &["build/x", "src/build/y"],
            sent: &["src", "src/build", "src/build/y"],
        },
        Case {
            name: "dot dot components are folded",
            dockerignore: "a/../b\n",
            dockerfile: "Dockerfile",
            files: &["a/x", "b/y"],
            sent: &["a", "a/x"],
        },
        Case {
            name: "an excluded directory is walked for an exception naming a path in it",
            dockerignore: "docs\n!docs/README.md\n",
            dockerfile: "Dockerfile",
            files: &["docs/README.md", "docs/guide.md"],
            sent: &["docs", "docs/README.md"],
        },
        Case {
            name: "an excluded directory is not walked for an exception starting with a wildcard",
            dockerignore: "docs\n!**/README.md\n",
            dockerfile: "Dockerfile",
            files: &["docs/README.md", "README.md"],
            sent: &["README.md"],
        },
        Case {
            name: "a subdirectory is walked only if an exception's text starts with its path",
            dockerignore: "*\n!src/**/*.go\n",
            dockerfile: "Dockerfile",
            files: &["src/a.go", "src/x/b.go", "src/x/c.txt", "top.go"],
            sent: &["src", "src/a.go"],
        },
        Case {
            name: "excluding what a directory holds keeps the directory",
            dockerignore: "logs/*\n",
            dockerfile: "Dockerfile",
            files: &["logs/a.log", "logs/b/c.log"],
            sent: &["logs"],
        },
        Case {
            name: "an exception below an excluded directory keeps what is below it",
            dockerignore: "a\n!a/b\n",
            dockerfile: "Dockerfile",
            files: &["a/b/c", "a/b/d/e", "a/x"],
            sent: &["a", "a/b", "a/b/c", "a/b/d", "a/b/d/e"],
        },
        Case {
            name: "a pattern after an exception excludes again inside it",
            dockerignore: "dir\n!dir/sub\ndir/sub/x\n",
            dockerfile: "Dockerfile",
            files: &["dir/a", "dir/sub/x", "dir/sub/y"],
            sent: &["dir", "dir/sub", "dir/sub/y"],
        },
        Case {
            name: "everything but one directory",
            dockerignore: "*\n!src\n",
            dockerfile: "Dockerfile",
            files: &["a", "src/b", "src/c/d"],
            sent: &["src", "src/b", "src/c", "src/c/d"],
        },
        Case {
            name: "a leading double star followed by a name is a suffix match",
            dockerignore: "**.log\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "d/b.log", "d/xlog", "c.txt"],
            sent: &["c.txt", "d", "d/xlog"],
        },
        Case {
            name: "a leading double star compares the suffix without a slash",
            dockerignore: "**foo\n",
            dockerfile: "Dockerfile",
            files: &["foo", "barfoo", "d/foo", "d/xfoo", "foo2"],
            sent: &["d", "foo2"],
        },
        Case {
            name: "a trailing double star alone is a prefix match",
            dockerignore: "foo**\n",
            dockerfile: "Dockerfile",
            files: &["foo", "foobar", "foo2/x", "bar"],
            sent: &["bar"],
        },
        Case {
            name: "a double star names a directory at any depth",
            dockerignore: "**/node_modules\n",
            dockerfile: "Dockerfile",
            files: &["node_modules/x", "a/node_modules/y", "a/b"],
            sent: &["a", "a/b"],
        },
        Case {
            name: "a double star in the middle spans any number of directories",
            dockerignore: "src/**/test\n",
            dockerfile: "Dockerfile",
            files: &["src/test/x", "src/a/b/test/y", "src/a/x"],
            sent: &["src", "src/a", "src/a/b", "src/a/x"],
        },
        Case {
            name: "a star stops at a slash",
            dockerignore: "*/tmp\n",
            dockerfile: "Dockerfile",
            files: &["a/tmp/x", "a/b/tmp/y", "tmp/z"],
            sent: &["a", "a/b", "a/b/tmp", "a/b/tmp/y", "tmp", "tmp/z"],
        },
        Case {
            name: "a question mark is one character",
            dockerignore: "?.txt\n",
            dockerfile: "Dockerfile",
            files: &["a.txt", "ab.txt", "d/a.txt"],
            sent: &["ab.txt", "d", "d/a.txt"],
        },
        Case {
            name: "a class and a negated class",
            dockerignore: "[ab].txt\n[^x-z].md\n",
            dockerfile: "Dockerfile",
            files: &["a.txt", "b.txt", "c.txt", "a.md", "y.md"],
            sent: &["c.txt", "y.md"],
        },
        Case {
            name: "an exclamation mark in a class is a character, not a negation",
            dockerignore: "[!a].txt\n",
            dockerfile: "Dockerfile",
            files: &["a.txt", "b.txt", "!.txt"],
            sent: &["b.txt"],
        },
        Case {
            name: "a backslash escapes a wildcard",
            dockerignore: "a\\*b\n",
            dockerfile: "Dockerfile",
            files: &["a*b", "axb"],
            sent: &["axb"],
        },
        Case {
            name: "only a line starting with a hash is a comment",
            dockerignore: "#a\n #b\n",
            dockerfile: "Dockerfile",
            files: &["#a", "#b", "c"],
            sent: &["#a", "c"],
        },
        Case {
            name: "lines are trimmed, also after an exclamation mark",
            dockerignore: "  *.log  \n!  keep.log\n\n",
            dockerfile: "Dockerfile",
            files: &["a.log", "keep.log"],
            sent: &["keep.log"],
        },
        Case {
            name: "a byte order mark before the first line is dropped",
            dockerignore: "\u{feff}a\n",
            dockerfile: "Dockerfile",
            files: &["a", "b"],
            sent: &["b"],
        },
        Case {
            name: "regex characters in a pattern are literal",
            dockerignore: "a.b*\n(c)+\n",
            dockerfile: "Dockerfile",
            files: &["a.bc", "axbc", "(c)+", "cc"],
            sent: &["axbc", "cc"],
        },
        Case {
            name: "a doubled ampersand in a class is two characters, not an intersection",
            dockerignore: "[a&&b].txt\n",
            dockerfile: "Dockerfile",
            files: &["a.txt", "&.txt", "c.txt"],
            sent: &["c.txt"],
        },
        Case {
            name: "an escaped angle bracket is the character, not a word boundary",
            dockerignore: "a\\<b\n",
            dockerfile: "Dockerfile",
            files: &["a<b", "ab"],
            sent: &["ab"],
        },
        Case {
            name: "an excluded directory holding the Dockerfile is walked for it",
            dockerignore: "docker\n!**/*.md\n",
            dockerfile: "docker/Dockerfile",
            files: &["docker/README.md", "docker/x", "README.md"],
            sent: &["README.md", "docker", "docker/README.md"],
        },
        Case {
            name: "excluding everything still sends the build files",
            dockerignore: "*\n",
            dockerfile: "Dockerfile",
            files: &["a", "b/c"],
            sent: &[],
        },
    ];

    /// `.dockerignore` texts the docker CLI refuses to build with, and how our error starts.
    const REFUSED: &[(&str, &str)] = &[
        ("[\n", "line 1: \"[\": syntax error in pattern"),
        ("a\n[]\n", "line 2: \"[]\": syntax error in pattern"),
        ("a\\\n", "line 1: \"a\\\": syntax error in pattern"),
        (
            "[z-a]\n",
            "line 1: \"[z-a]\": syntax error in pattern (invalid character class range",
        ),
        ("!\n", "line 1: illegal exclusion pattern \"!\""),
        ("# c\n!/\n", "line 2: illegal exclusion pattern \"!\""),
    ];

    /// What the walk of `context_tar` sends for `case`, listed as `find` lists the image.
    fn listing(case: &Case) -> Vec<String> {
        let mut ignore = DockerIgnore::parse(case.dockerignore).unwrap();
        ignore.keep(".dockerignore");
        ignore.keep(case.dockerfile);
        let mut tree: BTreeMap<String, BTreeSet<(String, bool)>> = BTreeMap::new();
        for file in case
            .files
            .iter()
            .chain([&".dockerignore", &case.dockerfile])
        {
            add(&mut tree, file);
        }
        let mut sent = vec![case.dockerfile.to_owned()];
        walk(
            &ignore,
            &tree,
            "",
            &ignore.root(),
            case.dockerfile,
            &mut sent,
        );
        let mut listed = BTreeSet::new();
        for path in &sent {
            let mut at = path.as_str();
            listed.insert(at.to_owned());
            while let Some((parent, _)) = at.rsplit_once('/') {
                listed.insert(parent.to_owned());
                at = parent;
            }
        }
        listed
            .into_iter()
            .filter(|p| p != case.dockerfile && p != ".dockerignore")
            .collect()
    }

    fn add(tree: &mut BTreeMap<String, BTreeSet<(String, bool)>>, file: &str) {
        let mut dir = String::new();
        let parts: Vec<&str> = file.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let is_dir = i + 1 < parts.len();
            tree.entry(dir.clone())
                .or_default()
                .insert(((*part).to_owned(), is_dir));
            dir = if dir.is_empty() {
                (*part).to_owned()
            } else {
                format!("{dir}/{part}")
            };
        }
    }

    /// The walk `ContextArchive::append_dir` makes, over `tree` instead of a directory.
    fn walk(
        ignore: &DockerIgnore,
        tree: &BTreeMap<String, BTreeSet<(String, bool)>>,
        at: &str,
        parent: &Matched,
        dockerfile: &str,
        sent: &mut Vec<String>,
    ) {
        for (name, is_dir) in tree.get(at).into_iter().flatten() {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}/{name}")
            };
            if path == dockerfile {
                continue;
            }
            let (verdict, matched) = ignore.entry(&path, *is_dir, parent);
            if verdict == Verdict::Send {
                sent.push(path.clone());
            }
            if *is_dir && verdict != Verdict::Leave {
                walk(ignore, tree, &path, &matched, dockerfile, sent);
            }
        }
    }

    #[test]
    fn every_case_sends_what_the_docker_cli_sent() {
        for case in CASES {
            assert_eq!(listing(case), case.sent, "{}", case.name);
        }
    }

    #[test]
    fn a_pattern_the_docker_cli_refuses_is_an_error_naming_its_line() {
        for (text, error) in REFUSED {
            let err = DockerIgnore::parse(text).unwrap_err();
            assert!(err.to_string().starts_with(error), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_dockerignore_file_is_kept_even_when_it_excludes_itself() {
        let mut ignore = DockerIgnore::parse(".dockerignore\n").unwrap();
        ignore.keep(".dockerignore");
        let (verdict, _) = ignore.entry(".dockerignore", false, &ignore.root());
        assert_eq!(verdict, Verdict::Send);
    }

    #[test]
    fn patterns_are_cleaned_like_go_filepath_clean() {
        let cases = [
            ("", "."),
            ("a/", "a"),
            ("./a//b/.", "a/b"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            ("/", "/"),
        ];
        for (path, cleaned) in cases {
            assert_eq!(clean(path), cleaned, "{path:?}");
        }
    }
}
