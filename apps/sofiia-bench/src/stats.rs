//! Summaries of measurements: latency histograms, percentiles, medians across
//! rounds and ratios to the baseline.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histograms track (60 s, in microseconds); longer ones
/// are clamped to it, which no request under an infer timeout reaches.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram documents as valid (low >= 1,
    // high >= 2 * low, sigfig <= 5): this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid constant histogram bounds")
}

/// Records `latency` (clamped to the tracked range).
pub(crate) fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US);
    hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub(crate) struct LoadResult {
    /// Requests answered as expected inside the measurement window.
    pub ok: u64,
    /// Requests answered as expected over the whole run, warm-up included.
    pub ok_total: u64,
    /// Requests that failed (transport error, unexpected status or header).
    pub errors: u64,
    /// How often each kind of error happened (`status 503`, `io: ...`).
    pub error_kinds: BTreeMap<String, u64>,
    /// Length of the measurement window.
    pub elapsed: Duration,
    /// Latency of the successful requests, in microseconds.
    pub latency: Histogram<u64>,
}

impl LoadResult {
    /// Successful requests per second.
    pub(crate) fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds; 0 when nothing
    /// succeeded.
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The errors as `kind ×n, ...`, most frequent first, at most three kinds.
    pub(crate) fn error_summary(&self) -> String {
        let mut kinds: Vec<_> = self.error_kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        kinds
            .iter()
            .take(3)
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The per-run numbers a report shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunNumbers {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// 99.9th percentile latency, ms.
    pub p999_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// CPU time the server process spent per successful request, in
    /// microseconds (every thread, user and system); 0 when unknown.
    pub cpu_us: f64,
}

impl From<&LoadResult> for RunNumbers {
    fn from(r: &LoadResult) -> Self {
        RunNumbers {
            rps: r.rps(),
            p50_ms: r.latency_ms(0.50),
            p99_ms: r.latency_ms(0.99),
            p999_ms: r.latency_ms(0.999),
            errors: r.errors,
            cpu_us: 0.0,
        }
    }
}

impl RunNumbers {
    /// These numbers with the server's CPU time over the whole run spread
    /// over every successful request of the run.
    pub(crate) fn with_cpu(mut self, cpu: Option<Duration>, requests: u64) -> Self {
        self.cpu_us = match cpu {
            Some(cpu) if requests > 0 => cpu.as_secs_f64() * 1e6 / requests as f64,
            _ => 0.0,
        };
        self
    }
}

/// The median of `values` (the mean of the two middle values for an even
/// count); `None` for no values. NaNs sort last, so they are chosen only
/// when at least half the values are NaN.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// `value / baseline`, or `None` when the baseline is zero or either is not
/// a finite number (a ratio to nothing means nothing).
pub(crate) fn ratio(value: f64, baseline: f64) -> Option<f64> {
    if !value.is_finite() || !baseline.is_finite() || baseline == 0.0 {
        return None;
    }
    Some(value / baseline)
}

/// The nearest-rank percentile `q` (0..=1) of `samples`, which need not be
/// sorted; `None` for no samples.
pub(crate) fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let q = q.clamp(0.0, 1.0);
    // Nearest rank: the smallest value with at least q of the samples at or
    // below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let index = rank.saturating_sub(1).min(sorted.len() - 1);
    Some(sorted[index])
}

/// One scenario's rounds against their baselines, summarised.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScenarioSummary {
    /// Median across rounds of the scenario's own numbers.
    pub median: RunNumbers,
    /// Errors summed over every round.
    pub errors_total: u64,
    /// Median across rounds of `scenario rps / baseline rps` of the same round.
    pub rps_ratio: Option<f64>,
    /// Median across rounds of `scenario p50 / baseline p50` of the same round.
    pub p50_ratio: Option<f64>,
    /// Median across rounds of `scenario CPU/request / baseline CPU/request`.
    pub cpu_ratio: Option<f64>,
    /// The smallest and largest per-round throughput ratio: the spread.
    pub rps_ratio_range: Option<(f64, f64)>,
}

