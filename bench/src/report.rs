//! Measurements and how they are shown: HDR latency histograms, the figures of one run per
//! target, the exactly-once check, the summary table (Daehwa beside the ceiling, with the
//! ratio) and the JSON summary.
//!
//! Ratios are always `daehwa / ceiling`: for a rate, the fraction of the ceiling reached; for
//! a latency or a memory figure, how many times the ceiling's.

use std::io::Write;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::session::Transport;

/// Lowest latency told apart: 1 µs (values below land in the first bucket).
const LOWEST_NS: u64 = 1_000;
/// Highest latency recorded: 10 minutes (longer ones are clamped).
const HIGHEST_NS: u64 = 600_000_000_000;

/// End-to-end latencies in nanoseconds, 3 significant figures.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3)
            .expect("constant histogram bounds are valid");
        Self { hist }
    }

    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        // In bounds after the clamp, so recording cannot fail.
        let _ = self.hist.record(ns.min(HIGHEST_NS));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    /// The largest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1e6
    }

    /// p50, p99, p99.9 and max as figures named `<key>_p50_ms` ... with labels `<label> p50`.
    pub fn figures(&self, key: &str, label: &str) -> Vec<Figure> {
        if self.count() == 0 {
            return Vec::new();
        }
        vec![
            Figure::new(
                format!("{key}_p50_ms"),
                format!("{label} p50 ms"),
                self.quantile_ms(0.5),
            ),
            Figure::new(
                format!("{key}_p99_ms"),
                format!("{label} p99 ms"),
                self.quantile_ms(0.99),
            ),
            Figure::new(
                format!("{key}_p999_ms"),
                format!("{label} p99.9 ms"),
                self.quantile_ms(0.999),
            ),
            Figure::new(
                format!("{key}_max_ms"),
                format!("{label} max ms"),
                self.max_ms(),
            ),
        ]
    }
}

/// One named measurement of one target.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable snake_case name (JSON key).
    pub key: String,
    /// What the table shows, unit included.
    pub label: String,
    /// The measured value.
    pub value: f64,
}

impl Figure {
    /// A figure.
    pub fn new(key: impl Into<String>, label: impl Into<String>, value: f64) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            value,
        }
    }
}

/// CPU used by the server and by this load generator over a measured window.
pub struct CpuWindow {
    server: Option<f64>,
    own: Option<f64>,
}

impl CpuWindow {
    /// Starts a window: reads both processes' CPU time now.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(crate::rss::cpu_seconds),
            own: crate::rss::cpu_seconds(std::process::id()),
        }
    }

    /// Figures for a window of `seconds` that moved `messages`: cores used by the server and
    /// by the load generator, and each one's CPU µs per message.
    pub fn figures(&self, server_pid: Option<u32>, seconds: f64, messages: u64) -> Vec<Figure> {
        let seconds = seconds.max(1e-9);
        let windows = [
            (
                "server",
                "server",
                self.server,
                server_pid.and_then(crate::rss::cpu_seconds),
            ),
            (
                "bench",
                "load generator",
                self.own,
                crate::rss::cpu_seconds(std::process::id()),
            ),
        ];
        let mut figures = Vec::new();
        for (key, label, before, after) in windows {
            let (Some(before), Some(after)) = (before, after) else {
                continue;
            };
            let used = after - before;
            figures.push(Figure::new(
                format!("{key}_cpu_cores"),
                format!("{label} CPU cores"),
                used / seconds,
            ));
            if messages > 0 {
                figures.push(Figure::new(
                    format!("{key}_cpu_us_per_msg"),
                    format!("{label} CPU us/msg"),
                    used * 1e6 / messages as f64,
                ));
            }
        }
        figures
    }
}

/// The exactly-once check of one run and the errors seen on the way.
#[derive(Debug, Default, Clone)]
pub struct Check {
    /// Messages the server acknowledged.
    pub acked: u64,
    /// Deliveries seen by recipients (every copy counted).
    pub delivered: u64,
    /// Acknowledged messages some recipient never got.
    pub lost: u64,
    /// Extra copies of a message one recipient got more than once.
    pub duplicated: u64,
    /// Failed requests, refused sends, broken streams, unreadable frames.
    pub errors: u64,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
}

impl Check {
    /// Counts an error and keeps its message if fewer than 10 are kept.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        if self.error_samples.len() < 10 {
            self.error_samples.push(message.into());
        }
    }

    /// Adds another check's counts.
    pub fn absorb(&mut self, other: Check) {
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.errors += other.errors;
        for sample in other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(sample);
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "acked": self.acked,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "errors": self.errors,
            "error_samples": self.error_samples,
        })
    }
}

/// Everything one target produced in one scenario.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// The figures, in the order the table shows them.
    pub figures: Vec<Figure>,
    /// Loss, duplicates and errors.
    pub check: Check,
    /// Remarks on this run (limits hit, sizes reduced ...).
    pub notes: Vec<String>,
}

impl Run {
    /// The value of the figure named `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.key == key).map(|f| f.value)
    }

    fn to_json(&self) -> Value {
        let figures: Map<String, Value> = self
            .figures
            .iter()
            .map(|f| (f.key.clone(), json!(f.value)))
            .collect();
        json!({
            "figures": figures,
            "check": self.check.to_json(),
            "notes": self.notes,
        })
    }
}

