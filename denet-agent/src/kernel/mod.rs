//! The kernel side, seen from user space: everything that touches aya. Reads the
//! offsets the programs need from the kernel's BTF, loads and attaches the programs
//! (`tracer`) on the hooks this kernel offers (`hooks`), and reads the counters they
//! aggregate (`counters`). Imports nothing
//! from the rest of the agent.

mod aya_loader;
pub mod btf;
pub mod counters;
pub mod hooks;
mod offsets_cache;
pub mod syscall_names;
pub mod tracer;

pub use tracer::{KernelTracer, TracerOptions};
