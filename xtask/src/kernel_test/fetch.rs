//! Debian's stock kernel packages: the newest `linux-image-<series>…-amd64-unsigned`
//! the configured archive offers, downloaded once and unpacked under target/kernels.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// An unpacked kernel package.
pub struct Kernel {
    /// The package's name, e.g. `linux-image-6.1.0-57-amd64-unsigned`.
    pub package: String,
    /// The package's version, e.g. `6.1.192-3`.
    pub version: String,
    /// `uname -r` inside the guest (the directory under lib/modules).
    pub release: String,
    /// Where the package is unpacked.
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a package name is the generic flavour of a series: `6.1` matches
/// `linux-image-6.1.0-57-amd64-unsigned`, `6.12` matches
/// `linux-image-6.12.117+deb12-amd64-unsigned`; cloud and rt flavours do not.
fn of_series(package: &str, series: &str) -> bool {
    let Some(rest) = package
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64-unsigned"))
    else {
        return false;
    };
    let Some(tail) = rest.strip_prefix(series) else {
        return false;
    };
    tail.starts_with(['.', '-']) && !tail.contains("-cloud") && !tail.contains("-rt")
}

/// The newest package of the series by Debian's version order.
fn newest_package(series: &str) -> Result<(String, String)> {
    let list = output(Command::new("apt-cache").args(["search", "--names-only", "^linux-image-"]))?;
    let mut best: Option<(String, String)> = None;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !of_series(name, series) {
            continue;
        }
        let version = candidate_version(name)?;
        let newer = match &best {
            None => true,
            Some((_, v)) => Command::new("dpkg")
                .args(["--compare-versions", &version, "gt", v])
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
        };
        if newer {
            best = Some((name.to_owned(), version));
        }
    }
    best.with_context(|| {
        format!(
            "the package archive offers no linux-image-{series}*-amd64-unsigned (apt-get update?)"
        )
    })
}

fn candidate_version(package: &str) -> Result<String> {
    let policy = output(Command::new("apt-cache").args(["policy", package]))?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache policy {package}: no candidate"))
}

/// Downloads (once) and unpacks (once) the newest kernel of a series, and indexes its
/// modules so the initramfs can load them in dependency order.
pub fn kernel(root: &Path, series: &str) -> Result<Kernel> {
    let (package, version) = newest_package(series)?;
    let base = root.join("target/kernels");
    let debs = base.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let find_deb = || -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            }))
    };
    let deb = match find_deb()? {
        Some(deb) => deb,
        None => {
            eprintln!("kernel-test: downloading {package} {version}");
            output(
                Command::new("apt-get")
                    .current_dir(&debs)
                    .args(["download", "-q"])
                    .arg(format!("{package}={version}")),
            )?;
            find_deb()?.with_context(|| {
                format!(
                    "apt-get download left no {package}_*.deb in {}",
                    debs.display()
                )
            })?
        }
    };
    let dir = base.join(&package);
    let done = dir.join(".unpacked");
    if !done.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::write(&done, &version)?;
    }
    let release = std::fs::read_dir(dir.join("lib/modules"))
        .with_context(|| format!("{package} has no lib/modules"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .with_context(|| format!("{package} has an empty lib/modules"))?;
    let kernel = Kernel {
        package,
        version,
        release,
        dir,
    };
    if !kernel.modules().join("modules.dep").exists() {
        output(
            Command::new("depmod")
                .arg("-b")
                .arg(&kernel.dir)
                .arg(&kernel.release),
        )
        .context("depmod (the kmod package)")?;
    }
    if !kernel.vmlinuz().is_file() {
        bail!("{} has no {}", kernel.package, kernel.vmlinuz().display());
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::of_series;

    #[test]
    fn series_names() {
        assert!(of_series("linux-image-6.1.0-57-amd64-unsigned", "6.1"));
        assert!(of_series(
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "6.12"
        ));
        assert!(!of_series(
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "6.1"
        ));
        assert!(!of_series(
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "6.1"
        ));
        assert!(!of_series("linux-image-6.1.0-57-rt-amd64-unsigned", "6.1"));
        assert!(!of_series("linux-image-6.1.0-57-amd64", "6.1"));
    }
}
