//! Why a command failed, from what it wrote to stderr: the tail of the stream and
//! the last recognisable error block in it (a Python traceback, an R error, a Java
//! exception with its causes, a Rust panic, a crash or kill line, an htslib/bwa
//! `[E::` error), or its last lines when none is recognised. Used for jobs (their
//! view, stream and history row) and for `run --stderr FILE` (the summary).

use std::{
    collections::VecDeque,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

/// The tail keeps the last this many lines...
pub const TAIL_LINES: usize = 50;
/// ...or fewer, so that it holds at most this many bytes.
pub const TAIL_BYTES: usize = 16 * 1024;
/// Lines shown when no error block is recognised.
const LAST_LINES: usize = 10;
/// A line longer than this is cut (a binary blob written to stderr).
const MAX_LINE_BYTES: usize = 2048;

/// The last lines of a stream: at most [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    /// Adds a line (without its newline).
    pub fn push(&mut self, line: &str) {
        let line = cut(line);
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || (self.bytes > TAIL_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    /// Adds text that may hold several lines; a last line without a newline counts.
    pub fn push_text(&mut self, text: &str) {
        for line in text.lines() {
            self.push(line);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The tail as text, one line per line.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.bytes);
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// The failure excerpt of what the tail holds; None when it is empty.
    pub fn excerpt(&self) -> Option<Excerpt> {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        excerpt(&lines)
    }
}

/// The tail of the regular file at `path` (its last 64 KiB are read: enough for
/// [`TAIL_BYTES`] of whole lines). Anything else (a terminal, a pipe, a device) has
/// no tail to read: it is opened without blocking and refused. `follow_links`: false
/// refuses a symbolic link (a path in a directory its user controls). Invalid UTF-8
/// is replaced.
pub fn tail_of_file(path: &Path, follow_links: bool) -> std::io::Result<Tail> {
    use std::os::unix::fs::OpenOptionsExt;
    const READ: u64 = 64 * 1024;
    let mut flags = libc::O_NONBLOCK;
    if !follow_links {
        flags |= libc::O_NOFOLLOW;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let len = meta.len();
    f.seek(SeekFrom::Start(len.saturating_sub(READ)))?;
    let mut buf = Vec::with_capacity(len.min(READ) as usize);
    f.take(READ).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    // Started mid-file: the first line is a piece of one; drop it.
    let text = if len > READ {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    let mut tail = Tail::default();
    tail.push_text(text);
    Ok(tail)
}

/// The line as kept: at most [`MAX_LINE_BYTES`], and without control characters
/// (tabs stay): a NUL cannot be stored in PostgreSQL text, and escape sequences
/// must not reach the terminal of whoever reads the excerpt (root's `jobs errors`
/// lists every user's jobs).
fn cut(line: &str) -> String {
    let mut end = line.len().min(MAX_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = line[..end]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if end < line.len() {
        out.push('…');
    }
    out
}

/// What kind of error block an excerpt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExcerptKind {
    PythonTraceback,
    RError,
    JavaException,
    RustPanic,
    /// A crash or kill the shell or the C library reported ("Segmentation fault",
    /// "Killed", "Aborted", "Bus error").
    Signal,
    /// htslib (samtools, bcftools) and bwa errors: `[E::func] message`.
    HtslibError,
    /// Nothing recognised: the last lines.
    LastLines,
}

impl ExcerptKind {
    /// Its name in the JSON and the history (`python_traceback`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExcerptKind::PythonTraceback => "python_traceback",
            ExcerptKind::RError => "r_error",
            ExcerptKind::JavaException => "java_exception",
            ExcerptKind::RustPanic => "rust_panic",
            ExcerptKind::Signal => "signal",
            ExcerptKind::HtslibError => "htslib_error",
            ExcerptKind::LastLines => "last_lines",
        }
    }
}

/// The last recognisable error block of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    pub kind: ExcerptKind,
    /// The block's lines, each ending with a newline.
    pub text: String,
}

/// A recognised block: where it starts and ends (exclusive) in the lines.
type Block = (ExcerptKind, usize, usize);

/// The last recognisable error block of `lines`, else the last non-blank lines;
/// None when there is nothing but blank lines.
pub fn excerpt(lines: &[&str]) -> Option<Excerpt> {
    let blocks = [
        python(lines),
        r_error(lines),
        java(lines),
        rust_panic(lines),
        signal(lines),
        htslib(lines),
    ];
    // The last one to start, on a tie the longer; but a block inside another (a
    // traceback whose exception message says "Aborted") is that other's.
    let found: Vec<Block> = blocks.into_iter().flatten().collect();
    let best = found
        .iter()
        .copied()
        .max_by_key(|&(_, start, end)| (start, end))
        .map(|b| {
            found
                .iter()
                .copied()
                .filter(|&(_, s, e)| s <= b.1 && e >= b.2)
                .min_by_key(|&(_, s, _)| s)
                .unwrap_or(b)
        });
    let (kind, start, end) = match best {
        Some(b) => b,
        None => {
            let end = lines.iter().rposition(|l| !l.trim().is_empty())? + 1;
            (ExcerptKind::LastLines, end.saturating_sub(LAST_LINES), end)
        }
    };
    let mut text = String::new();
    for l in &lines[start..end] {
        text.push_str(l);
        text.push('\n');
    }
    Some(Excerpt { kind, text })
}

fn indented(l: &str) -> bool {
    l.starts_with(' ') || l.starts_with('\t')
}

/// `Traceback (most recent call last):`, its indented frames, and the exception
/// line after them. Chained tracebacks ("During handling of the above exception")
/// are one block from the first.
fn python(lines: &[&str]) -> Option<Block> {
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))?;
    let mut end = last + 1;
    while end < lines.len() && indented(lines[end]) {
        end += 1;
    }
    if end < lines.len() {
        end += 1; // the exception line, e.g. "ValueError: bad input"
    }
    // Earlier tracebacks chained to this one belong to the block.
    let mut start = last;
    loop {
        let before = lines[..start].iter().rposition(|l| !l.trim().is_empty());
        let Some(b) = before else { break };
        let chained = lines[b].starts_with("During handling of the above exception")
            || lines[b].starts_with("The above exception was the direct cause");
        if !chained {
            break;
        }
        match lines[..b]
            .iter()
            .rposition(|l| l.starts_with("Traceback (most recent call last):"))
        {
            Some(t) => start = t,
            None => break,
        }
    }
    Some((ExcerptKind::PythonTraceback, start, end))
}

