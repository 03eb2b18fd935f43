//! What the gateway commands print: aligned tables for people, JSON for scripts, and the
//! exit codes that tell a script what happened without parsing either.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The exit codes of the gateway commands, documented in `--help` (clap's usage errors are 2).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    done (a followed deployment succeeded and its instances stayed up)
  1    error: bad input, the gateway refused the request, or no gateway answered
  2    usage error (unknown command or flag)
  3    the deployment failed or was cancelled
  4    the deployment did not finish, or its tasks kept failing, within --timeout (it goes
       on in the cluster)
  130  interrupted (Ctrl-C) while following a deployment (it goes on in the cluster) or a
       task's output (`marina task logs -f`)";

/// An outcome that is not a plain error: its exit code, and what to say (already said when
/// `message` is empty).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

pub const DEPLOYMENT_FAILED: u8 = 3;
pub const TIMED_OUT: u8 = 4;
pub const INTERRUPTED: u8 = 130;

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Writes to stdout. When its reader is gone (`marina app list | head -1`) there is no one
/// left to tell anything: exit quietly, as Unix tools do on SIGPIPE, instead of panicking as
/// `println!` does.
pub fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("marina: writing to stdout: {error}");
            std::process::exit(1);
        }
    }
}

/// `println!` through [`write_stdout`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use say;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) {
    say!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded, so
/// long messages do not push trailing blanks.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', widths[index] - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        write_stdout(self.render().as_bytes());
    }

    /// The table, or `none` on stderr when it has no rows (stdout stays empty for scripts).
    pub fn print_or(&self, none: &str) {
        if self.is_empty() {
            eprintln!("{none}");
        } else {
            self.print();
        }
    }
}

/// `text` cut to `max` characters, with `…` when cut (table cells stay on one line).
pub fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A JSON number or string as a short cell (`0.1`, `64`); `-` when absent.
pub fn number(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            // Sums of binary fractions (0.1 + 0.2): three decimals are plenty for people.
            Some(f) => format!("{f:.3}").trim_end_matches('0').trim_end_matches('.').to_owned(),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        _ => "-".to_owned(),
    }
}

pub fn string(value: &Value) -> String {
    value.as_str().map_or_else(|| "-".to_owned(), str::to_owned)
}

/// Seconds since the Unix epoch of a gateway timestamp (RFC 3339 in UTC as the gateway writes
/// them, `2026-11-25T12:13:12.549Z`); `None` for anything else.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date_parts.next()?.ok()?, date_parts.next()?.ok()?, date_parts.next()?.ok()?);
    let mut time_parts = time.splitn(3, ':');
    let hours: i64 = time_parts.next()?.parse().ok()?;
    let minutes: i64 = time_parts.next()?.parse().ok()?;
    let seconds: f64 = time_parts.next()?.parse().ok()?;
    // Only dates and times that can be (so no `NaN` seconds, and no year whose seconds
    // overflow).
    let valid = (0..=9_999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..=23).contains(&hours)
        && (0..=59).contains(&minutes)
        && (0.0..61.0).contains(&seconds);
    if !valid {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), so no date crate is needed.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((days * 86_400 + hours * 3_600 + minutes * 60) as f64 + seconds)
}

/// How long ago a gateway timestamp was (by this machine's clock); `None` if unreadable.
pub fn elapsed_since(timestamp: &Value) -> Option<Duration> {
    let then = timestamp.as_str().and_then(parse_timestamp)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    // A timestamp ahead of this clock is no time ago.
    Duration::try_from_secs_f64((now - then).max(0.0)).ok()
}

/// How long ago `timestamp` was, as `42s`, `5m`, `3h`, `2d`; `-` if unknown.
pub fn age(timestamp: &Value) -> String {
    elapsed_since(timestamp).map_or_else(|| "-".to_owned(), short_duration)
}

pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A duration as operators write it: `30s`, `5m`, `1h30m`, `500ms`, or bare seconds (`90`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if seconds.is_finite() => Ok(duration),
            Err(_) if seconds.is_finite() && seconds >= 0.0 => Err(format!("{text:?}: too long")),
            _ => Err(format!("{text:?}: not a duration")),
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (amount, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let amount: f64 = amount.parse().map_err(|_| format!("{text:?}: write it as 30s, 5m, 1h30m or 500ms"))?;
        let unit_seconds = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            "d" => 86_400.0,
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
        };
        total = Duration::try_from_secs_f64(amount * unit_seconds)
            .ok()
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{text:?}: too long"))?;
        rest = tail;
    }
    if text.is_empty() {
        return Err("an empty duration".to_owned());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_as_operators_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        for bad in ["", "5x", "m", "-1", "1h30", "inf", "NaN", "-0.5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        assert_eq!(parse_duration("1e30"), Err("\"1e30\": too long".to_owned()));
        let big = format!("1{}s", "0".repeat(30));
        assert_eq!(parse_duration(&big), Err(format!("{big:?}: too long")));
        let many = format!("{}d", u64::MAX);
        assert!(parse_duration(&many).is_err());
        let sum = "9000000000000000000s9000000000000000000s9000000000000000000s";
        assert_eq!(parse_duration(sum), Err(format!("{sum:?}: too long")));
    }

    #[test]
    fn odd_timestamps_have_no_age_instead_of_a_panic() {
        for odd in [
            "2026-11-25T12:13:NaNZ",
            "2026-11-25T12:13:infZ",
            "99999999999999-01-01T00:00:00Z",
            "-99999999999999-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-25T25:00:00Z",
        ] {
            assert_eq!(parse_timestamp(odd), None, "{odd}");
            assert_eq!(age(&json!(odd)), "-", "{odd}");
        }
        // Ahead of this clock: no time ago, not a negative duration.
        assert_eq!(age(&json!("2999-01-01T00:00:00Z")), "0s");
        assert_eq!(age(&json!(42)), "-");
    }

    #[test]
    fn tables_align_columns_and_leave_no_trailing_blanks() {
        let mut table = Table::new(&["ID", "STATUS"]);
        table.row(vec!["/a".into(), "running".into()]);
        table.row(vec!["/longer".into(), "".into()]);
        assert_eq!(table.render(), "ID       STATUS\n/a       running\n/longer\n");
    }

    #[test]
    fn gateway_timestamps_read_as_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(parse_timestamp("2026-11-25T12:13:12.500Z"), Some(1_795_608_792.5));
        assert_eq!(parse_timestamp("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn numbers_print_without_needless_decimals() {
        assert_eq!(number(&json!(64.0)), "64");
        assert_eq!(number(&json!(0.1)), "0.1");
        assert_eq!(number(&json!(null)), "-");
        assert_eq!(shorten("a  very\nlong message", 10), "a very lo…");
    }
}
