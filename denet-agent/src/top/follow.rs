//! A trace file that is still being written, read as far as it is complete: the
//! trace reader sees whole lines only (a line the agent is writing waits for its
//! newline), and every poll reads what was appended since the last.

use std::{
    fs::File,
    io::{self, BufRead, Read},
    path::Path,
};

use crate::trace::{Header, Record, TraceError, TraceReader};

/// The file's complete lines, as a `BufRead` whose end moves as the file grows.
pub struct CompleteLines {
    file: File,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    /// Bytes of `buf` up to and including its last newline.
    complete: usize,
}

impl CompleteLines {
    pub fn new(file: File) -> Self {
        CompleteLines {
            file,
            buf: Vec::new(),
            pos: 0,
            complete: 0,
        }
    }

    /// Reads what the file has gained.
    fn refill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.complete -= self.pos;
            self.pos = 0;
        }
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        self.complete = self
            .buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Ok(())
    }
}

impl Read for CompleteLines {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for CompleteLines {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.complete {
            self.refill()?;
        }
        Ok(&self.buf[self.pos..self.complete])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.complete);
    }
}

/// The records of a trace being written, as they come.
pub struct TraceFeed {
    reader: TraceReader<CompleteLines>,
}

impl TraceFeed {
    /// Opens the trace; `Ok(None)` while its header is not written yet.
    pub fn open(path: &Path) -> Result<Option<TraceFeed>, TraceError> {
        let file = File::open(path)?;
        let mut lines = CompleteLines::new(file);
        if lines.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let reader = TraceReader::new(lines, Box::new(|_| {}))?;
        Ok(Some(TraceFeed { reader }))
    }

    pub fn header(&self) -> &Header {
        self.reader.header()
    }

    /// The records written since the last poll.
    pub fn poll(&mut self) -> Result<Vec<Record>, TraceError> {
        let mut out = Vec::new();
        while let Some(rec) = self.reader.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_growing_file_is_read_line_by_line_as_lines_complete() {
        let dir = std::env::temp_dir().join(format!("denet-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let mut w = File::create(&path).unwrap();
        assert!(TraceFeed::open(&path).unwrap().is_none(), "no header yet");
        writeln!(w, r#"{{"kind":"header","schema_version":3,"argv":["x"]}}"#).unwrap();
        let mut feed = TraceFeed::open(&path).unwrap().unwrap();
        assert_eq!(feed.header().argv, ["x"]);
        assert!(feed.poll().unwrap().is_empty());
        // Half a line: not yet.
        write!(w, r#"{{"kind":"sample","ts_boot_ns":5,"#).unwrap();
        w.flush().unwrap();
        assert!(feed.poll().unwrap().is_empty());
        writeln!(w, r#""rss_kb":7,"procs":[]}}"#).unwrap();
        writeln!(w, r#"{{"kind":"process","pid":9,"argv":["y"]}}"#).unwrap();
        let recs = feed.poll().unwrap();
        assert_eq!(recs.len(), 2);
        assert!(matches!(&recs[0], Record::Sample(s) if s.rss_kb == Some(7)));
        assert!(feed.poll().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
