//! A fresh Python venv with the wheel `cargo xtask wheel` built (scripts/test.sh sets
//! DENET_WHEEL_DIR), installed with its pandas, polars, snakemake and test extras:
//! what a user gets from `pip install denet-agent[pandas,polars,snakemake]`, plus
//! matplotlib for the notebook example and Snakemake pinned to the version the
//! workflow tests were written against.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::{in_ci, report::repo, scratch_dir};

/// The Snakemake the workflow tests run (a 9.x from PyPI).
pub const SNAKEMAKE_VERSION: &str = "9.27.1";

fn wheel() -> Option<PathBuf> {
    let dir = std::env::var_os("DENET_WHEEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/wheels"));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
}

/// The venv's python, made once per test run; `None` (with a message) outside CI
/// when there is no wheel. Readable by every user (the tests run it as one).
pub fn wheel_python(test: &str) -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let Some(whl) = wheel() else {
        if in_ci() {
            panic!(
                "{test}: no wheel in DENET_WHEEL_DIR (scripts/test.sh runs `cargo xtask wheel`)"
            );
        }
        eprintln!("skipped {test}: no wheel (run `cargo xtask wheel`, set DENET_WHEEL_DIR)");
        return None;
    };
    let venv = VENV.get_or_init(|| make_venv(&whl));
    match venv {
        Ok(python) => Some(python.clone()),
        Err(e) => panic!("{test}: {e}"),
    }
}

fn make_venv(whl: &Path) -> Result<PathBuf, String> {
    let dir = scratch_dir("pyvenv").join("venv");
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 -m venv: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let python = dir.join("bin/python");
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("{}[pandas,polars,snakemake,test]", whl.display()))
        .arg("matplotlib")
        .arg(format!("snakemake=={SNAKEMAKE_VERSION}"))
        .output()
        .map_err(|e| format!("pip install: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip install {}: {}",
            whl.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(python)
}