/// `Error in f(x) : message`, or `Error: message` when R's `Execution halted`
/// follows (many other tools print `Error: ...`), with the lines R prints after it
/// (`Calls: ...`, the call stack) up to `Execution halted`.
fn r_error(lines: &[&str]) -> Option<Block> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Error in ") || l.starts_with("Error: "))?;
    let mut end = start + 1;
    let mut halted = false;
    while end < lines.len() && !lines[end].trim().is_empty() {
        halted = lines[end].starts_with("Execution halted");
        end += 1;
        if halted {
            break;
        }
    }
    if lines[start].starts_with("Error: ") && !halted {
        return None;
    }
    Some((ExcerptKind::RError, start, end))
}

/// A Java exception line (`Exception in thread "main" java.lang.X: msg` or
/// `java.io.IOException: msg`), its `at` frames and every `Caused by:` with theirs.
fn java(lines: &[&str]) -> Option<Block> {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        indented(l) && (t.starts_with("at ") || (t.starts_with("...") && t.ends_with(" more")))
    };
    // The last frame line; the block is the run of exception, frame and cause lines
    // that ends there.
    let last_frame = lines.iter().rposition(|l| is_frame(l))?;
    let mut start = last_frame;
    while start > 0 {
        let prev = lines[start - 1];
        if is_frame(prev) || prev.starts_with("Caused by: ") {
            start -= 1;
        } else if java_exception_line(prev) {
            start -= 1;
            break;
        } else {
            break;
        }
    }
    java_exception_line(lines[start]).then_some((ExcerptKind::JavaException, start, last_frame + 1))
}

