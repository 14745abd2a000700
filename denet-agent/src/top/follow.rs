//! A trace that is still being written, read as far as it is complete: the trace
//! reader sees whole lines only (a line the agent is writing waits for its newline),
//! and every poll reads what was appended since the last. The trace comes from a
//! file (`top FILE`) or from the service (`GET /jobs/{id}/trace?from=BYTE`, as the
//! job's user: the job directories are root's).

use std::{
    fs::File,
    io::{self, BufRead, Read},
    path::Path,
};

use crate::trace::{Header, Record, TraceError, TraceReader};

/// Most bytes one refill takes in (a large finished trace is read in steps, not
/// into memory at once).
const REFILL_MAX: usize = 4 << 20;

/// A source's complete lines, as a `BufRead` whose end moves as the source grows.
/// The source's `read` returns 0 when it has nothing more for now.
pub struct CompleteLines<R> {
    file: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    /// Bytes of `buf` up to and including its last newline.
    complete: usize,
}

impl<R: Read> CompleteLines<R> {
    pub fn new(file: R) -> Self {
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
        let mut taken = 0;
        while taken < REFILL_MAX {
            let n = self.file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            taken += n;
        }
        self.complete = self
            .buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Ok(())
    }
}

impl<R: Read> Read for CompleteLines<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for CompleteLines<R> {
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
    reader: TraceReader<CompleteLines<Box<dyn Read + Send>>>,
}

impl TraceFeed {
    /// Opens the trace file; `Ok(None)` while its header is not written yet.
    pub fn open(path: &Path) -> Result<Option<TraceFeed>, TraceError> {
        Self::from_source(Box::new(File::open(path)?))
    }

    /// The trace from any growing source; `Ok(None)` while it has no header.
    pub fn from_source(source: Box<dyn Read + Send>) -> Result<Option<TraceFeed>, TraceError> {
        let mut lines = CompleteLines::new(source);
        if lines.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let reader = TraceReader::new(lines, Box::new(|_| {}))?;
        Ok(Some(TraceFeed { reader }))
    }

    pub fn header(&self) -> &Header {
        self.reader.header()
    }

    /// The records written since the last poll, and the error that stopped it, if
    /// one did (the records before it are still returned).
    pub fn poll(&mut self) -> (Vec<Record>, Option<TraceError>) {
        let mut out = Vec::new();
        loop {
            match self.reader.next_record() {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
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
        assert!(feed.poll().0.is_empty());
        // Half a line: not yet.
        write!(w, r#"{{"kind":"sample","ts_boot_ns":5,"#).unwrap();
        w.flush().unwrap();
        assert!(feed.poll().0.is_empty());
        writeln!(w, r#""rss_kb":7,"procs":[]}}"#).unwrap();
        writeln!(w, r#"{{"kind":"process","pid":9,"argv":["y"]}}"#).unwrap();
        let (recs, err) = feed.poll();
        assert!(err.is_none());
        assert_eq!(recs.len(), 2);
        assert!(matches!(&recs[0], Record::Sample(s) if s.rss_kb == Some(7)));
        assert!(feed.poll().0.is_empty());
        // A bad line: the records before it still come, with the error.
        writeln!(w, r#"{{"kind":"process","pid":10,"argv":["z"]}}"#).unwrap();
        writeln!(w, r#"{{"kind":"process","argv":["no pid"]}}"#).unwrap();
        let (recs, err) = feed.poll();
        assert_eq!(recs.len(), 1);
        assert!(err.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