/// One scenario's result: Daehwa, the ceiling when one applies, and notes.
#[derive(Debug)]
pub struct Report {
    /// Scenario name (the subcommand).
    pub scenario: &'static str,
    /// How the sessions reached both servers (the same for Daehwa and the ceiling).
    pub transport: Transport,
    /// The parameters it ran with.
    pub params: Value,
    /// Daehwa's run.
    pub daehwa: Run,
    /// The bare relay's run, when the scenario has a ceiling and it was not skipped.
    pub ceiling: Option<Run>,
    /// Remarks printed under the table (limits hit, sizes reduced ...).
    pub notes: Vec<String>,
}

impl Report {
    /// Lost plus duplicated messages over both runs: anything but zero is a failure.
    pub fn violations(&self) -> u64 {
        let mut n = self.daehwa.check.lost + self.daehwa.check.duplicated;
        if let Some(c) = &self.ceiling {
            n += c.check.lost + c.check.duplicated;
        }
        n
    }

    /// The machine-readable summary.
    pub fn to_json(&self) -> Value {
        let mut ratios = Map::new();
        if let Some(ceiling) = &self.ceiling {
            for f in &self.daehwa.figures {
                if let Some(r) = ratio(f.value, ceiling.get(&f.key)) {
                    ratios.insert(f.key.clone(), json!(r));
                }
            }
        }
        let ceiling = self.ceiling.as_ref();
        json!({
            "scenario": self.scenario,
            "transport": self.transport.name(),
            "params": self.params,
            "daehwa": self.daehwa.to_json(),
            "ceiling": ceiling.map(Run::to_json),
            "ratios": ratios,
            "lost": self.daehwa.check.lost + ceiling.map_or(0, |c| c.check.lost),
            "duplicated": self.daehwa.check.duplicated + ceiling.map_or(0, |c| c.check.duplicated),
            "errors": self.daehwa.check.errors + ceiling.map_or(0, |c| c.check.errors),
            "notes": self.notes,
        })
    }

    /// The human-readable table.
    pub fn print_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "\n== {} ({}) {}",
            self.scenario,
            self.transport,
            compact_params(&self.params)
        )?;
        writeln!(
            out,
            "{:<34} {:>14} {:>14} {:>9}",
            "figure", "daehwa", "ceiling", "ratio"
        )?;
        let ceiling = self.ceiling.as_ref();
        for f in &self.daehwa.figures {
            let c = ceiling.and_then(|c| c.get(&f.key));
            writeln!(
                out,
                "{:<34} {:>14} {:>14} {:>9}",
                f.label,
                number(f.value),
                c.map_or_else(|| "-".to_owned(), number),
                ratio(f.value, c).map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x")),
            )?;
        }
        let rows: [(&str, CheckCount); 5] = [
            ("acked", |c| c.acked),
            ("delivered", |c| c.delivered),
            ("lost", |c| c.lost),
            ("duplicated", |c| c.duplicated),
            ("errors", |c| c.errors),
        ];
        for (label, get) in rows {
            writeln!(
                out,
                "{:<34} {:>14} {:>14}",
                label,
                get(&self.daehwa.check),
                ceiling.map_or_else(|| "-".to_owned(), |c| get(&c.check).to_string()),
            )?;
        }
        for (who, run) in [("daehwa", Some(&self.daehwa)), ("ceiling", ceiling)] {
            let Some(run) = run else { continue };
            for sample in &run.check.error_samples {
                writeln!(out, "  {who} error: {sample}")?;
            }
            for note in &run.notes {
                writeln!(out, "  {who} note: {note}")?;
            }
        }
        for note in &self.notes {
            writeln!(out, "  note: {note}")?;
        }
        Ok(())
    }
}

/// Reads one count of a [`Check`].
type CheckCount = fn(&Check) -> u64;

fn ratio(daehwa: f64, ceiling: Option<f64>) -> Option<f64> {
    ceiling.filter(|c| *c != 0.0).map(|c| daehwa / c)
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn compact_params(params: &Value) -> String {
    match params {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_and_merge() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=100 {
            a.record(i * 1_000_000);
        }
        b.record(u64::MAX);
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert!((a.quantile_ms(0.5) - 51.0).abs() < 0.1);
        assert!(a.max_ms() >= 599_000.0);
    }

    #[test]
    fn json_sums_loss_over_both_runs_and_gives_ratios() {
        let mut daehwa = Run::default();
        daehwa.figures.push(Figure::new("rate", "rate/s", 50.0));
        daehwa.check.lost = 1;
        let mut ceiling = Run::default();
        ceiling.figures.push(Figure::new("rate", "rate/s", 200.0));
        ceiling.check.duplicated = 2;
        let report = Report {
            scenario: "pairs",
            transport: Transport::Ws,
            params: json!({"pairs": 2}),
            daehwa,
            ceiling: Some(ceiling),
            notes: vec![],
        };
        let v = report.to_json();
        assert_eq!(v["lost"], 1);
        assert_eq!(v["duplicated"], 2);
        assert_eq!(v["ratios"]["rate"], 0.25);
        assert_eq!(v["transport"], "ws");
        assert_eq!(report.violations(), 3);
        let mut table = Vec::new();
        report.print_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("0.250x"), "{table}");
        assert!(table.contains("== pairs (ws)"), "{table}");
    }
}
