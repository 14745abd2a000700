//! `cargo xtask wheel`: the Python wheel (maturin, `bin` bindings: the agent binary
//! plus the pure-Python package in python/), into target/wheels.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// maturin from `MATURIN`, the test venv (scripts/setup-tests.sh installs it there),
/// or PATH.
fn maturin(root: &Path) -> PathBuf {
    if let Some(m) = std::env::var_os("MATURIN") {
        return m.into();
    }
    let venv = std::env::var_os("DENET_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv"));
    let in_venv = venv.join("bin/maturin");
    if in_venv.is_file() {
        return in_venv;
    }
    PathBuf::from("maturin")
}

/// Builds the wheel and returns its path. Old wheels of the same version are
/// replaced, so target/wheels holds one.
pub fn wheel(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/wheels");
    if out.is_dir() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let m = maturin(root);
    let status = Command::new(&m)
        .current_dir(root)
        .args(["build", "--release", "--locked", "--out"])
        .arg(&out)
        .status()
        .with_context(|| {
            format!(
                "running {} (scripts/setup-tests.sh installs maturin into target/pyenv)",
                m.display()
            )
        })?;
    if !status.success() {
        bail!("maturin build failed ({status})");
    }
    std::fs::read_dir(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("maturin wrote no wheel into {}", out.display()))
}
