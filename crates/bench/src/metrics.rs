//! The services' Prometheus text: scraped before and after a workload, the
//! difference of each histogram's `_sum` and `_count` is what the workload
//! cost in that stage.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sample values by series (`name{labels}` exactly as exposed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// Parses the Prometheus text format (comments and bad lines skipped).
    pub fn parse(text: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The value follows the last space (labels may hold spaces).
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            if let Ok(v) = value.parse::<f64>() {
                *map.entry(series.trim().to_owned()).or_insert(0.0) += v;
            }
        }
        Self(map)
    }

    /// Adds another scrape's series (another process).
    pub fn merge(&mut self, other: Samples) {
        for (k, v) in other.0 {
            *self.0.entry(k).or_insert(0.0) += v;
        }
    }

    /// `self - before`, series by series.
    pub fn since(&self, before: &Samples) -> Samples {
        Samples(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Sum over the series named `name` whose labels contain every one of
    /// `labels` (`key="value"`).
    pub fn total(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name && labels.iter().all(|want| l.contains(want))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// `GET /metrics` from `addr` (plain HTTP/1.1 on loopback).
pub async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<Samples> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "metrics at {addr}: {head}");
    // Chunked bodies interleave size lines; they never parse as samples.
    Ok(Samples::parse(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_sums_are_differenced_by_label() {
        let before = Samples::parse(
            "# TYPE x histogram\nx_sum{stage=\"a\"} 1.5\nx_count{stage=\"a\"} 3\nx_sum{stage=\"b\"} 2\n",
        );
        let after = Samples::parse(
            "x_sum{stage=\"a\"} 2.0\nx_count{stage=\"a\"} 4\nx_sum{stage=\"b\"} 5\ny 7\nbad line\n",
        );
        let d = after.since(&before);
        assert_eq!(d.total("x_sum", &["stage=\"a\""]), 0.5);
        assert_eq!(d.total("x_sum", &[]), 3.5);
        assert_eq!(d.total("x_count", &[]), 1.0);
        assert_eq!(d.total("y", &[]), 7.0);
        assert_eq!(d.total("z", &[]), 0.0);
    }
}
