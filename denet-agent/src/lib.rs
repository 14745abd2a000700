//! denet-agent as a library: the run engine and the pieces it is made of, so every
//! front end (the CLI, the job service, the tests) drives one engine.
//!
//! The modules follow the data (ARCHITECTURE.md has the map):
//! `engine` (spawn held, attach, run loop) → `kernel` (programs and their maps) →
//! `process` (kernel events and samples into processes and files) → `trace` (the
//! public JSONL format: writer and reader) → `report` and `export` (what people read);
//! `service` runs jobs as `run`s, `history` keeps them, `client` talks to a service.

// No unwrap outside tests: errors carry context instead.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub(crate) mod cgroup;
pub mod client;
pub mod engine;
pub mod export;
pub mod failure;
pub mod history;
pub(crate) mod kernel;
pub mod node;
pub(crate) mod process;
pub mod report;
pub mod run_history;
pub mod service;
pub mod slurm;
pub mod task;
pub mod top;
pub mod trace;
