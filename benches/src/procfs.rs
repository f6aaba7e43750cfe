//! Memory of the processes under test, read from `/proc/PID/status`: `VmRSS` (resident
//! now) and `VmHWM` (the peak of `VmRSS`), both in KiB; and their CPU time (user +
//! system, all threads) from `/proc/PID/stat`.

use serde_json::{json, Map, Value};

/// Resident memory of one process.
#[derive(Clone, Copy, Debug)]
pub struct Mem {
    /// Current resident set (`VmRSS`), KiB.
    pub rss_kb: u64,
    /// Peak resident set (`VmHWM`), KiB.
    pub hwm_kb: u64,
}

/// The memory of `pid`, or `None` if it is gone (or not readable).
pub fn mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time of `pid` (user + system, all its threads) in ms, 10 ms resolution.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU time (ms) in the text of a `/proc/…/stat` file.
pub fn parse_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // utime is field 14, stime 15
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 1e3 / TICKS_PER_SEC)
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A process whose memory is sampled at named moments of a run.
pub struct Watched {
    pid: u32,
    name: String,
    samples: Map<String, Value>,
    cpu: Map<String, Value>,
    hwm_kb: Option<u64>,
}

impl Watched {
    /// Starts watching `pid`.
    pub fn new(pid: u32) -> Watched {
        Watched {
            pid,
            name: String::new(),
            samples: Map::new(),
            cpu: Map::new(),
            hwm_kb: None,
        }
    }

    /// Records the current RSS and CPU time under `when` (null if the process is gone).
    pub fn sample(&mut self, when: &str) -> Option<u64> {
        let m = mem(self.pid);
        if let Some(m) = m {
            self.hwm_kb = Some(m.hwm_kb);
            // Read each time: a child just spawned may not have exec'd yet.
            self.name = name(self.pid);
        }
        let kb = m.map(|m| m.rss_kb);
        self.samples.insert(when.into(), json!(kb));
        self.cpu.insert(when.into(), json!(cpu_ms(self.pid)));
        kb
    }

    /// The short command name (as read at the last sample).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// CPU ms used between the samples `from` and `to`.
    pub fn cpu_between(&self, from: &str, to: &str) -> Option<f64> {
        Some(self.cpu.get(to)?.as_f64()? - self.cpu.get(from)?.as_f64()?)
    }

    /// `{"pid", "name", "rss_kb": {when: KiB}, "cpu_ms": {when: ms}, "hwm_kb"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "pid": self.pid,
            "name": self.name,
            "rss_kb": self.samples,
            "cpu_ms": self.cpu,
            "hwm_kb": self.hwm_kb,
        })
    }
}

/// Samples every process in `procs` under `when`.
pub fn sample_all(procs: &mut [Watched], when: &str) {
    for p in procs {
        p.sample(when);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        let m = parse_status(s).unwrap();
        assert_eq!((m.rss_kb, m.hwm_kb), (1024, 2048));
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn parses_stat() {
        let s = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(s), Some(3000.0));
        assert!(cpu_ms(std::process::id()).is_some());
    }

    #[test]
    fn reads_own_memory() {
        let m = mem(std::process::id()).unwrap();
        assert!(m.rss_kb > 0 && m.hwm_kb >= m.rss_kb);
    }
}
