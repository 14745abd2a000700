//! `denet-agent top`: a terminal view of the node's jobs (through the service: a
//! user sees their own, root all) or of one trace being written. `follow` reads the
//! trace as it grows, `model` keeps what is shown, `view` draws it; this module runs
//! the terminal, the keys and the refresh.

pub mod follow;
pub mod model;
pub mod view;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use crate::{
    client::{
        cli::ServerArgs,
        http::{Client, Server},
    },
    service::job::JobView,
};
use follow::TraceFeed;
use model::{JobsModel, TraceModel};
use view::Footer;

#[derive(Args)]
pub struct TopArgs {
    /// A trace to watch (followed while it is written); without it, the node's jobs.
    file: Option<PathBuf>,
    #[command(flatten)]
    service: ServerArgs,
    /// The node daemon's tracer socket, for the plain runs it traces (yours; root:
    /// all).
    #[arg(
        long,
        env = "DENET_NODE_SOCKET",
        default_value = "/run/denet-agent/tracer.sock"
    )]
    node_socket: PathBuf,
    /// Redraws per second at most (1 to 10).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10))]
    fps: u32,
}

const JOB_KEYS: &str = "↑↓ move  ⏎ open  o sort  f filter  p pause  r resume  s stop  q quit";
const TRACE_KEYS: &str = "q quit";
const JOB_TRACE_KEYS: &str = "esc back  l logs  p pause  r resume  s stop  q quit";
/// How often the job list is fetched.
const JOBS_EVERY: Duration = Duration::from_secs(1);
/// The longest a request to the service may take before `top` goes on without it.
const HTTP_LIMIT: Duration = Duration::from_secs(2);

/// A job action waiting for its confirmation (stop) or just done (its message).
enum Pending {
    None,
    ConfirmStop(String, String),
    Message(String, Instant),
}

/// Where a trace screen reads from.
enum Source {
    File(PathBuf),
    /// A job's trace through the service, as its user sees it.
    Job(JobTrace),
}

