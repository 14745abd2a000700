//! What to request next time, learned from the task history: per task name (rule,
//! Nextflow process, Slurm job name), how many runs and failures, the spread of
//! wall time, CPU time, CPU parallelism and peak memory, and a recommendation, as
//! text, JSON, a Snakemake profile, a Nextflow config or Slurm options.
//!
//! The statistics (docs/workflows.md): quantiles are nearest-rank (the p-th
//! quantile of n values is the ceil(p*n)-th smallest), over the runs that exited 0
//! (over all runs when none did). The recommendation adds the margin to the
//! largest value seen in any run, not to a quantile, because a request below a
//! need already seen fails that task again: memory is the largest peak RSS (of one
//! process; OOM-killed runs included) plus the margin, threads the p95 parallelism
//! rounded up, runtime the longest wall time plus the margin, rounded up to whole
//! minutes.

use std::fmt::Write;

use serde::Serialize;

use super::TaskRow;

/// Median, p95 and max of one measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

/// Nearest-rank quantile `q` (0 < q <= 1) of sorted values.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Spread {
            median: nearest_rank(&values, 0.5),
            p95: nearest_rank(&values, 0.95),
            max: values[values.len() - 1],
        })
    }
}

/// What to request for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recommendation {
    pub memory_mib: u64,
    pub threads: u32,
    pub runtime_minutes: u64,
}

/// One task name's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResources {
    pub engine: String,
    pub name: String,
    pub runs: u64,
    /// Runs that did not exit 0; of them, those with an OOM kill and those the run's
    /// timeout stopped, counted apart.
    pub failures: u64,
    pub oom_killed: u64,
    pub timed_out: u64,
    /// Over the runs that exited 0 (all runs when none did).
    pub wall_s: Spread,
    pub cpu_s: Spread,
    /// CPU time over wall time (1.0: one CPU busy throughout).
    pub parallelism: Spread,
    pub peak_rss_mib: Option<Spread>,
    pub recommendation: Recommendation,
}

/// Per name, in name order; `margin` is a fraction (0.2: 20% over).
pub fn summarize(rows: &[TaskRow], margin: f64) -> Vec<TaskResources> {
    // One pass: (name, engine) in byte order (str's order is its bytes').
    let mut by_name: std::collections::BTreeMap<(&str, &str), Vec<&TaskRow>> =
        std::collections::BTreeMap::new();
    for r in rows {
        by_name
            .entry((r.name.as_str(), r.engine.as_str()))
            .or_default()
            .push(r);
    }
    by_name
        .into_iter()
        .map(|((name, engine), all)| of_name(engine, name, &all, margin))
        .collect()
}

fn of_name(engine: &str, name: &str, all: &[&TaskRow], margin: f64) -> TaskResources {
    let ok: Vec<&TaskRow> = all.iter().copied().filter(|r| !r.failed()).collect();
    let basis = if ok.is_empty() { all } else { &ok[..] };
    let spread = |f: &dyn Fn(&TaskRow) -> Option<f64>| {
        Spread::of(basis.iter().filter_map(|r| f(r)).collect())
    };
    let zero = Spread {
        median: 0.0,
        p95: 0.0,
        max: 0.0,
    };
    let wall_s = spread(&|r| Some(r.duration_s)).unwrap_or(zero);
    let cpu_s = spread(&|r| Some(r.cpu_s)).unwrap_or(zero);
    let parallelism =
        spread(&|r| (r.duration_s > 0.0).then(|| r.cpu_s / r.duration_s)).unwrap_or(zero);
    let mib = |r: &TaskRow| r.peak_rss_kb.map(|kb| kb as f64 / 1024.0);
    let peak_rss_mib = spread(&|r| mib(r));
    // Largest need seen in any run, the failed ones included (an OOM-killed run
    // needed at least what it had).
    let max_rss = all.iter().filter_map(|r| mib(r)).fold(0.0, f64::max);
    let max_wall = all.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    let recommendation = Recommendation {
        memory_mib: ((max_rss * (1.0 + margin)).ceil() as u64).max(1),
        threads: (parallelism.p95.ceil() as u32).max(1),
        runtime_minutes: ((max_wall * (1.0 + margin) / 60.0).ceil() as u64).max(1),
    };
    TaskResources {
        engine: engine.to_string(),
        name: name.to_string(),
        runs: all.len() as u64,
        failures: all.iter().filter(|r| r.failed()).count() as u64,
        oom_killed: all.iter().filter(|r| r.oom_kills > 0).count() as u64,
        timed_out: all.iter().filter(|r| r.timed_out).count() as u64,
        wall_s,
        cpu_s,
        parallelism,
        peak_rss_mib,
        recommendation,
    }
}

/// The output formats of `history resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResourceFormat {
    /// A table for people.
    Text,
    /// The statistics and recommendations as JSON.
    Json,
    /// A Snakemake profile (`config.yaml`): `set-resources` and `set-threads`.
    Snakemake,
    /// A Nextflow config: a `withName:` block per process.
    Nextflow,
    /// sbatch options per job name: `--mem`, `--cpus-per-task`, `--time`.
    Slurm,
}

/// Quoted for YAML (double quotes, JSON escaping is valid YAML).
fn yaml_key(name: &str) -> String {
    serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into())
}

/// Single-quoted for a Groovy string.
fn groovy_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn slurm_time(minutes: u64) -> String {
    let (days, rest) = (minutes / 1440, minutes % 1440);
    let hm = format!("{:02}:{:02}:00", rest / 60, rest % 60);
    if days > 0 {
        format!("{days}-{hm}")
    } else {
        hm
    }
}

