//! Project tasks: `cargo xtask build-ebpf`, `bench`, `dist`, `wheel`, `kernel-test`.

mod bench;
mod cost;
mod dist;
mod kernel_test;
mod node;
mod wheel;

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use denet_ebpf_build as ebpf_build;

#[derive(Parser)]
#[command(about = "denet-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (target/ebpf/bpfel-unknown-none/release/denet).
    BuildEbpf,
    /// Check that rustc (nightly) and bpf-linker use the same LLVM major.
    CheckToolchain,
    /// Build what a node's administrator installs: target/dist/denet-agent_VERSION_amd64.deb
    /// and target/dist/denet-agent-VERSION-x86_64-linux.tar.gz.
    Dist,
    /// Build the Python wheel (maturin, `bin` bindings) into target/wheels.
    Wheel,
    /// Overhead benchmarks (needs root): bare vs traced, interleaved; prints Markdown.
    Bench {
        /// Runs per workload and mode.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Smaller workloads, for a smoke run.
        #[arg(long)]
        quick: bool,
        /// core (run overhead), depth (everything on, with strace/perf), serve (job
        /// throughput and service memory), cost (the machine-wide cost of runs, program
        /// statistics, fixed cost), beside (only the untraced-dd-beside-N-agents table of
        /// cost), node (runs through the node daemon: fixed cost, client memory, the
        /// machine beside 16 of them) or all.
        #[arg(long, default_value = "all")]
        suite: String,
    },
    /// The eBPF integration tests on Debian's stock kernels under QEMU (see
    /// docs/kernels.md); results in target/kernel-test/report.md.
    KernelTest {
        /// A kernel series of the matrix (6.1, 6.12); repeatable; default all.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Rounds of the cost measurement inside each guest.
        #[arg(long, default_value_t = 3)]
        cost_runs: usize,
        /// Run this shell script in each guest instead of the tests (to look at a
        /// kernel: it runs as root in the host's root, overlaid; its output is the
        /// console).
        #[arg(long)]
        job: Option<PathBuf>,
    },
    /// Inside a kernel-test guest: an untraced `dd bs=1` alone and beside four runs.
    #[command(hide = true)]
    GuestCost {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::BuildEbpf => {
            let object = ebpf_build::build(&root.join("denet-ebpf"), &root.join("target/ebpf"))
                .map_err(|e| anyhow!(e))?;
            println!("{}", object.display());
        }
        Task::Bench { runs, quick, suite } => {
            if !["core", "depth", "serve", "cost", "beside", "node", "all"]
                .contains(&suite.as_str())
            {
                return Err(anyhow!(
                    "--suite must be core, depth, serve, cost, beside, node or all"
                ));
            }
            bench::run(
                &root,
                &bench::BenchOptions {
                    runs: runs.max(1),
                    quick,
                    suite,
                },
            )?;
        }
        Task::KernelTest {
            kernels,
            cost_runs,
            job,
        } => kernel_test::run(
            &root,
            &kernel_test::Options {
                kernels,
                cost_runs: cost_runs.max(1),
                job,
            },
        )?,
        Task::GuestCost { runs } => cost::guest_beside(&root, runs.max(1))?,
        Task::Wheel => println!("{}", wheel::wheel(&root)?.display()),
        Task::Dist => {
            let (deb, tarball) = dist::dist(&root)?;
            println!("{}\n{}", deb.display(), tarball.display());
        }
        Task::CheckToolchain => {
            ebpf_build::check_llvm_match().map_err(|e| anyhow!(e))?;
            println!(
                "ok: rustc and bpf-linker use LLVM {}",
                ebpf_build::rustc_llvm_major().map_err(|e| anyhow!(e))?
            );
        }
    }
    Ok(())
}