/// `GET /jobs/{id}/trace?from=BYTE`: what the job's trace gained since the last
/// read; 0 bytes when nothing (or the service does not answer in time).
#[derive(Clone)]
struct JobTrace {
    client: Client,
    rt: tokio::runtime::Handle,
    id: String,
    offset: u64,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for JobTrace {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.chunk.len() {
            let path = format!("/jobs/{}/trace?from={}", self.id, self.offset);
            let answer = self
                .rt
                .block_on(async { tokio::time::timeout(HTTP_LIMIT, self.client.get(&path)).await });
            match answer {
                Ok(Ok(a)) if a.status.is_success() => {
                    self.chunk = a.body.to_vec();
                    self.at = 0;
                    self.offset += self.chunk.len() as u64;
                }
                Ok(Ok(a)) => {
                    let msg = a
                        .ok_json()
                        .err()
                        .map_or_else(String::new, |e| format!("{e:#}"));
                    return Err(std::io::Error::other(msg));
                }
                Ok(Err(e)) => return Err(std::io::Error::other(format!("{e:#}"))),
                Err(_) => return Ok(0),
            }
        }
        let n = (self.chunk.len() - self.at).min(out.len());
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

struct TraceScreen {
    feed: Option<TraceFeed>,
    source: Source,
    /// What the screen is called: the file, or the job.
    path: PathBuf,
    model: Option<TraceModel>,
    /// The job this trace belongs to, when opened from the list.
    job: Option<(String, String)>,
    error: Option<String>,
    /// `l`: the job's last output lines (or its failure excerpt once it failed),
    /// fetched from the service, in place of the latest exits.
    logs: Option<(String, Vec<String>)>,
}

impl TraceScreen {
    fn file(path: PathBuf) -> Self {
        TraceScreen {
            feed: None,
            source: Source::File(path.clone()),
            path,
            model: None,
            job: None,
            error: None,
            logs: None,
        }
    }

    fn job(source: JobTrace, name: String) -> Self {
        TraceScreen {
            feed: None,
            path: PathBuf::from(format!("job {name}")),
            job: Some((source.id.clone(), name)),
            source: Source::Job(source),
            model: None,
            error: None,
            logs: None,
        }
    }

    /// Reads what the trace gained; true when something changed.
    fn poll(&mut self) -> bool {
        if self.feed.is_none() {
            let opened = match &self.source {
                Source::File(p) => TraceFeed::open(p),
                Source::Job(j) => TraceFeed::from_source(Box::new(j.clone())),
            };
            match opened {
                Ok(Some(feed)) => {
                    let here = nix::unistd::gethostname()
                        .ok()
                        .map(|h| h.to_string_lossy().into_owned());
                    // A finished trace's pids may belong to other processes now; a
                    // job's trace read through the service is live while it runs.
                    let running = match &self.source {
                        Source::File(p) => crate::trace::reader::summary_at_end(p).is_none(),
                        Source::Job(_) => true,
                    };
                    let local = here.is_some() && feed.header().hostname == here && running;
                    self.model = Some(TraceModel::new(feed.header().clone(), local));
                    self.feed = Some(feed);
                }
                Ok(None) => return false,
                Err(e) => {
                    self.error = Some(format!("{}: {e}", self.path.display()));
                    return true;
                }
            }
        }
        let (Some(feed), Some(model)) = (&mut self.feed, &mut self.model) else {
            return false;
        };
        let (recs, err) = feed.poll();
        let changed = !recs.is_empty() || err.is_some();
        for r in recs {
            model.apply(r);
        }
        if let Some(e) = err {
            self.error = Some(e.to_string());
        }
        changed
    }
}

pub fn run(args: TopArgs) -> Result<i32> {
    let client = args.service.client()?;
    // One worker thread drives the requests, so that a job's trace can be read
    // through the service from inside the trace reader (`JobTrace`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut app = App {
        client,
        rt,
        server: args.server_text(),
        jobs: JobsModel::default(),
        trace: args.file.clone().map(TraceScreen::file),
        standalone_trace: args.file.is_some(),
        pending: Pending::None,
        frame_every: Duration::from_millis(1000 / u64::from(args.fps)),
        node_socket: args.node_socket.clone(),
    };
    if let Some(t) = &mut app.trace {
        t.poll();
        if let Some(e) = &t.error {
            anyhow::bail!("{e}");
        }
    }
    // The terminal may go away (its window or session closed) without a hangup
    // signal reaching us (under runuser or sudo): nobody is watching then, and the
    // keyboard reader would spin on end of file, so a watchdog ends the process.
    std::thread::Builder::new()
        .name("denet-top-tty".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(250));
            if terminal_gone() {
                std::process::exit(0);
            }
        })
        .context("starting the terminal watchdog")?;
    // ratatui::init restores the terminal on a panic too.
    let mut terminal = ratatui::init();
    let result = app.run(&mut terminal);
    ratatui::restore();
    result.map(|()| 0)
}

impl TopArgs {
    fn server_text(&self) -> String {
        match &self.service.server {
            Server::Unix(p) => format!("unix:{}", p.display()),
            Server::Tcp(a) => format!("http://{a}"),
        }
    }
}

struct App {
    client: Client,
    rt: tokio::runtime::Runtime,
    server: String,
    jobs: JobsModel,
    trace: Option<TraceScreen>,
    /// `top FILE`: the trace is the only screen.
    standalone_trace: bool,
    pending: Pending,
    frame_every: Duration,
    node_socket: PathBuf,
}

