//! Marathon's timestamps: RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T10:41:21.874Z`.
//!
//! App versions are such timestamps; they key `/v2/apps/{id}/versions/{version}`, so they are
//! kept to the millisecond and always written the same way.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    millis: i64,
}

/// A string that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {input:?}: expected RFC 3339, e.g. 2026-11-25T10:41:21.874Z")]
pub struct TimestampError {
    input: String,
}

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp { millis }
    }

    pub const fn as_millis(self) -> i64 {
        self.millis
    }

    /// The wall clock, to the millisecond. Before the epoch reads as the epoch.
    pub fn now() -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Timestamp { millis: i64::try_from(millis).unwrap_or(i64::MAX) }
    }

    pub const fn plus_millis(self, millis: i64) -> Self {
        Timestamp { millis: self.millis.saturating_add(millis) }
    }

    /// Reads `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; the fraction may have any number of
    /// digits (kept to the millisecond), the offset is folded into UTC.
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        parse_rfc3339(input.trim()).ok_or_else(|| TimestampError { input: input.to_owned() })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.millis.div_euclid(86_400_000);
        let in_day = self.millis.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
        let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') => {
            let rest = &s[at + 1..];
            let (h, m) = match rest.len() {
                5 if rest.as_bytes()[2] == b':' => (digits(at + 1, 2)?, digits(at + 4, 2)?),
                4 => (digits(at + 1, 2)?, digits(at + 3, 2)?),
                2 => (digits(at + 1, 2)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    let millis = seconds * 1000 + millis;
    // An offset may carry a time written in year 0 or 9999 out of the years a timestamp is
    // written in (four digits): it would be written as something that does not read back
    // (found by fuzzing).
    let writable = days_from_civil(0, 1, 1) * 86_400_000..days_from_civil(10_000, 1, 1) * 86_400_000;
    writable.contains(&millis).then(|| Timestamp::from_millis(millis))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(Timestamp::from_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        let t = Timestamp::parse("2026-11-25T10:41:21.874Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T10:41:21.874Z");
        assert_eq!(Timestamp::from_millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::parse("2000-02-29T23:59:59.5Z").unwrap().to_string(), "2000-02-29T23:59:59.500Z");
    }

    #[test]
    fn parses_offsets_fractions_and_rejects_garbage() {
        let utc = Timestamp::parse("2014-03-01T23:17:50.295Z").unwrap();
        assert_eq!(Timestamp::parse("2014-03-02T00:17:50.295+01:00").unwrap(), utc);
        assert_eq!(Timestamp::parse("2014-03-01T22:17:50.295123-0100").unwrap(), utc);
        assert_eq!(Timestamp::parse("2014-03-01T23:17:50Z").unwrap().as_millis() % 1000, 0);
        for bad in [
            "",
            "2014-03-01",
            "2014-13-01T00:00:00Z",
            "2014-02-30T00:00:00Z",
            "2014-03-01T24:00:00Z",
            "2014-03-01T00:00:00.Z",
            "2014-03-01T00:00:00",
            "yesterday",
            // Before year 0 or after 9999 once the offset is applied: not writable in four digits.
            "0000-01-01t03:00:50+15",
            "9999-12-31T23:00:00-02:00",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn round_trips_through_serde_and_civil_dates() {
        for millis in [0, 1, 951_782_400_000, 1_795_603_281_874, -62_135_596_800_000, 253_402_300_799_999] {
            let t = Timestamp::from_millis(millis);
            assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t, "{t}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
        assert!(Timestamp::now() > Timestamp::parse("2024-01-01T00:00:00Z").unwrap());
    }
}
