//! The guest's initramfs, built here rather than by a distribution tool: busybox, the
//! kernel's own 9p/virtio/overlay modules in dependency order, and an init that
//! mounts the host's root read-only under a RAM overlay and runs the job in it.

use std::{collections::HashSet, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::fetch::Kernel;

/// The 9p share of the host's root and of the run's output directory.
pub const HOST_TAG: &str = "hostroot";
pub const OUT_TAG: &str = "out";
/// Where the output directory appears inside the guest's root.
pub const GUEST_OUT: &str = "/run/denet-guest";

/// Modules the guest needs to reach the host (those built in are skipped).
const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/fs/overlayfs/overlay.ko",
];

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "mkdir", "poweroff", "chroot", "cat", "echo", "ip", "sync",
];

/// An uncompressed `newc` cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry(name, 0o100000 | mode, body);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// The module files of MODULES and their dependencies, dependencies first, as paths
/// relative to the kernel's module directory (`.ko`, `.ko.xz` or `.ko.zst`).
fn module_order(kernel: &Kernel) -> Result<Vec<String>> {
    let dep_file = kernel.modules().join("modules.dep");
    let text = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("reading {}", dep_file.display()))?;
    let deps: Vec<(&str, Vec<&str>)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    fn visit<'a>(
        m: &'a str,
        deps: &[(&'a str, Vec<&'a str>)],
        seen: &mut HashSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        if let Some((_, d)) = deps.iter().find(|(name, _)| *name == m) {
            // modules.dep lists what a module needs nearest first.
            for dep in d.iter().rev() {
                visit(dep, deps, seen, out);
            }
        }
        out.push(m.to_owned());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for wanted in MODULES {
        // A module listed under any compression; absent means built in.
        if let Some((name, _)) = deps.iter().find(|(name, _)| {
            name.strip_suffix(".xz")
                .or(name.strip_suffix(".zst"))
                .unwrap_or(name)
                == *wanted
        }) {
            visit(name, &deps, &mut seen, &mut out);
        }
    }
    Ok(out)
}

fn module_bytes(kernel: &Kernel, rel: &str) -> Result<Vec<u8>> {
    let path = kernel.modules().join(rel);
    let tool = if rel.ends_with(".xz") {
        Some("xz")
    } else if rel.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(&path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(&path)
                .output()
                .with_context(|| format!("running {tool} (decompressing {rel})"))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// The init script: mounts, the host's root under an overlay whose writes stay in
/// guest memory, then `chroot` into it to run the job; always powers off.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin
fail() {{ echo "GUEST SETUP FAILED: $*"; echo 99 > /out/rc; sync; poweroff -f; }}
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail "proc, sys, dev"
for m in /modules/*.ko; do [ -e "$m" ] || continue; insmod "$m" || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 {OUT_TAG} /out || fail "the output share"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose {HOST_TAG} /host || fail "the host root share"
mount -t tmpfs -o mode=0755 upper /new || fail "tmpfs"
mkdir -p /new/upper /new/work /new/root
mount -t overlay overlay -o lowerdir=/host,upperdir=/new/upper,workdir=/new/work /new/root || fail "overlay"
R=/new/root
mount -t proc proc $R/proc && mount -t sysfs sys $R/sys && mount -t devtmpfs dev $R/dev || fail "proc, sys, dev in the root"
mkdir -p $R/dev/pts $R/dev/shm && mount -t devpts devpts $R/dev/pts && mount -t tmpfs shm $R/dev/shm
mount -t tmpfs -o mode=1777 tmp $R/tmp && mount -t tmpfs run $R/run || fail "tmp"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
mkdir -p $R{GUEST_OUT} && mount -o bind /out $R{GUEST_OUT} || fail "bind the output"
ip link set lo up
echo "GUEST READY: uptime $(cat /proc/uptime)"
chroot $R /bin/sh {GUEST_OUT}/job.sh
echo $? > /out/rc
sync
poweroff -f
"#
    )
}

/// Writes the initramfs for `kernel` to `path`.
pub fn build(kernel: &Kernel, path: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (the busybox-static package)"))?;
    let mut cpio = Cpio::default();
    for d in ["bin", "modules", "proc", "sys", "dev", "host", "out", "new"] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    for (i, rel) in module_order(kernel)?.iter().enumerate() {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let base = base
            .strip_suffix(".xz")
            .or(base.strip_suffix(".zst"))
            .unwrap_or(base);
        cpio.file(
            &format!("modules/{i:02}-{base}"),
            0o644,
            &module_bytes(kernel, rel)?,
        );
    }
    cpio.file("init", 0o755, init_script().as_bytes());
    std::fs::write(path, cpio.finish()).with_context(|| format!("writing {}", path.display()))
}