impl App {
    fn run(&mut self, terminal: &mut DefaultTerminal) -> Result<()> {
        let mut last_jobs = Instant::now() - JOBS_EVERY;
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        let mut dirty = true;
        loop {
            if !self.standalone_trace && last_jobs.elapsed() >= JOBS_EVERY {
                self.refresh_jobs();
                self.refresh_runs();
                self.refresh_logs();
                last_jobs = Instant::now();
                dirty = true;
            }
            if let Some(t) = &mut self.trace {
                dirty |= t.poll();
            }

            if let Pending::Message(_, at) = &self.pending {
                if at.elapsed() > Duration::from_secs(3) {
                    self.pending = Pending::None;
                    dirty = true;
                }
            }
            // At most `fps` frames a second; a frame a second keeps times moving.
            if (dirty && last_draw.elapsed() >= self.frame_every)
                || last_draw.elapsed() >= Duration::from_secs(1)
            {
                terminal.draw(|f| self.draw(f)).context("drawing")?;
                last_draw = Instant::now();
                dirty = false;
            }
            if event::poll(self.frame_every).context("reading the keyboard")? {
                if let Event::Key(k) = event::read().context("reading the keyboard")? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || self.on_key(k.code) {
                        return Ok(());
                    }
                    dirty = true;
                    last_draw = Instant::now() - self.frame_every;
                }
            }
        }
    }

    fn draw(&self, f: &mut ratatui::Frame) {
        let prompt = match &self.pending {
            Pending::ConfirmStop(_, name) => Some(format!("stop {name}? y/n")),
            Pending::Message(m, _) => Some(m.clone()),
            Pending::None => None,
        };
        match &self.trace {
            Some(t) => {
                let keys = if self.standalone_trace {
                    TRACE_KEYS
                } else {
                    JOB_TRACE_KEYS
                };
                let title = match &t.job {
                    Some((_, name)) => format!("job {name}"),
                    None => t.path.display().to_string(),
                };
                let foot = Footer {
                    keys,
                    prompt: prompt.as_deref().or(t.error.as_deref()),
                };
                let panel = t
                    .logs
                    .as_ref()
                    .map(|(title, lines)| view::Panel { title, lines });
                match &t.model {
                    Some(m) => view::trace(f, m, &title, panel.as_ref(), &foot),
                    None => view::waiting(f, &t.path, &foot),
                }
            }
            None => view::jobs(
                f,
                &self.jobs,
                &self.server,
                &Footer {
                    keys: JOB_KEYS,
                    prompt: prompt.as_deref(),
                },
            ),
        }
    }

    /// Handles a key; true to quit.
    fn on_key(&mut self, key: KeyCode) -> bool {
        if let Pending::ConfirmStop(id, name) = &self.pending {
            let (id, name) = (id.clone(), name.clone());
            self.pending = Pending::None;
            if key == KeyCode::Char('y') {
                self.act(&id, &name, "stop");
            }
            return false;
        }
        match key {
            KeyCode::Char('q') => return true,
            KeyCode::Esc if self.standalone_trace => return true,
            KeyCode::Esc => self.trace = None,
            KeyCode::Up | KeyCode::Char('k') => self.jobs.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.jobs.move_by(1),
            KeyCode::Enter if self.trace.is_none() => {
                if let Some(j) = self.jobs.selected_job() {
                    let source = JobTrace {
                        client: self.client.clone(),
                        rt: self.rt.handle().clone(),
                        id: j.id.clone(),
                        offset: 0,
                        chunk: Vec::new(),
                        at: 0,
                    };
                    self.trace = Some(TraceScreen::job(source, j.name.clone()));
                }
            }
            KeyCode::Char('l') if !self.standalone_trace => {
                if let Some(t) = &mut self.trace {
                    if t.logs.take().is_none() {
                        t.logs = Some(("logs".into(), Vec::new()));
                        self.refresh_logs();
                    }
                }
            }
            KeyCode::Char('o') => self.jobs.sort = self.jobs.sort.next(),
            KeyCode::Char('f') => {
                self.jobs.filter = self.jobs.filter.next();
                self.jobs.selected = 0;
            }
            KeyCode::Char(c @ ('p' | 'r' | 's')) if !self.standalone_trace => {
                if let Some((id, name)) = self.current_job() {
                    match c {
                        'p' => self.act(&id, &name, "pause"),
                        'r' => self.act(&id, &name, "resume"),
                        _ => self.pending = Pending::ConfirmStop(id, name),
                    }
                }
            }
            _ => {}
        }
        false
    }

    /// The job the keys act on: the open one, else the selected one.
    fn current_job(&self) -> Option<(String, String)> {
        match &self.trace {
            Some(t) => t.job.clone(),
            None => self
                .jobs
                .selected_job()
                .map(|j| (j.id.clone(), j.name.clone())),
        }
    }

    /// `POST /jobs/{id}/{action}`, with the same rights as the API.
    fn act(&mut self, id: &str, name: &str, action: &str) {
        let path = format!("/jobs/{id}/{action}");
        let answer = self
            .rt
            .block_on(with_limit(self.client.post(&path, None)))
            .and_then(|a| a.ok_json());
        let msg = match answer {
            Ok(_) => format!("{action}: {name}"),
            Err(e) => format!("{action} {name}: {e:#}"),
        };
        self.pending = Pending::Message(msg, Instant::now());
    }

    /// With the log panel open: the job's failure excerpt once it failed, else the
    /// last lines of its stderr and stdout (`GET /jobs/{id}/logs`).
    fn refresh_logs(&mut self) {
        let Some(t) = &mut self.trace else { return };
        let (Some((id, _)), Some(_)) = (&t.job, &t.logs) else {
            return;
        };
        let job = self
            .rt
            .block_on(with_limit(self.client.get(&format!("/jobs/{id}"))))
            .and_then(|a| a.ok_json())
            .and_then(|v| serde_json::from_value::<JobView>(v).context("the job view"));
        let excerpt = job.ok().and_then(|j| j.resources).and_then(|r| {
            Some((
                format!("failure ({})", r.failure_kind?.replace('_', " ")),
                r.failure_excerpt?,
            ))
        });
        if let Some((title, text)) = excerpt {
            t.logs = Some((title, text.lines().map(str::to_string).collect()));
            return;
        }
        let logs = self
            .rt
            .block_on(with_limit(self.client.get(&format!("/jobs/{id}/logs"))))
            .and_then(|a| a.ok_json());
        t.logs = Some(match logs {
            Ok(v) => {
                let mut lines = Vec::new();
                for stream in ["stdout", "stderr"] {
                    if let Some(text) = v[stream].as_str() {
                        let tail: Vec<&str> = text.lines().collect();
                        for l in &tail[tail.len().saturating_sub(20)..] {
                            lines.push(format!("{stream}: {l}"));
                        }
                    }
                }
                ("stdout and stderr (last lines)".into(), lines)
            }
            Err(e) => ("logs".into(), vec![format!("{e:#}")]),
        });
    }

    /// The runs the node daemon traces for this user (root: all); none when no
    /// daemon listens.
    fn refresh_runs(&mut self) {
        let Ok(runs) = crate::node::link::list_runs(&self.node_socket) else {
            self.jobs.runs.clear();
            return;
        };
        let now = crate::engine::clock::boottime_ns();
        self.jobs.runs = runs
            .into_iter()
            .map(|r| model::RunRow {
                pid: r.pid,
                user: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(r.uid))
                    .ok()
                    .flatten()
                    .map_or_else(|| r.uid.to_string(), |u| u.name),
                command: crate::report::command::full(&r.argv),
                elapsed_s: now.saturating_sub(r.start_boot_ns) as f64 / 1e9,
                memory_bytes: r.cgroup.and_then(|c| {
                    std::fs::read_to_string(std::path::Path::new(&c).join("memory.usage_in_bytes"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                }),
            })
            .collect();
    }

    fn refresh_jobs(&mut self) {
        let answer = self
            .rt
            .block_on(with_limit(self.client.get("/jobs")))
            .and_then(|a| a.ok_json())
            .and_then(|v| {
                serde_json::from_value::<Vec<JobView>>(v).context("the service's job list")
            });
        match answer {
            Ok(jobs) => self.jobs.set(jobs),
            Err(e) => self.jobs.error = Some(format!("{e:#}")),
        }
    }
}

/// A request that gives up after [`HTTP_LIMIT`]: a stalled service must not freeze
/// the screen or `q`.
async fn with_limit<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(HTTP_LIMIT, fut).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("the service did not answer within {HTTP_LIMIT:?}"),
    }
}

/// Whether the terminal on stdin has gone: hung up, or (a pseudo-terminal whose
/// window closed) deleted, when reads only return end of file.
fn terminal_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    if std::fs::read_link("/proc/self/fd/0")
        .is_ok_and(|p| p.to_string_lossy().ends_with(" (deleted)"))
    {
        return true;
    }
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => false,
    }
}
