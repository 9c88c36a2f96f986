//! Reading another process's CPU time and memory from /proc, the busy,
//! stolen and idle time of the cores it runs on (/proc/stat), the load
//! average, and finding the process that listens on a TCP port or has a
//! UDP port bound.

use std::fs;

/// CPU seconds (user + system, all threads) and resident set size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Parse `/proc/<pid>/stat`: (utime + stime in ticks, rss in pages).
/// The command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime = 14, stime = 15, rss = 24.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((utime + stime, rss))
}

pub fn usage(pid: u32) -> Option<Usage> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ticks, pages) = parse_stat(&stat)?;
    Some(Usage {
        cpu_s: ticks as f64 / clock_ticks(),
        rss_bytes: pages * page_size(),
    })
}

/// The 1, 5 and 15 minute load averages as /proc/loadavg prints them.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tick counters of some cores from /proc/stat, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTicks {
    /// user + nice + system + irq + softirq: time something ran there.
    pub busy: u64,
    /// irq + softirq alone (part of `busy`): kernel work not charged to a process.
    pub irq: u64,
    /// Time the hypervisor ran something else while this vCPU wanted to run.
    pub steal: u64,
    /// Everything (busy + idle + iowait + steal).
    pub total: u64,
}

/// Sum the `cpuN` lines of /proc/stat for the cores in `cpus`. `None`
/// unless every core asked for is present.
pub fn parse_core_ticks(stat: &str, cpus: &[usize]) -> Option<CoreTicks> {
    let mut t = CoreTicks::default();
    let mut found = 0;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(n) = f.next().and_then(|c| c.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue; // the "cpu" total line
        };
        if !cpus.contains(&n) {
            continue;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            return None;
        }
        t.busy += v[0] + v[1] + v[2] + v[5] + v[6];
        t.irq += v[5] + v[6];
        t.steal += v[7];
        t.total += v.iter().sum::<u64>();
        found += 1;
    }
    (found == cpus.len() && found > 0).then_some(t)
}

pub fn core_ticks(cpus: &[usize]) -> Option<CoreTicks> {
    parse_core_ticks(&fs::read_to_string("/proc/stat").ok()?, cpus)
}

/// Ticks to seconds.
pub fn ticks_s(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks()
}

/// Parse a CPU list like `0`, `0-1` or `0,2-3` (Cpus_allowed_list).
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The cores a process may run on (its affinity, e.g. from `taskset`).
pub fn allowed_cpus(pid: u32) -> Option<Vec<usize>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list)
}

/// Socket inodes listening on `port` in a /proc/net/tcp{,6} table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    bound_inodes(table, port, "0A")
}

/// Socket inodes of `port` in state `state` (hex, as the table prints it:
/// 0A = TCP LISTEN, 07 = an unconnected UDP socket).
fn bound_inodes(table: &str, port: u16, want: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let state = f.get(3)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *state == want)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The pid of the process listening on TCP `port` (in this network
/// namespace), by matching socket inodes against every process's fds.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = fs::read_to_string(t) {
            inodes.extend(listening_inodes(&s, port));
        }
    }
    pid_owning(&inodes)
}

/// The pid of the process with UDP `port` bound (in this network
/// namespace): the plain relay started outside the generator.
pub fn pid_bound_udp(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for t in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(s) = fs::read_to_string(t) {
            inodes.extend(bound_inodes(&s, port, "07"));
        }
    }
    pid_owning(&inodes)
}

fn pid_owning(inodes: &[u64]) -> Option<u32> {
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path())
                && targets.iter().any(|t| link.as_os_str() == t.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (spree kamer (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    700 300 0 0 20 0 7 0 12345 987654321 2500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((1000, 2500)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        assert!(u.cpu_s >= 0.0);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55501 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 55502 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(table, 8080), vec![55501]);
        assert!(listening_inodes(table, 8081).is_empty());
    }

    #[test]
    fn core_ticks_sum_the_chosen_cores_only() {
        let stat = "cpu  300 10 200 5000 7 3 4 9 0 0\n\
                    cpu0 100 0 50 2000 2 1 2 5 0 0\n\
                    cpu1 200 10 150 3000 5 2 2 4 0 0\n\
                    intr 12345\n";
        let c0 = parse_core_ticks(stat, &[0]).unwrap();
        assert_eq!(c0.busy, 100 + 50 + 1 + 2);
        assert_eq!(c0.irq, 3);
        assert_eq!(c0.steal, 5);
        assert_eq!(c0.total, 100 + 50 + 2000 + 2 + 1 + 2 + 5);
        let both = parse_core_ticks(stat, &[0, 1]).unwrap();
        assert_eq!(both.busy, 153 + 200 + 10 + 150 + 2 + 2);
        assert_eq!(both.steal, 9);
        // A core that is not there, a truncated line: no figure at all.
        assert_eq!(parse_core_ticks(stat, &[2]), None);
        assert_eq!(parse_core_ticks("cpu0 1 2 3\n", &[0]), None);
        assert_eq!(parse_core_ticks(stat, &[]), None);
    }

    #[test]
    fn cpu_lists_are_parsed_like_the_kernel_prints_them() {
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        let mine = allowed_cpus(std::process::id()).unwrap();
        assert!(!mine.is_empty());
        assert!(core_ticks(&mine).is_some_and(|t| t.total > 0));
    }

    #[test]
    fn load_average_is_read() {
        let l = loadavg();
        assert_eq!(l.split_whitespace().count(), 3, "{l}");
        assert!(
            l.split_whitespace()
                .all(|v| v.parse::<f64>().is_ok_and(|v| v >= 0.0)),
            "{l}"
        );
    }

    #[test]
    fn finds_a_bound_udp_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert_eq!(pid_bound_udp(port), Some(std::process::id()));
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  1: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0\n";
        assert_eq!(bound_inodes(table, 40000, "07"), vec![777]);
        assert!(bound_inodes(table, 40000, "0A").is_empty());
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }
}
