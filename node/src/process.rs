//! The process's own resource use, read from Linux's `/proc/self`, for the standard
//! `process_*` metrics.

use std::io;

/// Clock ticks a second of the CPU times in `/proc/self/stat` (Linux's `USER_HZ`, fixed
/// at 100 for user space on every architecture).
const TICKS_PER_SECOND: f64 = 100.0;

/// What the process uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: u64,
}

impl ProcessStats {
    /// Reads the current process's figures.
    pub fn read() -> io::Result<ProcessStats> {
        let (cpu_seconds, virtual_bytes) =
            parse_stat(&std::fs::read_to_string("/proc/self/stat")?)?;
        Ok(ProcessStats {
            cpu_seconds,
            virtual_bytes,
            resident_bytes: parse_resident(&std::fs::read_to_string("/proc/self/status")?)?,
            open_fds: std::fs::read_dir("/proc/self/fd")?.count() as u64,
            max_fds: parse_max_fds(&std::fs::read_to_string("/proc/self/limits")?)?,
        })
    }
}

/// The error of a `/proc` file that does not read as expected.
fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unreadable {what}"))
}

/// CPU seconds and virtual bytes from `/proc/self/stat` (fields 14, 15 and 23; the command
/// name in field 2 may hold spaces and parentheses, so fields count from its last `)`).
fn parse_stat(stat: &str) -> io::Result<(f64, u64)> {
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| malformed("/proc/self/stat"))?;
    // Field 3 (the state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> io::Result<u64> {
        fields
            .get(number - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| malformed("/proc/self/stat"))
    };
    let ticks = field(14)? + field(15)?;
    Ok((ticks as f64 / TICKS_PER_SECOND, field(23)?))
}

/// Resident bytes from the `VmRSS` line of `/proc/self/status` (in kB).
fn parse_resident(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| malformed("/proc/self/status"))
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`unlimited` as `u64::MAX`).
fn parse_max_fds(limits: &str) -> io::Result<u64> {
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| malformed("/proc/self/limits"))?;
    match soft {
        "unlimited" => Ok(u64::MAX),
        number => number.parse().map_err(|_| malformed("/proc/self/limits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_end_of_the_command_name() {
        let stat = "4242 (sentinel (node) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    350 150 0 0 20 0 12 0 1000 734003200 9000 18446744073709551615";
        assert_eq!(parse_stat(stat).unwrap(), (5.0, 734_003_200));
        assert!(parse_stat("4242 (truncated").is_err());
    }

    #[test]
    fn resident_memory_and_the_descriptor_limit_are_read_from_their_lines() {
        let status = "Name:\tsentinel\nVmPeak:\t  900000 kB\nVmRSS:\t   51200 kB\nThreads:\t12\n";
        assert_eq!(parse_resident(status).unwrap(), 51_200 * 1024);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(limits).unwrap(), 1_048_576);
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited).unwrap(), u64::MAX);
        assert!(parse_resident("Name:\tsentinel\n").is_err());
    }

    #[test]
    fn this_process_uses_some_of_everything() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes);
        assert!(stats.open_fds > 0 && stats.max_fds >= stats.open_fds);
        assert!(stats.cpu_seconds >= 0.0);
    }
}
