//! denet-agent: runs a command and records exactly what it and every process it
//! spawned did, as one JSONL stream.

// No unwrap outside tests: errors carry context instead.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use denet_agent::{
    engine::{
        self as run,
        launch::{LaunchSpec, Redirect},
        EbpfMode, RunConfig,
    },
    export::{self, Format},
    report,
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
    /// Serve the job API: start, stop, pause and stream monitored jobs, keep their history.
    Serve(ServeArgs),
    /// Client of `serve`: spawn, list, show, stop, pause, resume jobs, logs, history.
    Jobs(denet_agent::client::cli::JobsArgs),
    /// Watch the node's jobs (yours; root: all) or a trace being written, live.
    Top(denet_agent::top::TopArgs),
    /// Read the history (SQLite or PostgreSQL): what workflow tasks needed.
    History(HistoryArgs),
    /// Slurm: the TaskProlog that has the node daemon trace each batch job.
    Slurm(SlurmArgs),
}

#[derive(Args)]
struct SlurmArgs {
    #[command(subcommand)]
    command: SlurmCommand,
}

#[derive(Subcommand)]
enum SlurmCommand {
    /// Slurm's TaskProlog: asks the node daemon (`serve --slurm`) to trace this batch
    /// task and record it. Never fails the job; prints `export
    /// DENET_AGENT_TRACE_FILE=…` for it.
    TaskProlog {
        /// The node daemon's tracer socket.
        #[arg(long, env = "DENET_AGENT_TRACER_SOCKET", default_value = denet_agent::node::TRACER_SOCKET)]
        socket: PathBuf,
    },
    /// The node daemon's recorder of one batch task (started by the daemon).
    #[command(hide = true)]
    Record {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        uid: u32,
        #[arg(short, long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Per task name (rule, process, Slurm job name): runs, failures, median / p95 /
    /// max of wall, CPU, parallelism and peak memory, and what to request.
    Resources(ResourcesArgs),
}

#[derive(Args)]
struct ResourcesArgs {
    /// The history: postgres://… or sqlite:PATH (or a plain path to a SQLite file).
    #[arg(long, env = "DENET_AGENT_DB", value_name = "DB")]
    db: String,
    /// Only task names matching PATTERN (`*` matches any text).
    #[arg(long, value_name = "PATTERN")]
    name: Option<String>,
    /// Only tasks that ended since T: a span back from now (90m, 12h, 7d, 2w) or a
    /// date (2026-11-01, UTC).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    format: denet_agent::history::resources::ResourceFormat,
    /// Safety margin over the largest value seen, percent.
    #[arg(long, default_value_t = 20.0, value_name = "PERCENT")]
    margin: f64,
}

#[derive(Args)]
struct ServeArgs {
    /// The Unix socket to listen on. As root: every local user may connect and is
    /// identified by the kernel. Otherwise: owner-only.
    /// Default: /run/denet-agent/agent.sock as root, else DATA_DIR/agent.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The node tracer's socket (as root: the service loads the kernel programs once
    /// and every run on the node uses them). Default: tracer.sock beside --socket.
    #[arg(long, value_name = "PATH")]
    tracer_socket: Option<PathBuf>,
    /// Ring buffer of the node tracer, MiB (a power of two).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    ringbuf_mib: u32,
    /// The most memory a job may ask for (`memory_limit`), and the limit of a job that
    /// asks for none, e.g. 64G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    job_memory_limit: Option<u64>,
    /// The most CPUs a job may ask for (`cpus`), and the quota of one that asks for none.
    #[arg(long, value_name = "N")]
    job_cpus: Option<f64>,
    /// The most processes a job may ask for (`max_pids`), and the limit of one that
    /// asks for none.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=denet_agent::engine::MAX_PIDS_LIMIT))]
    job_max_pids: Option<u64>,
    /// Also listen on this TCP address; requires --tokens.
    #[arg(long, value_name = "ADDR", requires = "tokens")]
    listen: Option<std::net::SocketAddr>,
    /// For --listen: a file of `TOKEN USER` lines, each token acting as that local
    /// user (root only where the file says root). Owner-only (mode 600).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Replaced by --tokens (a token now names the user it acts as).
    #[arg(long, value_name = "FILE", hide = true)]
    token_file: Option<PathBuf>,
    /// Directory for job traces and logs (and the default SQLite history).
    /// Default: /var/lib/denet-agent as root, else ~/.local/state/denet-agent.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// History database: a SQLite file path, or postgres://USER:PASS@HOST/DB.
    /// Default: DATA_DIR/history.sqlite.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    /// Jobs running at once (each is a traced `run`); more wait as `queued`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_running: u32,
    /// Jobs queued or running at once; more are refused with 429.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_jobs: u32,
    /// Ended jobs kept in memory for `GET /jobs` (all are in the history).
    #[arg(long, default_value_t = 1000)]
    keep_finished: usize,
    /// Default job timeout, seconds.
    #[arg(long, default_value_t = 3600.0, value_name = "SECONDS")]
    timeout: f64,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped or times out.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    kill_grace: f64,
    /// A job failing within this many seconds of its start is `startup_failed`.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    startup_window: f64,
    /// Default seconds without CPU progress or output before a job is flagged stuck.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    stuck_after: f64,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Trace every Slurm batch job on this node and record it in the history
    /// (--db): the node's slurm.conf runs `denet-agent slurm task-prolog` as its
    /// TaskProlog (docs/workflows.md). Root only.
    #[arg(long)]
    slurm: bool,
    /// Jobs use /proc sampling only.
    #[arg(long, conflicts_with = "require_ebpf")]
    no_ebpf: bool,
    /// Jobs fail instead of falling back to /proc sampling.
    #[arg(long)]
    require_ebpf: bool,
    /// Jobs write per-file records (see `run --files`: slows every syscall on the
    /// machine while a job runs).
    #[arg(long)]
    files: bool,
    /// Jobs count syscalls per process (see `run --syscalls`: slows every syscall on
    /// the machine while a job runs).
    #[arg(long)]
    syscalls: bool,
    /// Accepted for old scripts: jobs have no file records unless --files.
    #[arg(long, hide = true, conflicts_with = "files")]
    no_files: bool,
    /// Accepted for old scripts: jobs have no syscall hooks unless --syscalls/--files.
    #[arg(long, hide = true, conflicts_with_all = ["files", "syscalls"])]
    no_syscalls: bool,
}

#[derive(Args)]
struct StatsArgs {
    /// Trace file (JSONL) written by `denet-agent run`; `-` reads stdin.
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Group by workflow task (Snakemake rule, Nextflow process, Slurm job) instead
    /// of the whole run: per task name and per task instance.
    #[arg(long, value_enum)]
    by: Option<StatsBy>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatsBy {
    Task,
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
    /// Per-file records (paths, bytes read and written per fd). Where the kernel takes
    /// trampolines, they hook the file syscalls' own functions (every read, write,
    /// open and close on the machine pays for them, other syscalls do not); elsewhere
    /// this attaches the syscall hooks: while attached, every syscall of every
    /// process on the machine pays about 0.2 us more (docs/kernels.md,
    /// docs/benchmarks.md).
    #[arg(long)]
    files: bool,
    /// Per-process syscall counts. Attaches the syscall hooks (shared with --files):
    /// every syscall on the machine pays about 0.2 us more while attached.
    #[arg(long)]
    syscalls: bool,
    /// Accepted for old scripts: file records are off unless --files.
    #[arg(long, hide = true, conflicts_with = "files")]
    no_files: bool,
    /// Accepted for old scripts: syscall hooks are off unless --syscalls/--files.
    #[arg(long, hide = true, conflicts_with_all = ["files", "syscalls"])]
    no_syscalls: bool,
    /// Also write raw `event` records: every scheduler state span of every thread
    /// and every block request (a firehose: consider a larger --ringbuf-mib).
    #[arg(long)]
    events: bool,
    /// The node daemon's tracer socket: when a daemon listens there, the run is
    /// traced by its programs (no root, no loading) and written by this process.
    #[arg(
        long,
        value_name = "PATH",
        env = "DENET_NODE_SOCKET",
        default_value = denet_agent::node::TRACER_SOCKET
    )]
    node_socket: PathBuf,
    /// Load programs of this run's own even when the node daemon runs (root or
    /// file capabilities needed).
    #[arg(long)]
    standalone: bool,
    /// Memory limit of the run's cgroup (page cache included), e.g. 4G, 512M: the
    /// kernel OOM-kills in the tree beyond it, and the trace names the victims.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// CPU quota of the run's cgroup, in CPUs (e.g. 1.5).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Most processes (and threads) the run's cgroup may hold at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=denet_agent::engine::MAX_PIDS_LIMIT))]
    max_pids: Option<u64>,
    /// Exit with N when the OOM killer killed any process of the run, whatever the
    /// command made of it (tools often turn the kill into exit 1): so a workflow
    /// engine whose retry rule looks for 137 retries with more memory.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8))]
    oom_exit_code: Option<u8>,
    /// Read control requests (`stop [GRACE_MS]`, `pause`, `resume`, one per line) from
    /// this file descriptor; its end stops the run. Used by `serve` for its jobs.
    #[arg(long, value_name = "FD", hide = true)]
    control_fd: Option<i32>,
    /// The command's stdout goes to this inherited descriptor (a pipe from `serve`).
    #[arg(long, value_name = "FD", hide = true, conflicts_with = "stdout")]
    stdout_fd: Option<i32>,
    /// The command's stderr goes to this inherited descriptor (a pipe from `serve`).
    #[arg(long, value_name = "FD", hide = true, conflicts_with = "stderr")]
    stderr_fd: Option<i32>,
    /// After the run, write the HTML report of the trace to FILE.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// After the run, write its history row and a row per workflow task to DB:
    /// postgres://… or sqlite:PATH (many nodes can share one PostgreSQL server).
    /// Opened before the command starts, so a bad DB fails at once.
    #[arg(long, value_name = "DB")]
    db: Option<String>,
    /// The run's name in the history (default: the Slurm job's name inside a Slurm
    /// job, else the command).
    #[arg(long, value_name = "NAME", requires = "db")]
    name: Option<String>,
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

/// `--no-files`/`--no-syscalls` asked for what is now the default.
fn note_old_flags(no_files: bool, no_syscalls: bool) {
    for (on, flag) in [(no_files, "--no-files"), (no_syscalls, "--no-syscalls")] {
        if on {
            eprintln!(
                "denet-agent: note: {flag} is the default now (no syscall hooks unless \
                 --files or --syscalls); the flag is ignored"
            );
        }
    }
}

fn run_config(args: RunArgs) -> Result<RunConfig> {
    note_old_flags(args.no_files, args.no_syscalls);
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
            stdout: redirect(args.stdout, args.stdout_fd, "stdout-fd")?,
            stderr: redirect(args.stderr, args.stderr_fd, "stderr-fd")?,
            cwd: None,
            env: None,
            extra_env: Vec::new(),
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
        files: args.files,
        syscalls: args.syscalls,
        events: args.events,
        node_socket: (!args.standalone).then_some(args.node_socket),
        limits: denet_agent::engine::Limits {
            memory_bytes: args.memory_limit,
            cpus: args
                .cpus
                .map(denet_agent::engine::check_cpus)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--cpus must be {e}"))?,
            max_pids: args.max_pids,
        },
        adopt: None,
    })
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    denet_agent::engine::parse_size(s)
}

