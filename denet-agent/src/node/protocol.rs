//! The messages between a `run` and the node daemon's tracer: one JSON object per
//! line, each way. The client sends [`Request`]s one at a time and waits for the
//! answer; the daemon also sends [`Reply::Batch`]es of the run's records whenever it
//! has some, in order with the answers.

use std::io::{BufRead, Write};

use crate::{
    cgroup::{Limits, Usage},
    kernel::{
        counters::ProcDepth,
        tracer::{KernelCounters, RunCounters},
    },
    process::collector::{CollectorMsg, CollectorReport},
    task::Marks,
};

/// Bumped when a message changes meaning; the daemon refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a `Live` request of 100 000 pids fits).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Longest message line the client reads.
pub const MAX_REPLY_BYTES: usize = 256 << 20;

/// What a `run` asks of the daemon.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Track `pid`, the caller's own child held before exec, as a new run.
    Track(Box<TrackRequest>),
    /// The live counters of these processes of the run.
    Live { pids: Vec<u32> },
    /// The run's processes in the kernel's tracked set.
    TrackedPids,
    /// Forget a process of the run whose exit was not seen (it is gone).
    Untrack { pid: u32 },
    /// The run is over: send what is left, then [`Reply::Finished`].
    Finish,
    /// The runs the caller may see: its own (root: every run). A first request of
    /// its own, answered with [`Reply::Runs`]; the connection then ends.
    ListRuns,
    /// From a Slurm TaskProlog (`denet-agent slurm task-prolog`): trace the caller's
    /// parent, the job's task about to exec its script, and record it. A first
    /// request of its own, answered with [`Reply::Adopted`] once the task is tracked.
    SlurmTask(Box<SlurmTaskRequest>),
}

/// What a Slurm TaskProlog sends: the job's variables as the prolog sees them
/// (labels only: the job id and step are read from the task's `slurmstepd`, the
/// user from the kernel).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlurmTaskRequest {
    pub version: u32,
    /// `SLURM_*` variables and `DENET_AGENT_TRACE` (where the user wants the trace).
    pub env: Vec<(String, String)>,
}

/// A run the daemon traces, as `ListRuns` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub run: u32,
    /// The run's command (its first process).
    pub pid: u32,
    /// Whose run it is (the caller that asked for it, from the kernel).
    pub uid: u32,
    pub argv: Vec<String>,
    /// When it was forked, CLOCK_BOOTTIME ns.
    pub start_boot_ns: u64,
    /// Its cgroup (the memory controller's directory), when it has one.
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrackRequest {
    pub version: u32,
    pub pid: u32,
    /// When the client forked it, CLOCK_BOOTTIME ns.
    pub start_boot_ns: u64,
    pub argv: Vec<String>,
    /// Its working directory (resolves relative paths of `--files`).
    pub cwd: Option<String>,
    pub files: bool,
    pub syscalls: bool,
    pub events: bool,
    /// Limits of the run's cgroup (the daemon makes it).
    #[serde(default)]
    pub limits: Limits,
    /// Set by the daemon's own Slurm recorder: the one-time token of a Slurm task
    /// the daemon checked and handed to it (the process is not the caller's child).
    #[serde(default)]
    pub adopt_token: Option<String>,
    /// The command's task marks (its Slurm job, an engine task it starts): only
    /// labels on the caller's own records.
    #[serde(default)]
    pub task_marks: Marks,
}

