//! Archive periods: UTC days (the default) or hours. A period has a name (`2026-12-01`,
//! `2026-12-01T13`), a date partition, and a half-open time range `[start, end)`. Calls without a
//! timestamp (a log without stamps) go into the period `unknown`, which has no range.

use p11trace_dataset::time::{rfc3339, utc_date};

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// How long one digest's period is (`--period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKind {
    Day,
    Hour,
}

impl PeriodKind {
    fn micros(self) -> i64 {
        match self {
            PeriodKind::Day => MICROS_PER_DAY,
            PeriodKind::Hour => MICROS_PER_HOUR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Hour => "hour",
        }
    }

    pub fn parse(text: &str) -> Option<PeriodKind> {
        match text {
            "day" => Some(PeriodKind::Day),
            "hour" => Some(PeriodKind::Hour),
            _ => None,
        }
    }

    /// The period holding a timestamp (µs since the epoch, UTC); `None` → `unknown`.
    pub fn of(self, micros: Option<i64>) -> Period {
        Period {
            kind: self,
            index: micros.map(|m| m.div_euclid(self.micros())),
        }
    }
}

/// One period: its kind and its number since the epoch (`None`: the `unknown` period).
/// Ordered with `unknown` first, then by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub index: Option<i64>,
}

impl Period {
    /// `2026-12-01` (day), `2026-12-01T13` (hour) or `unknown`.
    pub fn name(&self) -> String {
        match (self.index, self.kind) {
            (None, _) => "unknown".to_owned(),
            (Some(_), PeriodKind::Day) => utc_date(self.start_micros().unwrap_or(0)),
            (Some(_), PeriodKind::Hour) => {
                let start = self.start_micros().unwrap_or(0);
                let hour = start.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR;
                format!("{}T{hour:02}", utc_date(start))
            }
        }
    }

    /// The date partition (`date=…`) its files go into: the UTC date of its start.
    pub fn date(&self) -> String {
        self.start_micros()
            .map_or_else(|| "unknown".to_owned(), utc_date)
    }

    pub fn start_micros(&self) -> Option<i64> {
        self.index.map(|i| i.saturating_mul(self.kind.micros()))
    }

    pub fn end_micros(&self) -> Option<i64> {
        self.index
            .map(|i| i.saturating_add(1).saturating_mul(self.kind.micros()))
    }

    /// RFC 3339 bounds `[start, end)`, or `None` for `unknown`.
    pub fn bounds(&self) -> Option<(String, String)> {
        Some((rfc3339(self.start_micros()?), rfc3339(self.end_micros()?)))
    }

    /// The period right after this one (`unknown` has none).
    pub fn next(&self) -> Option<Period> {
        Some(Period {
            kind: self.kind,
            index: Some(self.index?.checked_add(1)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bounds() {
        // 2026-12-01T13:05:00Z
        let t = 1_796_130_300_000_000;
        let day = PeriodKind::Day.of(Some(t));
        assert_eq!(day.name(), "2026-12-01");
        assert_eq!(
            day.bounds().unwrap(),
            (
                "2026-12-01T00:00:00.000000Z".to_owned(),
                "2026-12-02T00:00:00.000000Z".to_owned()
            )
        );
        let hour = PeriodKind::Hour.of(Some(t));
        assert_eq!(hour.name(), "2026-12-01T13");
        assert_eq!(hour.date(), "2026-12-01");
        assert_eq!(hour.next().unwrap().name(), "2026-12-01T14");
        assert_eq!(PeriodKind::Day.of(None).name(), "unknown");
        assert!(PeriodKind::Day.of(None) < day);
    }
}
