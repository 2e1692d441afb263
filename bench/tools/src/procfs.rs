//! What the load generator reads from `/proc`: a process's CPU time (`stat`: utime + stime), its
//! peak resident memory (`status`: VmHWM), and the PostgreSQL processes that serve the benchmark's
//! database with their proportional memory (`smaps_rollup`: Pss).
//!
//! The PostgreSQL server may be shared with other work, so only its own processes count: the
//! postmaster and its background processes (checkpointer, writers, launchers), and the backends
//! whose process title names the benchmark's database. Backends and autovacuum workers of other
//! databases are left out.

use std::{collections::HashMap, fs};

/// Clock ticks per second, as `/proc/*/stat` counts them.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds of `pid` (`self` for this process), or 0 when it is gone.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / ticks_per_second()
}

/// CPU seconds the whole machine has been busy, all cores together (`/proc/stat`: user, nice,
/// system, irq, softirq, steal).
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return 0.0 };
    let ticks: Vec<u64> = cpu.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / ticks_per_second()
}

/// A `kB` line of a `/proc` file (`VmHWM:`, `Pss:`), in KiB.
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Peak resident memory of `pid` since it started, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// The PostgreSQL processes serving `database`, by pid.
pub fn postgres_processes(database: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !matches!(comm.trim(), "postgres" | "postmaster") {
            continue;
        }
        let title = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let title = String::from_utf8_lossy(&title).replace('\0', " ");
        if serves(&title, database) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a PostgreSQL process with this title works for `database` (or for the whole server).
fn serves(title: &str, database: &str) -> bool {
    let words: Vec<&str> = title.split_whitespace().collect();
    if words.contains(&database) {
        return true;
    }
    let backend = title.contains("[local]") || (title.contains('(') && title.contains(')'));
    let other_database = title.contains("autovacuum worker") || title.contains("parallel worker");
    !backend && !other_database
}

/// CPU seconds of each of `pids`.
pub fn cpu_by_pid(pids: &[u32]) -> HashMap<u32, f64> {
    pids.iter().map(|&pid| (pid, cpu_seconds(&pid.to_string()))).collect()
}

/// CPU seconds the processes spent between two readings (a process born in between counts from 0).
pub fn cpu_between(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after.iter().map(|(pid, now)| (now - before.get(pid).copied().unwrap_or(0.0)).max(0.0)).sum()
}

/// Sum of the proportional set sizes of `pids`, in KiB.
pub fn pss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")).sum()
}

#[cfg(test)]
mod tests {
    use super::serves;

    #[test]
    fn only_the_servers_own_processes_and_the_databases_backends_count() {
        let db = "ensemble_bench_42";
        assert!(serves("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", db));
        assert!(serves("postgres: 15/main: checkpointer ", db));
        assert!(serves("postgres: 15/main: postgres ensemble_bench_42 127.0.0.1(51234) idle", db));
        assert!(!serves("postgres: 15/main: postgres ensemble_test_9f 127.0.0.1(51236) idle", db));
        assert!(!serves("postgres: 15/main: postgres other [local] idle", db));
        assert!(!serves("postgres: 15/main: autovacuum worker other", db));
    }

    #[test]
    fn this_process_shows_its_cpu_time_and_its_peak_memory() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut spin = 0u64;
        while super::cpu_seconds("self") == 0.0 && std::time::Instant::now() < deadline {
            spin = (0..100_000u64).fold(spin, |a, b| a.wrapping_add(b * b));
        }
        assert!(super::cpu_seconds("self") > 0.0, "no CPU time read after spinning ({spin})");
        assert!(super::machine_busy_seconds() >= super::cpu_seconds("self"));
        assert!(super::peak_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
