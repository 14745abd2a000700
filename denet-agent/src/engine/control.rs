//! The control protocol of a driven run (`run --control-fd`): what the service asks
//! of a running job, one line per request. Both directions use this one type: the
//! service writes `Control::to_string()`, the agent parses with `str::parse`.

use std::{fmt, time::Duration};

/// Requests from whoever drives the run (the `serve` supervisor), while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop the whole tree: SIGTERM, SIGKILL after `grace` (default: the run's
    /// `kill_grace`). The summary says `cancelled`.
    Stop { grace: Option<Duration> },
    /// SIGSTOP the whole tree (and whatever it forks meanwhile) until `Resume`.
    Pause,
    /// SIGCONT the whole tree.
    Resume,
}

impl std::str::FromStr for Control {
    type Err = String;
    /// The line protocol of `run --control-fd`: `stop [GRACE_MS]`, `pause`, `resume`.
    fn from_str(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let control = match words.next() {
            Some("stop") => {
                let grace = match words.next() {
                    Some(ms) => Some(Duration::from_millis(
                        ms.parse::<u64>()
                            .map_err(|e| format!("stop: bad grace {ms:?}: {e}"))?,
                    )),
                    None => None,
                };
                Control::Stop { grace }
            }
            Some("pause") => Control::Pause,
            Some("resume") => Control::Resume,
            _ => return Err(format!("unknown control request {line:?}")),
        };
        match words.next() {
            Some(extra) => Err(format!("unexpected {extra:?} in control request {line:?}")),
            None => Ok(control),
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Stop { grace: Some(g) } => write!(f, "stop {}", g.as_millis()),
            Control::Stop { grace: None } => f.write_str("stop"),
            Control::Pause => f.write_str("pause"),
            Control::Resume => f.write_str("resume"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines() {
        for c in [
            Control::Stop { grace: None },
            Control::Stop {
                grace: Some(Duration::from_millis(1500)),
            },
            Control::Pause,
            Control::Resume,
        ] {
            assert_eq!(c.to_string().parse::<Control>(), Ok(c), "round trip");
        }
        let parse = |l: &str| l.parse::<Control>();
        assert_eq!(parse("stop"), Ok(Control::Stop { grace: None }));
        assert_eq!(
            parse("stop 250"),
            Ok(Control::Stop {
                grace: Some(Duration::from_millis(250))
            })
        );
        assert_eq!(parse(" pause "), Ok(Control::Pause));
        assert_eq!(parse("resume"), Ok(Control::Resume));
        for bad in ["", "stop soon", "stop -1", "jump", "pause now", "stop 1 2"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
