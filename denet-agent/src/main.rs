//! denet-agent: runs a command and records exactly what it and every process it
//! spawned did, as one JSONL stream.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use denet_agent::{
    launch::LaunchSpec,
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
        files: !args.no_files,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result =
        match cli.command {
            Command::Run(args) => {
                run_config(args).and_then(|config| {
                    let out = config.out.clone();
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
                if out.as_os_str() == "-" { "stdout".into() } else { out.display().to_string() },
            );
                    Ok(outcome.exit_status)
                })
            }
        };
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("denet-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
