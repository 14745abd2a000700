//! `denet-agent serve` over real HTTP and WebSocket: a service process is started per
//! test on its own Unix socket (or, where TCP is the point, a free loopback port),
//! driven through its API, and checked against ground
//! truth (exit codes, known CPU time, known process counts, /proc of the job's tree,
//! the trace the job kept, the history rows).
//!
//! Jobs are real eBPF-traced runs (`--require-ebpf`): root is needed; outside CI the
//! tests skip with a message, in CI they fail without it.

use std::{
    collections::HashSet,
    io::{BufRead, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::helpers::{agent_bin, ebpf_ready, scratch_dir};
use denet_agent::client::{Client, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn workload() -> String {
    agent_bin()
        .with_file_name("workload")
        .to_string_lossy()
        .into_owned()
}

/// A running service and what it printed.
pub(crate) struct Svc {
    child: Option<Child>,
    /// `unix:/path` or `HOST:PORT`, as `raw_http` takes it.
    pub(crate) addr: String,
    /// As the `jobs` client takes it: `unix:/path` or `http://HOST:PORT`.
    pub(crate) server: String,
    log: Arc<Mutex<String>>,
    pub(crate) client: Client,
}

impl Svc {
    /// Starts `denet-agent serve` with short grace and startup windows.
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Svc {
        Self::start_with(data, extra, None)
    }

    pub(crate) fn start_with(data: &Path, extra: &[&str], token: Option<&str>) -> Svc {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["serve", "--data-dir"]).arg(data);
        if !extra.contains(&"--no-ebpf") {
            cmd.arg("--require-ebpf");
        }
        cmd.args(["--kill-grace", "0.5", "--startup-window", "1"]);
        if !extra.contains(&"--socket") {
            cmd.arg("--socket").arg(data.with_extension("sock"));
        }
        if !extra.contains(&"--tracer-socket") {
            cmd.arg("--tracer-socket")
                .arg(data.with_extension("tracer.sock"));
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start denet-agent serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                log2.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        // With --listen the TCP address is announced after the socket: take the last.
        let mut addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the service did not start: {}", log.lock().unwrap()));
        if extra.contains(&"--listen") {
            addr = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no TCP listener: {}", log.lock().unwrap()));
        }
        let server: Server = addr.parse().unwrap();
        Svc {
            child: Some(child),
            client: Client::new(server, token.map(str::to_string)),
            server: addr.clone(),
            addr: addr.trim_start_matches("http://").to_string(),
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(crate) async fn spawn(&self, body: Value) -> String {
        let a = self.client.post("/jobs", Some(&body)).await.unwrap();
        assert_eq!(a.status, 201, "POST /jobs {body}: {:?}", a.json());
        a.json().unwrap()["id"].as_str().unwrap().to_string()
    }

    /// POST without a body.
    pub(crate) async fn post(&self, path: &str) -> denet_agent::client::Answer {
        self.client.post(path, None).await.unwrap()
    }

    pub(crate) async fn job(&self, id: &str) -> Value {
        let a = self.client.get(&format!("/jobs/{id}")).await.unwrap();
        assert_eq!(a.status, 200, "GET /jobs/{id}");
        a.json().unwrap()
    }

    /// Polls until the job has a final status.
    pub(crate) async fn wait_end(&self, id: &str, limit: Duration) -> Value {
        let until = Instant::now() + limit;
        loop {
            let v = self.job(id).await;
            if !matches!(v["status"].as_str(), Some("queued" | "running")) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "job {id} still {} after {limit:?}",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the job runs (its agent started and the command's pid is known).
    pub(crate) async fn wait_running(&self, id: &str) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.job(id).await;
            if v["status"] == "running" && v["pid"].is_u64() {
                return;
            }
            assert!(Instant::now() < until, "job {id} not running: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the exit status of the service.
    pub(crate) fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < until,
                "service still up {limit:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("service log:\n{}", self.log.lock().unwrap());
        }
    }
}

/// A service for one test (data under a fresh scratch directory), or `None` when the
/// test must skip (see `ebpf_ready`).
pub(crate) fn service_for(test: &str, extra: &[&str]) -> Option<(PathBuf, Svc)> {
    if !ebpf_ready(test) {
        return None;
    }
    let dir = scratch_dir(test);
    let svc = Svc::start(&dir.join("data"), extra);
    Some((dir, svc))
}

/// One request on a fresh connection, written by hand (no client library to hide
/// what goes over the wire). Returns the status and the body.
pub(crate) fn raw_http(addr: &str, request: &[u8]) -> (u16, String) {
    trait Conn: Read + Write {}
    impl<T: Read + Write> Conn for T {}
    let limit = Some(Duration::from_secs(10));
    let mut s: Box<dyn Conn> = match addr.strip_prefix("unix:") {
        Some(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).unwrap();
            s.set_read_timeout(limit).unwrap();
            Box::new(s)
        }
        None => {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(limit).unwrap();
            Box::new(s)
        }
    };
    // The server may answer (413) before reading a huge body: ignore write errors.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn post_raw(
    addr: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &str,
) -> (u16, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_http(addr, &req)
}

pub(crate) fn get_raw(addr: &str, path: &str, extra: &str) -> (u16, String) {
    raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
}

/// The error body is JSON with an `error` message.
fn assert_json_error(status: u16, body: &str, want: u16, context: &str) {
    assert_eq!(status, want, "{context}: {body}");
    let v: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{context}: error body is not JSON ({e}): {body:?}"));
    assert!(v["error"].is_string(), "{context}: {v}");
}

/// Pids of a process and all its descendants, from /proc.
pub(crate) fn tree_of(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// utime+stime of the processes, clock ticks, and their states.
pub(crate) fn cpu_ticks(pids: &[u32]) -> (u64, Vec<char>) {
    let mut ticks = 0;
    let mut states = Vec::new();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        states.push(f[0].chars().next().unwrap());
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    (ticks, states)
}

fn alive(pid: u32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// Reads stream messages until the `end` message (or the limit).
async fn collect_stream(
    ws: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
    limit: Duration,
) -> Vec<Value> {
    let mut msgs = Vec::new();
    let until = tokio::time::Instant::now() + limit;
    while let Ok(Some(m)) = tokio::time::timeout_at(until, ws.next()).await {
        match m.expect("stream message") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let end = v["type"] == "end";
                msgs.push(v);
                if end {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    msgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_http_and_websocket() {
    let Some((dir, svc)) = service_for("lifecycle_over_http_and_websocket", &[]) else {
        return;
    };
    let w = workload();
    // Ground truth: 300 ms of CPU in one known child, 4 processes (sh, sleep, burn, write),
    // 3 output lines, exit 0, 200000 bytes written to a new file.
    let script = format!(
        "echo first; sleep 0.3; {w} burn 300; echo to-stderr >&2; {w} write 200000 out.bin; echo \"$GREETING\""
    );
    let id = svc
        .spawn(json!({"name": "life", "cmd": ["sh", "-c", script], "cwd": dir, "env": {"GREETING": "hello from env"}}))
        .await;
    let mut ws = svc
        .client
        .websocket(&format!("/jobs/{id}/stream?replay=1"))
        .await
        .unwrap();
    let msgs = collect_stream(&mut ws, Duration::from_secs(30)).await;
    let of = |t: &str| msgs.iter().filter(|m| m["type"] == t).collect::<Vec<_>>();
    assert_eq!(msgs[0]["type"], "status", "first message: {}", msgs[0]);
    let stdout: Vec<&str> = of("stdout")
        .iter()
        .map(|m| m["line"].as_str().unwrap())
        .collect();
    assert_eq!(
        stdout,
        ["first", "hello from env"],
        "stdout lines, in order, exactly once"
    );
    let stderr: Vec<&str> = of("stderr")
        .iter()
        .map(|m| m["line"].as_str().unwrap())
        .collect();
    assert_eq!(stderr, ["to-stderr"]);
    assert!(!of("sample").is_empty(), "samples are streamed");
    let procs = of("process");
    assert_eq!(procs.len(), 4, "one process message per process: {procs:?}");
    let end = msgs.last().unwrap();
    assert_eq!(
        end["type"], "end",
        "the stream ends with the job's final view"
    );
    let summary = &msgs[msgs.len() - 2];
    assert_eq!(
        summary["type"], "summary",
        "preceded by the trace's summary"
    );
    assert_eq!(summary["record"]["exit_code"], 0);
    assert_eq!(summary["record"]["process_count"], 4);
    assert_eq!(end["job"]["status"], "succeeded");

    let v = svc.job(&id).await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["exit_code"], 0);
    let r = &v["resources"];
    assert_eq!(r["process_count"], 4);
    let cpu = r["cpu_user_s"].as_f64().unwrap() + r["cpu_sys_s"].as_f64().unwrap();
    // The burn child alone uses 300 ms; sh, write and the agent's hooks add a little.
    assert!((0.29..0.45).contains(&cpu), "cpu {cpu} s for a 300 ms burn");
    // The kernel accounts dirtied page-cache memory, not bytes: 200000 rounded up to
    // whole pages, or folios (seen: 49 and 50 pages); tolerance one 64 KiB folio.
    let wb = r["write_bytes"].as_i64().unwrap();
    assert!(
        (200_000..=200_000 + 65_536).contains(&wb),
        "write_bytes {wb}"
    );
    assert!(r["duration_s"].as_f64().unwrap() >= 0.3);
    assert_eq!(r["lost_events"], 0);

    // The kept trace is the run's JSONL, and its summary has the same numbers.
    let a = svc.client.get(&format!("/jobs/{id}/trace")).await.unwrap();
    assert_eq!(a.status, 200);
    let trace = crate::helpers::parse_jsonl(&String::from_utf8_lossy(&a.body));
    assert_eq!(trace[0]["kind"], "header");
    assert_eq!(trace[0]["cwd"], dir.to_string_lossy().as_ref());
    let summary = trace
        .iter()
        .find(|r| r["kind"] == "summary")
        .expect("summary");
    assert_eq!(
        summary["cpu_user_ns"].as_f64().unwrap() / 1e9,
        r["cpu_user_s"].as_f64().unwrap()
    );
    assert_eq!(summary["process_count"], r["process_count"]);
    assert_eq!(trace.iter().filter(|r| r["kind"] == "process").count(), 4);

    use std::os::unix::fs::PermissionsExt;
    let job_dir = dir.join("data/jobs").join(&id);
    let mode = std::fs::metadata(&job_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "job directories are owner-only");
    let a = svc.client.get(&format!("/jobs/{id}/logs")).await.unwrap();
    let logs = a.json().unwrap();
    assert_eq!(logs["stdout"], "first\nhello from env\n");
    assert_eq!(logs["stderr"], "to-stderr\n");
    let a = svc
        .client
        .get(&format!("/jobs/{id}/logs?stream=stderr"))
        .await
        .unwrap();
    assert_eq!(&a.body[..], b"to-stderr\n");

    // Listed, and in the history with the same numbers.
    let list = svc.client.get("/jobs").await.unwrap().json().unwrap();
    assert!(list.as_array().unwrap().iter().any(|j| j["id"] == id));
    let h = svc
        .client
        .get("/history?name=life")
        .await
        .unwrap()
        .json()
        .unwrap();
    let rows = h["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0], r, "the history row is the job's resource summary");

    // A stream opened after the end gets the summary at once.
    let mut ws = svc
        .client
        .websocket(&format!("/jobs/{id}/stream"))
        .await
        .unwrap();
    let late = collect_stream(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["type"], "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_get_409_until_the_job_ends() {
    let Some((_dir, svc)) = service_for("duplicate_names_get_409_until_the_job_ends", &[]) else {
        return;
    };
    let first = svc
        .spawn(json!({"name": "dup", "cmd": ["sleep", "30"]}))
        .await;
    let a = svc
        .client
        .post("/jobs", Some(&json!({"name": "dup", "cmd": ["true"]})))
        .await
        .unwrap();
    assert_eq!(a.status, 409);
    assert_eq!(
        a.json().unwrap()["id"],
        first,
        "the 409 names the running job"
    );
    // Another name is fine meanwhile.
    let other = svc.spawn(json!({"name": "other", "cmd": ["true"]})).await;
    assert_eq!(
        svc.wait_end(&other, Duration::from_secs(20)).await["status"],
        "succeeded"
    );

    let a = svc.post(&format!("/jobs/{first}/stop")).await;
    assert_eq!(a.status, 202);
    let v = svc.wait_end(&first, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["signal"], 15, "sleep dies of the SIGTERM");
    // Ended: the name is free again, and stopping again is a conflict.
    let again = svc.spawn(json!({"name": "dup", "cmd": ["true"]})).await;
    assert_ne!(again, first);
    let a = svc.post(&format!("/jobs/{first}/stop")).await;
    assert_eq!(a.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stop_escalation_and_startup_failures() {
    let Some((_dir, svc)) = service_for("timeout_stop_escalation_and_startup_failures", &[]) else {
        return;
    };
    // Timeout: 1 s on a 30 s sleep.
    let t = svc
        .spawn(json!({"name": "slow", "cmd": ["sleep", "30"], "timeout_s": 1}))
        .await;
    // Stop of a tree that ignores SIGTERM: SIGKILL after the 0.5 s grace, and the
    // whole tree (shell and its sleeping child) is gone.
    let s = svc
        .spawn(json!({"name": "stubborn", "cmd": ["sh", "-c", "trap '' TERM; sleep 30 & sleep 30; wait"]}))
        .await;
    // startup_failed: non-zero within the window, and a program that does not exist.
    let quick = svc
        .spawn(json!({"name": "quick", "cmd": ["sh", "-c", "exit 3"]}))
        .await;
    let missing = svc
        .spawn(json!({"name": "missing", "cmd": ["no-such-program-xyz"]}))
        .await;
    // failed: non-zero after the 1 s startup window.
    let late = svc
        .spawn(json!({"name": "late", "cmd": ["sh", "-c", "sleep 1.3; exit 4"]}))
        .await;

    svc.wait_running(&s).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = svc.job(&s).await["pid"]
        .as_u64()
        .expect("pid of a running job") as u32;
    let tree = tree_of(pid);
    assert!(tree.len() >= 3, "sh and two sleeps: {tree:?}");
    let stopped_at = Instant::now();
    let a = svc.post(&format!("/jobs/{s}/stop")).await;
    assert_eq!(a.status, 202);
    let v = svc.wait_end(&s, Duration::from_secs(20)).await;
    let took = stopped_at.elapsed();
    assert_eq!(v["status"], "cancelled");
    assert!(
        took >= Duration::from_millis(500),
        "SIGKILL only after the grace ({took:?})"
    );
    assert!(
        tree.iter().all(|p| !alive(*p)),
        "the whole tree is gone: {tree:?}"
    );

    let v = svc.wait_end(&t, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "timed_out");
    let d = v["duration_s"].as_f64().unwrap();
    assert!(
        (1.0..3.0).contains(&d),
        "timed out after {d} s (1 s timeout, 0.5 s grace)"
    );

    let v = svc.wait_end(&quick, Duration::from_secs(20)).await;
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("startup_failed"), Some(3))
    );
    let v = svc.wait_end(&missing, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "startup_failed");
    assert_eq!(v["exit_code"], 127);
    assert!(
        v["error"].as_str().unwrap().contains("command not found"),
        "{v}"
    );
    let v = svc.wait_end(&late, Duration::from_secs(20)).await;
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("failed"), Some(4))
    );

    let h = svc
        .client
        .get("/history?status=startup_failed")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["rows"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The serializing lock is held for the whole test on purpose.
#[allow(clippy::await_holding_lock)]
async fn pause_stops_the_whole_tree_and_resume_continues_it() {
    if !ebpf_ready("pause_stops_the_whole_tree_and_resume_continues_it") {
        return;
    }
    let _serial = crate::helpers::exclusive();
    let dir = scratch_dir("serve-pause");
    let svc = Svc::start(&dir.join("data"), &[]);
    // Two busy processes: the shell's child and a grandchild.
    let id = svc
        .spawn(json!({"name": "busy", "cmd": ["sh", "-c", "sh -c 'while :; do :; done' & while :; do :; done"]}))
        .await;
    svc.wait_running(&id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = svc.job(&id).await["pid"].as_u64().unwrap() as u32;
    let tree = tree_of(pid);
    assert!(tree.len() >= 2, "{tree:?}");

    let a = svc.post(&format!("/jobs/{id}/pause")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json().unwrap()["paused"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (t0, states) = cpu_ticks(&tree);
    assert!(
        states.iter().all(|s| *s == 'T'),
        "every process stopped: {states:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t1, _) = cpu_ticks(&tree);
    // Ground truth from /proc: no CPU at all while paused (1 tick of slack).
    assert!(t1 - t0 <= 1, "paused tree used {} ticks in 1 s", t1 - t0);

    let a = svc.post(&format!("/jobs/{id}/resume")).await;
    assert_eq!(a.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t2, states) = cpu_ticks(&tree);
    assert!(
        states.iter().all(|s| *s != 'T'),
        "every process continued: {states:?}"
    );
    // Two spinning processes on 2 CPUs: well over half a CPU-second (100 ticks/s).
    assert!(
        t2 - t1 >= 50,
        "resumed tree used only {} ticks in 1 s",
        t2 - t1
    );

    // Pausing an ended job is a conflict.
    svc.post(&format!("/jobs/{id}/stop")).await;
    assert_eq!(
        svc.wait_end(&id, Duration::from_secs(20)).await["status"],
        "cancelled"
    );
    let a = svc.post(&format!("/jobs/{id}/pause")).await;
    assert_eq!(a.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_flag_is_raised_shown_and_streamed() {
    let Some((_dir, svc)) = service_for("stuck_flag_is_raised_shown_and_streamed", &[]) else {
        return;
    };
    // No CPU, no output: stuck after 1 s. A chatty job next to it never is.
    let id = svc
        .spawn(json!({"name": "idle", "cmd": ["sleep", "30"], "stuck_after_s": 1}))
        .await;
    let busy = svc
        .spawn(json!({"name": "chatty", "cmd": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.25; done"], "stuck_after_s": 1}))
        .await;
    let mut ws = svc
        .client
        .websocket(&format!("/jobs/{id}/stream"))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut flagged = false;
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout_at(until, ws.next()).await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "status" && v["stuck"] == true {
            flagged = true;
            break;
        }
    }
    assert!(flagged, "a status message with stuck: true is streamed");
    assert_eq!(svc.job(&id).await["stuck"], true, "and shown in the status");
    let list = svc.client.get("/jobs").await.unwrap().json().unwrap();
    let chatty = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == busy)
        .unwrap();
    assert_eq!(chatty["stuck"], false, "output is progress");
    svc.post(&format!("/jobs/{id}/stop")).await;
    let v = svc.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(
        v["resources"]["stuck"], true,
        "the history row remembers the flag"
    );
    let v = svc.wait_end(&busy, Duration::from_secs(20)).await;
    assert_eq!(v["resources"]["stuck"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_4xx() {
    if !ebpf_ready("bad_input_gets_the_right_4xx") {
        return;
    }
    let dir = scratch_dir("serve-bad");
    let svc = Svc::start(
        &dir.join("data"),
        &["--max-body-bytes", "65536", "--max-jobs", "2"],
    );
    let addr = svc.addr.clone();
    let json_ct = "application/json";
    let cases: &[(&str, &[u8], u16)] = &[
        ("cmd is a string", br#"{"name":"a","cmd":"ls -l"}"#, 400),
        ("cmd empty", br#"{"name":"a","cmd":[]}"#, 400),
        ("cmd numbers", br#"{"name":"a","cmd":[1]}"#, 400),
        ("name missing", br#"{"cmd":["true"]}"#, 400),
        ("name with slash", br#"{"name":"../x","cmd":["true"]}"#, 400),
        (
            "env name invalid",
            br#"{"name":"a","cmd":["true"],"env":{"A-B":"1"}}"#,
            400,
        ),
        (
            "cwd missing",
            br#"{"name":"a","cmd":["true"],"cwd":"/nonexistent-dir"}"#,
            400,
        ),
        (
            "cwd a file",
            br#"{"name":"a","cmd":["true"],"cwd":"/etc/hostname"}"#,
            400,
        ),
        (
            "env value not a string",
            br#"{"name":"a","cmd":["true"],"env":{"A":1}}"#,
            400,
        ),
        (
            "cwd relative",
            br#"{"name":"a","cmd":["true"],"cwd":"tmp"}"#,
            400,
        ),
        (
            "timeout negative",
            br#"{"name":"a","cmd":["true"],"timeout_s":-5}"#,
            400,
        ),
        (
            "timeout a string",
            br#"{"name":"a","cmd":["true"],"timeout_s":"5"}"#,
            400,
        ),
        (
            "unknown field",
            br#"{"name":"a","cmd":["true"],"shell":true}"#,
            400,
        ),
        ("not JSON", b"name=a&cmd=true", 400),
        ("truncated JSON", br#"{"name":"a","cmd":["tr"#, 400),
        ("JSON array", b"[]", 400),
    ];
    for (what, body, want) in cases {
        let (st, b) = post_raw(&addr, "/jobs", json_ct, body, "");
        assert_json_error(st, &b, *want, what);
    }
    // A body over the limit.
    let huge = format!(r#"{{"name":"a","cmd":["echo","{}"]}}"#, "x".repeat(200_000));
    let (st, b) = post_raw(&addr, "/jobs", json_ct, huge.as_bytes(), "");
    assert_json_error(st, &b, 413, "huge body");
    let (st, b) = post_raw(
        &addr,
        "/jobs",
        "text/plain",
        br#"{"name":"a","cmd":["true"]}"#,
        "",
    );
    assert_json_error(st, &b, 415, "wrong content type");
    // Unknown and malformed ids, routes, methods, parameters.
    for path in [
        "/jobs/00000000deadbeef",
        "/jobs/not-an-id",
        "/jobs/00000000deadbeef/trace",
        "/jobs/00000000deadbeef/logs",
        "/nowhere",
    ] {
        let (st, b) = get_raw(&addr, path, "");
        assert_json_error(st, &b, 404, path);
    }
    for path in [
        "/jobs/00000000deadbeef/stop",
        "/jobs/00000000deadbeef/pause",
        "/jobs/00000000deadbeef/resume",
    ] {
        let (st, b) = post_raw(&addr, path, json_ct, b"", "");
        assert_json_error(st, &b, 404, path);
    }
    let (st, b) = raw_http(
        &addr,
        b"DELETE /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_json_error(st, &b, 405, "DELETE /jobs");
    let (st, b) = get_raw(&addr, "/jobs/00000000deadbeef/stream", "");
    assert_json_error(st, &b, 404, "stream of an unknown job");
    for path in [
        "/history?limit=abc",
        "/history?limit=0",
        "/history?status=running",
        "/history?status=bogus",
        "/history?colour=red",
    ] {
        let (st, b) = get_raw(&addr, path, "");
        assert_json_error(st, &b, 400, path);
    }
    // The cap on queued + running jobs.
    let a = svc
        .spawn(json!({"name": "cap1", "cmd": ["sleep", "30"]}))
        .await;
    let b2 = svc
        .spawn(json!({"name": "cap2", "cmd": ["sleep", "30"]}))
        .await;
    let (st, b) = post_raw(
        &addr,
        "/jobs",
        json_ct,
        br#"{"name":"cap3","cmd":["true"]}"#,
        "",
    );
    assert_json_error(st, &b, 429, "over --max-jobs");
    let (st, b) = post_raw(
        &addr,
        &format!("/jobs/{a}/stop?grace_s=-1"),
        json_ct,
        b"",
        "",
    );
    assert_json_error(st, &b, 400, "negative grace");
    let (st, b) = get_raw(&addr, &format!("/jobs/{a}/stream"), "");
    assert!((400..500).contains(&st), "plain GET on a stream: {st} {b}");
    assert_json_error(st, &b, st, "plain GET on a stream");
    for id in [&a, &b2] {
        svc.post(&format!("/jobs/{id}/stop")).await;
        svc.wait_end(id, Duration::from_secs(20)).await;
    }
    // Nothing above crashed the service.
    let (st, b) = get_raw(&addr, "/health", "");
    assert_eq!(st, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_a_token_that_names_a_user_and_the_node_socket_is_open_to_all() {
    if !ebpf_ready("tcp_needs_a_token_that_names_a_user_and_the_node_socket_is_open_to_all") {
        return;
    }
    let dir = scratch_dir("serve-auth");
    let serve = |args: &[&str]| {
        Command::new(agent_bin())
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(dir.join("d0"))
            .output()
            .unwrap()
    };
    // TCP without tokens, tokens without TCP, the old single-token flag: refused at start.
    for (args, says) in [
        (&["--listen", "127.0.0.1:0"][..], "--tokens"),
        (&["--listen", "0.0.0.0:0"][..], "--tokens"),
        (&["--tokens", "/nonexistent"][..], "--listen"),
        (
            &["--listen", "127.0.0.1:0", "--token-file", "/x"][..],
            "--tokens",
        ),
    ] {
        let out = serve(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A token file others may read, a short token, an unknown user: refused, named.
    use std::os::unix::fs::PermissionsExt;
    let tf = dir.join("tokens");
    let tfs = tf.to_string_lossy().into_owned();
    for (text, mode, says) in [
        ("0123456789abcdef-root root\n", 0o644, "others may read it"),
        ("short root\n", 0o600, "shorter than 16"),
        ("0123456789abcdef-x no-such-user-denet\n", 0o600, "no entry"),
    ] {
        std::fs::write(&tf, text).unwrap();
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = serve(&["--listen", "127.0.0.1:0", "--tokens", &tfs]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(says), "{text}: {err}");
    }

    std::fs::write(
        &tf,
        "# root's token\ns3cret-token-0123456789 root\nnobodys-token-0123456789 nobody\n",
    )
    .unwrap();
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let svc = Svc::start_with(
        &dir.join("d1"),
        &["--listen", "127.0.0.1:0", "--tokens", &tfs],
        Some("s3cret-token-0123456789"),
    );
    let addr = svc.addr.clone();
    assert!(!addr.starts_with("unix:"), "{addr}");
    for (what, header) in [
        ("no token", ""),
        ("wrong token", "Authorization: Bearer nope\r\n"),
        (
            "a prefix of the token",
            "Authorization: Bearer s3cret-token\r\n",
        ),
        ("not bearer", "Authorization: Basic czNjcmV0LXRva2Vu\r\n"),
    ] {
        let (st, b) = get_raw(&addr, "/jobs", header);
        assert_json_error(st, &b, 401, what);
        let (st, b) = post_raw(
            &addr,
            "/jobs",
            "application/json",
            br#"{"name":"a","cmd":["true"]}"#,
            header,
        );
        assert_json_error(st, &b, 401, what);
    }
    let (st, _) = get_raw(
        &addr,
        "/jobs",
        "Authorization: Bearer s3cret-token-0123456789\r\n",
    );
    assert_eq!(st, 200);
    let id = svc.spawn(json!({"name": "authed", "cmd": ["true"]})).await;
    let v = svc.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["user"], "root", "{v}");
    // A token names the user it acts as: nobody's job runs as nobody and root's job
    // is not nobody's to read.
    let nobody = "Authorization: Bearer nobodys-token-0123456789\r\n";
    let (st, b) = post_raw(
        &addr,
        "/jobs",
        "application/json",
        br#"{"name":"as-nobody","cmd":["id","-u"],"cwd":"/tmp"}"#,
        nobody,
    );
    assert_eq!(st, 201, "{b}");
    let nid: Value = serde_json::from_str(b.trim()).unwrap();
    let nid = nid["id"].as_str().unwrap().to_string();
    let v = svc.wait_end(&nid, Duration::from_secs(20)).await;
    assert_eq!(
        (v["status"].as_str(), v["uid"].as_u64()),
        (Some("succeeded"), Some(65534)),
        "{v}"
    );
    let (st, out) = get_raw(&addr, &format!("/jobs/{nid}/logs?stream=stdout"), nobody);
    assert_eq!(st, 200, "{out}");
    assert!(out.contains("65534\n"), "{out:?}");
    let (st, b) = get_raw(&addr, &format!("/jobs/{id}"), nobody);
    assert_json_error(st, &b, 403, "root's job with nobody's token");

    // The node socket (the service runs as root): every local user may connect.
    let sock = dir.join("d1.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "socket mode {mode:o}");
    let client = Client::new(format!("unix:{}", sock.display()).parse().unwrap(), None);
    let a = client
        .post("/jobs", Some(&json!({"name": "sock", "cmd": ["true"]})))
        .await
        .unwrap();
    assert_eq!(a.status, 201);
    let id = a.json().unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(
        svc.wait_end(&id, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let mut svc = svc;
    assert!(svc.terminate(Duration::from_secs(20)).success());
    assert!(!sock.exists(), "the socket is removed at exit");
}

fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The serializing lock is held for the whole test on purpose.
#[allow(clippy::await_holding_lock)]
async fn two_hundred_concurrent_jobs_all_end_in_the_history() {
    if !ebpf_ready("two_hundred_concurrent_jobs_all_end_in_the_history") {
        return;
    }
    let _serial = crate::helpers::exclusive();
    let dir = scratch_dir("serve-200");
    let svc = Arc::new(Svc::start(&dir.join("data"), &[]));
    let rss_before = vm_kb(svc.pid(), "VmRSS:");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let svc = svc.clone();
        tasks.spawn(async move {
            svc.spawn(json!({"name": format!("short-{i}"), "cmd": ["sh", "-c", "echo $0", format!("{i}")]}))
                .await
        });
    }
    let mut ids = HashSet::new();
    while let Some(id) = tasks.join_next().await {
        ids.insert(id.unwrap());
    }
    assert_eq!(ids.len(), 200, "200 distinct ids");
    let until = Instant::now() + Duration::from_secs(300);
    let rows = loop {
        let h = svc
            .client
            .get("/history?limit=1000")
            .await
            .unwrap()
            .json()
            .unwrap();
        let rows = h["rows"].as_array().unwrap().clone();
        if rows.len() >= 200 {
            break rows;
        }
        assert!(Instant::now() < until, "only {} of 200 rows", rows.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let elapsed = started.elapsed();
    let got: HashSet<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids, "every job has exactly its row");
    for r in &rows {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["process_count"], 1, "{r}");
        assert_eq!(r["lost_events"], 0, "{r}");
    }
    // Each job printed its own number.
    for r in rows.iter().take(10) {
        let id = r["id"].as_str().unwrap();
        let n = r["name"].as_str().unwrap().trim_start_matches("short-");
        let a = svc
            .client
            .get(&format!("/jobs/{id}/logs?stream=stdout"))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&a.body), format!("{n}\n"));
    }
    let hwm = vm_kb(svc.pid(), "VmHWM:");
    eprintln!(
        "200 jobs: {:.1} s, service RSS {rss_before} KiB before, peak {hwm} KiB",
        elapsed.as_secs_f64()
    );
    // Bounded: the service holds only small per-job state (workers are separate
    // processes). 64 MiB is about 3x what was measured (docs/benchmarks.md).
    assert!(hwm < 64 * 1024, "service peak RSS {hwm} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_running_jobs_cleanly_and_history_survives_restart() {
    if !ebpf_ready("shutdown_ends_running_jobs_cleanly_and_history_survives_restart") {
        return;
    }
    let dir = scratch_dir("serve-restart");
    let data = dir.join("data");
    let mut svc = Svc::start(&data, &[]);
    let done = svc
        .spawn(json!({"name": "done", "cmd": ["sh", "-c", "echo kept"]}))
        .await;
    assert_eq!(
        svc.wait_end(&done, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let long = svc
        .spawn(json!({"name": "long", "cmd": ["sh", "-c", "sleep 60 & sleep 60; wait"]}))
        .await;
    svc.wait_running(&long).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = svc.job(&long).await["pid"].as_u64().unwrap() as u32;
    let tree = tree_of(pid);
    assert!(tree.len() >= 3, "{tree:?}");
    let st = svc.terminate(Duration::from_secs(20));
    assert!(st.success(), "clean exit: {st:?}");
    assert!(
        tree.iter().all(|p| !alive(*p)),
        "the job's tree was stopped: {tree:?}"
    );
    drop(svc);

    let svc = Svc::start(&data, &[]);
    let h = svc.client.get("/history").await.unwrap().json().unwrap();
    let rows = h["rows"].as_array().unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}: {h}"))
    };
    assert_eq!(row(&done)["status"], "succeeded");
    assert_eq!(row(&long)["status"], "cancelled");
    assert_eq!(row(&long)["error"], "cancelled: service shutdown");
    assert_eq!(row(&long)["signal"], 15);
    // Listed as recent jobs, oldest first.
    let list = svc.client.get("/jobs").await.unwrap().json().unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [done.as_str(), long.as_str()], "{list}");
    // Jobs from before the restart: status, trace and logs still served.
    assert_eq!(svc.job(&long).await["status"], "cancelled");
    let a = svc
        .client
        .get(&format!("/jobs/{done}/logs?stream=stdout"))
        .await
        .unwrap();
    assert_eq!(&a.body[..], b"kept\n");
    let a = svc
        .client
        .get(&format!("/jobs/{long}/trace"))
        .await
        .unwrap();
    let trace = crate::helpers::parse_jsonl(&String::from_utf8_lossy(&a.body));
    let summary = trace
        .iter()
        .find(|r| r["kind"] == "summary")
        .expect("summary kept");
    assert_eq!(summary["cancelled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_is_shared_and_survives_restart() {
    if !ebpf_ready("postgres_history_is_shared_and_survives_restart") {
        return;
    }
    let Some(db) =
        crate::helpers::pg::TestDb::create("postgres_history_is_shared_and_survives_restart").await
    else {
        return;
    };
    let dir = scratch_dir("serve-pg");
    // Two services (two "nodes") writing to one PostgreSQL database.
    let a = Svc::start(&dir.join("a"), &["--db", &db.url]);
    let b = Svc::start(&dir.join("b"), &["--db", &db.url]);
    // A job inside a Slurm job's environment: its run and its one task carry the
    // job id in the history.
    let ja = a
        .spawn(json!({"name": "pg-a", "cmd": ["sh", "-c", "exit 0"],
            "env": {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "wf"}}))
        .await;
    let jb = b
        .spawn(json!({"name": "pg-b", "cmd": ["sh", "-c", "sleep 1.2; exit 2"]}))
        .await;
    assert_eq!(
        a.wait_end(&ja, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    assert_eq!(
        b.wait_end(&jb, Duration::from_secs(20)).await["status"],
        "failed"
    );
    for svc in [&a, &b] {
        let h = svc.client.get("/history").await.unwrap().json().unwrap();
        let ids: HashSet<&str> = h["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            HashSet::from([ja.as_str(), jb.as_str()]),
            "both nodes see both rows"
        );
    }
    drop((a, b));
    let c = Svc::start(&dir.join("a"), &["--db", &db.url]);
    let v = c.job(&jb).await;
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("failed"), Some(2))
    );
    let h = c
        .client
        .get("/history?status=failed")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["rows"].as_array().unwrap().len(), 1);
    // The rows are real PostgreSQL rows.
    let pg = db.client().await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM job_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let slurm: Option<String> = pg
        .query_one("SELECT slurm_job_id FROM job_history WHERE id = $1", &[&ja])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slurm.as_deref(), Some("77"));
    let tasks = pg
        .query(
            "SELECT run_id, engine, name, slurm_job_id FROM task_history",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "the Slurm job is the run's one task");
    let t = &tasks[0];
    assert_eq!(
        (
            t.get::<_, String>(0),
            t.get::<_, String>(1),
            t.get::<_, String>(2),
            t.get::<_, Option<String>>(3)
        ),
        (ja.clone(), "slurm".into(), "wf".into(), Some("77".into()))
    );
}

/// `denet-agent jobs ...` against a service: its output and exit status.
pub(crate) fn jobs_cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(["jobs", "--server", server])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cli_drives_the_service() {
    let Some((_dir, svc)) = service_for("jobs_cli_drives_the_service", &[]) else {
        return;
    };
    let server = svc.server.clone();
    let cli = |args: &[&str]| jobs_cli(&server, args);

    let (code, id, err) = cli(&[
        "spawn",
        "--name",
        "cli",
        "--env",
        "X=from-cli",
        "--",
        "sh",
        "-c",
        "echo $X; sleep 0.5; echo done >&2; echo bye",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    // Follow: every line once, then exit when the job ends.
    let (code, out, err) = cli(&["logs", "-f", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-cli\nbye\n");
    assert!(
        err.contains("done\n") && err.contains("ended: succeeded"),
        "{err}"
    );
    let (_, out, _) = cli(&["logs", &id]);
    assert_eq!(out, "from-cli\nbye\n");
    // Following an ended job prints its whole output and returns.
    let (code, out, err) = cli(&["logs", "-f", &id]);
    assert_eq!((code, out.as_str()), (0, "from-cli\nbye\n"), "{err}");
    assert!(err.contains("done\n"), "{err}");
    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("succeeded")),
        "{out}"
    );
    let (_, out, _) = cli(&["show", "--json", &id]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["resources"]["process_count"], 2, "sh and sleep");

    let (code, long, err) = cli(&["spawn", "--name", "long", "--", "sleep", "30"]);
    assert_eq!(code, 0, "{err}");
    let long = long.trim().to_string();
    let (code, _, err) = cli(&["spawn", "--name", "long", "--", "true"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("already queued or running") && err.contains("409"),
        "{err}"
    );
    svc.wait_running(&long).await;
    assert_eq!(cli(&["pause", &long]).0, 0);
    assert_eq!(svc.job(&long).await["paused"], true);
    assert_eq!(cli(&["resume", &long]).0, 0);
    assert_eq!(svc.job(&long).await["paused"], false);
    assert_eq!(cli(&["stop", "--grace", "1", &long]).0, 0);
    assert_eq!(
        svc.wait_end(&long, Duration::from_secs(20)).await["status"],
        "cancelled"
    );

    let (_, out, _) = cli(&["history", "--status", "cancelled"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&long) && l.contains("long")),
        "{out}"
    );
    let (_, out, _) = cli(&["history", "--name", "cli", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);

    // spawn --follow: the output, then the job's own exit status, like `run`.
    let (code, out, err) = cli(&[
        "spawn",
        "--name",
        "follow",
        "-f",
        "--",
        "sh",
        "-c",
        "echo hi; exit 7",
    ]);
    assert_eq!((code, out.as_str()), (7, "hi\n"), "{err}");
    let (code, _, _) = cli(&[
        "spawn",
        "--name",
        "follow",
        "-f",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(code, 128 + 15);

    let (code, _, err) = cli(&["show", "00000000deadbeef"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("job not found") && err.contains("404"),
        "{err}"
    );
    let (code, _, err) = jobs_cli("http://127.0.0.1:1", &["list"]);
    assert_eq!(code, 2);
    assert!(err.contains("is `denet-agent serve` running?"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_stops_its_jobs_and_the_next_start_records_them() {
    if !ebpf_ready("a_killed_service_stops_its_jobs_and_the_next_start_records_them") {
        return;
    }
    let dir = scratch_dir("serve-kill");
    let data = dir.join("data");
    let mut svc = Svc::start(&data, &[]);
    let long = svc
        .spawn(json!({"name": "orphaned", "cmd": ["sh", "-c", "sleep 60 & sleep 60; wait"]}))
        .await;
    svc.wait_running(&long).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = svc.job(&long).await["pid"].as_u64().unwrap() as u32;
    let tree = tree_of(pid);
    assert!(tree.len() >= 3, "{tree:?}");
    // SIGKILL: no shutdown code runs in the service.
    let mut child = svc.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Each job's agent sees its control pipe close and stops the tree itself
    // (SIGTERM; sleep dies of it): within the 0.5 s grace and a margin.
    let until = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < until,
            "the job's tree outlived its service: {tree:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(svc);

    // The next start finds the unrecorded job and writes its row from its trace.
    let svc = Svc::start(&data, &[]);
    let until = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let h = svc
            .client
            .get("/history?name=orphaned")
            .await
            .unwrap()
            .json()
            .unwrap();
        if let Some(r) = h["rows"].as_array().unwrap().first() {
            break r.clone();
        }
        assert!(Instant::now() < until, "no row for the orphaned job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["id"], long);
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["signal"], 15);
    assert!(
        row["error"].as_str().unwrap().contains("service stopped"),
        "{row}"
    );
    let a = svc
        .client
        .get(&format!("/jobs/{long}/trace"))
        .await
        .unwrap();
    let trace = crate::helpers::parse_jsonl(&String::from_utf8_lossy(&a.body));
    let summary = trace
        .iter()
        .find(|r| r["kind"] == "summary")
        .expect("the agent finished its trace");
    assert_eq!(summary["cancelled"], true);
    // The node tracer died with the service: the trace says so, and what was still
    // running was followed from /proc from then on (sh and the two sleeps, unless
    // they died before the first reading).
    assert!(
        summary["tracer_error"]
            .as_str()
            .is_some_and(|e| e.contains("node tracer went away")),
        "{summary}"
    );
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("node tracer went away"),
        "{row}"
    );
    let procs: Vec<&Value> = trace.iter().filter(|r| r["kind"] == "process").collect();
    assert_eq!(row["process_count"], procs.len(), "{row}");
    assert!(procs.len() <= 3, "{procs:?}");
    assert!(procs.iter().all(|p| p["source"] == "proc"), "{procs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_killed_after_its_timeout() {
    let Some((_dir, svc)) = service_for("a_frozen_agent_is_killed_after_its_timeout", &[]) else {
        return;
    };
    // The command stops its own agent (its parent), which then cannot enforce the
    // 1 s timeout: the service kills the agent's process group 10 s after timeout +
    // grace (0.5 s).
    let id = svc
        .spawn(json!({"name": "freezer", "cmd": ["sh", "-c", "sleep 0.5; kill -STOP $PPID; sleep 60"], "timeout_s": 1}))
        .await;
    svc.wait_running(&id).await;
    let pid = svc.job(&id).await["pid"].as_u64().unwrap() as u32;
    let tree = tree_of(pid);
    let v = svc.wait_end(&id, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "timed_out", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("did not end the job"),
        "{v}"
    );
    let d = v["duration_s"].as_f64().unwrap();
    assert!((11.0..20.0).contains(&d), "killed after {d} s");
    assert!(
        tree.iter().all(|p| !alive(*p)),
        "the job's tree is gone: {tree:?}"
    );
    // The service kept answering meanwhile.
    assert_eq!(svc.client.get("/health").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_max_running_queue_and_a_queued_stop_never_starts() {
    let Some((dir, svc)) = service_for(
        "jobs_beyond_max_running_queue_and_a_queued_stop_never_starts",
        &["--max-running", "1"],
    ) else {
        return;
    };
    let a = svc
        .spawn(json!({"name": "a", "cmd": ["sleep", "30"]}))
        .await;
    svc.wait_running(&a).await;
    let b = svc
        .spawn(json!({"name": "b", "cmd": ["sh", "-c", "echo b ran"]}))
        .await;
    let c = svc
        .spawn(json!({"name": "c", "cmd": ["sh", "-c", "echo c ran"]}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.job(&b).await["status"], "queued");
    assert_eq!(svc.job(&c).await["status"], "queued");
    // A queued name is taken too.
    let dup = svc
        .client
        .post("/jobs", Some(&json!({"name": "c", "cmd": ["true"]})))
        .await
        .unwrap();
    assert_eq!(dup.status, 409);

    assert_eq!(svc.post(&format!("/jobs/{c}/stop")).await.status, 202);
    let v = svc.wait_end(&c, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "cancelled");
    assert!(
        !dir.join("data/jobs").join(&c).join("job.json").exists()
            && !dir.join("data/jobs").join(&c).join("trace.jsonl").exists(),
        "a job stopped while queued never started"
    );
    assert_eq!(svc.job(&b).await["status"], "queued", "still waiting for a");

    svc.post(&format!("/jobs/{a}/stop")).await;
    assert_eq!(
        svc.wait_end(&a, Duration::from_secs(20)).await["status"],
        "cancelled"
    );
    let v = svc.wait_end(&b, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "succeeded", "b ran once a's slot was free");
    let a = svc
        .client
        .get(&format!("/jobs/{b}/logs?stream=stdout"))
        .await
        .unwrap();
    assert_eq!(&a.body[..], b"b ran\n");
    let h = svc
        .client
        .get("/history?name=c")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        h["rows"][0]["status"], "cancelled",
        "the queued stop has its row"
    );
}