fn warn_to_stderr() -> denet_agent::trace::reader::WarnFn {
    Box::new(|msg: &str| eprintln!("denet-agent: warning: {msg}"))
}

fn stats(args: StatsArgs) -> Result<i32> {
    let r = report::analyze(&args.file, warn_to_stderr())
        .with_context(|| args.file.display().to_string())?;
    let out = match (args.by, args.json) {
        (Some(StatsBy::Task), true) => {
            let tasks = serde_json::json!({
                "task_groups": r.task_groups,
                "tasks": r.tasks,
            });
            let mut s = serde_json::to_string_pretty(&tasks).context("encoding the report")?;
            s.push('\n');
            s
        }
        (Some(StatsBy::Task), false) => report::text::render_tasks(&r),
        (None, true) => {
            let mut s = serde_json::to_string_pretty(&r).context("encoding the report")?;
            s.push('\n');
            s
        }
        (None, false) => report::text::render(&r),
    };
    write_stdout(out.as_bytes())?;
    Ok(0)
}

/// Opens (and migrates) the history `run --db` writes to, on a runtime of its own
/// that keeps a PostgreSQL connection alive while the command runs.
fn open_history(spec: &str) -> Result<(tokio::runtime::Runtime, denet_agent::history::History)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let db = rt
        .block_on(denet_agent::history::History::open(
            denet_agent::history::db_spec(spec),
        ))
        .context("--db")?;
    Ok((rt, db))
}

