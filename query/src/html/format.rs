//! Text in the report: HTML escaping of everything that comes from the data, and time offsets
//! on the charts' axes (durations come from `analyze::units`, as in the text report).

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
}
