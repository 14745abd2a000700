//! Reading traces back: a streaming, forgiving reader of the JSONL format
//! (docs/jsonl-format.md) for `stats`, `export` and `run --report`.
//!
//! Records are read one line at a time, so memory does not grow with the file.
//! Unknown kinds and fields are skipped with one warning per name; a truncated last
//! line (a killed agent) is skipped with a warning; anything else that is not a
//! trace is an error naming the line.

pub mod reader;
pub mod records;

pub use reader::{TraceError, TraceReader};
pub use records::{EventRecord, FileRecord, Header, ProcSample, Process, Record, Sample, Summary};
