//! Human-readable numbers for the text and HTML reports.

/// Seconds with a unit that fits: `850 µs`, `12.3 ms`, `1.234 s`, `2 min 03 s`, `1 h 02 min`.
pub fn duration_ns(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if ns < 1_000_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if s < 60.0 {
        format!("{s:.3} s")
    } else if s < 3600.0 {
        let t = s.round() as u64;
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        let t = (s / 60.0).round() as u64;
        format!("{} h {:02} min", t / 60, t % 60)
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.21 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if v < 10.0 {
        format!("{v:.2} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn kib(kb: u64) -> String {
    bytes(kb.saturating_mul(1024))
}

/// Counts with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn percent(p: f64) -> String {
    if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// Common signal names, for exit statuses.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// An exit status as a short text: `0`, `1`, `SIGTERM`, `SIGSEGV (core)`, `?`.
pub fn exit_status(exit_code: Option<i32>, signal: Option<i32>, core_dumped: bool) -> String {
    match (exit_code, signal) {
        (_, Some(s)) if core_dumped => format!("{} (core)", signal_name(s)),
        (_, Some(s)) => signal_name(s),
        (Some(c), None) => c.to_string(),
        (None, None) => "?".to_string(),
    }
}

/// Civil UTC date-time from Unix nanoseconds: `2026-11-23 08:52:49 UTC`.
pub fn utc_datetime(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration_ns(850_000), "850 µs");
        assert_eq!(duration_ns(12_340_000), "12.3 ms");
        assert_eq!(duration_ns(1_234_000_000), "1.234 s");
        assert_eq!(duration_ns(123_000_000_000), "2 min 03 s");
        assert_eq!(duration_ns(3_720_000_000_000), "1 h 02 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(exit_status(None, Some(15), false), "SIGTERM");
        assert_eq!(exit_status(None, Some(11), true), "SIGSEGV (core)");
        assert_eq!(exit_status(Some(2), None, false), "2");
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc_datetime(1_795_423_969_246_453_929),
            "2026-11-23 08:52:49 UTC"
        );
    }
}