fn java_exception_line(l: &str) -> bool {
    let l = l
        .strip_prefix("Exception in thread \"")
        .and_then(|r| r.split_once("\" ").map(|(_, rest)| rest))
        .unwrap_or(l);
    let name = l.split(':').next().unwrap_or("");
    !name.is_empty()
        && name.contains('.')
        && !name.contains(' ')
        && (name.ends_with("Exception") || name.ends_with("Error"))
}

/// `thread 'main' panicked at src/main.rs:3:5:` with its message and notes.
fn rust_panic(lines: &[&str]) -> Option<Block> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("thread '") && l.contains("' panicked at "))?;
    let mut end = start + 1;
    while end < lines.len() && !lines[end].trim().is_empty() && end - start < 20 {
        end += 1;
    }
    Some((ExcerptKind::RustPanic, start, end))
}

/// A crash or kill reported by the shell ("... Segmentation fault (core dumped)",
/// "Killed") or by the C library ("Aborted").
fn signal(lines: &[&str]) -> Option<Block> {
    const WORDS: [&str; 4] = ["Segmentation fault", "Killed", "Aborted", "Bus error"];
    let start = lines.iter().rposition(|l| {
        let t = l.trim();
        WORDS.iter().any(|w| {
            t == *w
                || t.starts_with(&format!("{w} "))
                || t.contains(&format!(" {w} "))
                || t.ends_with(&format!(" {w}"))
                || t.contains(&format!("{w} (core dumped)"))
        })
    })?;
    Some((ExcerptKind::Signal, start, start + 1))
}

