//! `denet-agent export`: a trace into the formats other tools read. Every exporter
//! streams records from the reader; only small per-pid or aggregated state is kept.

pub mod csv;
pub mod html;
pub mod nextflow;
pub mod perfetto;
pub mod snakemake;
pub mod svg;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::trace::{reader::WarnFn, TraceError, TraceReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tidy CSV tables in a directory: processes, samples (long), files, ...
    Csv,
    /// A Nextflow trace file (TSV, Nextflow's column names and value formats).
    Nextflow,
    /// Chrome trace-event JSON for the Perfetto UI (ui.perfetto.dev) or chrome://tracing.
    Perfetto,
    /// One self-contained HTML report (no network needed).
    Html,
    /// Snakemake's benchmark table (TSV), one row per workflow task.
    SnakemakeBenchmark,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Usage(String),
}

/// Opens an output file (`-`: stdout), buffered.
pub(crate) fn create(path: &Path) -> Result<Box<dyn Write>, ExportError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::with_capacity(256 * 1024, io::stdout())));
    }
    let f = File::create(path).map_err(|source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(BufWriter::with_capacity(256 * 1024, f)))
}

/// Attaches the output path to an I/O error.
pub(crate) fn at(path: &Path) -> impl Fn(io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Converts the trace at `input` into `format` at `out`.
pub fn export(
    input: &Path,
    format: Format,
    out: &Path,
    on_warning: WarnFn,
) -> Result<(), ExportError> {
    if format == Format::Csv && out.as_os_str() == "-" {
        return Err(ExportError::Usage(
            "csv writes several tables: give a directory with -o DIR".into(),
        ));
    }
    if matches!(format, Format::Html | Format::SnakemakeBenchmark) {
        let report = crate::report::analyze(input, on_warning)?;
        let mut w = create(out)?;
        if format == Format::Html {
            html::write(&mut w, &report).map_err(at(out))?;
        } else {
            snakemake::export(&report, &mut w, out)?;
        }
        return w.flush().map_err(at(out));
    }
    let mut reader = TraceReader::open(input, on_warning)?;
    let run_start = crate::trace::reader::peek_run_start(input);
    match format {
        Format::Csv => csv::export(&mut reader, run_start, out),
        Format::Nextflow => {
            let mut w = create(out)?;
            nextflow::export(&mut reader, &mut w, out)?;
            w.flush().map_err(at(out))
        }
        Format::Perfetto => {
            let mut w = create(out)?;
            perfetto::export(&mut reader, &mut w, out)?;
            w.flush().map_err(at(out))
        }
        Format::Html | Format::SnakemakeBenchmark => Ok(()),
    }
}
