//! Streaming JSONL reader: one line in memory at a time, typed records out, clear
//! errors with line numbers for anything that is not a trace.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::records::{
    EventRecord, FileRecord, Header, Kind, Process, Record, Sample, Summary,
    SUPPORTED_SCHEMA_VERSION,
};

/// A line longer than this is not a trace line (guards memory against binary input
/// without newlines). Real lines are well under 100 KiB.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// At most this many distinct warnings are reported; then one "suppressed" note.
const MAX_WARNINGS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the trace: {0}")]
    Io(#[from] io::Error),
    #[error("the file is empty: a trace starts with a header record")]
    Empty,
    #[error("line {line}: not JSON ({reason}); a trace is the JSON Lines file written by `denet-agent run`")]
    NotJson { line: u64, reason: String },
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    #[error("line {line}: schema_version {found} is newer than this denet-agent reads (up to {SUPPORTED_SCHEMA_VERSION}); read it with a newer denet-agent")]
    NewerSchema { line: u64, found: u64 },
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes: not a denet-agent trace")]
    LineTooLong { line: u64 },
}

pub type WarnFn = Box<dyn FnMut(&str)>;

pub struct TraceReader<R> {
    input: R,
    buf: Vec<u8>,
    line: u64,
    header: Header,
    summary_seen: bool,
    warned: HashSet<String>,
    warnings: Vec<String>,
    on_warning: WarnFn,
}

impl TraceReader<Box<dyn BufRead>> {
    /// Opens a trace file; `-` reads stdin.
    pub fn open(path: &Path, on_warning: WarnFn) -> Result<Self, TraceError> {
        let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(BufReader::with_capacity(256 * 1024, io::stdin()))
        } else {
            Box::new(BufReader::with_capacity(256 * 1024, File::open(path)?))
        };
        Self::new(input, on_warning)
    }
}

/// Only the `kind` of a record, for lines that do not start with it.
#[derive(Deserialize)]
struct KindOnly {
    kind: Option<serde_json::Value>,
}

