//! Durations for people: each value in the unit that fits it (ns, µs, ms, s) with three
//! significant digits, so a 1.2 µs call does not print as `0.001` milliseconds. The JSON keeps
//! its documented fixed units (`*_ms`, `dur_ns`); only text and Markdown use this.

/// `ns` nanoseconds as `850 ns`, `12.3 µs`, `1.24 ms`, `2.50 s` (`-` when unknown).
pub fn duration_ns(ns: Option<f64>) -> String {
    let Some(ns) = ns.filter(|ns| ns.is_finite()) else {
        return "-".to_owned();
    };
    let (value, unit) = if ns.abs() < 999.5 {
        return format!("{ns:.0} ns");
    } else if ns.abs() < 999_500.0 {
        (ns / 1e3, "µs")
    } else if ns.abs() < 999_500_000.0 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", significant(value))
}

/// A duration given in (fractional) milliseconds, as the report's structures hold it.
pub fn duration_ms(ms: Option<f64>) -> String {
    duration_ns(ms.map(|ms| ms * 1e6))
}

/// Three significant digits for 1 ≤ |value| < 1000 (and beyond, as an integer).
fn significant(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 99.95 {
        format!("{value:.0}")
    } else if magnitude >= 9.995 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The unit names `duration_ns` uses, for a report's footnote.
pub const UNITS_NOTE: &str = "latencies: ns, µs (microseconds), ms, s — each value in its own unit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_gets_the_unit_that_fits_it() {
        assert_eq!(duration_ns(Some(0.0)), "0 ns");
        assert_eq!(duration_ns(Some(850.4)), "850 ns");
        assert_eq!(duration_ns(Some(999.4)), "999 ns");
        assert_eq!(duration_ns(Some(999.6)), "1.00 µs");
        assert_eq!(duration_ns(Some(1_234.0)), "1.23 µs");
        assert_eq!(duration_ns(Some(12_345.0)), "12.3 µs");
        assert_eq!(duration_ns(Some(123_456.0)), "123 µs");
        assert_eq!(duration_ns(Some(999_600.0)), "1.00 ms");
        assert_eq!(duration_ns(Some(2_500_000.0)), "2.50 ms");
        assert_eq!(duration_ns(Some(2_500_000_000.0)), "2.50 s");
        assert_eq!(duration_ns(Some(3_600e9)), "3600 s");
        assert_eq!(duration_ns(None), "-");
        assert_eq!(duration_ms(Some(0.002)), "2.00 µs");
        assert_eq!(duration_ms(Some(12.1)), "12.1 ms");
    }
}
