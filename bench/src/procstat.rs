//! What a server process costs, read from `/proc`: CPU time (utime + stime
//! of every thread, exited ones included) and resident memory.
//!
//! A system may be several processes (nginx's master and workers); a
//! measurement sums over the process and its children.

use std::fs;

/// Cumulative CPU time and current resident memory of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_us: u64,
    pub rss_kib: u64,
}

impl Usage {
    /// CPU microseconds spent between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &Usage) -> u64 {
        self.cpu_us.saturating_sub(earlier.cpu_us)
    }
}

/// Clock ticks per second for `/proc/PID/stat`; Linux reports USER_HZ,
/// which is 100 on every architecture the benchmarks run on.
const TICKS_PER_SEC: u64 = 100;

/// Usage of `pid` and every process whose parent it is.
pub fn tree(pid: u32) -> Usage {
    let mut usage = one(pid).unwrap_or_default();
    for child in children(pid) {
        let c = one(child).unwrap_or_default();
        usage.cpu_us += c.cpu_us;
        usage.rss_kib += c.rss_kib;
    }
    usage
}

/// Usage of this process (the load generator).
pub fn own() -> Usage {
    one(std::process::id()).unwrap_or_default()
}

/// Busy time of processor `cpu` (everything but idle and iowait) in
/// microseconds, from `/proc/stat`: with the server's own CPU time it tells
/// how much else ran on the server's core.
pub fn core_busy_us(cpu: usize) -> u64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, t)| t)
        .sum();
    busy * 1_000_000 / TICKS_PER_SEC
}

fn one(pid: u32) -> Option<Usage> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    // Fields after the command: state is index 0, utime 11, stime 12.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu_us: ticks * 1_000_000 / TICKS_PER_SEC,
        rss_kib,
    })
}

/// The fields after `(comm)`, which may itself contain spaces.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s)?.get(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load generator can read its own CPU time and memory.
    #[test]
    fn reads_own_process() {
        let usage = own();
        assert!(usage.rss_kib > 0);
    }
}
