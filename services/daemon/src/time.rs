//! Time arithmetic that cannot panic: deadlines built from durations a client or an app
//! definition chose (a refuse filter, a backoff) saturate instead of overflowing `Instant`.

use std::time::Duration;

use tokio::time::Instant;

/// Far enough to mean "never" for any deadline, near enough to add to any `Instant` (tokio
/// uses the same horizon for its own far future).
pub const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `from + after`, or [`NEVER`] from `from` when `after` is longer.
pub fn deadline(from: Instant, after: Duration) -> Instant {
    from + after.min(NEVER)
}

/// `seconds` as a `Duration`: NaN and negatives are zero, more than [`NEVER`] is [`NEVER`].
pub fn seconds(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds).map_or(NEVER, |duration| duration.min(NEVER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_any_number_saturate() {
        assert_eq!(seconds(1.5), Duration::from_millis(1500));
        for zero in [f64::NAN, -1.0, f64::NEG_INFINITY, 0.0] {
            assert_eq!(seconds(zero), Duration::ZERO, "{zero}");
        }
        for huge in [f64::INFINITY, 1e300, 9.3e18] {
            assert_eq!(seconds(huge), NEVER, "{huge}");
        }
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), now + NEVER);
        assert_eq!(deadline(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
