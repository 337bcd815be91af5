//! chatd's own view of a measured window, read from its Prometheus endpoint (`GET /metrics`
//! on the `--metrics-listen` address this tool gives it): how long the message store's
//! durable append took as the sending task saw it, and how long a message took from its
//! receipt to a recipient's stream. Beside the end-to-end latency these say where a
//! message's time went: in the store's round trip, in the rest of the server, or outside it
//! (sockets, the load generator). Only chatd has them; the relay's column shows `-`.

use std::net::SocketAddr;

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
/// The most bytes of a metrics page read.
const MAX_PAGE: u64 = 1 << 20;

/// A Prometheus histogram as scraped: cumulative bucket counts by upper bound, sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)` in the page's order (ascending `le`, `+Inf` last).
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
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

/// The named histogram of a Prometheus text page (`None` if the page has no such series).
pub fn parse_histogram(page: &str, name: &str) -> Option<Histogram> {
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
        if series == "_sum" {
            out.sum = value.parse().ok()?;
            seen = true;
        } else if series == "_count" {
            out.count = value.parse().ok()?;
            seen = true;
        } else if let Some(le) = series
            .strip_prefix("_bucket{le=\"")
            .and_then(|s| s.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            out.buckets.push((le, value.parse().ok()?));
            seen = true;
        }
    }
    seen.then_some(out)
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
    (&mut stream)
        .take(MAX_PAGE)
        .read_to_string(&mut response)
        .await
        .context("reading chatd's metrics")?;
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

/// The two histograms at one moment.
struct Snapshot {
    store: Histogram,
    delivery: Histogram,
}

async fn snapshot(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let page = scrape(addr).await?;
    let get = |name| {
        parse_histogram(&page, name).with_context(|| format!("chatd's metrics have no {name}"))
    };
    Ok(Snapshot {
        store: get(STORE_APPEND)?,
        delivery: get(DELIVERY)?,
    })
}

/// chatd's histograms over a measured window, like [`crate::report::CpuWindow`].
pub struct MetricsWindow {
    addr: Option<SocketAddr>,
    start: Option<Snapshot>,
}

impl MetricsWindow {
    /// Starts a window on the server whose metrics listen at `addr` (none for the relay or an
    /// external server). A scrape that fails is an error: chatd was started with the flag.
    pub async fn start(addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let start = match addr {
            Some(addr) => Some(snapshot(addr).await?),
            None => None,
        };
        Ok(Self { addr, start })
    }

    /// The window's figures: the store's round trip (mean, p50 and p99 as bucket bounds) and
    /// receipt to a recipient's stream (mean).
    pub async fn figures(&self) -> anyhow::Result<Vec<Figure>> {
        let (Some(addr), Some(start)) = (self.addr, &self.start) else {
            return Ok(Vec::new());
        };
        let end = snapshot(addr).await?;
        let store = end.store.since(&start.store);
        let delivery = end.delivery.since(&start.delivery);
        let mut figures = Vec::new();
        let mut push = |key: &str, label: &str, value: Option<f64>| {
            if let Some(v) = value {
                figures.push(Figure::new(key, label, v));
            }
        };
        push(
            "chatd_store_mean_ms",
            "chatd store round trip mean ms",
            store.mean_ms(),
        );
        push(
            "chatd_store_p50_le_ms",
            "chatd store round trip p50 <= ms",
            store.quantile_bound_ms(0.5),
        );
        push(
            "chatd_store_p99_le_ms",
            "chatd store round trip p99 <= ms",
            store.quantile_bound_ms(0.99),
        );
        push(
            "chatd_to_recipient_mean_ms",
            "chatd receipt to recipient mean ms",
            delivery.mean_ms(),
        );
        Ok(figures)
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
        let h = parse_histogram(PAGE, STORE_APPEND).expect("histogram");
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.buckets[3], (f64::INFINITY, 100));
        assert_eq!(h.mean_ms(), Some(5.0));
        assert_eq!(h.quantile_bound_ms(0.4), Some(1.0));
        assert_eq!(h.quantile_bound_ms(0.5), Some(2.5));
        assert_eq!(h.quantile_bound_ms(0.99), Some(10.0));
        assert!(parse_histogram(PAGE, DELIVERY).is_none());
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let start = parse_histogram(PAGE, STORE_APPEND).expect("histogram");
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