/// The last run of `[E::...]` lines (htslib, bwa), with the `[W::` lines in it.
fn htslib(lines: &[&str]) -> Option<Block> {
    let last = lines.iter().rposition(|l| l.starts_with("[E::"))?;
    let mut start = last;
    while start > 0
        && (lines[start - 1].starts_with("[E::") || lines[start - 1].starts_with("[W::"))
    {
        start -= 1;
    }
    Some((ExcerptKind::HtslibError, start, last + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str) -> Excerpt {
        let lines: Vec<&str> = text.lines().collect();
        excerpt(&lines).expect("an excerpt")
    }

    #[test]
    fn python_traceback_with_its_exception_line() {
        let e = ex("loading data\n\
                    Traceback (most recent call last):\n  \
                    File \"x.py\", line 3, in <module>\n    \
                    main()\n  \
                    File \"x.py\", line 2, in main\n    \
                    raise ValueError('bad input')\n\
                    ValueError: bad input\n");
        assert_eq!(e.kind, ExcerptKind::PythonTraceback);
        assert!(e.text.starts_with("Traceback (most recent call last):\n"));
        assert!(e.text.ends_with("ValueError: bad input\n"));
        assert!(!e.text.contains("loading data"));
    }

    #[test]
    fn chained_python_tracebacks_are_one_block() {
        let e = ex("Traceback (most recent call last):\n  File \"a\", line 1\n\
                    KeyError: 'x'\n\n\
                    During handling of the above exception, another exception occurred:\n\n\
                    Traceback (most recent call last):\n  File \"a\", line 3\n\
                    RuntimeError: lookup failed\n");
        assert!(e.text.starts_with("Traceback"));
        assert!(e.text.contains("KeyError: 'x'"));
        assert!(e.text.ends_with("RuntimeError: lookup failed\n"));
    }

    #[test]
    fn r_error_up_to_execution_halted() {
        let e = ex("[1] 42\n\
                    Error in log(-1:\"a\") : non-numeric argument to mathematical function\n\
                    Calls: f -> log\n\
                    Execution halted\n");
        assert_eq!(e.kind, ExcerptKind::RError);
        assert_eq!(
            e.text,
            "Error in log(-1:\"a\") : non-numeric argument to mathematical function\n\
             Calls: f -> log\nExecution halted\n"
        );
    }

    #[test]
    fn java_exception_with_its_causes() {
        let e = ex("starting\n\
                    Exception in thread \"main\" java.lang.RuntimeException: wrapper\n\
                    \tat Main.run(Main.java:10)\n\
                    \tat Main.main(Main.java:3)\n\
                    Caused by: java.io.FileNotFoundException: in.bam (No such file or directory)\n\
                    \tat java.io.FileInputStream.open0(Native Method)\n\
                    \t... 2 more\n");
        assert_eq!(e.kind, ExcerptKind::JavaException);
        assert!(e
            .text
            .starts_with("Exception in thread \"main\" java.lang.RuntimeException"));
        assert!(e.text.contains("Caused by: java.io.FileNotFoundException"));
        assert!(e.text.ends_with("\t... 2 more\n"));
    }

    #[test]
    fn rust_panic_signal_and_htslib() {
        let e = ex("thread 'main' panicked at src/main.rs:3:5:\nboom\n\
                    note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        assert_eq!(e.kind, ExcerptKind::RustPanic);
        assert!(e.text.contains("boom"));
        let e = ex("working\nsh: line 1:  4242 Segmentation fault      (core dumped) ./tool\n");
        assert_eq!(e.kind, ExcerptKind::Signal);
        assert_eq!(
            e.text,
            "sh: line 1:  4242 Segmentation fault      (core dumped) ./tool\n"
        );
        let e = ex("Killed\n");
        assert_eq!(e.kind, ExcerptKind::Signal);
        let e = ex("[M::bwa_idx_load_from_disk] read 0 ALT contigs\n\
                    [W::hts_idx_load3] The index file is older than the data file\n\
                    [E::hts_open_format] Failed to open file \"x.bam\" : No such file or directory\n\
                    samtools view: failed to open \"x.bam\" for reading: No such file or directory\n");
        assert_eq!(e.kind, ExcerptKind::HtslibError);
        assert!(e.text.starts_with("[W::hts_idx_load3]"));
        assert!(
            e.text.ends_with("No such file or directory\"\n")
                || e.text.contains("[E::hts_open_format]")
        );
    }

    #[test]
    fn the_last_block_wins_and_unknown_text_gives_the_last_lines() {
        let e = ex("Traceback (most recent call last):\n  File \"a\"\nOSError: x\nKilled\n");
        assert_eq!(e.kind, ExcerptKind::Signal);
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let e = ex(&text);
        assert_eq!(e.kind, ExcerptKind::LastLines);
        assert!(e.text.starts_with("line 21\n") && e.text.ends_with("line 30\n"));
        assert_eq!(excerpt(&["", "  "]), None);
        // Words inside other words are not crashes.
        assert_eq!(ex("Killedness\n").kind, ExcerptKind::LastLines);
        // A block inside a larger one is the larger one's.
        let e =
            ex("Traceback (most recent call last):\n  File \"a\"\nRuntimeError: worker Aborted\n");
        assert_eq!(e.kind, ExcerptKind::PythonTraceback);
        // `Error: ` of other tools is not R's.
        assert_eq!(ex("Error: unknown flag --x\n").kind, ExcerptKind::LastLines);
    }

    #[test]
    fn control_characters_are_replaced_and_only_regular_files_are_read() {
        let mut t = Tail::default();
        t.push("a\0b\x1b]52;c;ZXZpbA==\x07\tend");
        assert_eq!(t.text(), "a\u{fffd}b\u{fffd}]52;c;ZXZpbA==\u{fffd}\tend\n");
        assert!(tail_of_file(Path::new("/dev/null"), true).is_err());
        let dir = std::env::temp_dir().join(format!("denet-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("err");
        std::fs::write(&file, "x\nlast\n").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(tail_of_file(&link, true).unwrap().text(), "x\nlast\n");
        assert!(tail_of_file(&link, false).is_err(), "a link is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tail_keeps_the_last_lines_within_its_byte_budget() {
        let mut t = Tail::default();
        for i in 0..100 {
            t.push(&format!("line {i}"));
        }
        assert_eq!(t.text().lines().count(), TAIL_LINES);
        assert!(t.text().starts_with("line 50\n"));
        let mut t = Tail::default();
        for _ in 0..20 {
            t.push(&"x".repeat(1500));
        }
        assert!(t.text().len() <= TAIL_BYTES);
        let mut t = Tail::default();
        t.push(&"y".repeat(100_000));
        assert!(t.text().len() < MAX_LINE_BYTES + 8);
    }
}
