//! The public JSONL format (docs/jsonl-format.md): one type per record kind
//! (`records`), written by `writer` and read back by `reader`.
//!
//! The reader is streaming and forgiving, for `stats`, `export` and `run --report`:
//! records are read one line at a time, so memory does not grow with the file.
//! Unknown kinds and fields are skipped with one warning per name; a truncated last
//! line (a killed agent) is skipped with a warning; anything else that is not a
//! trace is an error naming the line.

pub mod metrics;
pub mod reader;
pub mod records;
pub mod writer;

pub use reader::{TraceError, TraceReader};
pub use records::{
    CgroupHeader, Clock, EventRecord, FileRecord, Header, OomVictim, ProcSample, Process, Record,
    Sample, SlurmJob, Summary, Task,
};
