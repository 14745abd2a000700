//! The HTML report in real headless Chromium, driven over the DevTools protocol
//! (`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4, no extra crates).
//! It must render (a screenshot that is not blank), the page's own checks must find
//! the timeline and both charts, the console must have no errors, and the page must
//! load nothing but itself (self-contained).
//!
//! Outside CI a missing Chromium skips with a message; in CI it fails.

use std::{
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::helpers::report::{agent, data, stats_json, stderr};
use serde_json::{json, Value};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two valid descriptors that we then own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

struct Browser {
    child: Child,
    to: std::fs::File,
    events: mpsc::Receiver<Value>,
    next_id: u64,
    /// Events that arrived while waiting for a response.
    backlog: Vec<Value>,
    _profile: PathBuf,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = crate::helpers::scratch_dir("chromium-profile");
        let (cmd_r, cmd_w) = pipe();
        let (ev_r, ev_w) = pipe();
        let (cr, ew) = (cmd_r.as_raw_fd(), ev_w.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above 4 first so the dup2s cannot clobber each other.
                let a = libc::fcntl(cr, libc::F_DUPFD, 10);
                let b = libc::fcntl(ew, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop(cmd_r);
        drop(ev_w);
        let (tx, rx) = mpsc::channel();
        let mut from = std::fs::File::from(ev_r);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to: std::fs::File::from(cmd_w),
            events: rx,
            next_id: 0,
            backlog: Vec::new(),
            _profile: profile,
        }
    }

    fn recv(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        self.events
            .recv_timeout(left)
            .expect("Chromium answered within the time limit")
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.recv(deadline);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.backlog.push(v);
        }
    }

    fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|e| e["method"] == method) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.recv(deadline);
            if v["method"] == method {
                return v;
            }
            self.backlog.push(v);
        }
    }

    fn drain(&mut self) -> Vec<Value> {
        while let Ok(v) = self.events.try_recv() {
            self.backlog.push(v);
        }
        std::mem::take(&mut self.backlog)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eval(b: &mut Browser, s: &str, expr: &str) -> Value {
    let r = b.call(
        Some(s),
        "Runtime.evaluate",
        json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
    );
    assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
    r["result"]["value"].clone()
}

/// Base64 (standard alphabet) to bytes, to keep the screenshot for people to look at.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .fold(0u32, |acc, &c| (acc << 6) | u32::from(val(c)))
            << (6 * (4 - chunk.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn count_rows(nodes: &Value) -> u64 {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| 1 + count_rows(&n["children"]))
        .sum()
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if crate::helpers::in_ci() {
            panic!(
                "chromium is not installed: scripts/setup.sh installs it (apt package chromium)"
            );
        }
        eprintln!(
            "skipped html_report_renders_in_headless_chromium: no chromium (run scripts/setup.sh)"
        );
        return;
    };
    let dir = crate::helpers::scratch_dir("html");
    let html = dir.join("report.html");
    let o = agent(&[
        "export",
        "tests/data/depth.jsonl",
        "-f",
        "html",
        "-o",
        &html.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let url = format!("file://{}", html.display());
    let expected_rows = count_rows(&stats_json(&data("depth.jsonl"))["tree"]);

    let mut b = Browser::launch(&bin);
    let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
    let attached = b.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_string();
    let s = session.as_str();
    for m in [
        "Runtime.enable",
        "Log.enable",
        "Network.enable",
        "Page.enable",
    ] {
        b.call(Some(s), m, json!({}));
    }
    b.call(
        Some(s),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1800, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.call(Some(s), "Page.navigate", json!({"url": url}));
    b.wait_event("Page.loadEventFired");

    // The page's own checks.
    let checks = eval(&mut b, s, "window.denetReportChecks");
    assert_eq!(checks["timeline"], true, "{checks}");
    assert_eq!(checks["cpu"], true, "{checks}");
    assert_eq!(checks["memory"], true, "{checks}");
    assert_eq!(
        eval(&mut b, s, "document.documentElement.dataset.checks"),
        "pass"
    );
    // And ours, against the trace: one timeline row per tree line, charts with
    // one point per sample, the biggest CPU user listed first.
    let rows = eval(
        &mut b,
        s,
        "document.querySelectorAll('#timeline g.row').length",
    );
    assert_eq!(rows.as_u64(), Some(expected_rows));
    let samples = crate::helpers::report::of_kind(
        &crate::helpers::report::records(&data("depth.jsonl")),
        "sample",
    )
    .len();
    let pts = eval(
        &mut b,
        s,
        "document.querySelector('#cpu-chart polyline.series').points.length",
    );
    assert_eq!(pts.as_u64(), Some(samples as u64));
    let first = eval(
        &mut b,
        s,
        "document.querySelector('#top-cpu tr:nth-child(2) code').textContent",
    );
    assert_eq!(first, "gzip -1");
    let size = eval(
        &mut b,
        s,
        "(() => { const r = document.getElementById('timeline').getBoundingClientRect(); return [r.width, r.height]; })()",
    );
    assert!(
        size[0].as_f64().unwrap() > 800.0 && size[1].as_f64().unwrap() > 200.0,
        "{size}"
    );

    // A real screenshot, decoded by the browser itself: not blank.
    let shot = b.call(Some(s), "Page.captureScreenshot", json!({"format": "png"}));
    let png = shot["data"].as_str().expect("screenshot data").to_string();
    let artifacts = crate::helpers::report::repo().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let _ = std::fs::write(artifacts.join("report.png"), base64_decode(&png));
    let stats = eval(
        &mut b,
        s,
        &format!(
            r#"new Promise((resolve, reject) => {{
                const img = new Image();
                img.onload = () => {{
                    const c = document.createElement('canvas');
                    c.width = img.width; c.height = img.height;
                    const g = c.getContext('2d');
                    g.drawImage(img, 0, 0);
                    const d = g.getImageData(0, 0, c.width, c.height).data;
                    const bg = [d[0], d[1], d[2]];
                    let differ = 0; const colors = new Set();
                    for (let i = 0; i < d.length; i += 4) {{
                        if (Math.abs(d[i] - bg[0]) + Math.abs(d[i+1] - bg[1]) + Math.abs(d[i+2] - bg[2]) > 30) differ++;
                        if (colors.size < 5000) colors.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
                    }}
                    resolve({{width: c.width, height: c.height, differ: differ / (d.length / 4), colors: colors.size}});
                }};
                img.onerror = () => reject(new Error('screenshot did not decode'));
                img.src = 'data:image/png;base64,{png}';
            }})"#
        ),
    );
    assert_eq!(
        (stats["width"].as_u64(), stats["height"].as_u64()),
        (Some(1280), Some(1800)),
        "{stats}"
    );
    assert!(
        stats["differ"].as_f64().unwrap() > 0.05,
        "screenshot is (nearly) blank: {stats}"
    );
    assert!(
        stats["colors"].as_u64().unwrap() > 50,
        "too few colors for a rendered report: {stats}"
    );

    // No console errors, no exceptions, no loads of anything but the page itself.
    let events = b.drain();
    let problems: Vec<&Value> = events
        .iter()
        .filter(|e| {
            (e["method"] == "Runtime.consoleAPICalled"
                && matches!(e["params"]["type"].as_str(), Some("error" | "assert")))
                || e["method"] == "Runtime.exceptionThrown"
                || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
        })
        .collect();
    assert!(problems.is_empty(), "console errors: {problems:#?}");
    let requests: Vec<&str> = events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str())
        .filter(|u| *u != url && !u.starts_with("data:"))
        .collect();
    assert!(
        requests.is_empty(),
        "the report loads other resources: {requests:?}"
    );

    // A command that could not start: no processes, no samples. The page says so,
    // and its checks still pass (empty states, not missing charts).
    let failed = dir.join("failed.jsonl");
    let failed_html = dir.join("failed.html");
    let o = agent(&[
        "run",
        "--no-ebpf",
        "-o",
        &failed.to_string_lossy(),
        "--",
        "/nonexistent/cmd",
    ]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    let o = agent(&[
        "export",
        &failed.to_string_lossy(),
        "-f",
        "html",
        "-o",
        &failed_html.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    b.call(
        Some(s),
        "Page.navigate",
        json!({"url": format!("file://{}", failed_html.display())}),
    );
    b.wait_event("Page.loadEventFired");
    assert_eq!(
        eval(&mut b, s, "document.documentElement.dataset.checks"),
        "pass"
    );
    let empties = eval(
        &mut b,
        s,
        "document.querySelectorAll('svg text.empty').length",
    );
    assert_eq!(
        empties.as_u64(),
        Some(3),
        "timeline and both charts show their empty state"
    );
    let text = eval(&mut b, s, "document.body.innerText");
    assert!(
        text.as_str().unwrap().contains("command not found"),
        "the error is shown"
    );
    let errors: Vec<Value> = b
        .drain()
        .into_iter()
        .filter(|e| {
            e["method"] == "Runtime.exceptionThrown"
                || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
        })
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let _ = b.call(None, "Browser.close", json!({}));
}
