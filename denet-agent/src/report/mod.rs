//! From a trace to what people look at: the statistics behind `denet-agent stats`
//! (text and JSON) and the HTML report.

pub mod command;
pub mod series;
pub mod stats;
pub mod tasks;
pub mod text;
pub mod tree;
pub mod units;

use std::path::Path;

use crate::trace::{reader::WarnFn, TraceError, TraceReader};
use stats::{StatsBuilder, StatsReport, TraceInfo};

/// Reads a whole trace (streaming) into its report.
pub fn analyze(path: &Path, on_warning: WarnFn) -> Result<StatsReport, TraceError> {
    let mut reader = TraceReader::open(path, on_warning)?;
    let header = reader.header().clone();
    let mut builder = StatsBuilder::new(&header);
    while let Some(rec) = reader.next_record()? {
        builder.add(&rec);
    }
    let info = TraceInfo {
        path: path.display().to_string(),
        lines: reader.line(),
        complete: reader.summary_seen(),
        warnings: reader.warnings().to_vec(),
    };
    Ok(builder.finish(&header, info))
}
