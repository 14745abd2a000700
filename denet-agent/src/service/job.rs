//! One job as the service knows it: its request, its state while it is queued and
//! running, and the views of it that the API returns.

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::{broadcast, Notify};

use super::{identity::Identity, spec::JobSpec};
pub use crate::history::Status;
use crate::{engine::Control, history::HistoryRow};

/// The latest sample of a running job's tree.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Live {
    pub cpu_percent: f64,
    pub rss_kb: u64,
    /// The tree's resident memory as a percentage of the job's memory limit; null
    /// without a limit.
    #[serde(default)]
    pub memory_percent: Option<f64>,
    pub process_count: u64,
    /// Storage bytes read and written per second by the tree over the last sample
    /// window (the block layer's bytes, eBPF); null without eBPF.
    #[serde(default)]
    pub read_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub write_bytes_per_s: Option<f64>,
    /// Sampled at, Unix time in ms.
    pub sampled_unix_ms: i64,
}

/// What changes while a job lives. Guarded by one mutex, never held across an await.
pub struct JobState {
    pub status: Status,
    pub stuck: bool,
    /// The stuck flag was raised at some point (kept in the history row).
    pub stuck_seen: bool,
    pub paused: bool,
    pub cancel_requested: bool,
    /// Why the job was cancelled, when not by a client (`service shutdown`).
    pub cancel_reason: Option<String>,
    /// The grace the stop asked for (used if the stop came before the agent ran).
    pub cancel_grace: Option<std::time::Duration>,
    /// When the stop was asked for.
    pub cancel_at: Option<Instant>,
    /// When the job's agent was started.
    pub started_at: Option<Instant>,
    pub start_unix_ms: Option<i64>,
    pub agent_pid: Option<u32>,
    /// The command's pid, from the trace header.
    pub pid: Option<u32>,
    pub live: Option<Live>,
    /// Last CPU progress or output (drives the stuck flag).
    pub last_progress: Instant,
    /// Requests to the job's agent (`run --control-fd`); `None` when not running.
    pub control: Option<File>,
    /// Live messages; dropped when the job ends so its buffer is freed.
    pub events: Option<broadcast::Sender<Arc<str>>>,
    /// The history row, once the job has ended.
    pub result: Option<HistoryRow>,
    /// The last lines of its stderr, kept as they pass through the service (so the
    /// failure excerpt never reads a file in the user's job directory as root).
    pub stderr_tail: crate::failure::Tail,
}

/// Output bytes already sent as complete lines, per stream: a replay reads the log
/// files up to here and the live messages continue exactly after.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutputMark {
    pub stdout: u64,
    pub stderr: u64,
}

pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    /// The user the job runs as: whoever submitted it.
    pub owner: Identity,
    pub created_unix_ms: i64,
    pub dir: PathBuf,
    state: Mutex<JobState>,
    /// Held while output is appended and announced, and while a stream subscribes.
    pub output: Mutex<OutputMark>,
    /// Signalled on a stop request: wakes the job if it is waiting for a slot.
    pub cancelled: Notify,
}

/// Capacity of a job's live message channel: a slower subscriber is told how many
/// messages it missed (`lagged`) instead of slowing the job down. With pieces of at
/// most [`MAX_LINE`] bytes this bounds what a stalled subscriber pins.
const STREAM_CAPACITY: usize = 256;

/// Output lines longer than this are sent in pieces (live and replayed alike).
pub const MAX_LINE: usize = 16 * 1024;

/// The next piece of output to send from `rest`: (bytes of the piece, bytes used,
/// which includes its newline). `None` when `rest` holds only an unfinished line
/// and more may come.
pub fn next_piece(rest: &[u8], at_end: bool) -> Option<(usize, usize)> {
    match rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') {
        Some(i) => Some((i, i + 1)),
        // Decided on the first MAX_LINE + 1 bytes only, so live and replayed output
        // are cut at the same places.
        None if rest.len() > MAX_LINE => Some((MAX_LINE, MAX_LINE)),
        None if at_end && !rest.is_empty() => Some((rest.len(), rest.len())),
        None => None,
    }
}

