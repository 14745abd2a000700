//! `cargo xtask dist`: what an administrator installs on a node without a Rust
//! toolchain. A Debian package (the binary with its eBPF object embedded, the node
//! daemon's systemd unit, the docs) and a plain tarball of the same files, in
//! target/dist/.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Docs shipped with the package (repository path, name in the doc directory).
const DOCS: &[(&str, &str)] = &[
    ("README.md", "README.md"),
    ("docs/node.md", "node.md"),
    ("docs/serve.md", "serve.md"),
    ("docs/jsonl-format.md", "jsonl-format.md"),
];

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{:?} failed: {st}", cmd.get_program());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The installed tree (without the package metadata) under `stage`.
fn stage_files(root: &Path, stage: &Path) -> Result<()> {
    copy(
        &root.join("target/release/denet-agent"),
        &stage.join("usr/bin/denet-agent"),
        0o755,
    )?;
    copy(
        &root.join("packaging/denet-agent.service"),
        &stage.join("lib/systemd/system/denet-agent.service"),
        0o644,
    )?;
    copy(
        &root.join("packaging/slurm-task-prolog"),
        &stage.join("usr/lib/denet-agent/slurm-task-prolog"),
        0o755,
    )?;
    let doc = stage.join("usr/share/doc/denet-agent");
    for (from, name) in DOCS {
        copy(&root.join(from), &doc.join(name), 0o644)?;
    }
    std::fs::write(
        doc.join("copyright"),
        format!(
            "denet-agent {VERSION}\nLicense: MIT OR Apache-2.0\nThe eBPF programs embedded in \
             /usr/bin/denet-agent are GPL-licensed (the kernel requires it).\n"
        ),
    )?;
    Ok(())
}

fn control(installed_kib: u64) -> String {
    format!(
        "Package: denet-agent\n\
         Version: {VERSION}\n\
         Architecture: amd64\n\
         Maintainer: denet-agent developers <denet-agent@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6 (>= 2.36)\n\
         Section: admin\n\
         Priority: optional\n\
         Description: exact resource accounting of commands and every process they spawn\n \
         eBPF-assisted tracer: CPU, peak memory, I/O, exit status of every process of a\n \
         command, exact, in one JSONL stream. The node daemon (denet-agent serve, a\n \
         systemd unit) loads the kernel programs once for the node, so every user's\n \
         `denet-agent run` is traced exactly without root, and runs jobs as their caller.\n"
    )
}

fn du_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(dir).div_ceil(1024)
}

/// Builds the release binary, then the .deb and the tarball; returns their paths.
pub fn dist(root: &Path) -> Result<(PathBuf, PathBuf)> {
    run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--locked",
        "--release",
        "-p",
        "denet-agent",
    ]))?;
    let out = root.join("target/dist");
    let stage = out.join(format!("denet-agent_{VERSION}_amd64"));
    let _ = std::fs::remove_dir_all(&stage);
    stage_files(root, &stage)?;
    let size = du_kib(&stage);

    let tarball = out.join(format!("denet-agent-{VERSION}-x86_64-linux.tar.gz"));
    run(Command::new("tar")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .args(["usr", "lib"]))?;

    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(debian.join("control"), control(size))?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &root.join("packaging").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    let deb = out.join(format!("denet-agent_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok((deb, tarball))
}
