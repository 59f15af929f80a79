//! Readings from `/proc`: a process's resident memory and CPU time, the whole machine's CPU
//! time, and the kernel's socket memory. The server is only observed, never touched.

use std::path::Path;

/// Why a `/proc` reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (process gone?).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file did not have the expected field.
    #[error("{path}: no field {field}")]
    Field {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
    },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(Path::new(path)).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    parse_status_kb(&read(&path)?, "VmRSS:")
        .map(|kb| kb * 1024)
        .ok_or(ProcError::Field {
            path,
            field: "VmRSS",
        })
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    parse_stat_ticks(&read(&path)?).ok_or(ProcError::Field {
        path,
        field: "utime/stime",
    })
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after its closing paren are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14 -> index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's idle time over all cores in clock ticks (`/proc/stat` `cpu`: idle + iowait),
/// and the number of cores (`cpuN` lines). Busy time is cores × wall time − idle: the sum of
/// the user, system, … counters once read 19 % of a core over a fixed-rate phase in which
/// tether, the backend and the bench alone used 53 % (by their own `/proc/PID/stat`); those
/// counters are sampled at the tick, while a tickless kernel measures idle time exactly.
pub fn machine_idle_ticks() -> Result<(u64, u32), ProcError> {
    let path = "/proc/stat";
    parse_machine_idle(&read(path)?).ok_or(ProcError::Field {
        path: path.to_owned(),
        field: "cpu",
    })
}

fn parse_machine_idle(stat: &str) -> Option<(u64, u32)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait ...
    let mut fields = line.split_whitespace().skip(4);
    let idle: u64 = fields.next()?.parse().ok()?;
    let iowait: u64 = fields.next()?.parse().ok()?;
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((idle + iowait, u32::try_from(cores).ok().filter(|&c| c > 0)?))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when unavailable, the Linux value).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Kernel TCP memory (`/proc/net/sockstat`, `TCP: ... mem N`, in pages) in bytes, and the
/// number of TCP sockets in use.
pub fn sockstat() -> Result<(u64, u64), ProcError> {
    let path = "/proc/net/sockstat";
    parse_sockstat(&read(path)?).ok_or(ProcError::Field {
        path: path.to_owned(),
        field: "TCP mem",
    })
}

fn parse_sockstat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.parse().ok()
    };
    Some((value("mem")? * 4096, value("inuse")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\ttether\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(12345));
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        let sock =
            "sockets: used 200\nTCP: inuse 15004 orphan 0 tw 3 alloc 15010 mem 512\nUDP: inuse 1\n";
        assert_eq!(parse_sockstat(sock), Some((512 * 4096, 15004)));
        let stat = "cpu  100 5 30 900 7 1 2 3 0 0\ncpu0 50 2 15 450 3 0 1 1 0 0\n\
                    cpu1 50 3 15 450 4 1 1 2 0 0\nintr 1\n";
        assert_eq!(parse_machine_idle(stat), Some((907, 2)));
        assert_eq!(parse_machine_idle("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_idle("cpu  1 2 3 4 5\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(machine_idle_ticks().unwrap().1 > 0);
        assert!(clock_ticks_per_sec() > 0);
    }
}
