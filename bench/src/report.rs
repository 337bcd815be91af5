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
    /// Daehwa's run (of the reported round, with `--rounds`).
    pub daehwa: Run,
    /// The bare relay's run, when the scenario has a ceiling and it was not skipped.
    pub ceiling: Option<Run>,
    /// With `--rounds` above 1: every round's headline figure, in the order run.
    pub rounds: Vec<RoundLine>,
    /// Loss, duplicates and errors of the rounds not reported: they count all the same.
    pub other_rounds: Check,
    /// Remarks printed under the table (limits hit, sizes reduced ...).
    pub notes: Vec<String>,
}

/// Both targets' runs of one round of a scenario.
#[derive(Debug, Default, Clone)]
pub struct Round {
    /// Daehwa's run.
    pub daehwa: Run,
    /// The bare relay's run, when the scenario has a ceiling and it was not skipped.
    pub ceiling: Option<Run>,
}

/// One round reduced to its headline figure, for the table and the JSON summary.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundLine {
    /// Daehwa's value of the headline figure.
    pub daehwa: Option<f64>,
    /// The ceiling's value of it.
    pub ceiling: Option<f64>,
    /// Whether this is the round whose figures the report shows.
    pub reported: bool,
}

impl Report {
    /// The report of `rounds` of one scenario (at least one; `--rounds` takes odd counts
    /// only, since whether the upper or the lower median of an even count favours Daehwa
    /// depends on the figure), each run on both targets: it shows the round whose
    /// `headline` figure is the median, as a ratio to the ceiling where there is one and as
    /// the value where there is none (an even count gets the upper median), lists every round's headline,
    /// and counts every round's loss. One round of a 2-core machine shared with the load
    /// generator can land on a slow moment for one target and not the other; the median of
    /// several alternated rounds is a steadier ratio.
    pub fn from_rounds(
        scenario: &'static str,
        transport: Transport,
        params: Value,
        rounds: Vec<Round>,
        headline: &str,
    ) -> Report {
        let score = |round: &Round| {
            let daehwa = round.daehwa.get(headline);
            match &round.ceiling {
                Some(ceiling) => daehwa.and_then(|d| ratio(d, ceiling.get(headline))),
                None => daehwa,
            }
        };
        let mut order: Vec<usize> = (0..rounds.len()).collect();
        // Rounds without the figure sort last.
        order.sort_by(|a, b| match (score(&rounds[*a]), score(&rounds[*b])) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        let reported = order.get(rounds.len() / 2).copied().unwrap_or(0);
        let lines = if rounds.len() > 1 {
            rounds
                .iter()
                .enumerate()
                .map(|(i, r)| RoundLine {
                    daehwa: r.daehwa.get(headline),
                    ceiling: r.ceiling.as_ref().and_then(|c| c.get(headline)),
                    reported: i == reported,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut other_rounds = Check::default();
        let mut shown = Round::default();
        for (i, round) in rounds.into_iter().enumerate() {
            if i == reported {
                shown = round;
            } else {
                other_rounds.absorb(round.daehwa.check);
                if let Some(c) = round.ceiling {
                    other_rounds.absorb(c.check);
                }
            }
        }
        Report {
            scenario,
            transport,
            params,
            daehwa: shown.daehwa,
            ceiling: shown.ceiling,
            rounds: lines,
            other_rounds,
            notes: Vec::new(),
        }
    }

    /// Lost plus duplicated messages over every run: anything but zero is a failure.
    pub fn violations(&self) -> u64 {
        let mut n = self.daehwa.check.lost + self.daehwa.check.duplicated;
        if let Some(c) = &self.ceiling {
            n += c.check.lost + c.check.duplicated;
        }
        n + self.other_rounds.lost + self.other_rounds.duplicated
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
            "rounds": self.rounds.iter().map(|r| json!({
                "daehwa": r.daehwa,
                "ceiling": r.ceiling,
                "ratio": r.daehwa.and_then(|d| ratio(d, r.ceiling)),
                "reported": r.reported,
            })).collect::<Vec<_>>(),
            "lost": self.daehwa.check.lost + ceiling.map_or(0, |c| c.check.lost) + self.other_rounds.lost,
            "duplicated": self.daehwa.check.duplicated
                + ceiling.map_or(0, |c| c.check.duplicated)
                + self.other_rounds.duplicated,
            "errors": self.daehwa.check.errors
                + ceiling.map_or(0, |c| c.check.errors)
                + self.other_rounds.errors,
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
        for (i, round) in self.rounds.iter().enumerate() {
            let value = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), number);
            writeln!(
                out,
                "  round {}: daehwa {}, ceiling {}, ratio {}{}",
                i + 1,
                value(round.daehwa),
                value(round.ceiling),
                round
                    .daehwa
                    .and_then(|d| ratio(d, round.ceiling))
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x")),
                if round.reported {
                    " (reported above)"
                } else {
                    ""
                },
            )?;
        }
        let u = &self.other_rounds;
        if u.lost + u.duplicated + u.errors > 0 {
            writeln!(
                out,
                "  other rounds: lost {}, duplicated {}, errors {}",
                u.lost, u.duplicated, u.errors
            )?;
            for sample in &u.error_samples {
                writeln!(out, "  other rounds error: {sample}")?;
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
            rounds: Vec::new(),
            other_rounds: Check::default(),
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

    fn round(daehwa_p99: f64, ceiling_p99: f64, lost: u64) -> Round {
        let mut daehwa = Run::default();
        daehwa
            .figures
            .push(Figure::new("p99", "p99 ms", daehwa_p99));
        daehwa.check.lost = lost;
        let mut ceiling = Run::default();
        ceiling
            .figures
            .push(Figure::new("p99", "p99 ms", ceiling_p99));
        Round {
            daehwa,
            ceiling: Some(ceiling),
        }
    }

    #[test]
    fn rounds_report_the_median_ratio_and_count_every_loss() {
        // Ratios 4, 1 and 2 in the order run: the median is the third round's 2.
        let rounds = vec![
            round(40.0, 10.0, 1),
            round(5.0, 5.0, 0),
            round(30.0, 15.0, 0),
        ];
        let report = Report::from_rounds("latency", Transport::Grpc, json!({}), rounds, "p99");
        assert_eq!(report.daehwa.get("p99"), Some(30.0));
        assert_eq!(
            report.ceiling.as_ref().and_then(|c| c.get("p99")),
            Some(15.0)
        );
        assert_eq!(
            report.rounds.iter().map(|r| r.reported).collect::<Vec<_>>(),
            [false, false, true]
        );
        // The first round lost a message: not shown, still a failure.
        assert_eq!(report.violations(), 1);
        let v = report.to_json();
        assert_eq!(v["lost"], 1);
        assert_eq!(v["rounds"][0]["ratio"], 4.0);
        assert_eq!(v["ratios"]["p99"], 2.0);
        let mut table = Vec::new();
        report.print_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("round 3: daehwa 30.00, ceiling 15.00, ratio 2.000x (reported above)"),
            "{table}"
        );
        assert!(table.contains("other rounds: lost 1"), "{table}");
    }

    #[test]
    fn one_round_reports_itself_without_round_lines() {
        let report = Report::from_rounds(
            "latency",
            Transport::Grpc,
            json!({}),
            vec![round(8.0, 2.0, 0)],
            "p99",
        );
        assert_eq!(report.daehwa.get("p99"), Some(8.0));
        assert!(report.rounds.is_empty());
        assert_eq!(report.violations(), 0);
        // An even count reports the upper median.
        let rounds = vec![round(1.0, 1.0, 0), round(3.0, 1.0, 0)];
        let report = Report::from_rounds("latency", Transport::Grpc, json!({}), rounds, "p99");
        assert_eq!(report.daehwa.get("p99"), Some(3.0));
    }
}
