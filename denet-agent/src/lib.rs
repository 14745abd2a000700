//! denet-agent as a library: the run engine (`run::run`) and the pieces it is made
//! of, so other front ends (the CLI, a service) drive one engine.

mod aya_loader;
pub mod btf;
pub mod client;
pub mod clock;
pub mod collector;
pub mod ebpf;
pub mod export;
pub mod files;
pub mod history;
pub mod jobs_cli;
pub mod kstats;
pub mod launch;
pub mod output;
pub mod proc_tree;
pub mod procfs;
pub mod record;
pub mod report;
pub mod run;
pub mod sampler;
pub mod serve;
pub mod syscall_names;
pub mod trace;
pub mod tracker;
