//! Percentiles and the way the report prints numbers.

/// The `p`-quantile (0..=1) of `values` by nearest rank, as the benchmark
/// binaries compute it; `NaN` for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Median, p95 and p99 of a series.
#[derive(Debug, Clone, Copy)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

pub fn quantiles(values: &[f64]) -> Quantiles {
    Quantiles {
        p50: percentile(values, 0.5),
        p95: percentile(values, 0.95),
        p99: percentile(values, 0.99),
    }
}

/// Milliseconds with a precision that suits their size.
pub fn ms(x: f64) -> String {
    match x {
        x if x.is_nan() => "–".to_string(),
        x if x < 10.0 => format!("{x:.2} ms"),
        x if x < 1000.0 => format!("{x:.1} ms"),
        x => format!("{:.2} s", x / 1000.0),
    }
}

/// `ours / reference` as `0.42×`.
pub fn ratio(ours: f64, reference: f64) -> String {
    format!("{:.2}×", ours / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let q = quantiles(&v);
        assert_eq!((q.p50, q.p95, q.p99), (50.0, 95.0, 99.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(ms(1.234), "1.23 ms");
        assert_eq!(ms(123.45), "123.5 ms");
        assert_eq!(ms(2500.0), "2.50 s");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
    }
}