impl Job {
    pub fn new(id: String, spec: JobSpec, owner: Identity, dir: PathBuf) -> Self {
        let (tx, _) = broadcast::channel(STREAM_CAPACITY);
        Job {
            id,
            spec,
            owner,
            created_unix_ms: unix_ms(),
            dir,
            state: Mutex::new(JobState {
                status: Status::Queued,
                stuck: false,
                stuck_seen: false,
                paused: false,
                cancel_requested: false,
                cancel_reason: None,
                cancel_grace: None,
                cancel_at: None,
                started_at: None,
                start_unix_ms: None,
                agent_pid: None,
                pid: None,
                live: None,
                last_progress: Instant::now(),
                control: None,
                events: Some(tx),
                result: None,
                stderr_tail: Default::default(),
            }),
            output: Mutex::new(OutputMark::default()),
            cancelled: Notify::new(),
        }
    }

    /// The state, even if a panicking thread poisoned the lock (the data stays usable).
    pub fn state(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn output_mark(&self) -> MutexGuard<'_, OutputMark> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trace_path(&self) -> PathBuf {
        self.dir.join("trace.jsonl")
    }

    pub fn log_path(&self, stream: LogStream) -> PathBuf {
        self.dir.join(stream.file_name())
    }

    /// Sends a live message to the job's subscribers (none listening is fine).
    pub fn publish(state: &JobState, msg: &impl Serialize) {
        // Nobody subscribed (the usual case): nothing to encode.
        let Some(tx) = state.events.as_ref().filter(|tx| tx.receiver_count() > 0) else {
            return;
        };
        if let Ok(text) = serde_json::to_string(msg) {
            let _ = tx.send(Arc::from(text));
        }
    }

    /// Sends a control request to the job's agent. False when it is not running.
    pub fn control(state: &mut JobState, request: Control) -> bool {
        match &mut state.control {
            Some(f) => f.write_all(format!("{request}\n").as_bytes()).is_ok(),
            None => false,
        }
    }

    /// The `status` stream message for the state as it is now.
    pub fn status_msg<'a>(&'a self, st: &'a JobState) -> StreamMsg<'a> {
        StreamMsg::Status {
            id: &self.id,
            status: st.status,
            stuck: st.stuck,
            paused: st.paused,
        }
    }

    /// Sends the job's current status to its subscribers.
    pub fn publish_status(&self, st: &JobState) {
        Job::publish(st, &self.status_msg(st));
    }

    /// The view of an ended job: its history row plus what only memory knows.
    pub fn ended_view(&self, st: &JobState, row: &HistoryRow) -> JobView {
        let mut v = JobView::from_row(row);
        v.created_unix_ms = Some(self.created_unix_ms);
        v.timeout_s = Some(self.spec.timeout.as_secs_f64());
        v.agent_pid = st.agent_pid;
        v.pid = st.pid;
        v.limits = Some(self.spec.limits);
        v
    }

