//! The notebook example (examples/notebook.py, shown in docs/notebook.md) runs with
//! the Python package from its wheel (with pandas and polars) and matplotlib, and
//! finds what `denet-agent stats` finds. Outside CI a missing wheel skips with a
//! message; in CI it fails.

use std::process::Command;

use crate::helpers::{
    python::wheel_python,
    report::{data, of_kind, records, repo, stats_json},
};
use serde_json::Value;

#[test]
fn notebook_example_runs_and_agrees_with_stats() {
    let Some(python) = wheel_python("notebook_example_runs_and_agrees_with_stats") else {
        return;
    };
    for trace in ["depth.jsonl", "pipeline.jsonl"] {
        let out = crate::helpers::scratch_dir("notebook");
        let o = Command::new(&python)
            .arg(repo().join("examples/notebook.py"))
            .arg(data(trace))
            .arg("--out")
            .arg(&out)
            .env("MPLCONFIGDIR", out.join("mpl"))
            .output()
            .expect("run the notebook example");
        assert!(
            o.status.success(),
            "{trace}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Value = serde_json::from_slice(&o.stdout).expect("the example prints JSON");

        let recs = records(&data(trace));
        let stats = stats_json(&data(trace));
        assert_eq!(got["processes"], stats["totals"]["processes"]);
        assert_eq!(got["samples"], stats["totals"]["samples"]);
        let per_proc: usize = of_kind(&recs, "sample")
            .iter()
            .map(|s| s["procs"].as_array().unwrap().len())
            .sum();
        assert_eq!(got["per_process_samples"], per_proc);
        let max_rss = of_kind(&recs, "sample")
            .iter()
            .map(|s| s["rss_kb"].as_u64().unwrap())
            .max();
        assert_eq!(got["peak_tree_rss_kb"].as_u64(), max_rss);
        for (i, t) in got["top_cpu"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                t["pid"], stats["top"]["cpu"][i]["pid"],
                "{trace}: top CPU #{i}"
            );
        }
        assert_eq!(got["polars_rows"], recs.len());
        assert_eq!(got["polars_processes"], stats["totals"]["processes"]);
        assert_eq!(
            got["polars_top_rss"]["pid"],
            stats["top"]["peak_rss"][0]["pid"]
        );
        for png in ["usage.png", "top.png"] {
            let bytes = std::fs::read(out.join(png)).expect("plot written");
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5000,
                "{png}"
            );
        }
    }
}
