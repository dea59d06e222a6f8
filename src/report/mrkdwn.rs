//! Values from outside (ref names, pushers, service names and image references from the
//! project, log tails, a cluster's reasons) made safe and bounded for the `text` of a
//! Slack-compatible message.
//!
//! Slack reads `&`, `<` and `>` as control characters: `<!channel>` notifies everyone,
//! `<https://evil|release notes>` is a link whose label lies. Its "Escaping text" rule is to
//! send exactly these three as `&amp;`, `&lt;` and `&gt;` (and nothing else as an entity:
//! only these three are decoded). mrkdwn has no escape for backticks, so a value must not be
//! able to write three in a row (which opens or closes a code block, letting a log tail out of
//! its block or swallowing the message after it): a zero-width space goes between two
//! backticks, which still read as backticks. A value on a line of its own (a pusher, a ref)
//! cannot break the line, so it cannot forge a line of the message. Every piece is cut to a
//! number of characters counted after escaping, never inside an entity, the cut marked `…`.

/// Placed between two backticks so that no run of three can form.
const BACKTICK_BREAK: char = '\u{200B}';

/// Marks a cut, and in a code block the earlier lines left out.
const CUT: char = '…';

/// `value` on one line: escaped, control characters (line breaks among them) as spaces, at
/// most `limit` characters.
pub fn inline(value: &str, limit: usize) -> String {
    clip(
        value.chars().map(|c| if c.is_control() { ' ' } else { c }),
        limit,
    )
}

/// The end of `text` as a ``` block of at most `limit` characters: the last lines that fit,
/// each escaped and cut at `line_limit` characters (a log's newest lines say why it failed).
/// The block closes whatever the text holds.
pub fn code_block(text: &str, limit: usize, line_limit: usize) -> String {
    const FENCES: usize = "```\n\n```".len();
    let budget = limit.saturating_sub(FENCES);
    let mut kept = Vec::new();
    let mut used = 0;
    let mut lines = text.trim_end().lines().rev().peekable();
    while let Some(line) = lines.next() {
        let line = in_block(line, line_limit);
        // A line's break, and room for the `…` line if earlier lines are left out.
        let needs = line.chars().count() + 1 + if lines.peek().is_some() { 2 } else { 0 };
        if used + needs > budget {
            kept.push(CUT.to_string());
            break;
        }
        used += line.chars().count() + 1;
        kept.push(line);
    }
    kept.reverse();
    format!("```\n{}\n```", kept.join("\n"))
}

/// One line of a code block: tabs kept, other control characters as spaces.
fn in_block(line: &str, limit: usize) -> String {
    let chars = line
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c });
    clip(chars, limit)
}

/// Escapes `chars` until the next one would not fit in `limit` with the cut marker.
fn clip(chars: impl Iterator<Item = char>, limit: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut previous = None;
    let mut chars = chars.peekable();
    while let Some(c) = chars.next() {
        let piece = escaped(c, previous);
        let room_after = if chars.peek().is_some() { 1 } else { 0 };
        if count + piece.chars().count() + room_after > limit {
            if count < limit {
                out.push(CUT);
            }
            return out;
        }
        count += piece.chars().count();
        out.push_str(&piece);
        previous = Some(c);
    }
    out
}

/// `c` as Slack must receive it, given the character before it.
fn escaped(c: char, previous: Option<char>) -> String {
    match c {
        '&' => "&amp;".to_owned(),
        '<' => "&lt;".to_owned(),
        '>' => "&gt;".to_owned(),
        '`' if previous == Some('`') => format!("{BACKTICK_BREAK}`"),
        c => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_control_characters_become_entities_and_nothing_else_does() {
        assert_eq!(
            inline("<!channel> & <https://evil|click> \"é'", 100),
            "&lt;!channel&gt; &amp; &lt;https://evil|click&gt; \"é'"
        );
    }

    #[test]
    fn a_value_cannot_write_three_backticks_in_a_row() {
        let out = inline("a```b``c`d", 100);
        assert!(!out.contains("``"), "{out:?}");
        assert_eq!(out.replace(BACKTICK_BREAK, ""), "a```b``c`d");
    }

    #[test]
    fn an_inline_value_cannot_break_its_line() {
        assert_eq!(
            inline("alice\n✅ all good\r\tx", 100),
            "alice ✅ all good  x"
        );
    }

    #[test]
    fn an_inline_value_is_cut_at_its_limit_counted_after_escaping_never_inside_an_entity() {
        let out = inline(&"<".repeat(100), 10);
        assert_eq!(out, "&lt;&lt;…");
        assert!(inline(&"x".repeat(5_000_000), 50).chars().count() <= 50);
        assert_eq!(inline("exactly10!", 10), "exactly10!");
    }

    #[test]
    fn a_code_block_keeps_the_last_lines_that_fit_and_marks_the_ones_left_out() {
        let text: String = (1..=1000).map(|i| format!("line {i}\n")).collect();
        let block = code_block(&text, 200, 80);
        assert!(block.chars().count() <= 200, "{block}");
        assert!(block.starts_with("```\n…\n"), "{block}");
        assert!(block.ends_with("line 1000\n```"), "{block}");
    }

    #[test]
    fn a_code_block_cannot_be_closed_from_inside() {
        let block = code_block("ok\n```\n<!channel> free\n```", 200, 80);
        let inside = &block[4..block.len() - 4];
        assert!(!inside.contains("```"), "{block}");
        assert!(inside.contains("&lt;!channel&gt;"), "{block}");
    }

    #[test]
    fn a_five_megabyte_line_is_cut_to_its_line_limit() {
        let block = code_block(&"x".repeat(5 << 20), 2000, 120);
        let line = block.lines().nth(1).unwrap();
        assert_eq!(line.chars().count(), 120);
        assert!(line.ends_with('…'));
    }
}
