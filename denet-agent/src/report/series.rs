//! CPU and memory of the whole tree over time, from samples, in bounded memory:
//! past [`MAX_POINTS`] points, neighbours are merged pairwise (CPU averaged over the
//! merged windows, RSS and CPU maxima kept), so a week-long trace still draws.

pub const MAX_POINTS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// CLOCK_BOOTTIME of the (last) sample in this point.
    pub ts_boot_ns: u64,
    /// Window covered, ms.
    pub window_ms: f64,
    /// Mean CPU over the window, percent of one CPU.
    pub cpu_percent: f64,
    pub cpu_max_percent: f64,
    /// Largest tree RSS in the window, KiB.
    pub rss_kb: u64,
    pub processes: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Series {
    pub points: Vec<Point>,
    /// Samples merged into each point (1, 2, 4, ...).
    pub per_point: u64,
    /// Samples not yet making a whole point, merged, and how many.
    pending: Option<(Point, u64)>,
}

impl Series {
    pub fn push(&mut self, p: Point) {
        if self.per_point == 0 {
            self.per_point = 1;
        }
        let (acc, n) = match self.pending.take() {
            Some((acc, n)) => (merge(&acc, &p), n + 1),
            None => (p, 1),
        };
        if n < self.per_point {
            self.pending = Some((acc, n));
            return;
        }
        self.points.push(acc);
        if self.points.len() >= MAX_POINTS {
            self.points = self
                .points
                .chunks(2)
                .filter_map(|pair| pair.iter().copied().reduce(|a, b| merge(&a, &b)))
                .collect();
            self.per_point = self.per_point.saturating_mul(2);
        }
    }

    /// Ends the series: samples that did not fill a whole point become the last one.
    pub fn finish(&mut self) {
        if let Some((acc, _)) = self.pending.take() {
            self.points.push(acc);
        }
    }
}

fn merge(a: &Point, b: &Point) -> Point {
    let w = a.window_ms + b.window_ms;
    let cpu = if w > 0.0 {
        (a.cpu_percent * a.window_ms + b.cpu_percent * b.window_ms) / w
    } else {
        (a.cpu_percent + b.cpu_percent) / 2.0
    };
    Point {
        ts_boot_ns: b.ts_boot_ns,
        window_ms: w,
        cpu_percent: cpu,
        cpu_max_percent: a.cpu_max_percent.max(b.cpu_max_percent),
        rss_kb: a.rss_kb.max(b.rss_kb),
        processes: a.processes.max(b.processes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_peaks_and_mean() {
        let mut s = Series::default();
        for i in 0..100_000u64 {
            s.push(Point {
                ts_boot_ns: i,
                window_ms: 1.0,
                cpu_percent: if i % 2 == 0 { 100.0 } else { 0.0 },
                cpu_max_percent: if i % 2 == 0 { 100.0 } else { 0.0 },
                rss_kb: if i == 77_777 { 9999 } else { i % 10 },
                processes: 1,
            });
        }
        s.finish();
        assert!(s.points.len() <= MAX_POINTS);
        // Every point but the last merges the same number of samples.
        let merged: f64 = s.points.iter().map(|p| p.window_ms).sum();
        assert_eq!(merged, 100_000.0);
        let full = s.per_point as f64;
        assert!(s.points[..s.points.len() - 1]
            .iter()
            .all(|p| p.window_ms == full));
        assert_eq!(s.points.iter().map(|p| p.rss_kb).max(), Some(9999));
        let first = s.points[0];
        assert!((first.cpu_percent - 50.0).abs() < 1e-9);
        assert_eq!(first.cpu_max_percent, 100.0);
    }
}
