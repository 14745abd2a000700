//! One boot of one kernel under QEMU (software emulation: this machine kind's
//! `/dev/kvm` cannot boot a stock kernel): the job script it runs, the machine's
//! options, and the files the guest leaves in the output directory.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    fetch::Kernel,
    initramfs::{self, GUEST_OUT, HOST_TAG, OUT_TAG},
};

/// What the guest runs, all in one boot (a boot costs seconds; guest code runs
/// 5-20x slower than the host).
pub struct Job {
    pub root: PathBuf,
    pub agent: PathBuf,
    pub test_binary: PathBuf,
    pub tests: Vec<String>,
    /// The xtask binary, for the cost measurement inside the guest.
    pub xtask: PathBuf,
    pub cost_runs: usize,
    /// A script that replaces the tests.
    pub custom: Option<String>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

impl Job {
    /// The shell script the guest's init runs in the host's (overlaid) root. Each
    /// phase leaves `<phase>.rc` and a log in the output directory.
    fn script(&self) -> Result<String> {
        if let Some(custom) = &self.custom {
            return Ok(custom.clone());
        }
        let ci = std::env::var("CI").unwrap_or_default();
        let tests: Vec<String> = self.tests.iter().map(|t| quote(t)).collect();
        Ok(format!(
            r#"#!/bin/sh
export HOME=/root USER=root LOGNAME=root
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CI={ci} DENET_IN_GUEST=1 RUST_TEST_THREADS=1 RUST_BACKTRACE=1
export DENET_AGENT_BIN={agent}
O={GUEST_OUT}
cd {root} || exit 98
now() {{ cat /proc/uptime | cut -d' ' -f1; }}
echo "probe $(now)" > $O/times
{agent} run -o $O/probe.jsonl -- /bin/true > $O/probe.log 2>&1
echo $? > $O/probe.rc
echo "tests $(now)" >> $O/times
{{ {test_binary} --exact --test-threads 1 {tests}; echo $? > $O/tests.rc; }} 2>&1 | tee $O/tests.log
echo "cost $(now)" >> $O/times
{{ {xtask} guest-cost --runs {runs} > $O/cost.md; echo $? > $O/cost.rc; }} 2>&1 | tee $O/cost.log
echo "end $(now)" >> $O/times
"#,
            agent = quote(path_str(&self.agent)?),
            root = quote(path_str(&self.root)?),
            test_binary = quote(path_str(&self.test_binary)?),
            tests = tests.join(" "),
            xtask = quote(path_str(&self.xtask)?),
            runs = self.cost_runs,
        ))
    }
}

/// Boots `kernel`, runs `job` and waits for the guest to power off; the console goes
/// to stdout and to `out/console.log`.
pub fn boot(kernel: &Kernel, job: &Job, out: &Path, limit: Duration) -> Result<Duration> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out)?;
    let initrd = out.join("initramfs.cpio");
    initramfs::build(kernel, &initrd)?;
    std::fs::write(out.join("job.sh"), job.script()?)?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-cpu", "max", "-smp", "2", "-m", "2048"])
        // One host thread for both vCPUs: with a thread each, a vCPU could run stale
        // translated code while the kernel patches its text (static keys flipped as
        // tracepoints attach), an emulator race that crashed a 6.12 guest with an
        // int3 Oops.
        .args(["-accel", "tcg,thread=single", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 quiet cgroup_no_v1=all",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path=/,mount_tag={HOST_TAG},security_model=none,readonly=on,multidevs=remap"
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag={OUT_TAG},security_model=none,multidevs=remap",
            path_str(out)?
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (the qemu-system-x86 package)")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let pid = child.id();
    // The console is read on this thread; a watchdog ends a guest that hangs.
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: signal 0 only checks that our child still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: ends our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let mut log = std::fs::File::create(out.join("console.log"))?;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line?;
        // The firmware paints the screen with escape sequences; keep the text.
        let text: String = String::from_utf8_lossy(&line)
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        println!("  | {text}");
        writeln!(log, "{text}")?;
    }
    let status = child.wait()?;
    let hung = watchdog.join().unwrap_or(false);
    let took = started.elapsed();
    if hung {
        bail!(
            "the {} guest did not finish within {} s",
            kernel.release,
            limit.as_secs()
        );
    }
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(took)
}
