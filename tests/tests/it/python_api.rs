//! The Python package (python/denet_agent, docs/python.md) from its installed wheel:
//! its pytest suite (python/tests) as root with the run's own programs, and as an
//! ordinary user traced exactly through a node daemon. Ground truth is in the
//! Python tests themselves (process counts, the child's own rusage, output sizes).

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    helpers::{ebpf_ready, exclusive, python::wheel_python, report::repo, scratch_dir, test_user},
    serve_api::Svc,
};

/// Runs python/tests with `python` as `user` (None: as root) in `cwd`; panics with
/// pytest's report when any test fails.
fn pytest(python: &Path, user: Option<&str>, cwd: &Path, env: &[(&str, String)]) {
    let tests = repo().join("python/tests");
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(python);
            c
        }
        None => Command::new(python),
    };
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir"])
        .arg(&tests)
        .arg(&tests)
        .current_dir(cwd)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("DENET_AGENT_BIN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest as {user:?} failed:\n{report}");
    // Every test ran: none skipped (pandas and polars are installed with the wheel).
    assert!(
        !report.contains("skipped"),
        "pytest skipped tests:\n{report}"
    );
    eprintln!("{}", report.lines().last().unwrap_or_default());
}

#[test]
fn python_package_as_root_with_the_runs_own_programs() {
    let test = "python_package_as_root_with_the_runs_own_programs";
    if !ebpf_ready(test) {
        return;
    }
    let Some(python) = wheel_python(test) else {
        return;
    };
    let _x = exclusive();
    let dir = scratch_dir("py-root");
    // No node daemon: the run loads its own programs.
    let no_node = dir.join("no-node.sock").display().to_string();
    pytest(
        &python,
        None,
        &dir,
        &[
            ("DENET_NODE_SOCKET", no_node),
            ("DENET_EXPECT_TRACER", "own".into()),
        ],
    );
}

#[test]
fn python_package_as_a_user_through_the_node_daemon() {
    let test = "python_package_as_a_user_through_the_node_daemon";
    if !ebpf_ready(test) {
        return;
    }
    let Some(python) = wheel_python(test) else {
        return;
    };
    let _x = exclusive();
    let user = "denet-py";
    test_user(user);
    let dir = scratch_dir("py-user");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let svc = Svc::start(&dir.join("data"), &[]);
    let tracer = dir.join("data.tracer.sock").display().to_string();
    pytest(
        &python,
        Some(user),
        &work,
        &[
            ("DENET_NODE_SOCKET", tracer),
            ("DENET_EXPECT_TRACER", "node".into()),
        ],
    );
    drop(svc);
}

/// `pip install` of the repository itself (maturin as the PEP 517 backend, built in
/// place, so the agent the suite built is reused) puts `denet-agent` on the venv's
/// PATH, and the package finds that binary.
#[test]
fn pip_install_of_the_repository_puts_the_binary_on_the_venvs_path() {
    let test = "pip_install_of_the_repository_puts_the_binary_on_the_venvs_path";
    // Same gate as the wheel: the suite's Python set-up is there.
    if wheel_python(test).is_none() {
        return;
    }
    let _x = exclusive();
    let venv = scratch_dir("py-src").join("venv");
    let ok = |c: &mut Command, what: &str| {
        let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
        "python3 -m venv",
    );
    ok(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(repo())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "pip install of the repository",
    );
    let version = ok(
        Command::new(venv.join("bin/denet-agent")).arg("--version"),
        "denet-agent --version",
    );
    assert!(version.starts_with("denet-agent "), "{version}");
    let found = ok(
        Command::new(venv.join("bin/python"))
            .args(["-c", "import denet_agent; print(denet_agent.binary())"])
            .env_remove("DENET_AGENT_BIN")
            .env("PATH", "/usr/bin:/bin"),
        "import denet_agent",
    );
    assert_eq!(Path::new(&found), venv.join("bin/denet-agent"));
}
