//! What deploybot needs to know of a service's Dockerfile before it is built: the images it
//! builds `FROM` (to pin a build's inputs) and whether it runs commands (`RUN`, or `ONBUILD`
//! triggers for images built from it), which only projects allowed to do so may. No I/O.
//!
//! Only the instruction structure is read: `#` comment lines, `\` line continuations (or the
//! character an `# escape=` parser directive names), the keyword and its arguments.

/// One instruction: its keyword (upper case), its arguments and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub keyword: String,
    pub arguments: String,
}

/// A Dockerfile split into instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Dockerfile {
        let escape = escape_character(text);
        let mut instructions = Vec::new();
        let mut current: Option<(usize, String)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            // Comment lines and empty lines are dropped, inside a continuation too.
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (body, continues) = match line.strip_suffix(escape) {
                Some(body) => (body, true),
                None => (line, false),
            };
            let (start, mut text) = current.take().unwrap_or((index + 1, String::new()));
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(body.trim());
            if continues {
                current = Some((start, text));
            } else {
                instructions.extend(instruction(start, &text));
            }
        }
        if let Some((start, text)) = current {
            instructions.extend(instruction(start, &text));
        }
        Dockerfile { instructions }
    }

    /// The first instruction that runs commands while the image is built, or when an image
    /// is built `FROM` this one.
    pub fn first_command(&self) -> Option<&Instruction> {
        self.instructions
            .iter()
            .find(|i| i.keyword == "RUN" || i.keyword == "ONBUILD")
    }

    /// The images built `FROM`, with `ARG` defaults substituted; earlier stages (`AS name`)
    /// and `scratch` are not images. None when a reference cannot be resolved.
    pub fn base_images(&self) -> Option<Vec<String>> {
        let mut args: Vec<(String, String)> = Vec::new();
        let mut stages: Vec<String> = Vec::new();
        let mut images = Vec::new();
        for instruction in &self.instructions {
            let mut words = instruction.arguments.split_whitespace();
            match instruction.keyword.as_str() {
                "ARG" => {
                    if let Some((name, value)) = words.next().and_then(|w| w.split_once('=')) {
                        args.push((name.to_owned(), value.trim_matches('"').to_owned()));
                    }
                }
                "FROM" => {
                    let mut reference = words.find(|w| !w.starts_with("--"))?.to_owned();
                    for (name, value) in &args {
                        reference = reference
                            .replace(&format!("${{{name}}}"), value)
                            .replace(&format!("${name}"), value);
                    }
                    if reference.contains('$') {
                        return None;
                    }
                    let is_stage = stages.contains(&reference.to_ascii_lowercase());
                    if reference != "scratch" && !is_stage {
                        images.push(reference);
                    }
                    let rest: Vec<&str> = words.collect();
                    if let [keyword, alias] = rest.as_slice() {
                        if keyword.eq_ignore_ascii_case("as") {
                            stages.push(alias.to_ascii_lowercase());
                        }
                    }
                }
                _ => {}
            }
        }
        Some(images)
    }
}

fn instruction(line: usize, text: &str) -> Option<Instruction> {
    let text = text.trim();
    let (keyword, arguments) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    (!keyword.is_empty()).then(|| Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        arguments: arguments.trim().to_owned(),
    })
}

/// The line-continuation character: `\`, unless a leading `# escape=` directive says otherwise.
fn escape_character(text: &str) -> char {
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        if let Some((key, value)) = directive.split_once('=') {
            if key.trim().eq_ignore_ascii_case("escape") {
                return value.trim().chars().next().unwrap_or('\\');
            }
        }
    }
    '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_resolve_arg_defaults_and_skip_stages_and_scratch() {
        let dockerfile = "ARG BASE=deploybot-local/static:latest\nFROM golang:1.19 AS build\nRUN go build\nFROM scratch\nFROM ${BASE}\nCOPY --from=build /app /app\nFROM build\n";
        assert_eq!(
            Dockerfile::parse(dockerfile).base_images().unwrap(),
            ["golang:1.19", "deploybot-local/static:latest"]
        );
    }

    #[test]
    fn an_unresolvable_from_gives_no_images() {
        assert_eq!(Dockerfile::parse("FROM ${UNSET}\n").base_images(), None);
    }

    #[test]
    fn a_run_is_found_whatever_its_case_and_continuation() {
        let text = "# a comment\nFROM scratch\nCOPY a \\\n  b\nrun echo \\\n  hi\n";
        let run = Dockerfile::parse(text).first_command().cloned().unwrap();
        assert_eq!(run.line, 5);
        assert_eq!(run.keyword, "RUN");
        assert_eq!(run.arguments, "echo hi");
    }

    #[test]
    fn a_run_hidden_in_a_continued_comment_free_copy_is_not_a_run() {
        let text = "FROM scratch\nCOPY run \\\n  /run\n";
        assert_eq!(Dockerfile::parse(text).first_command(), None);
    }

    #[test]
    fn the_escape_directive_changes_the_continuation_character() {
        let text = "# escape=`\nFROM scratch\nCOPY a `\n RUN\n";
        let parsed = Dockerfile::parse(text);
        assert_eq!(parsed.instructions.len(), 2);
        assert_eq!(parsed.first_command(), None);
    }

    #[test]
    fn onbuild_counts_as_running_commands() {
        let text = "FROM scratch\nONBUILD RUN make\n";
        assert_eq!(
            Dockerfile::parse(text).first_command().unwrap().keyword,
            "ONBUILD"
        );
    }
}
