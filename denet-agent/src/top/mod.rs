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
        cli::read_token,
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
    /// The service: unix:/path (the node service by default) or http://HOST:PORT.
    #[arg(
        long,
        env = "DENET_SERVER",
        default_value = "unix:/run/denet-agent/agent.sock"
    )]
    server: Server,
    /// File holding the bearer token, when the service requires one.
    #[arg(long, env = "DENET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Redraws per second at most (1 to 10).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10))]
    fps: u32,
}

const JOB_KEYS: &str = "↑↓ move  ⏎ open  o sort  f filter  p pause  r resume  s stop  q quit";
const TRACE_KEYS: &str = "q quit";
const JOB_TRACE_KEYS: &str = "esc back  p pause  r resume  s stop  q quit";
/// How often the job list is fetched.
const JOBS_EVERY: Duration = Duration::from_secs(1);

/// A job action waiting for its confirmation (stop) or just done (its message).
enum Pending {
    None,
    ConfirmStop(String, String),
    Message(String, Instant),
}

struct TraceScreen {
    feed: Option<TraceFeed>,
    path: PathBuf,
    model: Option<TraceModel>,
    /// The job this trace belongs to, when opened from the list.
    job: Option<(String, String)>,
    error: Option<String>,
}

impl TraceScreen {
    fn new(path: PathBuf, job: Option<(String, String)>) -> Self {
        TraceScreen {
            feed: None,
            path,
            model: None,
            job,
            error: None,
        }
    }

    /// Reads what the trace gained; true when something changed.
    fn poll(&mut self) -> bool {
        if self.feed.is_none() {
            match TraceFeed::open(&self.path) {
                Ok(Some(feed)) => {
                    let here = nix::unistd::gethostname()
                        .ok()
                        .map(|h| h.to_string_lossy().into_owned());
                    // A finished trace's pids may belong to other processes now.
                    let running = crate::trace::reader::summary_at_end(&self.path).is_none();
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
        match feed.poll() {
            Ok(recs) => {
                let changed = !recs.is_empty();
                for r in recs {
                    model.apply(r);
                }
                changed
            }
            Err(e) => {
                self.error = Some(e.to_string());
                true
            }
        }
    }
}

pub fn run(args: TopArgs) -> Result<i32> {
    let token = match &args.token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    let client = Client::new(args.server.clone(), token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut app = App {
        client,
        rt,
        server: args.server_text(),
        jobs: JobsModel::default(),
        trace: args.file.clone().map(|p| TraceScreen::new(p, None)),
        standalone_trace: args.file.is_some(),
        pending: Pending::None,
        frame_every: Duration::from_millis(1000 / u64::from(args.fps)),
    };
    if let Some(t) = &mut app.trace {
        t.poll();
        if let Some(e) = &t.error {
            anyhow::bail!("{e}");
        }
    }
    // ratatui::init restores the terminal on a panic too.
    let mut terminal = ratatui::init();
    let result = app.run(&mut terminal);
    ratatui::restore();
    result.map(|()| 0)
}

impl TopArgs {
    fn server_text(&self) -> String {
        match &self.server {
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
}

impl App {
    fn run(&mut self, terminal: &mut DefaultTerminal) -> Result<()> {
        let mut last_jobs = Instant::now() - JOBS_EVERY;
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        let mut dirty = true;
        loop {
            if !self.standalone_trace && last_jobs.elapsed() >= JOBS_EVERY {
                self.refresh_jobs();
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
                match &t.model {
                    Some(m) => view::trace(f, m, &title, &foot),
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
                    let job = Some((j.id.clone(), j.name.clone()));
                    self.trace = Some(TraceScreen::new(PathBuf::from(&j.trace_path), job));
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
            .block_on(self.client.post(&path, None))
            .and_then(|a| a.ok_json());
        let msg = match answer {
            Ok(_) => format!("{action}: {name}"),
            Err(e) => format!("{action} {name}: {e:#}"),
        };
        self.pending = Pending::Message(msg, Instant::now());
    }

    fn refresh_jobs(&mut self) {
        let answer = self
            .rt
            .block_on(self.client.get("/jobs"))
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
