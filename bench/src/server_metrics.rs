//! chatd's own view of a measured window, read from its Prometheus endpoint (`GET /metrics`
//! on the `--metrics-listen` address this tool gives it): how long a sending task waited for
//! the message store's durable append (once per append call: the sends a session takes
//! together share one), and how long a message took from its `created_at` to its handoff to
//! a recipient's stream (before h2 encodes or writes it; `created_at` is wall-clock time in
//! whole milliseconds, so this reads ~0.5 ms long on average). Beside the end-to-end latency
//! these say roughly where a message's time went: waiting for the store, in the rest of the
//! server, or outside it (sockets, h2, the load generator). Also the embedded store's
//! write-ahead-log appends with their `fdatasync` (mean, slowest, and how many took over
//! 100 ms): a disk that stalls holds every send in its window. Only chatd has them; the
//! relay's column shows `-`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::report::Figure;

/// The store append histogram (`store_append_seconds` in server/src/metrics.rs).
const STORE_APPEND: &str = "daehwa_store_append_seconds";
/// The receipt-to-recipient-stream histogram (`delivery_latency_seconds`).
const DELIVERY: &str = "daehwa_delivery_latency_seconds";
/// The log append-and-sync histogram (`store_log_sync_seconds`; the embedded store only).
const LOG_SYNC: &str = "daehwa_store_log_sync_seconds";
/// A log sync slower than this is a stall, counted on its own.
const STALL_SECONDS: f64 = 0.1;
/// The most bytes of a metrics page read.
const MAX_PAGE: u64 = 1 << 20;
/// How long one scrape may take before the run goes on without chatd's figures.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus histogram as scraped: cumulative bucket counts by upper bound, sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)` in the page's order (ascending `le`, `+Inf` last).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observed values, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// What was added to the histogram between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, n)| *n)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n.saturating_sub(before(*le))))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The mean in milliseconds, if anything was observed.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum * 1e3 / self.count as f64)
    }

    /// Observations above `seconds`, which must be one of the bucket bounds (`None` if it
    /// is not).
    pub fn over(&self, seconds: f64) -> Option<u64> {
        self.buckets
            .iter()
            .find(|(le, _)| *le == seconds)
            .map(|(_, n)| self.count.saturating_sub(*n))
    }

    /// The upper bound (ms) of the first bucket holding quantile `q`: the quantile is at
    /// most this (buckets are coarse: 0.1, 0.25, 0.5, 1, 2.5, 5, 10 ms ...). `None` if
    /// nothing was observed or the quantile is beyond the last finite bucket.
    pub fn quantile_bound_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(le, _)| *le * 1e3)
            .filter(|ms| ms.is_finite())
    }
}

/// The named histogram of a Prometheus text page: `Ok(None)` if the page has no such
/// series, an error if one of its lines does not parse.
pub fn parse_histogram(page: &str, name: &str) -> anyhow::Result<Option<Histogram>> {
    let mut out = Histogram::default();
    let mut seen = false;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(series), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let bad = || format!("unreadable metrics line {line:?}");
        if series == "_sum" {
            out.sum = value.parse().with_context(bad)?;
            seen = true;
        } else if series == "_count" {
            out.count = value.parse().with_context(bad)?;
            seen = true;
        } else if let Some(le) = series
            .strip_prefix("_bucket{le=\"")
            .and_then(|s| s.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().with_context(bad)?
            };
            out.buckets.push((le, value.parse().with_context(bad)?));
            seen = true;
        }
    }
    Ok(seen.then_some(out))
}

/// Fetches `http://addr/metrics` (HTTP/1.0, so the server closes when done).
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to chatd's metrics at {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: chatd\r\n\r\n")
        .await?;
    let mut response = String::new();
    let read = (&mut stream)
        .take(MAX_PAGE)
        .read_to_string(&mut response)
        .await
        .context("reading chatd's metrics")?;
    anyhow::ensure!(
        (read as u64) < MAX_PAGE,
        "chatd's metrics page is larger than {MAX_PAGE} bytes"
    );
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("chatd's metrics answer has no body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "chatd's metrics answered {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// The histograms at one moment.
struct Snapshot {
    store: Histogram,
    delivery: Histogram,
    /// Absent when chatd keeps messages elsewhere (TiKV, PostgreSQL).
    log_sync: Option<Histogram>,
}

async fn snapshot(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr))
        .await
        .with_context(|| format!("chatd's metrics did not answer in {SCRAPE_TIMEOUT:?}"))??;
    let get = |name| {
        parse_histogram(&page, name)?.with_context(|| format!("chatd's metrics have no {name}"))
    };
    Ok(Snapshot {
        store: get(STORE_APPEND)?,
        delivery: get(DELIVERY)?,
        log_sync: parse_histogram(&page, LOG_SYNC)?,
    })
}

/// chatd's histograms over a measured window, like [`crate::report::CpuWindow`].
pub struct MetricsWindow {
    addr: Option<SocketAddr>,
    start: Option<Snapshot>,
}

