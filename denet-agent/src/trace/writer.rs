//! JSONL writer: one record per line, flushed after every record or batch of records
//! (one batch per collector pass, every few milliseconds), so a killed agent still
//! leaves a readable file.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;
use serde_json::value::RawValue;

use super::records::{Kind, Tagged};

pub struct JsonlWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
}

impl JsonlWriter {
    /// `-` writes to stdout.
    pub fn create(path: &Path) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(path)?)
        };
        Ok(Self::new(sink))
    }

    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, sink),
            line: Vec::with_capacity(1024),
        }
    }

    /// Writes one record and flushes it to the file.
    pub fn write<T: Kind + Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.write_unflushed(record)?;
        self.flush()
    }

    /// Writes one record into the buffer; for batches that end with [`Self::flush`].
    pub fn write_unflushed<T: Kind + Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &Tagged(record)).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    /// Writes one line made by [`to_line`] into the buffer.
    pub fn write_line_unflushed(&mut self, line: &RawValue) -> io::Result<()> {
        self.out.write_all(line.get().as_bytes())?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One record as a line of the trace (without the newline), made where the record
/// is (the collector thread) and written later.
pub fn to_line<T: Kind + Serialize>(record: &T) -> serde_json::Result<Box<RawValue>> {
    serde_json::value::to_raw_value(&Tagged(record))
}
