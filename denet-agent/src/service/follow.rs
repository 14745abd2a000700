//! Follows a running job: its trace file as the agent writes it (samples and
//! process records streamed live, the last record once the agent exits) and its
//! stdout and stderr (kept in the job directory, streamed line by line).

use std::{
    fs::File,
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::unix::pipe,
};

use super::job::{unix_ms, Job, Live, LogStream, StreamMsg};
use crate::trace;

/// The longest trace line the service follows (a sample of a huge tree is a few
/// MiB); longer ones are skipped, so a trace file grown by its user cannot grow the
/// service.
const MAX_TAILED_LINE: usize = 16 << 20;
/// Bytes of such lines skipped before the service stops following a trace.
const MAX_SKIPPED_BYTES: u64 = 1 << 30;

/// Follows the trace file the agent writes and streams its samples and process
/// records; ends after the last record once the agent has exited.
pub(super) async fn tail_trace(job: Arc<Job>, mut agent_done: tokio::sync::watch::Receiver<bool>) {
    use std::io::Read;
    let path = job.trace_path();
    let mut file: Option<File> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut skipped = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read after checking: everything the agent wrote before exiting is then seen.
        let done = *agent_done.borrow_and_update();
        if file.is_none() {
            file = File::open(&path).ok();
        }
        let mut got = false;
        if let Some(f) = &mut file {
            // At most one buffer per turn: the file is the job's user's to write (or
            // to grow without end), and the service's workers are shared.
            if let Ok(n) = f.read(&mut buf) {
                if n > 0 {
                    got = true;
                    pending.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
                        on_trace_line(&job, &pending[start..start + i]);
                        start += i + 1;
                    }
                    pending.drain(..start);
                    // No trace line is this long: whatever this is, it is dropped (its
                    // tail up to the next newline reads as no record), and after a
                    // while the file is not read any more.
                    if pending.len() > MAX_TAILED_LINE {
                        skipped += pending.len() as u64;
                        pending = Vec::new();
                        if skipped > MAX_SKIPPED_BYTES {
                            return;
                        }
                    }
                }
            }
            if got {
                tokio::task::yield_now().await;
            }
        }
        // Done once everything the agent wrote is read.
        if done && !got {
            return;
        }
        if !got {
            tokio::select! {
                _ = tokio::time::sleep(TAIL_PERIOD) => {}
                _ = agent_done.changed() => {}
            }
        }
    }
}

fn on_trace_line(job: &Job, line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let Some(kind) = trace::reader::line_kind(text) else {
        return;
    };
    // Only streamed kinds need the record as a whole (file and event records can be
    // a firehose).
    let raw = || serde_json::from_str::<&RawValue>(text).ok();
    match &*kind {
        "header" => {
            if let Ok(h) = serde_json::from_str::<trace::Header>(text) {
                job.state().pid = h.pid;
            }
        }
        "sample" => {
            let Ok(sample) = serde_json::from_str::<trace::Sample>(text) else {
                return;
            };
            let cpu = sample.cpu_percent.unwrap_or(0.0);
            if cpu > 0.0 || sample.oncpu_ns.unwrap_or(0) > 0 {
                progress(job);
            }
            let mut st = job.state();
            let rss_kb = sample.rss_kb.unwrap_or(0);
            let per_s = |bytes: Option<u64>| {
                let window_s = sample.window_ms? / 1e3;
                let bytes = bytes? as f64;
                (window_s > 0.0).then(|| (bytes / window_s).round())
            };
            st.live = Some(Live {
                cpu_percent: cpu,
                rss_kb,
                memory_percent: job.spec.limits.memory_bytes.map(|limit| {
                    (rss_kb as f64 * 1024.0 * 10_000.0 / limit.max(1) as f64).round() / 100.0
                }),
                process_count: u64::from(sample.process_count.unwrap_or(0)),
                read_bytes_per_s: per_s(sample.blk_read_bytes),
                write_bytes_per_s: per_s(sample.blk_write_bytes),
                sampled_unix_ms: unix_ms(),
            });
            if let Some(record) = raw() {
                Job::publish(&st, &StreamMsg::Sample { record });
            }
        }
        "process" => {
            if let Some(record) = raw() {
                Job::publish(&job.state(), &StreamMsg::Process { record });
            }
        }
        "summary" => {
            if let Some(record) = raw() {
                Job::publish(&job.state(), &StreamMsg::Summary { record });
            }
        }
        _ => {}
    }
}

/// Keeps one output stream of the command in its log file and streams it by line.
pub(super) async fn read_output(
    job: Arc<Job>,
    stream: LogStream,
    mut from: pipe::Receiver,
    mut to: File,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes of an unfinished line, already in the file but not yet sent.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        progress(&job);
        let mut mark = job.output_mark();
        if to.write_all(&buf[..n]).is_err() {
            eprintln!(
                "denet-agent serve: job {}: cannot write its {}",
                job.id,
                stream.as_str()
            );
        }
        pending.extend_from_slice(&buf[..n]);
        let sent = send_lines(&job, stream, &mut pending, false);
        add_mark(&mut mark, stream, sent);
    }
    let mut mark = job.output_mark();
    let sent = send_lines(&job, stream, &mut pending, true);
    add_mark(&mut mark, stream, sent);
}

fn add_mark(mark: &mut super::job::OutputMark, stream: LogStream, n: u64) {
    match stream {
        LogStream::Stdout => mark.stdout += n,
        LogStream::Stderr => mark.stderr += n,
    }
}

/// Sends the complete lines in `pending` (all of it at the end of the stream) and
/// returns how many bytes were sent.
fn send_lines(job: &Job, stream: LogStream, pending: &mut Vec<u8>, at_end: bool) -> u64 {
    let mut st = job.state();
    let mut start = 0;
    while let Some((len, used)) = super::job::next_piece(&pending[start..], at_end) {
        let line = String::from_utf8_lossy(&pending[start..start + len]);
        let msg = StreamMsg::output(stream, &line);
        Job::publish(&st, &msg);
        if stream == LogStream::Stderr {
            st.stderr_tail.push(&line);
        }
        start += used;
    }
    pending.drain(..start);
    start as u64
}

/// The agent's own messages, kept as agent.log.
pub(super) async fn copy_log(mut from: impl AsyncRead + Unpin, mut to: File) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// How often the trace file is read for new records while the job runs.
const TAIL_PERIOD: Duration = Duration::from_millis(100);

/// CPU time or output: the job is alive; clears the stuck flag.
pub(super) fn progress(job: &Job) {
    let mut st = job.state();
    st.last_progress = Instant::now();
    if st.stuck {
        st.stuck = false;
        job.publish_status(&st);
    }
}
