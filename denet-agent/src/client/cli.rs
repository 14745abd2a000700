//! `denet-agent jobs ...`: the command-line client of `denet-agent serve`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{
    http::{encode, Client, Server},
    views,
};
use crate::{history::HistoryRow, service::job::JobView};

/// Which service to talk to, and how: shared by `jobs` and `top`.
#[derive(Args)]
pub struct ServerArgs {
    /// The service: unix:/path (the node service by default) or http://HOST:PORT.
    #[arg(
        long,
        env = "DENET_SERVER",
        default_value = "unix:/run/denet-agent/agent.sock"
    )]
    pub server: Server,
    /// File holding the bearer token, when the service requires one.
    #[arg(long, env = "DENET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServerArgs {
    /// A client of the service, with the token read from its file.
    pub fn client(&self) -> Result<Client> {
        let token = match &self.token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        Ok(Client::new(self.server.clone(), token))
    }
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    service: ServerArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Start a monitored job; prints its id.
    Spawn {
        /// Job name (one job per name runs at a time).
        #[arg(long)]
        name: String,
        /// Working directory (default: the current one).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Set a variable for the job, on top of its environment (a user's job gets
        /// PATH, HOME, USER, LOGNAME and SHELL; root's the service's environment).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Stop the job after SECONDS (default: the service's, 60 min).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Flag the job stuck after SECONDS without CPU progress or output.
        #[arg(long, value_name = "SECONDS")]
        stuck_after: Option<f64>,
        /// Memory limit of the job's cgroup, e.g. 4G (within the service's cap).
        #[arg(long, value_name = "SIZE")]
        memory_limit: Option<String>,
        /// CPU quota of the job, in CPUs.
        #[arg(long, value_name = "N")]
        cpus: Option<f64>,
        /// Most processes the job may hold at once.
        #[arg(long, value_name = "N")]
        max_pids: Option<u64>,
        /// Print the job's output as it comes, and exit with its exit status (128+N
        /// when killed by signal N) once it ends, like `denet-agent run`.
        #[arg(short, long)]
        follow: bool,
        /// The command and its arguments (never passed to a shell).
        #[arg(required = true, last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Running and recent jobs.
    List {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// One job: status and why, command, times, resources and the failure excerpt.
    Show {
        id: String,
        /// Print the service's JSON view instead.
        #[arg(long)]
        json: bool,
    },
    /// Jobs that failed, timed out or lost a process to the OOM killer, newest first,
    /// with the line that says what went wrong.
    Errors {
        #[arg(long)]
        name: Option<String>,
        /// Only jobs that ended within this long (90s, 30m, 2h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// The whole failure excerpt (traceback, error block), not its one line.
        #[arg(long)]
        traceback: bool,
        /// How many of the newest ended jobs to look through.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Print the matching history rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the job's whole process tree (SIGTERM, SIGKILL after the grace).
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL (default: the service's).
        #[arg(long, value_name = "SECONDS")]
        grace: Option<f64>,
    },
    /// Stop (SIGSTOP) the job's whole process tree.
    Pause { id: String },
    /// Continue a paused job.
    Resume { id: String },
    /// The job's stdout (to stdout) and stderr (to stderr).
    Logs {
        id: String,
        /// Follow: print lines as they come until the job ends.
        #[arg(short, long, conflicts_with_all = ["grep", "stream"])]
        follow: bool,
        /// Only the lines that contain PATTERN (a plain string, as `grep -F`), as
        /// STREAM:LINE: text, to stdout.
        #[arg(long, value_name = "PATTERN")]
        grep: Option<String>,
        /// Only this stream: stdout or stderr.
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
    },
    /// The job's trace (JSONL), as far as it is written, to stdout.
    Trace { id: String },
    /// Ended jobs from the history database, newest first.
    History {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: JobsArgs) -> Result<i32> {
    let client = args.service.client()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(command(&client, args.command))
}

/// The token file's first line; empty is an error.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

fn print_json(v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    write_out(text.as_bytes(), false)
}

fn check_id(id: &str) -> Result<&str> {
    if !crate::service::job::valid_id(id) {
        bail!("{id:?} is not a job id");
    }
    Ok(id)
}

async fn command(client: &Client, cmd: JobsCommand) -> Result<i32> {
    match cmd {
        JobsCommand::Spawn {
            name,
            cwd,
            env,
            timeout,
            stuck_after,
            memory_limit,
            cpus,
            max_pids,
            follow,
            cmd,
        } => {
            let cwd = match cwd {
                Some(c) => std::path::absolute(&c).with_context(|| c.display().to_string())?,
                None => std::env::current_dir().context("the current directory")?,
            };
            let mut vars = serde_json::Map::new();
            for kv in env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?}: expected NAME=VALUE"))?;
                vars.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = json!({ "name": name, "cmd": cmd, "cwd": cwd, "env": vars });
            if let Some(t) = timeout {
                body["timeout_s"] = json!(t);
            }
            if let Some(t) = stuck_after {
                body["stuck_after_s"] = json!(t);
            }
            if let Some(m) = memory_limit {
                body["memory_limit"] = json!(m);
            }
            if let Some(c) = cpus {
                body["cpus"] = json!(c);
            }
            if let Some(n) = max_pids {
                body["max_pids"] = json!(n);
            }
            let v = client.post("/jobs", Some(&body)).await?.ok_json()?;
            let id = s(&v["id"]);
            if follow {
                eprintln!("denet-agent: job {id}");
                return follow_logs(client, &id).await.map(|end| exit_status(&end));
            }
            write_out(format!("{id}\n").as_bytes(), false)?;
        }
        JobsCommand::List { json } => {
            let v = client.get("/jobs").await?.ok_json()?;
            if json {
                print_json(&v)?;
            } else {
                let jobs: Vec<JobView> =
                    serde_json::from_value(v).context("the service's job list")?;
                print_table(
                    &["ID", "NAME", "STATUS", "FLAGS", "WALL_S", "CPU%", "RSS_KB"],
                    &jobs,
                    |j| {
                        let mut flags = Vec::new();
                        if j.stuck {
                            flags.push("stuck");
                        }
                        if j.paused {
                            flags.push("paused");
                        }
                        let (cpu, rss) = match (&j.live, &j.resources) {
                            (Some(l), _) => (Some(l.cpu_percent), Some(l.rss_kb as i64)),
                            (None, Some(r)) => (Some(r.cpu_percent), Some(r.peak_rss_kb)),
                            (None, None) => (None, None),
                        };
                        vec![
                            j.id.clone(),
                            j.name.clone(),
                            j.status.as_str().into(),
                            flags.join(","),
                            opt_num(j.duration_s, 1),
                            opt_num(cpu, 0),
                            rss.map_or("-".into(), |r| r.to_string()),
                        ]
                    },
                )?;
            }
        }
        JobsCommand::Show { id, json } => {
            let v = client
                .get(&format!("/jobs/{}", check_id(&id)?))
                .await?
                .ok_json()?;
            if json {
                print_json(&v)?;
            } else {
                let job: JobView = serde_json::from_value(v).context("the service's job view")?;
                write_out(views::job_text(&job).as_bytes(), false)?;
            }
        }
        JobsCommand::Errors {
            name,
            since,
            traceback,
            limit,
            json,
        } => {
            let from_ms = match &since {
                Some(s) => Some(
                    views::since_ms(s, crate::service::job::unix_ms())
                        .map_err(anyhow::Error::msg)?,
                ),
                None => None,
            };
            let mut q = format!("/history?limit={}", limit.clamp(1, 10_000));
            if let Some(n) = &name {
                q.push_str(&format!("&name={}", encode(n)));
            }
            let v = client.get(&q).await?.ok_json()?;
            #[derive(serde::Deserialize)]
            struct Rows {
                rows: Vec<HistoryRow>,
            }
            let rows: Rows = serde_json::from_value(v).context("the service's history")?;
            let errors: Vec<HistoryRow> = rows
                .rows
                .into_iter()
                .filter(views::is_error)
                .filter(|r| from_ms.is_none_or(|t| r.end_unix_ms >= t))
                .collect();
            if json {
                print_json(&serde_json::to_value(&errors)?)?;
            } else {
                write_out(views::errors_text(&errors, traceback).as_bytes(), false)?;
            }
        }
        JobsCommand::Stop { id, grace } => {
            let query = grace.map(|g| format!("?grace_s={g}")).unwrap_or_default();
            act(client, &id, "stop", &query, "stopping").await?;
        }
        JobsCommand::Pause { id } => act(client, &id, "pause", "", "paused").await?,
        JobsCommand::Resume { id } => act(client, &id, "resume", "", "resumed").await?,
        JobsCommand::Logs {
            id,
            follow,
            grep,
            stream: only,
        } => {
            let id = check_id(&id)?;
            if follow {
                follow_logs(client, id).await?;
                return Ok(0);
            }
            for (stream, to_stderr) in [("stdout", false), ("stderr", true)] {
                if only.as_deref().is_some_and(|o| o != stream) {
                    continue;
                }
                let a = client
                    .get(&format!("/jobs/{id}/logs?stream={stream}"))
                    .await?;
                if !a.status.is_success() {
                    a.ok_json()?;
                }
                match &grep {
                    Some(pattern) => {
                        let text = String::from_utf8_lossy(&a.body);
                        write_out(views::grep_lines(stream, &text, pattern).as_bytes(), false)?;
                    }
                    None => write_out(&a.body, to_stderr)?,
                }
            }
        }
        JobsCommand::Trace { id } => {
            let a = client
                .get(&format!("/jobs/{}/trace", check_id(&id)?))
                .await?;
            if !a.status.is_success() {
                a.ok_json()?;
            }
            write_out(&a.body, false)?;
        }
        JobsCommand::History {
            name,
            status,
            limit,
            json,
        } => {
            let mut q = format!("/history?limit={limit}");
            if let Some(n) = name {
                q.push_str(&format!("&name={}", encode(&n)));
            }
            if let Some(st) = status {
                q.push_str(&format!("&status={}", encode(&st)));
            }
            let v = client.get(&q).await?.ok_json()?;
            if json {
                print_json(&v)?;
            } else {
                #[derive(serde::Deserialize)]
                struct Rows {
                    rows: Vec<HistoryRow>,
                }
                let rows: Rows = serde_json::from_value(v).context("the service's history")?;
                print_table(
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "EXIT",
                        "WALL_S",
                        "CPU_S",
                        "PEAK_RSS_KB",
                        "PROCS",
                    ],
                    &rows.rows,
                    |r| {
                        vec![
                            r.id.clone(),
                            r.name.clone(),
                            r.status.as_str().into(),
                            match (r.exit_code, r.signal) {
                                (Some(c), _) => c.to_string(),
                                (None, Some(sig)) => format!("sig{sig}"),
                                (None, None) => "-".into(),
                            },
                            format!("{:.2}", r.duration_s),
                            format!("{:.2}", r.cpu_user_s + r.cpu_sys_s),
                            r.peak_rss_kb.to_string(),
                            r.process_count.to_string(),
                        ]
                    },
                )?;
            }
        }
    }
    Ok(0)
}

/// `POST /jobs/{id}/{action}{query}`, then `{done} ID (NAME)` on stderr.
async fn act(client: &Client, id: &str, action: &str, query: &str, done: &str) -> Result<()> {
    let path = format!("/jobs/{}/{action}{query}", check_id(id)?);
    let v = client.post(&path, None).await?.ok_json()?;
    eprintln!("{done} {} ({})", s(&v["id"]), s(&v["name"]));
    Ok(())
}

/// The status a shell would give the job: its exit code, 128+N when killed by signal
/// N, 1 when it ended without either (e.g. stopped before it started).
fn exit_status(job: &Value) -> i32 {
    match (job["exit_code"].as_i64(), job["signal"].as_i64()) {
        (Some(code), _) => code as i32,
        (None, Some(sig)) => 128 + sig as i32,
        _ => 1,
    }
}

/// Prints output lines as they come (after what was already written) until the end;
/// returns the final job view.
async fn follow_logs(client: &Client, id: &str) -> Result<Value> {
    let mut ws = client
        .websocket(&format!("/jobs/{id}/stream?replay=1"))
        .await?;
    while let Some(msg) = ws.next().await {
        let text = match msg.context("reading the job stream")? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).context("a stream message")?;
        match v["type"].as_str() {
            Some("stdout") => write_out(format!("{}\n", s(&v["line"])).as_bytes(), false)?,
            Some("stderr") => write_out(format!("{}\n", s(&v["line"])).as_bytes(), true)?,
            Some("lagged") => eprintln!(
                "denet-agent: {} stream messages skipped (slow reader)",
                v["skipped"]
            ),
            Some("end") => {
                eprintln!("denet-agent: job {} ended: {}", id, s(&v["job"]["status"]));
                return Ok(v["job"].clone());
            }
            _ => {}
        }
    }
    bail!("the job stream of {id} closed before the job ended")
}

fn write_out(bytes: &[u8], to_stderr: bool) -> Result<()> {
    use std::io::Write;
    let r = if to_stderr {
        std::io::stderr().lock().write_all(bytes)
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush())
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing output"),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn opt_num(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table<T>(headers: &[&str], rows: &[T], cells: impl Fn(&T) -> Vec<String>) -> Result<()> {
    let rows: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(parts.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    write_out(text.as_bytes(), false)
}
