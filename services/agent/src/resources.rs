//! What the agent offers: configured, or detected from the machine.

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
