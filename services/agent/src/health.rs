//! Health checks, run by the agent next to the task (HTTP, TCP, or a command inside the
//! task's container), with Marathon's semantics: failures during the grace period do not
//! count; after it, a failure marks the task unhealthy and `max_consecutive_failures` of
//! them in a row kill it. Results travel as RUNNING status updates with `healthy` set.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::HealthCheck;
use marina_proto::agent::v1::health_check::Protocol;
use marina_proto::reason;
use marina_runtime::TaskHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tasks::{Entry, Tasks};

/// Starts the task's checks; cancel the token to stop them.
pub fn spawn(tasks: Arc<Tasks>, entry: Arc<Entry>, handle: TaskHandle) -> CancellationToken {
    let stop = CancellationToken::new();
    for check in entry.info.health_checks.clone() {
        let (tasks, entry, handle, stop) = (tasks.clone(), entry.clone(), handle.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = run(&tasks, &entry, &handle, &check) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    stop
}

/// The shortest interval and timeout: a check of 0 s would spin.
const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The longest interval and timeout: a day, far past any use, and far from the clock
/// arithmetic's limits.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A check's timing, from the task's (unvalidated) seconds.
#[derive(Debug, PartialEq)]
struct Timing {
    /// When failures start to count; `None`: never (a grace period past the clock's range).
    grace_ends: Option<Instant>,
    interval: Duration,
    timeout: Duration,
}

impl Timing {
    fn of(check: &HealthCheck, now: Instant) -> Timing {
        let period = |seconds: u32| Duration::from_secs(u64::from(seconds)).clamp(MIN_PERIOD, MAX_PERIOD);
        Timing {
            grace_ends: now.checked_add(Duration::from_secs(u64::from(check.grace_period_seconds))),
            interval: period(check.interval_seconds),
            timeout: period(check.timeout_seconds),
        }
    }

    fn in_grace(&self, now: Instant) -> bool {
        self.grace_ends.is_none_or(|ends| now < ends)
    }
}

async fn run(tasks: &Arc<Tasks>, entry: &Arc<Entry>, handle: &TaskHandle, check: &HealthCheck) {
    let timing = Timing::of(check, Instant::now());
    let (interval, timeout) = (timing.interval, timing.timeout);
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(interval);
    // A probe that took long must not be followed by a burst of them.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = match tokio::time::timeout(timeout, probe(tasks, entry, handle, check, timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                tasks.set_health(entry, true, "");
            }
            Err(_) if timing.in_grace(Instant::now()) => {}
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::info!(task = %entry.info.task_id, failures, %error, "health check failed");
                tasks.set_health(entry, false, &format!("health check failed: {error}"));
                if check.max_consecutive_failures > 0 && failures >= check.max_consecutive_failures {
                    tracing::warn!(task = %entry.info.task_id, failures, "killing an unhealthy task");
                    tasks.kill(&entry.info.task_id, &entry.info.framework_id, 0, Some(reason::HEALTH_KILLED));
                    return;
                }
            }
        }
    }
}

async fn probe(
    tasks: &Arc<Tasks>,
    entry: &Entry,
    handle: &TaskHandle,
    check: &HealthCheck,
    timeout: Duration,
) -> Result<(), String> {
    match check.protocol() {
        Protocol::Http => {
            let target = Tasks::check_target(entry, check.port_index, check.port).ok_or(NO_TARGET)?;
            http_get(target, if check.path.is_empty() { "/" } else { &check.path }).await
        }
        Protocol::Tcp => {
            let target = Tasks::check_target(entry, check.port_index, check.port).ok_or(NO_TARGET)?;
            TcpStream::connect(target).await.map(|_| ()).map_err(|e| format!("connect to {}: {e}", describe(target)))
        }
        Protocol::Command => {
            let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), check.command.clone()];
            let output = tasks.runtime().exec(handle, &argv, timeout).await.map_err(|e| e.to_string())?;
            if output.status.success() { Ok(()) } else { Err(format!("command {}", output.status.describe())) }
        }
        Protocol::Unspecified => Err("the health check has no protocol".into()),
    }
}

const NO_TARGET: &str = "the task has no such port (or, on a container network, no address yet)";

/// `port 31000` on the agent's loopback, `172.18.0.5:8080` elsewhere.
fn describe(target: (IpAddr, u16)) -> String {
    match target {
        (address, port) if address.is_loopback() => format!("port {port}"),
        target => SocketAddr::from(target).to_string(),
    }
}

/// A minimal HTTP/1.1 GET: healthy on 2xx and 3xx (Marathon's rule).
async fn http_get(target: (IpAddr, u16), path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(target).await.map_err(|e| format!("connect to {}: {e}", describe(target)))?;
    let authority = SocketAddr::from(target);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: marina-agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 64];
    let read = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))?;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_huge_timings_neither_spin_nor_overflow() {
        let now = Instant::now();
        let check = |grace, interval, timeout| HealthCheck {
            grace_period_seconds: grace,
            interval_seconds: interval,
            timeout_seconds: timeout,
            ..Default::default()
        };
        let zero = Timing::of(&check(0, 0, 0), now);
        assert_eq!((zero.interval, zero.timeout), (MIN_PERIOD, MIN_PERIOD), "a floor of a second");
        assert!(!zero.in_grace(now), "no grace period");
        let huge = Timing::of(&check(u32::MAX, u32::MAX, u32::MAX), now);
        assert_eq!((huge.interval, huge.timeout), (MAX_PERIOD, MAX_PERIOD));
        assert!(huge.in_grace(now + MAX_PERIOD), "136 years of grace");
        let usual = Timing::of(&check(10, 5, 2), now);
        assert_eq!((usual.interval, usual.timeout), (Duration::from_secs(5), Duration::from_secs(2)));
        assert!(usual.in_grace(now + Duration::from_secs(9)) && !usual.in_grace(now + Duration::from_secs(10)));
    }
}
