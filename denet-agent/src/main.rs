//! denet-agent: runs a command and records exactly what it and every process it
//! spawned did, as one JSONL stream.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use denet_agent::{
    export::{self, Format},
    launch::LaunchSpec,
    report,
    run::{self, EbpfMode, RunConfig},
};

#[derive(Parser)]
#[command(name = "denet-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD and trace it and all its descendants.
    Run(RunArgs),
    /// Summarize a trace: process tree, per-process time, CPU, memory, I/O, totals.
    Stats(StatsArgs),
    /// Convert a trace to CSV tables, a Nextflow trace, Perfetto JSON or an HTML report.
    Export(ExportArgs),
}

#[derive(Args)]
struct StatsArgs {
    /// Trace file (JSONL) written by `denet-agent run`; `-` reads stdin.
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// Trace file (JSONL) written by `denet-agent run`; `-` reads stdin.
    file: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum)]
    format: Format,
    /// Output: a file, or for csv a directory (created) that gets one file per table.
    /// `-` writes to stdout (not for csv).
    #[arg(short, long, value_name = "OUT")]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Trace file (JSONL); `-` for stdout. Default: denet-<unix time>-<agent pid>.jsonl
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Redirect the command's stdout to FILE (default: passed through).
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,
    /// Redirect the command's stderr to FILE (default: passed through).
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,
    /// First sampling interval in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    interval_ms: u64,
    /// The interval grows by 25% per sample up to this, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    max_interval_ms: u64,
    /// Stop the whole process tree after SECONDS (SIGTERM, then SIGKILL).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL when --timeout fires.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    kill_grace: f64,
    /// Use /proc sampling only (no eBPF, no exact exit accounting).
    #[arg(long, conflicts_with = "require_ebpf")]
    no_ebpf: bool,
    /// Fail instead of falling back to /proc sampling when eBPF is unavailable.
    #[arg(long)]
    require_ebpf: bool,
    /// Size of the kernel event ring buffer in MiB (a power of two). The agent maps it
    /// (twice), so it counts in the agent's RSS; lost events are counted either way.
    #[arg(long, default_value_t = 2, value_name = "MIB")]
    ringbuf_mib: u32,
    /// No per-file accounting (no `file` records).
    #[arg(long)]
    no_files: bool,
    /// No syscall counts and no file records: the syscall hooks cost every process
    /// on the machine some time per syscall while attached (see docs/benchmarks.md).
    #[arg(long)]
    no_syscalls: bool,
    /// Also write raw `event` records: every scheduler state span of every thread
    /// and every block request (a firehose: consider a larger --ringbuf-mib).
    #[arg(long)]
    events: bool,
    /// After the run, write the HTML report of the trace to FILE.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        bail!("--{name} must be a number of seconds >= 0, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn run_config(args: RunArgs) -> Result<RunConfig> {
    if !args.ringbuf_mib.is_power_of_two() || args.ringbuf_mib > 1024 {
        bail!(
            "--ringbuf-mib must be a power of two up to 1024, got {}",
            args.ringbuf_mib
        );
    }
    let out = args.out.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("denet-{secs}-{}.jsonl", std::process::id()))
    });
    Ok(RunConfig {
        launch: LaunchSpec {
            argv: args.cmd,
            stdout: args.stdout,
            stderr: args.stderr,
            cwd: None,
            env: None,
        },
        out,
        interval_ms: args.interval_ms,
        max_interval_ms: args.max_interval_ms,
        timeout: args.timeout.map(|t| seconds("timeout", t)).transpose()?,
        kill_grace: seconds("kill-grace", args.kill_grace)?,
        ebpf: if args.no_ebpf {
            EbpfMode::Off
        } else if args.require_ebpf {
            EbpfMode::Required
        } else {
            EbpfMode::Auto
        },
        ringbuf_bytes: args.ringbuf_mib * 1024 * 1024,
        files: !args.no_files && !args.no_syscalls,
        syscalls: !args.no_syscalls,
        events: args.events,
    })
}

fn warn_to_stderr() -> denet_agent::trace::reader::WarnFn {
    Box::new(|msg: &str| eprintln!("denet-agent: warning: {msg}"))
}

fn stats(args: StatsArgs) -> Result<i32> {
    let r = report::analyze(&args.file, warn_to_stderr())
        .with_context(|| args.file.display().to_string())?;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&r).context("encoding the report")?;
        s.push('\n');
        s
    } else {
        report::text::render(&r)
    };
    write_stdout(out.as_bytes())?;
    Ok(0)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn export(args: ExportArgs) -> Result<i32> {
    export::export(&args.file, args.format, &args.out, warn_to_stderr())
        .with_context(|| args.file.display().to_string())?;
    Ok(0)
}

fn run_command(args: RunArgs) -> Result<i32> {
    let report_path = args.report.clone();
    let config = run_config(args)?;
    let out = config.out.clone();
    if report_path.is_some() && out.as_os_str() == "-" {
        bail!("--report reads the trace back after the run: give a trace file with -o FILE");
    }
    let outcome = run::run(config)?;
    let s = &outcome.summary;
    eprintln!(
        "denet-agent: {} processes, {:.3} s CPU, peak RSS {} KiB (largest process), \
         wall {:.3} s, {} events lost; trace: {}",
        s.process_count,
        (s.cpu_user_ns + s.cpu_sys_ns) as f64 / 1e9,
        s.max_process_peak_rss_kb,
        s.wall_ns as f64 / 1e9,
        s.lost_events,
        if out.as_os_str() == "-" {
            "stdout".into()
        } else {
            out.display().to_string()
        },
    );
    let mut status = outcome.exit_status;
    if let Some(path) = report_path {
        match export::export(&out, Format::Html, &path, warn_to_stderr()) {
            Ok(()) => eprintln!("denet-agent: report: {}", path.display()),
            Err(e) => {
                eprintln!(
                    "denet-agent: error: writing the report {}: {e:#}",
                    path.display()
                );
                // The command's own failure status wins; a failed report alone is 2.
                if status == 0 {
                    status = 2;
                }
            }
        }
    }
    Ok(status)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Stats(args) => stats(args),
        Command::Export(args) => export(args),
    };
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("denet-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
