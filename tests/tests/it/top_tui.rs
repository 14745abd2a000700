//! `denet-agent top` driven for real: in tmux, as an ordinary user, against a real
//! `serve` run by root. The user's job appears, its tree grows, it opens (its trace
//! read through the service) with its output's last lines, `p` pauses it (every
//! process in state T), `r` resumes it, `s` then `y` stops it; the screen is read
//! back with `capture-pane`.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    helpers::{agent_bin, ebpf_ready, in_ci, scratch_dir, test_user},
    serve_api::{cpu_ticks, tree_of, Svc},
};

/// A tmux session running one command, killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "120",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session");
        Tmux { name: name.into() }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits until the screen shows `text`; the screen then.
    fn wait_for(&self, text: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(Instant::now() < until, "{text:?} never shown; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn tmux_ready(test: &str) -> bool {
    if Path::new("/usr/bin/tmux").is_file() {
        return true;
    }
    if in_ci() {
        panic!("{test}: tmux is missing (scripts/setup-tests.sh installs it)");
    }
    eprintln!("skipped {test}: no tmux (run scripts/setup-tests.sh)");
    false
}

/// Every process of the tree in `state` (T stopped, S/R running or asleep).
fn wait_states(pid: u32, want: impl Fn(char) -> bool, what: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, states) = cpu_ticks(&tree_of(pid));
        if !states.is_empty() && states.iter().all(|s| want(*s)) {
            return;
        }
        assert!(Instant::now() < until, "tree not {what}: {states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_growing_job_and_pauses_resumes_and_stops_it() {
    let test = "top_shows_a_growing_job_and_pauses_resumes_and_stops_it";
    if !ebpf_ready(test) || !tmux_ready(test) {
        return;
    }
    let user = "denet-topu";
    test_user(user);
    let dir = scratch_dir("top");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let svc = Svc::start(&dir.join("data"), &[]);
    // The user's own job, spawned as the user.
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(agent_bin())
        .args([
            "jobs",
            "--server",
            &svc.server,
            "spawn",
            "--name",
            "grower",
            "--cwd",
        ])
        .arg(&work)
        .args([
            "--",
            "sh",
            "-c",
            "echo grower-started >&2; for i in 1 2 3 4 5 6; do sleep 60 & sleep 0.3; done; wait",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    svc.wait_running(&id).await;
    // Plain runs traced by the node daemon: the user's own, and another user's.
    let tracer = dir.join("data.tracer.sock");
    let other = "denet-topv";
    test_user(other);
    let runs: Vec<std::process::Child> = [(user, "30.5"), (other, "31.5")]
        .iter()
        .map(|(who, secs)| {
            Command::new("runuser")
                .args(["-u", who, "--"])
                .arg(agent_bin())
                .arg("run")
                .arg("--node-socket")
                .arg(&tracer)
                .arg("-o")
                .arg(work.join(format!("{who}.jsonl")))
                .args(["--", "sleep", secs])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let session = format!("denet-top-{}", std::process::id());
    let tmux = Tmux::start(
        &session,
        &format!(
            "runuser -u {user} -- {} top --server {} --node-socket {}",
            agent_bin().display(),
            svc.server,
            tracer.display()
        ),
    );
    // The user's own run is listed; the other user's is not.
    let s = tmux.wait_for("sleep 30.5", Duration::from_secs(20));
    assert!(s.contains("runs traced by the node daemon"), "{s}");
    assert!(!s.contains("sleep 31.5"), "another user's run shown:\n{s}");
    for mut r in runs {
        // SIGTERM: the agent stops its tree and ends its trace.
        let _ = Command::new("kill").arg(r.id().to_string()).status();
        let _ = r.wait();
    }
    let s = tmux.wait_for("grower", Duration::from_secs(20));
    assert!(s.contains("running"), "{s}");
    // The tree grows: the list's process count reaches the shell and its 6 sleeps.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = tmux.screen();
        let row = s
            .lines()
            .find(|l| l.contains("grower"))
            .unwrap_or("")
            .to_string();
        if row.split_whitespace().any(|w| w == "7") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the tree did not grow to 7: {row}\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = svc.job(&id).await["pid"].as_u64().unwrap() as u32;

    // Open it: its live tree.
    tmux.keys("Enter");
    let s = tmux.wait_for("live processes", Duration::from_secs(10));
    assert!(s.contains("job grower"), "{s}");
    // The live tree: the sleeps indented under their shell.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tmux.screen();
        let col = |needle: &str| {
            s.lines()
                .skip_while(|l| !l.contains("live processes"))
                .find_map(|l| l.find(needle))
        };
        if let (Some(sh), Some(sleep)) = (col("sh -c"), col("sleep 60")) {
            assert_eq!(sleep, sh + 2, "children indented under their parent:\n{s}");
            break;
        }
        assert!(Instant::now() < until, "no live tree:\n{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `l`: its output's last lines, from the service.
    tmux.keys("l");
    tmux.wait_for("stderr: grower-started", Duration::from_secs(10));
    tmux.keys("p");
    wait_states(pid, |c| c == 'T', "stopped");
    tmux.wait_for("pause: grower", Duration::from_secs(5));
    tmux.keys("r");
    wait_states(pid, |c| c != 'T', "running again");
    tmux.keys("Escape");
    tmux.wait_for("NAME", Duration::from_secs(5));
    tmux.keys("s");
    tmux.wait_for("stop grower? y/n", Duration::from_secs(5));
    tmux.keys("y");
    let end = svc.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(end["status"], "cancelled");
    let s = tmux.wait_for("cancelled", Duration::from_secs(10));
    assert!(s.contains("grower"), "{s}");
    tmux.keys("q");
    wait_gone(&session);
}

/// Waits until the tmux session `session` has ended (its `top` quit).
fn wait_gone(session: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while Command::new("tmux")
        .args(["has-session", "-t", session])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < until, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `top` whose terminal goes away (its tmux session killed, a closed ssh window)
/// ends instead of running on unseen.
#[test]
fn top_ends_when_its_terminal_goes_away() {
    let test = "top_ends_when_its_terminal_goes_away";
    if !tmux_ready(test) {
        return;
    }
    let dir = scratch_dir("top-hup");
    let trace = dir.join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"kind\":\"header\",\"schema_version\":3,\"argv\":[\"x\"]}\n",
    )
    .unwrap();
    let session = format!("denet-top-hup-{}", std::process::id());
    // Under runuser, as an ordinary user's `top` in a login shell is: the hangup
    // signal does not reach it, only its terminal's end does.
    let user = "denet-topu";
    test_user(user);
    let tmux = Tmux::start(
        &session,
        &format!(
            "runuser -u {user} -- {} top {}",
            agent_bin().display(),
            trace.display()
        ),
    );
    tmux.wait_for("[running]", Duration::from_secs(10));
    // top itself (the pane's shell may have exec'ed it, or not).
    let pid = Command::new("pgrep")
        .args(["-f", &format!("top {}", trace.display())])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .find(|p: &u32| {
            std::fs::read(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with(b"denet-agent"))
        })
        .expect("top's pid");
    drop(tmux);
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < until,
            "top (pid {pid}) still runs without its terminal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
