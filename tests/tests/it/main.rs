//! The integration tests of denet-agent: one binary, one module per area, checked
//! against ground truth (wait4 rusage, exact byte and process counts, the kernel's
//! own records). eBPF, PostgreSQL, browser and Python tests need what CI has (root,
//! a server, Chromium, the venv): in CI a missing one fails, elsewhere it skips with
//! a message.

mod helpers;

mod depth_ebpf;
mod export_formats;
mod failure_context;
mod golden_schema;
mod history_db;
mod kernel_hooks;
mod machine_cost;
mod memory_limits;
mod notebook_example;
mod python_api;
mod report_chromium;
mod run_cli;
mod run_ebpf;
mod serve_api;
mod shared_node;
mod slurm_jobs;
mod stats_cli;
mod top_tui;
mod workflows;