/// Renders the summaries; `margin` is said in the output.
pub fn render(list: &[TaskResources], format: ResourceFormat, margin: f64) -> String {
    let pct = (margin * 100.0).round();
    let mut o = String::new();
    match format {
        ResourceFormat::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({
                "margin_percent": pct,
                "tasks": list,
            }))
            .unwrap_or_default();
            s.push('\n');
            return s;
        }
        ResourceFormat::Text => {
            let _ = writeln!(
                o,
                "{:<24} {:>5} {:>6} {:>4} {:>4}  {:>23}  {:>23}  {:>17}  {:>23}  recommend (+{pct}%)",
                "name", "runs", "failed", "OOM", "t/o",
                "wall s (med/p95/max)", "CPU s (med/p95/max)", "CPUs (med/p95)",
                "peak MiB (med/p95/max)"
            );
            for t in list {
                let r = &t.recommendation;
                let _ = writeln!(
                    o,
                    "{:<24} {:>5} {:>6} {:>4} {:>4}  {:>7.1} {:>7.1} {:>7.1}  {:>7.1} {:>7.1} {:>7.1}  {:>8.2} {:>8.2}  {}  mem {} MiB, {} thread{}, {} min",
                    t.name,
                    t.runs,
                    t.failures,
                    t.oom_killed,
                    t.timed_out,
                    t.wall_s.median,
                    t.wall_s.p95,
                    t.wall_s.max,
                    t.cpu_s.median,
                    t.cpu_s.p95,
                    t.cpu_s.max,
                    t.parallelism.median,
                    t.parallelism.p95,
                    t.peak_rss_mib.map_or_else(
                        || format!("{:>23}", "-"),
                        |m| format!("{:>7.1} {:>7.1} {:>7.1}", m.median, m.p95, m.max)
                    ),
                    r.memory_mib,
                    r.threads,
                    if r.threads == 1 { "" } else { "s" },
                    r.runtime_minutes
                );
            }
        }
        ResourceFormat::Snakemake => {
            let _ = writeln!(
                o,
                "# Snakemake profile (config.yaml) from denet-agent history resources:\n\
                 # memory and runtime {pct}% over the largest seen, threads the p95 CPU use."
            );
            let _ = writeln!(o, "set-resources:");
            for t in list {
                let r = &t.recommendation;
                let _ = writeln!(o, "  {}:", yaml_key(&t.name));
                let _ = writeln!(o, "    mem_mib: {}", r.memory_mib);
                let _ = writeln!(o, "    runtime: {}", r.runtime_minutes);
            }
            let _ = writeln!(o, "set-threads:");
            for t in list {
                let _ = writeln!(o, "  {}: {}", yaml_key(&t.name), t.recommendation.threads);
            }
        }
        ResourceFormat::Nextflow => {
            let _ = writeln!(
                o,
                "// Nextflow config from denet-agent history resources: memory and time\n\
                 // {pct}% over the largest seen, cpus the p95 CPU use."
            );
            let _ = writeln!(o, "process {{");
            for t in list {
                let r = &t.recommendation;
                let _ = writeln!(o, "    withName: {} {{", groovy_str(&t.name));
                let _ = writeln!(o, "        memory = '{} MB'", r.memory_mib);
                let _ = writeln!(o, "        cpus = {}", r.threads);
                let _ = writeln!(o, "        time = '{}m'", r.runtime_minutes);
                let _ = writeln!(o, "    }}");
            }
            let _ = writeln!(o, "}}");
        }
        ResourceFormat::Slurm => {
            let _ = writeln!(
                o,
                "# sbatch options per job name, from denet-agent history resources:\n\
                 # memory and time {pct}% over the largest seen, CPUs the p95 CPU use."
            );
            for t in list {
                let r = &t.recommendation;
                let _ = writeln!(
                    o,
                    "{}\t--mem={}M --cpus-per-task={} --time={}",
                    t.name,
                    r.memory_mib,
                    r.threads,
                    slurm_time(r.runtime_minutes)
                );
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), 10.0);
        assert_eq!(nearest_rank(&v, 0.95), 19.0);
        assert_eq!(nearest_rank(&[7.0], 0.95), 7.0);
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p95, s.max), (2.0, 3.0, 3.0));
    }

    #[test]
    fn slurm_times() {
        assert_eq!(slurm_time(5), "00:05:00");
        assert_eq!(slurm_time(61), "01:01:00");
        assert_eq!(slurm_time(1441), "1-00:01:00");
    }
}

/// `--since`: a span back from now (`90m`, `12h`, `7d`, `2w`) or a UTC date
/// (`2026-11-01`), as unix ms.
pub fn parse_since(text: &str, now_unix_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "--since {text:?}: give a span back from now (90m, 12h, 7d, 2w) or a date (2026-11-01)"
        )
    };
    let t = text.trim();
    if let Some((y, rest)) = t.split_once('-') {
        let mut parts = rest.splitn(2, '-');
        let (m, d) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
        let (y, m, d): (i64, u32, u32) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        return Ok(days_from_civil(y, m, d) * 86_400_000);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now_unix_ms - n.saturating_mul(ms))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod since_tests {
    use super::*;

    #[test]
    fn spans_and_dates() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("90m", now), Ok(now - 90 * 60_000));
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_since("2026-11-01", now), Ok(1_793_491_200_000));
        assert_eq!(parse_since("1970-01-01", now), Ok(0));
        for bad in ["", "7", "7y", "d", "2026-13-01", "2026-11"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
