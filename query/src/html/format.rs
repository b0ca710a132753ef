//! Text in the report: HTML escaping of everything that comes from the data, and durations in
//! units that fit them.

/// `text` safe inside an HTML element or a quoted attribute: `& < > " '` as entities. (Five
/// characters: a crate for this would be larger than the function.)
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A duration in nanoseconds with three significant digits in the unit that fits: `850 ns`,
/// `12.3 µs`, `4.56 ms`, `1.20 s`.
pub fn duration_ns(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

/// A duration in milliseconds (the analysis' unit), as [`duration_ns`]; `–` when unknown.
pub fn duration_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |ms| duration_ns(ms * 1e6))
}

/// A time offset in seconds, in the unit that fits `scale` (the axis' span).
pub fn seconds(value: f64, scale: f64) -> String {
    if scale < 1e-3 {
        format!("{:.0} µs", value * 1e6)
    } else if scale < 1.0 {
        format!("{:.1} ms", value * 1e3)
    } else {
        format!("{value:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert('x') & "y"</script>"#),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn durations_take_the_unit_that_fits() {
        assert_eq!(duration_ns(850.0), "850 ns");
        assert_eq!(duration_ns(12_345.0), "12.3 µs");
        assert_eq!(duration_ns(4_560_000.0), "4.56 ms");
        assert_eq!(duration_ns(1.2e9), "1.20 s");
        assert_eq!(duration_ms(Some(0.002)), "2.00 µs");
        assert_eq!(duration_ms(None), "–");
    }
}