impl<R: BufRead> TraceReader<R> {
    /// Reads up to and including the header; fails when the input is not a trace.
    pub fn new(input: R, on_warning: WarnFn) -> Result<Self, TraceError> {
        let mut r = TraceReader {
            input,
            buf: Vec::with_capacity(4096),
            line: 0,
            header: Header::default(),
            summary_seen: false,
            warned: HashSet::new(),
            warnings: Vec::new(),
            on_warning,
        };
        let terminated = loop {
            match r.read_line()? {
                None => return Err(TraceError::Empty),
                Some(t) if !is_blank(&r.buf) => break t,
                Some(_) => {}
            }
        };
        let line = r.line;
        let buf = std::mem::take(&mut r.buf);
        let kind = kind_of(&buf).map_err(|e| truncation_aware(e, terminated, "header", line))?;
        if kind.as_deref() != Some(Header::KIND) {
            return Err(TraceError::Invalid {
                line,
                reason: format!(
                    "the first record must be the header (kind \"header\"), found {}; is this a denet-agent trace?",
                    kind.map_or("no kind".to_string(), |k| format!("kind {k:?}"))
                ),
            });
        }
        let header: Header = r
            .parse_typed(&buf, "header")
            .map_err(|e| truncation_aware(e, terminated, "header", line))?;
        r.buf = buf;
        match header.schema_version {
            None => {
                return Err(TraceError::Invalid {
                    line,
                    reason: "the header has no schema_version".into(),
                })
            }
            Some(v) if v > SUPPORTED_SCHEMA_VERSION => {
                return Err(TraceError::NewerSchema { line, found: v })
            }
            Some(_) => {}
        }
        r.header = header;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Lines read so far (the line number of the last record returned).
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn summary_seen(&self) -> bool {
        self.summary_seen
    }

    /// Warnings emitted so far (each also went to the callback).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The next record, or None at the end of the trace.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            let Some(terminated) = self.read_line()? else {
                return Ok(None);
            };
            if is_blank(&self.buf) {
                continue;
            }
            let buf = std::mem::take(&mut self.buf);
            let parsed = self.parse_record(&buf);
            self.buf = buf;
            match parsed {
                Ok(Some(rec)) => return Ok(Some(rec)),
                Ok(None) => continue,
                Err(e) if !terminated && is_eof_error(&e) => {
                    let line = self.line;
                    self.warn(
                        "truncated".into(),
                        format!(
                            "line {line}: incomplete last line skipped (the trace was cut off while being written, e.g. the agent was killed)"
                        ),
                    );
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn parse_record(&mut self, buf: &[u8]) -> Result<Option<Record>, TraceError> {
        let line = self.line;
        let Some(kind) = kind_of(buf).map_err(|e| with_line(e, line))? else {
            return Err(TraceError::Invalid {
                line,
                reason: "record has no \"kind\" (a string)".into(),
            });
        };
        if self.summary_seen {
            self.warn(
                "after-summary".into(),
                format!("line {line}: records after the summary (they are read too)"),
            );
        }
        let rec = match kind.as_str() {
            Process::KIND => {
                let p: Process = self.parse_typed(buf, Process::KIND)?;
                if p.pid.is_none() {
                    return Err(TraceError::Invalid {
                        line,
                        reason: "process record without a pid".into(),
                    });
                }
                Record::Process(Box::new(p))
            }
            Sample::KIND => {
                let s: Sample = self.parse_typed(buf, Sample::KIND)?;
                if s.ts_boot_ns.is_none() {
                    return Err(TraceError::Invalid {
                        line,
                        reason: "sample record without ts_boot_ns".into(),
                    });
                }
                Record::Sample(s)
            }
            Summary::KIND => {
                self.summary_seen = true;
                Record::Summary(Box::new(self.parse_typed::<Summary>(buf, Summary::KIND)?))
            }
            FileRecord::KIND => Record::File(self.parse_typed::<FileRecord>(buf, FileRecord::KIND)?),
            EventRecord::KIND => {
                Record::Event(self.parse_typed::<EventRecord>(buf, EventRecord::KIND)?)
            }
            Header::KIND => {
                return Err(TraceError::Invalid {
                    line,
                    reason: "a second header: this file holds more than one trace (concatenated?); split it before this line".into(),
                })
            }
            other => {
                self.warn(
                    format!("kind:{other}"),
                    format!(
                        "line {line}: unknown record kind {other:?} skipped (written by a newer denet-agent?); later ones are skipped silently"
                    ),
                );
                return Ok(None);
            }
        };
        Ok(Some(rec))
    }

    /// Deserializes a typed record, warning once per unknown field name.
    fn parse_typed<T: DeserializeOwned>(
        &mut self,
        buf: &[u8],
        kind: &str,
    ) -> Result<T, TraceError> {
        let line = self.line;
        let mut unknown: Vec<String> = Vec::new();
        let mut de = serde_json::Deserializer::from_slice(buf);
        let value: T = serde_ignored::deserialize(&mut de, |path| {
            let p = field_path(&path.to_string());
            if p != "kind" {
                unknown.push(p);
            }
        })
        .map_err(|e| json_error(line, kind, &e))?;
        de.end().map_err(|e| json_error(line, kind, &e))?;
        for f in unknown {
            self.warn(
                format!("field:{kind}.{f}"),
                format!("line {line}: unknown field `{f}` in {kind} records skipped (written by a newer denet-agent?)"),
            );
        }
        Ok(value)
    }

    fn warn(&mut self, key: String, msg: String) {
        if self.warned.len() > MAX_WARNINGS || !self.warned.insert(key) {
            return;
        }
        let msg = if self.warned.len() > MAX_WARNINGS {
            "further warnings suppressed".to_string()
        } else {
            msg
        };
        (self.on_warning)(&msg);
        self.warnings.push(msg);
    }

    /// Reads one line into `buf` without its newline. Some(true): a complete line;
    /// Some(false): the last line has no newline; None: end of input.
    fn read_line(&mut self) -> Result<Option<bool>, TraceError> {
        self.buf.clear();
        loop {
            let avail = match self.input.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if avail.is_empty() {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.line += 1;
                return Ok(Some(false));
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            self.buf.extend_from_slice(&avail[..take]);
            self.input.consume(if done { take + 1 } else { take });
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(TraceError::LineTooLong {
                    line: self.line + 1,
                });
            }
            if done {
                self.line += 1;
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                return Ok(Some(true));
            }
        }
    }
}

fn is_blank(buf: &[u8]) -> bool {
    buf.iter().all(u8::is_ascii_whitespace)
}

/// `procs.3.foo` -> `procs[].foo`: one warning per field, not per array element.
fn field_path(p: &str) -> String {
    p.split('.')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "[]"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
        .replace(".[]", "[]")
}

/// The record kind: fast path for the agent's own layout (`{"kind":"..."` first),
/// else a full parse that keeps only `kind`.
fn kind_of(buf: &[u8]) -> Result<Option<String>, TraceError> {
    const PREFIX: &[u8] = b"{\"kind\":\"";
    if let Some(rest) = buf.strip_prefix(PREFIX) {
        if let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
            if rest[end] == b'"' {
                if let Ok(k) = std::str::from_utf8(&rest[..end]) {
                    return Ok(Some(k.to_string()));
                }
            }
        }
    }
    // The caller fills in the line number (`with_line`).
    let k: KindOnly = serde_json::from_slice(buf).map_err(|e| json_error(0, "", &e))?;
    Ok(match k.kind {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    })
}

fn json_error(line: u64, kind: &str, e: &serde_json::Error) -> TraceError {
    let text = e.to_string();
    // serde_json appends " at line 1 column N": the line is ours, the column is useful.
    let msg = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    let reason = format!("{msg} at column {}", e.column());
    match e.classify() {
        serde_json::error::Category::Data => TraceError::Invalid {
            line,
            reason: format!("bad {kind} record: {reason}"),
        },
        _ => TraceError::NotJson { line, reason },
    }
}

fn is_eof_error(e: &TraceError) -> bool {
    matches!(e, TraceError::NotJson { reason, .. } if reason.starts_with("EOF while parsing"))
}

/// A header that is itself cut off is still an error, but says so.
fn truncation_aware(e: TraceError, terminated: bool, what: &str, line: u64) -> TraceError {
    let e = with_line(e, line);
    if !terminated && is_eof_error(&e) {
        return TraceError::Invalid {
            line,
            reason: format!(
                "the {what} line is incomplete: the trace was cut off while being written"
            ),
        };
    }
    e
}

fn with_line(e: TraceError, line: u64) -> TraceError {
    match e {
        TraceError::NotJson { line: 0, reason } => TraceError::NotJson { line, reason },
        TraceError::Invalid { line: 0, reason } => TraceError::Invalid { line, reason },
        e => e,
    }
}

/// The `kind` of one trace line, without decoding the rest of it.
pub fn line_kind(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(text).ok().map(|k| k.kind)
}

/// The summary, when it is the last line of the trace file at `path`. Reads only the
/// file's end, in a window that doubles until it holds the whole last line (a summary
/// with many OOM victims can pass 64 KiB): traces can be gigabytes and callers poll
/// this. None for stdin, a trace without a summary, or anything unexpected.
pub fn summary_at_end(path: &Path) -> Option<Summary> {
    use std::io::{Read, Seek, SeekFrom};
    if path.as_os_str() == "-" {
        return None;
    }
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut window: u64 = 64 * 1024;
    let last = loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut buf).ok()?;
        let end = buf.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
        match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(nl) => break buf[nl + 1..end].to_vec(),
            None if start == 0 => break buf[..end].to_vec(),
            // The line began before the window: twice as far back, up to the cap.
            None if window < MAX_LINE_BYTES as u64 => window *= 2,
            None => return None,
        }
    };
    let text = std::str::from_utf8(&last).ok()?;
    if line_kind(text)? != Summary::KIND {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The exact run start (`summary.start_boot_ns`) read from the end of a trace file
/// without reading the rest, so streaming exports can give times relative to it.
pub fn peek_run_start(path: &Path) -> Option<u64> {
    Some(summary_at_end(path)?.start_boot_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary line longer than the first window (many OOM victims) is still found.
    #[test]
    fn a_long_summary_line_is_read_from_the_end() {
        let dir = std::env::temp_dir().join(format!("denet-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let victims: Vec<String> = (0..3000)
            .map(|i| format!(r#"{{"pid":{i},"argv":["python3","-c","x"],"rss_kb":1}}"#))
            .collect();
        let summary = format!(
            r#"{{"kind":"summary","start_boot_ns":7,"oom_kills":3000,"oom_victims":[{}]}}"#,
            victims.join(",")
        );
        assert!(summary.len() > 64 * 1024);
        std::fs::write(
            &path,
            format!("{{\"kind\":\"header\",\"argv\":[]}}\n{summary}\n\n"),
        )
        .unwrap();
        let s = summary_at_end(&path).expect("the summary");
        assert_eq!(s.oom_victims.len(), 3000);
        assert_eq!(peek_run_start(&path), Some(7));
        std::fs::write(&path, "{\"kind\":\"header\",\"argv\":[]}\n").unwrap();
        assert!(summary_at_end(&path).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