    pub fn view(&self) -> JobView {
        let st = self.state();
        if let Some(row) = &st.result {
            return self.ended_view(&st, row);
        }
        let now = unix_ms();
        JobView {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            cmd: self.spec.cmd.clone(),
            cwd: self.spec.cwd.to_string_lossy().into_owned(),
            status: st.status,
            stuck: st.stuck,
            paused: st.paused,
            created_unix_ms: Some(self.created_unix_ms),
            start_unix_ms: st.start_unix_ms,
            end_unix_ms: None,
            duration_s: st.start_unix_ms.map(|s| (now - s).max(0) as f64 / 1e3),
            timeout_s: Some(self.spec.timeout.as_secs_f64()),
            exit_code: None,
            signal: None,
            error: None,
            pid: st.pid,
            agent_pid: st.agent_pid,
            live: st.live.clone(),
            resources: None,
            trace_path: self.trace_path().to_string_lossy().into_owned(),
            user: self.owner.user.clone(),
            uid: self.owner.uid,
            limits: Some(self.spec.limits),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }

    pub fn parse(s: &str) -> Option<LogStream> {
        match s {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// A job as the API shows it: live ones from memory, older ones from the history.
/// The `jobs` client reads it back as this same type.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: String,
    pub status: Status,
    pub stuck: bool,
    pub paused: bool,
    pub created_unix_ms: Option<i64>,
    pub start_unix_ms: Option<i64>,
    pub end_unix_ms: Option<i64>,
    /// Wall time so far (running) or in all (ended), seconds.
    pub duration_s: Option<f64>,
    pub timeout_s: Option<f64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub pid: Option<u32>,
    pub agent_pid: Option<u32>,
    /// Latest sample while running.
    pub live: Option<Live>,
    /// The history row (the trace summary's numbers) once ended.
    pub resources: Option<HistoryRow>,
    pub trace_path: String,
    /// The user the job runs as, and its uid.
    pub user: String,
    pub uid: u32,
    /// The limits of its cgroup (what it asked for within the service's caps);
    /// null for a job known only from the history.
    #[serde(default)]
    pub limits: Option<crate::cgroup::Limits>,
}

impl JobView {
    pub fn from_row(row: &HistoryRow) -> Self {
        JobView {
            id: row.id.clone(),
            name: row.name.clone(),
            cmd: row.cmd.clone(),
            cwd: row.cwd.clone(),
            status: row.status,
            stuck: false,
            paused: false,
            created_unix_ms: None,
            start_unix_ms: Some(row.start_unix_ms),
            end_unix_ms: Some(row.end_unix_ms),
            duration_s: Some(row.duration_s),
            timeout_s: None,
            exit_code: row.exit_code,
            signal: row.signal,
            error: row.error.clone(),
            pid: None,
            agent_pid: None,
            live: None,
            resources: Some(row.clone()),
            trace_path: row.trace_path.clone(),
            user: row.user.clone(),
            uid: row.uid,
            limits: None,
        }
    }
}

/// Messages on `GET /jobs/{id}/stream`, one JSON object per WebSocket text message.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMsg<'a> {
    /// The job's status and flags (sent first, and whenever stuck/paused change).
    Status {
        id: &'a str,
        status: Status,
        stuck: bool,
        paused: bool,
    },
    /// A line of the command's stdout or stderr (without its newline; lines longer
    /// than 64 KiB arrive in pieces).
    Stdout {
        line: &'a str,
    },
    Stderr {
        line: &'a str,
    },
    /// A trace record as written to the job's trace (`sample` or `process`).
    Sample {
        record: &'a serde_json::value::RawValue,
    },
    Process {
        record: &'a serde_json::value::RawValue,
    },
    /// The trace's `summary` record, as the agent wrote it (just before `end`).
    Summary {
        record: &'a serde_json::value::RawValue,
    },
    /// The subscriber was too slow and missed this many messages.
    Lagged {
        skipped: u64,
    },
    /// The last message: the final job view with its resource summary.
    End {
        job: &'a JobView,
    },
}

impl<'a> StreamMsg<'a> {
    /// A line (or piece) of the command's output.
    pub fn output(stream: LogStream, line: &'a str) -> Self {
        match stream {
            LogStream::Stdout => StreamMsg::Stdout { line },
            LogStream::Stderr => StreamMsg::Stderr { line },
        }
    }
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new job id: time-ordered hex milliseconds and 32 random bits, unique across
/// restarts and across nodes writing to one database.
pub fn new_id() -> String {
    let mut rand = [0u8; 4];
    // SAFETY: getrandom fills the buffer it is given, up to its length.
    let n = unsafe { libc::getrandom(rand.as_mut_ptr().cast(), rand.len(), 0) };
    if n != rand.len() as isize {
        // Fall back on time and pid: still unique within this process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        rand = (t ^ std::process::id()).to_le_bytes();
    }
    format!("{:011x}{}", unix_ms(), hex(&rand))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Ids are checked before they touch the file system or the database.
pub fn valid_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a job was asked to do, next to its trace: lets a restarted service write the
/// history row of a job whose service died before recording it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JobFile {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: PathBuf,
    pub timeout_s: f64,
    pub stuck_after_s: f64,
    pub created_unix_ms: i64,
    /// Who submitted it (files from before users were recorded: root).
    #[serde(default)]
    pub uid: u32,
    #[serde(default = "root_name")]
    pub user: String,
}

fn root_name() -> String {
    "root".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_valid() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(valid_id(&a), "{a}");
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
    }

    #[test]
    fn output_pieces() {
        assert_eq!(next_piece(b"ab\ncd", false), Some((2, 3)));
        assert_eq!(next_piece(b"cd", false), None);
        assert_eq!(next_piece(b"cd", true), Some((2, 2)));
        assert_eq!(next_piece(b"", true), None);
        assert_eq!(next_piece(b"\n", false), Some((0, 1)));
        let long = vec![b'x'; MAX_LINE + 5];
        assert_eq!(next_piece(&long, false), Some((MAX_LINE, MAX_LINE)));
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(next_piece(&exact, false), Some((MAX_LINE, MAX_LINE + 1)));
        assert_eq!(
            next_piece(&exact[..MAX_LINE], false),
            None,
            "waits for one more byte"
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Status::parse("done"), None);
    }
}