/// What the daemon sends.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The process is tracked; what the run gets.
    Tracked {
        run: u32,
        files: bool,
        syscalls: bool,
        events: bool,
        /// The run's cgroup (its memory directory), or why it has none.
        cgroup: Result<String, String>,
    },
    /// Not tracked, and why (not the caller's child, not the caller's, ...).
    Refused {
        reason: String,
    },
    /// The answer to `ListRuns`.
    Runs {
        runs: Vec<RunInfo>,
    },
    /// The answer to `SlurmTask`: tracked as run `run`, its trace written to `trace`.
    Adopted {
        run: u32,
        trace: String,
    },
    /// Records of the run. (The large variants are boxed: the daemon's queue to
    /// each client allocates every slot at the size of the largest variant.)
    Batch(Box<CollectorMsg>),
    /// The counters of the asked-for processes that are the run's (the others are
    /// left out), with their pids.
    Live {
        readings: Vec<(u32, ProcDepth)>,
    },
    TrackedPids {
        pids: Vec<u32>,
    },
    /// The run's totals; the daemon closes the connection after it.
    Finished(Box<Finished>),
}

/// A run's totals, as the daemon counted them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Finished {
    pub report: CollectorReport,
    /// Events the kernel made for the run and the ring buffer dropped.
    pub run: RunCounters,
    /// The node's error counters over the run's lifetime (node-wide).
    pub node: KernelCounters,
    /// What the run's cgroup counted (none without one).
    pub cgroup: Option<Usage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the connection closed")]
    Closed,
    #[error("a message longer than {0} bytes")]
    TooLong(usize),
    #[error("reading a message: {0}")]
    Io(#[from] std::io::Error),
    #[error("an unreadable message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes one message and its newline.
pub fn send(to: &mut impl Write, msg: &impl serde::Serialize) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    to.write_all(&line)?;
    to.flush()?;
    Ok(())
}

/// Reads one message of at most `max` bytes.
pub fn receive<T: serde::de::DeserializeOwned>(
    from: &mut impl BufRead,
    max: usize,
) -> Result<T, ProtocolError> {
    let mut line = Vec::new();
    loop {
        let buf = from.fill_buf()?;
        if buf.is_empty() {
            return Err(ProtocolError::Closed);
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..used]);
        from.consume(used);
        if line.len() > max {
            return Err(ProtocolError::TooLong(max));
        }
        if done {
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire_and_long_lines_are_refused() {
        let mut wire = Vec::new();
        let track = Request::Track(Box::new(TrackRequest {
            version: PROTOCOL_VERSION,
            pid: 42,
            start_boot_ns: 7,
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\n".into()],
            cwd: Some("/tmp".into()),
            files: true,
            syscalls: false,
            events: false,
            limits: Limits::default(),
            task_marks: Marks::default(),
            adopt_token: None,
        }));
        send(&mut wire, &track).unwrap();
        let mut batch = CollectorMsg::default();
        batch.started.push(9);
        batch
            .files
            .push(serde_json::value::to_raw_value(&serde_json::json!({"kind": "file"})).unwrap());
        send(&mut wire, &Reply::Batch(Box::new(batch))).unwrap();
        let mut r = std::io::BufReader::new(&wire[..]);
        match receive::<Request>(&mut r, MAX_REQUEST_BYTES).unwrap() {
            Request::Track(t) => {
                assert_eq!((t.pid, t.argv[2].as_str()), (42, "echo \"hi\"\n"));
            }
            other => panic!("{other:?}"),
        }
        match receive::<Reply>(&mut r, MAX_REPLY_BYTES).unwrap() {
            Reply::Batch(b) => {
                assert_eq!(b.started, [9]);
                assert_eq!(b.files[0].get(), r#"{"kind":"file"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            receive::<Reply>(&mut r, MAX_REPLY_BYTES),
            Err(ProtocolError::Closed)
        ));
        let long = format!("\"{}\"\n", "x".repeat(100));
        let mut r = std::io::BufReader::with_capacity(16, long.as_bytes());
        assert!(matches!(
            receive::<String>(&mut r, 50),
            Err(ProtocolError::TooLong(50))
        ));
        let mut r = std::io::BufReader::new(&b"{not json\n"[..]);
        assert!(matches!(
            receive::<Request>(&mut r, 100),
            Err(ProtocolError::Json(_))
        ));
    }
}
