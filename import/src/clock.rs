//! Local, zone-less spy stamps to UTC.

use anyhow::Result;
use chrono::{NaiveDate, TimeZone as _};

/// Converts the spy's local, zone-less stamps to UTC.
pub struct Clock {
    zone: chrono_tz::Tz,
    /// (local hour key, offset in µs) of the last conversion: stamps arrive in order.
    cache: Option<(i64, i64)>,
}

impl Clock {
    pub fn new(tz: Option<&str>) -> Result<Clock> {
        let name = match tz {
            Some(name) => name.to_owned(),
            None => std::env::var("TZ")
                .ok()
                .map(|tz| tz.trim_start_matches(':').to_owned())
                .filter(|tz| !tz.is_empty())
                .or_else(|| iana_time_zone::get_timezone().ok())
                .unwrap_or_else(|| "UTC".to_owned()),
        };
        let zone = name.parse::<chrono_tz::Tz>().map_err(|_| {
            anyhow::anyhow!("unknown time zone `{name}` (use an IANA name such as Europe/Berlin)")
        })?;
        Ok(Clock { zone, cache: None })
    }

    /// (year, month, day, hour, minute, second, millisecond) local → µs since the epoch, UTC.
    pub fn to_utc_micros(&mut self, local: (i64, u32, u32, u32, u32, u32, u32)) -> Option<i64> {
        let (year, month, day, hour, minute, second, milli) = local;
        if month == 0
            || month > 12
            || day == 0
            || day > 31
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let days = p11trace_dataset::time::days_from_civil(year, month, day);
        let hour_key = days * 24 + i64::from(hour);
        let naive_us = hour_key * 3_600_000_000
            + i64::from(minute) * 60_000_000
            + i64::from(second) * 1_000_000
            + i64::from(milli) * 1000;
        let offset = match self.cache {
            Some((key, offset)) if key == hour_key => offset,
            _ => {
                let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
                let naive = date.and_hms_opt(hour, 0, 0)?;
                // In a repeated hour (DST end) the earlier instant wins.
                let zoned = self.zone.from_local_datetime(&naive).earliest()?;
                let offset = (naive.and_utc().timestamp() - zoned.timestamp()) * 1_000_000;
                self.cache = Some((hour_key, offset));
                offset
            }
        };
        Some(naive_us - offset)
    }
}
