//! What every executor does with a step's commands and output: one shell script that echoes
//! each command before it runs, and output split into bounded log lines.

use super::LogSink;

/// `sh -e` runs the commands in order and stops at the first failure; each is echoed first,
/// so the log shows which one failed.
pub(super) fn script(commands: &[String]) -> String {
    let mut script = String::from("set -e\n");
    for command in commands {
        let quoted = command.replace('\'', r"'\''");
        script.push_str(&format!("printf '%s\\n' '$ {quoted}'\n{command}\n"));
    }
    script
}

/// The longest line kept; the rest of a longer one is dropped and the cut is marked.
const MAX_LINE: usize = 16 * 1024;

/// Splits a byte stream into lines for the log; a partial last line is kept until more comes.
/// Each new chunk is scanned once, and a line never grows past [`MAX_LINE`]: output without
/// newlines costs neither memory nor time beyond that.
#[derive(Default)]
pub(super) struct LineSplitter {
    pending: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    pub(super) fn push(&mut self, mut bytes: &[u8], log: &dyn LogSink) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (part, rest) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..]),
                None => (bytes, &[][..]),
            };
            let room = MAX_LINE.saturating_sub(self.pending.len());
            self.pending
                .extend_from_slice(&part[..part.len().min(room)]);
            self.cut |= part.len() > room;
            if newline.is_some() {
                self.emit(log);
            }
            bytes = rest;
        }
    }

    fn emit(&mut self, log: &dyn LogSink) {
        let text = String::from_utf8_lossy(&self.pending);
        let text = text.trim_end_matches(['\n', '\r']);
        if self.cut {
            log.line(&format!("{text} [deploybot: line cut at {MAX_LINE} bytes]"));
        } else {
            log.line(text);
        }
        self.pending.clear();
        self.cut = false;
    }

    pub(super) fn finish(&mut self, log: &dyn LogSink) {
        if !self.pending.is_empty() || self.cut {
            self.emit(log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_script_echoes_each_command_and_stops_at_the_first_failure() {
        let script = script(&["go vet ./...".into(), "echo 'it''s'".into()]);
        assert!(script.starts_with("set -e\n"));
        assert!(script.contains("printf '%s\\n' '$ go vet ./...'\ngo vet ./...\n"));
    }

    struct Lines(std::sync::Mutex<Vec<String>>);
    impl LogSink for Lines {
        fn line(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn output_is_split_into_lines_across_chunks() {
        let lines = Lines(Default::default());
        let mut splitter = LineSplitter::default();
        splitter.push(b"one\ntw", &lines);
        splitter.push(b"o\r\nthree", &lines);
        splitter.finish(&lines);
        assert_eq!(*lines.0.lock().unwrap(), ["one", "two", "three"]);
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_limit_and_marked() {
        let lines = Lines(Default::default());
        let mut splitter = LineSplitter::default();
        for _ in 0..100 {
            splitter.push(&[b'x'; 4096], &lines);
        }
        splitter.push(b"\nnext\n", &lines);
        let lines = lines.0.lock().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].len(),
            MAX_LINE + " [deploybot: line cut at 16384 bytes]".len()
        );
        assert!(lines[0].ends_with("[deploybot: line cut at 16384 bytes]"));
        assert_eq!(lines[1], "next");
    }
}