impl MetricsWindow {
    /// Starts a window on the server whose metrics listen at `addr` (none for the relay or an
    /// external server). A scrape that fails is reported on stderr and the window then has
    /// no figures: the load run itself stays valid.
    pub async fn start(addr: Option<SocketAddr>) -> Self {
        let start = match addr {
            Some(addr) => snapshot(addr)
                .await
                .map_err(|e| eprintln!("chat-bench: no chatd figures for this run: {e:#}"))
                .ok(),
            None => None,
        };
        Self { addr, start }
    }

    /// The window's figures: the store wait (mean, p50 and p99 as bucket bounds) and
    /// `created_at` to a recipient's stream (mean); none if a scrape failed (said on stderr).
    pub async fn figures(&self) -> Vec<Figure> {
        let (Some(addr), Some(start)) = (self.addr, &self.start) else {
            return Vec::new();
        };
        let end = match snapshot(addr).await {
            Ok(end) => end,
            Err(e) => {
                eprintln!("chat-bench: no chatd figures for this run: {e:#}");
                return Vec::new();
            }
        };
        let store = end.store.since(&start.store);
        let delivery = end.delivery.since(&start.delivery);
        let mut figures = Vec::new();
        let mut push = |key: &str, label: &str, value: Option<f64>| {
            if let Some(v) = value {
                figures.push(Figure::new(key, label, v));
            }
        };
        push(
            "chatd_store_wait_mean_ms",
            "chatd store wait mean ms",
            store.mean_ms(),
        );
        push(
            "chatd_store_wait_p50_le_ms",
            "chatd store wait p50 <= ms",
            store.quantile_bound_ms(0.5),
        );
        push(
            "chatd_store_wait_p99_le_ms",
            "chatd store wait p99 <= ms",
            store.quantile_bound_ms(0.99),
        );
        push(
            "chatd_to_recipient_mean_ms",
            "chatd created to recipient mean ms",
            delivery.mean_ms(),
        );
        if let (Some(end), Some(start)) = (&end.log_sync, &start.log_sync) {
            let syncs = end.since(start);
            push(
                "chatd_log_sync_mean_ms",
                "chatd log sync mean ms",
                syncs.mean_ms(),
            );
            push(
                "chatd_log_sync_max_le_ms",
                "chatd log sync max <= ms",
                syncs.quantile_bound_ms(1.0),
            );
            push(
                "chatd_log_syncs_over_100ms",
                "chatd log syncs over 100 ms",
                syncs.over(STALL_SECONDS).map(|n| n as f64),
            );
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP daehwa_store_append_seconds Durable message-store append latency.
# TYPE daehwa_store_append_seconds histogram
daehwa_store_append_seconds_sum 0.5
daehwa_store_append_seconds_count 100
daehwa_store_append_seconds_bucket{le=\"0.001\"} 40
daehwa_store_append_seconds_bucket{le=\"0.0025\"} 90
daehwa_store_append_seconds_bucket{le=\"0.01\"} 100
daehwa_store_append_seconds_bucket{le=\"+Inf\"} 100
daehwa_store_append_seconds_total_other 7
";

    #[test]
    fn parses_a_histogram_and_its_quantile_bounds() {
        let h = parse_histogram(PAGE, STORE_APPEND)
            .expect("parses")
            .expect("histogram");
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.buckets[3], (f64::INFINITY, 100));
        assert_eq!(h.mean_ms(), Some(5.0));
        assert_eq!(h.quantile_bound_ms(0.4), Some(1.0));
        assert_eq!(h.quantile_bound_ms(0.5), Some(2.5));
        assert_eq!(h.quantile_bound_ms(0.99), Some(10.0));
        assert_eq!(h.quantile_bound_ms(1.0), Some(10.0));
        assert_eq!(h.over(0.001), Some(60));
        assert_eq!(h.over(0.01), Some(0));
        assert_eq!(h.over(0.005), None);
        assert!(parse_histogram(PAGE, DELIVERY).expect("parses").is_none());
        let broken = PAGE.replace("_count 100", "_count lots");
        assert!(parse_histogram(&broken, STORE_APPEND).is_err());
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let start = parse_histogram(PAGE, STORE_APPEND)
            .expect("parses")
            .expect("histogram");
        let mut end = start.clone();
        end.sum += 0.02;
        end.count += 10;
        for (le, n) in &mut end.buckets {
            *n += if *le >= 0.0025 { 10 } else { 0 };
        }
        let window = end.since(&start);
        assert_eq!(window.count, 10);
        assert!((window.mean_ms().expect("mean") - 2.0).abs() < 1e-9);
        assert_eq!(window.quantile_bound_ms(0.5), Some(2.5));
        assert_eq!(Histogram::default().mean_ms(), None);
        assert_eq!(Histogram::default().quantile_bound_ms(0.5), None);
    }

    #[test]
    fn a_quantile_past_the_last_finite_bucket_has_no_bound() {
        let h = Histogram {
            buckets: vec![(0.001, 1), (f64::INFINITY, 10)],
            sum: 1.0,
            count: 10,
        };
        assert_eq!(h.quantile_bound_ms(0.99), None);
    }
}
