//! Builds the `denet-ebpf` object with nightly and bpf-linker.
//!
//! Shared by `cargo xtask build-ebpf` and `denet-agent/build.rs`, so there is one
//! recipe. Uses only std, so the build script pulls in nothing else.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Toolchain used for the eBPF crate (needs `rust-src` for `-Z build-std=core`).
pub const EBPF_TOOLCHAIN: &str = "nightly";
pub const EBPF_TARGET: &str = "bpfel-unknown-none";
const FIX_HINT: &str = "run `scripts/setup.sh` (installs nightly rust-src, LLVM dev \
                        packages and a bpf-linker built against rustc's LLVM)";

/// Environment variables an outer cargo sets for build scripts that must not leak into
/// the nested nightly build of another target.
const SCRUB_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTUP_TOOLCHAIN",
    "RUSTDOC",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

fn command(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", EBPF_TOOLCHAIN, program]);
    for var in SCRUB_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn output_of(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}; {FIX_HINT}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}; {FIX_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// LLVM major version from `rustc -vV` ("LLVM version: 22.1.4").
pub fn rustc_llvm_major() -> Result<u32, String> {
    let text = output_of(command("rustc").arg("-vV"))?;
    parse_llvm_major(&text, "LLVM version:").ok_or_else(|| format!("no LLVM version in: {text}"))
}

/// LLVM major version bpf-linker was built with: from `--version` when it says
/// ("LLVM 22.1.8"), else from the libLLVM it is dynamically linked against (bpf-linker
/// 0.13 prints no LLVM version). `Ok(None)` when neither tells.
pub fn bpf_linker_llvm_major() -> Result<Option<u32>, String> {
    let text = output_of(Command::new("bpf-linker").arg("--version"))?;
    if let Some(major) = parse_llvm_major(&text, "LLVM") {
        return Ok(Some(major));
    }
    let path = find_in_path("bpf-linker")
        .ok_or_else(|| format!("bpf-linker is not on PATH; {FIX_HINT}"))?;
    let ldd = output_of(Command::new("ldd").arg(&path)).unwrap_or_default();
    Ok(parse_llvm_major(&ldd, "libLLVM.so.").or_else(|| parse_llvm_major(&ldd, "libLLVM-")))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn parse_llvm_major(text: &str, marker: &str) -> Option<u32> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Fails early, with the fix, when rustc and bpf-linker disagree on the LLVM major:
/// the link step would otherwise fail with an opaque bitcode error.
pub fn check_llvm_match() -> Result<(), String> {
    let rustc = rustc_llvm_major()?;
    let Some(linker) = bpf_linker_llvm_major()? else {
        // Statically linked and silent about its LLVM: let the build itself tell.
        return Ok(());
    };
    if rustc != linker {
        return Err(format!(
            "rustc ({EBPF_TOOLCHAIN}) uses LLVM {rustc} but bpf-linker uses LLVM {linker}; \
             rebuild it with `cargo install bpf-linker --force --no-default-features \
             --features llvm-{rustc}` or {FIX_HINT}"
        ));
    }
    Ok(())
}

/// Builds the eBPF crate in `ebpf_dir` into `target_dir` and returns the object's path.
pub fn build(ebpf_dir: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    check_llvm_match()?;
    let status = command("cargo")
        .current_dir(ebpf_dir)
        .args([
            "build",
            "--locked",
            "--profile",
            "ebpf",
            "--target",
            EBPF_TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo for the eBPF crate: {e}; {FIX_HINT}"))?;
    if !status.success() {
        return Err(format!("eBPF build failed ({status}); {FIX_HINT}"));
    }
    let object = target_dir.join(EBPF_TARGET).join("ebpf").join("denet");
    if !object.is_file() {
        return Err(format!(
            "eBPF build produced no object at {}",
            object.display()
        ));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::parse_llvm_major;

    #[test]
    fn llvm_major_from_rustc_and_ldd_output() {
        let rustc = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(rustc, "LLVM version:"), Some(22));
        let ldd = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x7f)\n";
        assert_eq!(parse_llvm_major(ldd, "libLLVM.so."), Some(22));
        assert_eq!(parse_llvm_major("bpf-linker 0.13.0", "LLVM"), None);
        assert_eq!(
            parse_llvm_major("bpf-linker 0.14 (LLVM 23.0.0)", "LLVM"),
            Some(23)
        );
    }
}
