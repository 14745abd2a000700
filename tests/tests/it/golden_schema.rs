//! Golden file for the shape of a real eBPF trace: field names, order and JSON types
//! per record kind, with values kept where they are deterministic. Regenerate with
//! UPDATE_GOLDEN=1 after an intended format change (and update docs/jsonl-format.md).

use crate::helpers::{ebpf_ready, run_agent};
use serde_json::{Map, Value};

/// Fields whose values are the same on every run of the command below.
const STABLE: &[&str] = &[
    "path",
    "access",
    "closed_by",
    "inherited",
    "created",
    "path_source",
    "kind",
    "schema_version",
    "argv",
    "argv_truncated",
    "exe",
    "execs",
    "exit_code",
    "signal",
    "core_dumped",
    "source",
    "ebpf",
    "ebpf_unavailable_reason",
    "timed_out",
    "lost_events",
    "incomplete_processes",
    "process_count",
    "threads",
    "wchar",
    "syscw",
    "error",
    "interval_ms",
    "max_interval_ms",
    "argv_max_bytes",
    "timeout_s",
    "samples",
    "clock",
];

fn type_name(v: &Value) -> Value {
    Value::String(
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_u64() => "uint",
            Value::Number(n) if n.is_i64() => "int",
            Value::Number(_) => "float",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
        .into(),
    )
}

fn normalize(v: &Value) -> Value {
    let Value::Object(map) = v else {
        return type_name(v);
    };
    let mut out = Map::new();
    for (k, val) in map {
        let keep = STABLE.contains(&k.as_str()) && !matches!(val, Value::Object(_));
        // Syscall counts (which syscalls, how many: data) keep only their type.
        if k == "syscalls" {
            out.insert(k.clone(), type_name(val));
            continue;
        }
        // The run's cgroup is named after the pids: its fields keep only their types.
        if let (true, Value::Object(cg)) = (k == "cgroup", val) {
            let fields = cg.iter().map(|(f, v)| (f.clone(), type_name(v))).collect();
            out.insert(k.clone(), Value::Object(fields));
            continue;
        }
        out.insert(
            k.clone(),
            if keep {
                val.clone()
            } else if val.is_object() {
                normalize(val)
            } else {
                type_name(val)
            },
        );
    }
    Value::Object(out)
}

/// Runs the golden command with `flags` and compares the trace's shape with
/// tests/golden/`name`.
fn check_shape(test: &str, flags: &[&str], name: &str) {
    if !ebpf_ready(test) {
        return;
    }
    // No samples (interval longer than the run): their count depends on timing.
    let args: Vec<&str> = ["--interval-ms", "3600000", "--timeout", "600"]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let t = run_agent(&args, &["sh", "-c", "/bin/echo golden > /dev/null; exit 2"]);
    assert_eq!(t.exit_code(), 2, "{}", t.stderr);
    // File records: only the one the command itself opened (the loader's opens
    // depend on the machine's libraries).
    let mut lines: Vec<String> = t
        .records
        .iter()
        .filter(|r| r["kind"] != "file" || r["path"] == "/dev/null")
        .map(|r| normalize(r).to_string())
        .collect();
    // Process records come in exit order; sort them for a stable file.
    let n = lines.len();
    lines[1..n - 1].sort();
    let got = lines.join("\n") + "\n";
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(
        got, want,
        "trace shape changed ({name}); see the comment at the top of this file"
    );
}

/// Everything on: the full shape, with `file` records and `syscalls` maps.
#[test]
fn golden_shape_of_a_real_trace() {
    check_shape(
        "golden_shape_of_a_real_trace",
        &["--files", "--syscalls"],
        "real-trace.shape.jsonl",
    );
}

/// Default flags: no `file` records and no `syscalls` maps (the fields that exist
/// only with `--files` / `--syscalls`).
#[test]
fn golden_shape_of_a_default_trace() {
    check_shape(
        "golden_shape_of_a_default_trace",
        &[],
        "real-trace-default.shape.jsonl",
    );
}