fn history_resources(args: ResourcesArgs) -> Result<i32> {
    use denet_agent::history::{self, resources};
    if !(0.0..=1000.0).contains(&args.margin) {
        anyhow::bail!("--margin {}: give a percentage from 0 to 1000", args.margin);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let since_unix_ms = args
        .since
        .as_deref()
        .map(|s| resources::parse_since(s, now_ms))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let query = history::TaskQuery {
        name: args.name.clone(),
        since_unix_ms,
        uid: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let rows = rt.block_on(async {
        let db = history::History::open(history::db_spec(&args.db)).await?;
        db.query_tasks(&query).await
    })?;
    if rows.is_empty() {
        eprintln!(
            "denet-agent: no task rows{}{} in this history (runs record them with --db)",
            args.name
                .as_deref()
                .map_or(String::new(), |n| format!(" named {n:?}")),
            args.since
                .as_deref()
                .map_or(String::new(), |s| format!(" since {s}"))
        );
        return Ok(1);
    }
    let margin = args.margin / 100.0;
    let list = resources::summarize(&rows, margin);
    write_stdout(resources::render(&list, args.format, margin).as_bytes())?;
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
    let oom_exit_code = args.oom_exit_code;
    let control = args.control_fd.map(control_channel).transpose()?;
    let (db_spec, run_name) = (args.db.clone(), args.name.clone());
    let config = run_config(args)?;
    let out = config.out.clone();
    if report_path.is_some() && out.as_os_str() == "-" {
        bail!("--report reads the trace back after the run: give a trace file with -o FILE");
    }
    if db_spec.is_some() && out.as_os_str() == "-" {
        bail!("--db reads the trace back after the run: give a trace file with -o FILE");
    }
    let history = db_spec.map(|spec| open_history(&spec)).transpose()?;
    let mut outcome = run::run_controlled(config, control)?;
    let s = &outcome.summary;
    // Never fails: a job's agent may outlive its service, and with it its stderr.
    let _ = writeln!(
        std::io::stderr(),
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
    let oom_kills = s.oom_kills.unwrap_or(0);
    if oom_kills > 0 {
        let cause = match (s.oom_scope.as_deref(), s.memory_limit_bytes) {
            (Some("run_limit"), Some(limit)) => {
                format!("limit {} MiB reached", limit.div_ceil(1 << 20))
            }
            (Some("run_limit"), None) => "the run's cgroup limit reached".to_owned(),
            _ => "the machine, or a cgroup around the run, ran out of memory".to_owned(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "denet-agent: {oom_kills} process{} killed by the OOM killer ({cause})",
            if oom_kills == 1 { "" } else { "es" }
        );
    }
    // Reported: the programs can go now.
    drop(outcome.kernel.take());
    let mut status = outcome.exit_status;
    if let (Some(code), true) = (oom_exit_code, oom_kills > 0) {
        status = i32::from(code);
    }
    if let Some((rt, db)) = history {
        let uid = nix::unistd::getuid().as_raw();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let who = denet_agent::run_history::RunIdentity {
            id: format!(
                "run-{host}-{}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
                std::process::id()
            ),
            name: run_name,
            user,
            uid,
        };
        match rt.block_on(denet_agent::run_history::record_trace(&db, &out, who)) {
            Ok((row, tasks)) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "denet-agent: history: run {} and {tasks} task row{} in {}",
                    row.id,
                    if tasks == 1 { "" } else { "s" },
                    db.backend()
                );
            }
            Err(e) => {
                eprintln!("denet-agent: error: recording the run in the history: {e}");
                if status == 0 {
                    status = 2;
                }
            }
        }
    }
    if let Some(path) = report_path {
        match export::export(&out, Format::Html, &path, warn_to_stderr()) {
            Ok(()) => {
                let _ = writeln!(std::io::stderr(), "denet-agent: report: {}", path.display());
            }
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

/// Takes ownership of an inherited descriptor, marked close-on-exec so the command
/// does not inherit it as well.
fn adopt_fd(fd: i32, flag: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD/F_SETFD only touch the descriptor table.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        bail!("--{flag} {fd}: not an open file descriptor above 2");
    }
    // SAFETY: checked open above; the caller hands it to us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn redirect(path: Option<PathBuf>, fd: Option<i32>, flag: &str) -> Result<Option<Redirect>> {
    Ok(match (path, fd) {
        (Some(p), _) => Some(Redirect::Path(p)),
        (None, Some(fd)) => Some(Redirect::Fd(std::sync::Arc::new(adopt_fd(fd, flag)?))),
        (None, None) => None,
    })
}

/// Control requests read line by line from an inherited descriptor. A bad line is
/// reported and ignored; the end of input closes the channel (which stops the run).
fn control_channel(fd: i32) -> Result<tokio::sync::mpsc::UnboundedReceiver<run::Control>> {
    use std::io::BufRead;
    let file = std::fs::File::from(adopt_fd(fd, "control-fd")?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                match line.parse::<run::Control>() {
                    Ok(request) => {
                        if tx.send(request).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ =
                            writeln!(std::io::stderr(), "denet-agent: warning: --control-fd: {e}");
                    }
                }
            }
        })
        .context("starting the control reader")?;
    Ok(rx)
}

fn serve(args: ServeArgs) -> Result<i32> {
    use denet_agent::service::{self as serve, spec::SpecDefaults, ServeConfig};
    note_old_flags(args.no_files, args.no_syscalls);
    if args.token_file.is_some() {
        bail!(
            "--token-file was replaced by --tokens FILE: one `TOKEN USER` line per token, \
             each acting as the local user it names"
        );
    }
    if args.tokens.is_some() && args.listen.is_none() {
        bail!("--tokens is for TCP callers: give --listen ADDR too");
    }
    let tokens = args
        .tokens
        .as_deref()
        .map(serve::identity::Tokens::load)
        .transpose()?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None if nix::unistd::geteuid().is_root() => PathBuf::from("/var/lib/denet-agent"),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/denet-agent"))
            .context("no --data-dir and no HOME")?,
    };
    let data_dir = std::path::absolute(&data_dir).context("--data-dir")?;
    let socket = match args.socket {
        Some(p) => std::path::absolute(&p).context("--socket")?,
        None if nix::unistd::geteuid().is_root() => PathBuf::from(serve::NODE_SOCKET),
        None => data_dir.join("agent.sock"),
    };
    let db = args.db.unwrap_or_else(|| {
        data_dir
            .join("history.sqlite")
            .to_string_lossy()
            .into_owned()
    });
    if !args.ringbuf_mib.is_power_of_two() || args.ringbuf_mib > 1024 {
        bail!(
            "--ringbuf-mib must be a power of two up to 1024, got {}",
            args.ringbuf_mib
        );
    }
    let node_socket = match args.tracer_socket {
        Some(p) => std::path::absolute(&p).context("--tracer-socket")?,
        None => socket.with_file_name("tracer.sock"),
    };
    let node_socket = (nix::unistd::geteuid().is_root() && !args.no_ebpf).then_some(node_socket);
    let mut run_flags = Vec::new();
    if let Some(s) = &node_socket {
        run_flags.push("--node-socket".to_string());
        run_flags.push(s.to_string_lossy().into_owned());
    }
    for (on, flag) in [
        (args.no_ebpf, "--no-ebpf"),
        (args.require_ebpf, "--require-ebpf"),
        (args.files, "--files"),
        (args.syscalls, "--syscalls"),
    ] {
        if on {
            run_flags.push(flag.to_string());
        }
    }
    let positive = |name: &str, v: f64| -> Result<Duration> {
        let d = seconds(name, v)?;
        if d.is_zero() {
            bail!("--{name} must be more than 0 seconds");
        }
        Ok(d)
    };
    if args.slurm && node_socket.is_none() {
        bail!("--slurm needs the node tracer: run serve as root, without --no-ebpf");
    }
    let slurm = args
        .slurm
        .then(|| -> Result<_> {
            Ok(denet_agent::node::slurm::SlurmRecording {
                agent_bin: std::env::current_exe().context("locating the denet-agent binary")?,
                db: Some(db.clone()),
            })
        })
        .transpose()?;
    let config = ServeConfig {
        socket,
        listen: args.listen,
        tokens,
        slurm,
        node_socket,
        node_ringbuf_bytes: args.ringbuf_mib * 1024 * 1024,
        defaults: SpecDefaults {
            caps: denet_agent::engine::Limits {
                memory_bytes: args.job_memory_limit,
                cpus: args
                    .job_cpus
                    .map(denet_agent::engine::check_cpus)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--job-cpus must be {e}"))?,
                max_pids: args.job_max_pids,
            },
            cwd: std::env::current_dir().context("the current directory")?,
            timeout: positive("timeout", args.timeout)?,
            stuck_after: positive("stuck-after", args.stuck_after)?,
        },
        data_dir,
        db,
        max_running: args.max_running as usize,
        max_jobs: args.max_jobs as usize,
        keep_finished: args.keep_finished,
        kill_grace: seconds("kill-grace", args.kill_grace)?,
        startup_window: seconds("startup-window", args.startup_window)?,
        run_flags,
        max_body_bytes: args.max_body_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let svc = serve::Service::new(config).await?;
        serve::api::serve(svc).await
    })?;
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Stats(args) => stats(args),
        Command::Export(args) => export(args),
        Command::Serve(args) => serve(args),
        Command::Jobs(args) => denet_agent::client::cli::run(args),
        Command::Top(args) => denet_agent::top::run(args),
        Command::History(args) => match args.command {
            HistoryCommand::Resources(args) => history_resources(args),
        },
        Command::Slurm(args) => match args.command {
            SlurmCommand::TaskProlog { socket } => Ok(denet_agent::slurm::prolog::run(&socket)),
            SlurmCommand::Record {
                socket,
                pid,
                uid,
                out,
            } => denet_agent::slurm::recorder::record(denet_agent::slurm::recorder::RecordArgs {
                socket,
                pid,
                uid,
                out,
            }),
        },
    };
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("denet-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
