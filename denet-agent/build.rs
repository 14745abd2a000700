//! Builds the eBPF object and embeds it: a plain `cargo build -p denet-agent` yields a
//! binary that carries its kernel programs. `DENET_EBPF_OBJECT=path` embeds a prebuilt
//! object instead of building one.

use denet_ebpf_build as ebpf_build;

use std::{env, fs, path::PathBuf};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .ok_or("denet-agent has no parent directory")?
        .to_path_buf();
    println!("cargo:rerun-if-env-changed=DENET_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=DENET_EBPF_TARGET_DIR");
    for path in [
        "denet-ebpf/src",
        "denet-ebpf/Cargo.toml",
        "Cargo.lock",
        "denet-common/src",
        "denet-ebpf-build/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    offsets_source_hash(&root)?;
    let object = match env::var_os("DENET_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let target_dir = env::var_os("DENET_EBPF_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target").join("ebpf"));
            ebpf_build::build(&root.join("denet-ebpf"), &target_dir)?
        }
    };
    fs::copy(&object, out_dir.join("denet.bpf.o"))
        .map_err(|e| format!("copy {}: {e}", object.display()))?;
    Ok(())
}

/// A hash of the sources that decide what the kernel offsets are and mean, for the
/// key of the offsets cache: a build that changes them never reads an older build's.
fn offsets_source_hash(root: &std::path::Path) -> Result<(), String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for file in [
        "denet-agent/src/kernel/tracer.rs",
        "denet-agent/src/kernel/hooks.rs",
        "denet-common/src/lib.rs",
    ] {
        let path = root.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        fs::read(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .hash(&mut h);
    }
    println!(
        "cargo:rustc-env=DENET_OFFSETS_SOURCE_HASH={:016x}",
        h.finish()
    );
    Ok(())
}
