//! Latency histograms: samples kept in memory (a run is minutes long at 30 Hz),
//! summarized as count, mean, p50, p99 and max in milliseconds.

use serde::Serialize;

/// A set of duration samples (s).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    samples: Vec<f64>,
}

/// Summary of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Mean (ms).
    pub mean_ms: f64,
    /// Median (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Maximum (ms).
    pub max_ms: f64,
}

impl Histogram {
    /// Adds one sample (s); non-finite samples are ignored.
    pub fn record(&mut self, seconds: f64) {
        if seconds.is_finite() {
            self.samples.push(seconds);
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q`-quantile (0..=1) in seconds (nearest rank), 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let rank = ((q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }

    /// Count, mean, p50, p99 and max in milliseconds.
    pub fn summary(&self) -> Summary {
        if self.samples.is_empty() {
            return Summary::default();
        }
        let n = self.samples.len();
        Summary {
            count: n,
            mean_ms: self.samples.iter().sum::<f64>() / n as f64 * 1e3,
            p50_ms: self.quantile(0.5) * 1e3,
            p99_ms: self.quantile(0.99) * 1e3,
            max_ms: self.samples.iter().copied().fold(f64::MIN, f64::max) * 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_nearest_rank() {
        let mut h = Histogram::default();
        for i in 1..=100 {
            h.record(i as f64 / 1000.0);
        }
        h.record(f64::NAN);
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 1e-9);
        assert!((s.p99_ms - 99.0).abs() < 1e-9);
        assert!((s.max_ms - 100.0).abs() < 1e-9);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(Histogram::default().summary(), Summary::default());
    }
}
