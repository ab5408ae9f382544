//! What the agent reads about the machine it runs on (Linux `/proc`, `/etc/os-release`,
//! `statvfs`): the facts sent after each connection and the health in each heartbeat.
//!
//! Every reading is best effort: a file that is missing or unreadable leaves its field out
//! rather than failing the heartbeat.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value, json};

/// The device facts: agent version, OS, kernel, architecture, hostname, boot id, uptime.
#[must_use]
pub fn facts() -> Map<String, Value> {
    let mut facts = Map::new();
    facts.insert("agent_version".to_owned(), json!(env!("CARGO_PKG_VERSION")));
    facts.insert("arch".to_owned(), json!(std::env::consts::ARCH));
    facts.insert("os_family".to_owned(), json!(std::env::consts::OS));
    if let Some(os) = read("/etc/os-release").as_deref().and_then(os_pretty_name) {
        facts.insert("os".to_owned(), json!(os));
    }
    let mut put = |key: &str, path: &str| {
        if let Some(v) = read(path) {
            facts.insert(key.to_owned(), json!(v.trim()));
        }
    };
    put("kernel", "/proc/sys/kernel/osrelease");
    put("hostname", "/proc/sys/kernel/hostname");
    put("boot_id", "/proc/sys/kernel/random/boot_id");
    if let Some(up) = uptime_secs() {
        facts.insert("uptime_secs".to_owned(), json!(up));
    }
    facts
}

/// `PRETTY_NAME` (or `NAME`) of an os-release file.
#[must_use]
pub fn os_pretty_name(os_release: &str) -> Option<String> {
    let value = |key: &str| {
        os_release.lines().find_map(|line| {
            let v = line.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

/// Seconds since boot, from `/proc/uptime`.
#[must_use]
pub fn uptime_secs() -> Option<u64> {
    let text = read("/proc/uptime")?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    // Saturating float-to-int conversion; uptime is never negative.
    Some(secs as u64)
}

/// CPU time counters of `/proc/stat`'s first line: (busy, total) jiffies.
#[must_use]
pub fn parse_cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    if values.len() < 4 {
        return None;
    }
    let total: u64 = values.iter().sum();
    // idle + iowait are not busy.
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Total and available memory in bytes from `/proc/meminfo` text.
#[must_use]
pub fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((kib("MemTotal")? * 1024, kib("MemAvailable")? * 1024))
}

/// Samples CPU use between two calls.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Percent of CPU time busy since the previous call (since boot on the first call).
    pub fn sample(&mut self) -> Option<f64> {
        let now = parse_cpu_times(&read("/proc/stat")?)?;
        let (busy0, total0) = self.last.replace(now).unwrap_or((0, 0));
        let (busy, total) = (now.0.saturating_sub(busy0), now.1.saturating_sub(total0));
        if total == 0 {
            return None;
        }
        #[expect(clippy::cast_precision_loss, reason = "a percentage with two decimals")]
        let percent = busy as f64 * 100.0 / total as f64;
        Some((percent * 100.0).round() / 100.0)
    }
}

/// The machine's health now: CPU since the last sample, memory, disk of `data_dir`, load, uptime.
pub fn health(cpu: &mut CpuSampler, data_dir: &Path) -> Map<String, Value> {
    let mut health = Map::new();
    if let Some(up) = uptime_secs() {
        health.insert("uptime_secs".to_owned(), json!(up));
    }
    if let Some(percent) = cpu.sample() {
        health.insert("cpu_percent".to_owned(), json!(percent));
    }
    if let Some((total, available)) = read("/proc/meminfo").as_deref().and_then(parse_meminfo) {
        health.insert("memory_total_bytes".to_owned(), json!(total));
        health.insert("memory_used_bytes".to_owned(), json!(total.saturating_sub(available)));
    }
    if let Ok(vfs) = rustix::fs::statvfs(data_dir) {
        let total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        health.insert("disk_total_bytes".to_owned(), json!(total));
        health.insert("disk_used_bytes".to_owned(), json!(total.saturating_sub(free)));
    }
    if let Some(load) = read("/proc/loadavg")
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
    {
        health.insert("load_1m".to_owned(), json!(load));
    }
    health
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(os_pretty_name(text).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(os_pretty_name("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(os_pretty_name("ID=x\n"), None);
    }

    #[test]
    fn cpu_times() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu_times(stat), Some((150, 1000)));
        assert_eq!(parse_cpu_times("intr 1 2\n"), None);
        assert_eq!(parse_cpu_times(""), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       2048 kB\nMemFree: 10 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(parse_meminfo(text), Some((2048 * 1024, 1024 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn readings_on_this_machine() {
        let facts = facts();
        assert!(facts.contains_key("agent_version") && facts.contains_key("kernel"), "{facts:?}");
        let mut cpu = CpuSampler::default();
        let health = health(&mut cpu, Path::new("/"));
        assert!(health.contains_key("memory_total_bytes"), "{health:?}");
        assert!(health.contains_key("disk_total_bytes"), "{health:?}");
    }
}
