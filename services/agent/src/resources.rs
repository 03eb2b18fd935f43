//! What the agent offers: configured, or detected from the machine; and where it is.

use std::net::IpAddr;
use std::time::Duration;

use marina_proto::agent::v1::Resources;

use crate::AgentError;
use crate::config::{Config, parse_port_ranges};

/// Memory kept for the OS and the agent itself when detecting.
const RESERVED_MEM_MB: f64 = 512.0;

pub fn detect(config: &Config) -> Result<Resources, AgentError> {
    let cpus = config
        .resources
        .cpus
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
    let mem_mb = config.resources.mem_mb.unwrap_or_else(|| (total_memory_mb() - RESERVED_MEM_MB).max(0.0));
    let disk_mb = match config.resources.disk_mb {
        Some(disk) => disk,
        None => available_disk_mb(&config.work_dir)?,
    };
    Ok(Resources { cpus, mem_mb, disk_mb, ports: parse_port_ranges(&config.resources.ports)? })
}

fn total_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(1024.0, |kb| kb / 1024.0)
}

fn available_disk_mb(dir: &std::path::Path) -> Result<f64, AgentError> {
    std::fs::create_dir_all(dir)?;
    let stats = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stats.blocks_available() as f64 * stats.fragment_size() as f64 / (1024.0 * 1024.0))
}

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// How long resolving the agent's own name may take at start.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's own IP address, reported for the tasks that share its network (as Mesos
/// reports its agent's): the advertised address's host if it is an IP address, else that
/// host or `hostname` resolved (the first address not a loopback one, if any). Empty when
/// none of them says (the agent logs it).
pub async fn own_addresses(advertised: &str, hostname: &str) -> Vec<IpAddr> {
    let host = advertised.rsplit_once(':').map_or(advertised, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = host.parse::<IpAddr>() {
        if !address.is_unspecified() {
            return vec![address];
        }
    } else if let Some(address) = resolve(host).await {
        return vec![address];
    }
    if let Some(address) = resolve(hostname).await {
        return vec![address];
    }
    tracing::warn!(advertised, hostname, "no IP address of the agent's own: host-networked tasks report none");
    Vec::new()
}

async fn resolve(name: &str) -> Option<IpAddr> {
    if name.is_empty() {
        return None;
    }
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0))).await.ok()?.ok()?;
    let addresses: Vec<IpAddr> = resolved.map(|address| address.ip()).filter(|ip| !ip.is_unspecified()).collect();
    addresses.iter().find(|ip| !ip.is_loopback()).or(addresses.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agents_address_is_the_advertised_one_or_its_names() {
        assert_eq!(own_addresses("10.0.1.5:5051", "ignored.invalid").await, ["10.0.1.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(own_addresses("[fd00::5]:5051", "ignored.invalid").await, ["fd00::5".parse::<IpAddr>().unwrap()]);
        // Bound to every interface: the name says where.
        assert_eq!(own_addresses("0.0.0.0:5051", "localhost").await.len(), 1);
        assert_eq!(own_addresses("localhost:5051", "ignored.invalid").await.len(), 1);
        assert!(own_addresses("0.0.0.0:5051", "no-such-host.invalid").await.is_empty());
    }
}