/// Summarises paired rounds: `pairs[i]` is (scenario, baseline) of round `i`.
pub(crate) fn summarise(pairs: &[(RunNumbers, RunNumbers)]) -> ScenarioSummary {
    let col = |f: fn(&RunNumbers) -> f64| -> f64 {
        median(&pairs.iter().map(|(s, _)| f(s)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let ratios = |f: fn(&RunNumbers) -> f64| -> Vec<f64> {
        pairs
            .iter()
            .filter_map(|(s, b)| ratio(f(s), f(b)))
            .collect()
    };
    let rps_ratios = ratios(|r| r.rps);
    let errors_total = pairs.iter().map(|(s, _)| s.errors).sum();
    let range = rps_ratios
        .iter()
        .copied()
        .fold(None, |acc: Option<(f64, f64)>, r| match acc {
            None => Some((r, r)),
            Some((lo, hi)) => Some((lo.min(r), hi.max(r))),
        });
    ScenarioSummary {
        median: RunNumbers {
            rps: col(|r| r.rps),
            p50_ms: col(|r| r.p50_ms),
            p99_ms: col(|r| r.p99_ms),
            p999_ms: col(|r| r.p999_ms),
            errors: errors_total,
            cpu_us: col(|r| r.cpu_us),
        },
        errors_total,
        rps_ratio: median(&rps_ratios),
        p50_ratio: median(&ratios(|r| r.p50_ms)),
        cpu_ratio: median(&ratios(|r| r.cpu_us)),
        rps_ratio_range: range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(rps: f64, p50_ms: f64) -> RunNumbers {
        RunNumbers {
            rps,
            p50_ms,
            p99_ms: p50_ms * 2.0,
            p999_ms: p50_ms * 3.0,
            errors: 1,
            cpu_us: 1e6 / rps,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratio_refuses_meaningless_baselines() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 0.5), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&samples, 0.99), Some(Duration::from_micros(99)));
        assert_eq!(percentile(&samples, 1.0), Some(Duration::from_micros(100)));
        assert_eq!(percentile(&samples, 0.0), Some(Duration::from_micros(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn histogram_percentiles_in_milliseconds() {
        let mut latency = latency_histogram();
        for us in 1..=1000 {
            record(&mut latency, Duration::from_micros(us));
        }
        let result = LoadResult {
            ok: 1000,
            ok_total: 1200,
            errors: 0,
            error_kinds: BTreeMap::new(),
            elapsed: Duration::from_secs(2),
            latency,
        };
        assert_eq!(result.rps(), 500.0);
        // 3 significant digits: within 0.1 %.
        assert!((result.latency_ms(0.5) - 0.5).abs() < 0.001);
        assert!((result.latency_ms(0.99) - 0.99).abs() < 0.001);
        let n = RunNumbers::from(&result);
        assert!(n.p999_ms >= n.p99_ms && n.p99_ms >= n.p50_ms);
        let n = n.with_cpu(Some(Duration::from_millis(600)), result.ok_total);
        assert_eq!(n.cpu_us, 500.0);
        assert_eq!(n.with_cpu(None, 10).cpu_us, 0.0);
    }

    #[test]
    fn an_empty_run_has_zero_latency_and_throughput() {
        let result = LoadResult {
            ok: 0,
            ok_total: 0,
            errors: 3,
            error_kinds: BTreeMap::from([("status 503".to_owned(), 2), ("io".to_owned(), 1)]),
            elapsed: Duration::ZERO,
            latency: latency_histogram(),
        };
        assert_eq!(result.rps(), 0.0);
        assert_eq!(result.latency_ms(0.99), 0.0);
        assert_eq!(result.error_summary(), "status 503 ×2, io ×1");
    }

    #[test]
    fn ratios_are_taken_per_round_then_the_median() {
        // Round 2's machine was slower for both: its ratio is still 0.5.
        let pairs = [
            (numbers(500.0, 2.0), numbers(1000.0, 1.0)),
            (numbers(250.0, 4.0), numbers(500.0, 2.0)),
            (numbers(600.0, 2.0), numbers(1000.0, 1.0)),
        ];
        let s = summarise(&pairs);
        assert_eq!(s.rps_ratio, Some(0.5));
        assert_eq!(s.p50_ratio, Some(2.0));
        // Half the throughput per unit of CPU: twice the CPU per request.
        assert_eq!(s.cpu_ratio, Some(2.0));
        assert_eq!(s.rps_ratio_range, Some((0.5, 0.6)));
        assert_eq!(s.median.rps, 500.0);
        assert_eq!(s.errors_total, 3);
    }

    #[test]
    fn a_round_without_baseline_throughput_is_left_out_of_the_ratio() {
        let pairs = [
            (numbers(500.0, 2.0), numbers(0.0, 0.0)),
            (numbers(300.0, 2.0), numbers(600.0, 1.0)),
        ];
        let s = summarise(&pairs);
        assert_eq!(s.rps_ratio, Some(0.5));
    }
}
