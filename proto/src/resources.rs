//! Resource arithmetic, one home for every service that counts: scalars (cpus, mem, disk)
//! and port ranges. The master keeps its accounts with it; the gateway places instances on
//! offers with it.

use crate::agent::v1::{Range, Resources};

/// Slack for floating-point sums of cpus and memory: what an offer is short by and still
/// covers a demand (the master accepts what the gateway placed with the same slack).
pub const EPSILON: f64 = 1e-6;

/// Normalizes ranges: sorted, merged, empty ones dropped.
pub fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.begin <= r.end);
    ranges.sort_by_key(|r| r.begin);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.begin <= last.end.saturating_add(1) => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// `ranges` without `ports`.
pub fn subtract_ports(ranges: &[Range], ports: impl IntoIterator<Item = u64>) -> Vec<Range> {
    let mut result = normalize(ranges.to_vec());
    for port in ports {
        let mut next = Vec::with_capacity(result.len() + 1);
        for range in result {
            if port < range.begin || port > range.end {
                next.push(range);
                continue;
            }
            if port > range.begin {
                next.push(Range { begin: range.begin, end: port - 1 });
            }
            if port < range.end {
                next.push(Range { begin: port + 1, end: range.end });
            }
        }
        result = next;
    }
    result
}

/// `ranges` without `other`'s ranges.
pub fn subtract_ranges(ranges: &[Range], other: &[Range]) -> Vec<Range> {
    let mut result = normalize(ranges.to_vec());
    for cut in normalize(other.to_vec()) {
        let mut next = Vec::with_capacity(result.len() + 1);
        for range in result {
            if cut.end < range.begin || cut.begin > range.end {
                next.push(range);
                continue;
            }
            if cut.begin > range.begin {
                next.push(Range { begin: range.begin, end: cut.begin - 1 });
            }
            if cut.end < range.end {
                next.push(Range { begin: cut.end + 1, end: range.end });
            }
        }
        result = next;
    }
    result
}

pub fn contains_port(ranges: &[Range], port: u64) -> bool {
    ranges.iter().any(|r| r.begin <= port && port <= r.end)
}

pub fn port_count(ranges: &[Range]) -> u64 {
    // Saturating: ranges from the wire are checked, but arithmetic must not trust that.
    ranges.iter().map(|r| r.end.saturating_sub(r.begin).saturating_add(1)).fold(0, u64::saturating_add)
}

/// `a + b` (ports merged).
pub fn add(a: &Resources, b: &Resources) -> Resources {
    let mut ports = a.ports.clone();
    ports.extend(b.ports.iter().cloned());
    Resources {
        cpus: a.cpus + b.cpus,
        mem_mb: a.mem_mb + b.mem_mb,
        disk_mb: a.disk_mb + b.disk_mb,
        ports: normalize(ports),
    }
}

/// `a - b`, scalars floored at zero.
pub fn subtract(a: &Resources, b: &Resources) -> Resources {
    Resources {
        cpus: (a.cpus - b.cpus).max(0.0),
        mem_mb: (a.mem_mb - b.mem_mb).max(0.0),
        disk_mb: (a.disk_mb - b.disk_mb).max(0.0),
        ports: subtract_ranges(&a.ports, &b.ports),
    }
}

/// Whether `a` covers the scalars of `b` (ports are checked separately, per port).
pub fn covers_scalars(a: &Resources, b: &Resources) -> Result<(), String> {
    for (name, have, want) in [("cpus", a.cpus, b.cpus), ("mem", a.mem_mb, b.mem_mb), ("disk", a.disk_mb, b.disk_mb)] {
        if want > have + EPSILON {
            return Err(format!("{want} {name} asked, {have} offered"));
        }
    }
    Ok(())
}

/// Worth offering: Mesos' minimum allocatable resources.
pub fn is_allocatable(resources: &Resources) -> bool {
    resources.cpus >= 0.01 || resources.mem_mb >= 32.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(begin: u64, end: u64) -> Range {
        Range { begin, end }
    }

    #[test]
    fn ranges_merge_and_subtract() {
        assert_eq!(normalize(vec![r(5, 9), r(1, 3), r(4, 4), r(20, 10)]), vec![r(1, 9)]);
        assert_eq!(subtract_ports(&[r(1, 10)], [1, 5, 10]), vec![r(2, 4), r(6, 9)]);
        assert_eq!(subtract_ranges(&[r(1, 10), r(20, 30)], &[r(5, 25)]), vec![r(1, 4), r(26, 30)]);
        assert!(contains_port(&[r(31000, 32000)], 31000));
        assert!(!contains_port(&[r(31000, 32000)], 32001));
        assert_eq!(port_count(&[r(1, 10), r(20, 20)]), 11);
    }

    #[test]
    fn scalars_cover_with_slack() {
        let offered = Resources { cpus: 1.0, mem_mb: 128.0, disk_mb: 0.0, ports: vec![] };
        let three_tenths = Resources { cpus: 0.1 + 0.2, mem_mb: 0.0, disk_mb: 0.0, ports: vec![] };
        assert!(covers_scalars(&offered, &three_tenths).is_ok());
        let too_much = Resources { cpus: 0.5, mem_mb: 256.0, disk_mb: 0.0, ports: vec![] };
        assert_eq!(covers_scalars(&offered, &too_much).unwrap_err(), "256 mem asked, 128 offered");
    }
}
