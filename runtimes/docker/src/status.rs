//! Reading a container's state as a [`TaskState`], and how it ended as an [`ExitStatus`].
//!
//! The engine reports a process killed by signal N as exit code 128+N, exactly like a process
//! that chose to `exit(128+N)`. Claiming a signal from the code alone would be a guess, so a
//! code is read as a signal only when we know the signal was sent: by our own `stop`
//! (recorded in [`SignalLedger`]) or by the kernel's OOM killer (the engine's `OOMKilled`).
//! The ledger lives in memory: after an agent restart such exits read as plain codes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerState, ContainerStateStatusEnum};
use marina_runtime::{ExitStatus, TaskState};

pub(crate) const SIGKILL: i32 = 9;
pub(crate) const SIGTERM: i32 = 15;

/// The name the engine's kill API takes (it also accepts plain numbers).
pub(crate) fn signal_name(signal: i32) -> String {
    match signal {
        SIGKILL => "SIGKILL".to_owned(),
        SIGTERM => "SIGTERM".to_owned(),
        other => other.to_string(),
    }
}

/// The signals `stop` sent, per container id, until the container is removed.
#[derive(Debug, Default)]
pub(crate) struct SignalLedger {
    sent: Mutex<HashMap<String, u64>>,
}

impl SignalLedger {
    pub(crate) fn record(&self, container: &str, signal: i32) {
        *self.lock().entry(container.to_owned()).or_default() |= bit(signal);
    }

    /// Undoes [`record`](Self::record) when the signal turned out not to be delivered.
    pub(crate) fn unrecord(&self, container: &str, signal: i32) {
        let mut sent = self.lock();
        if let Some(bits) = sent.get_mut(container) {
            *bits &= !bit(signal);
            if *bits == 0 {
                sent.remove(container);
            }
        }
    }

    pub(crate) fn forget(&self, container: &str) {
        self.lock().remove(container);
    }

    pub(crate) fn sent(&self, container: &str, signal: i32) -> bool {
        self.lock().get(container).is_some_and(|bits| bits & bit(signal) != 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bit(signal: i32) -> u64 {
    1u64.checked_shl(signal as u32).unwrap_or(0)
}

/// How a container ended, from its exit code and whether the OOM killer struck.
pub(crate) fn exit_status(code: i64, oom_killed: bool, container: &str, ledger: &SignalLedger) -> ExitStatus {
    let signal = (129..=128 + 64).contains(&code).then(|| (code - 128) as i32);
    let known_signal = signal.filter(|&signal| (oom_killed && signal == SIGKILL) || ledger.sent(container, signal));
    match known_signal {
        Some(signal) => ExitStatus { code: None, signal: Some(signal), oom_killed },
        None => ExitStatus { code: i32::try_from(code).ok(), signal: None, oom_killed },
    }
}

/// The task state of a container the engine knows.
pub(crate) fn task_state(state: Option<&ContainerState>, container: &str, ledger: &SignalLedger) -> TaskState {
    let Some(state) = state else {
        return TaskState::Created;
    };
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING)
        | Some(ContainerStateStatusEnum::PAUSED)
        | Some(ContainerStateStatusEnum::RESTARTING)
        | Some(ContainerStateStatusEnum::STOPPING) => TaskState::Running {
            started_at: state.started_at.as_deref().and_then(parse_time),
            pid: state.pid.and_then(|pid| u32::try_from(pid).ok()).filter(|&pid| pid > 0),
        },
        Some(ContainerStateStatusEnum::EXITED)
        | Some(ContainerStateStatusEnum::DEAD)
        | Some(ContainerStateStatusEnum::REMOVING) => TaskState::Exited {
            status: exit_status(state.exit_code.unwrap_or(-1), state.oom_killed.unwrap_or(false), container, ledger),
            finished_at: state.finished_at.as_deref().and_then(parse_time),
        },
        Some(ContainerStateStatusEnum::CREATED) | Some(ContainerStateStatusEnum::EMPTY) | None => TaskState::Created,
    }
}

/// Parses the engine's RFC 3339 timestamps (`2026-11-25T10:59:00.123456789Z`, or with a
/// `+01:00` offset). The engine's zero time (`0001-01-01T00:00:00Z`, "never") and anything
/// before the Unix epoch is `None`.
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.find(|c: char| !c.is_ascii_digit()).unwrap_or(fraction.len());
        let kept = &fraction[..digits.min(9)];
        nanos = format!("{kept:0<9}").parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = rest[1..].split_once(':')?;
            sign * (hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let seconds = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_timestamps() {
        let at = |secs: u64, nanos: u32| Some(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), at(0, 0));
        assert_eq!(parse_time("2026-11-25T10:59:00.123456789Z"), at(1_795_604_340, 123_456_789));
        assert_eq!(parse_time("2026-11-25T11:59:00.5+01:00"), at(1_795_604_340, 500_000_000));
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), at(951_782_400, 0));
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None, "the engine's zero time");
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("yesterday at noon, roughly"), None);
    }

    #[test]
    fn codes_become_signals_only_when_the_signal_is_known() {
        let ledger = SignalLedger::default();
        assert_eq!(exit_status(137, false, "c", &ledger).code, Some(137), "could be exit(137)");
        let oom = exit_status(137, true, "c", &ledger);
        assert_eq!((oom.code, oom.signal, oom.oom_killed), (None, Some(SIGKILL), true));
        ledger.record("c", SIGTERM);
        assert_eq!(exit_status(143, false, "c", &ledger).signal, Some(SIGTERM));
        assert_eq!(exit_status(137, false, "c", &ledger).code, Some(137), "only TERM was sent");
        assert_eq!(exit_status(0, false, "c", &ledger).code, Some(0));
        ledger.unrecord("c", SIGTERM);
        assert_eq!(exit_status(143, false, "c", &ledger).code, Some(143));
        ledger.record("c", SIGKILL);
        ledger.forget("c");
        assert_eq!(exit_status(137, false, "c", &ledger).code, Some(137));
    }
}
