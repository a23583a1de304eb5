//! The `process_*` families on Linux, read at every snapshot.
//!
//! The same seven families, names and help as the prometheus crate's process collector,
//! which this replaces because of what it read each time: it opened `/proc/<pid>`,
//! parsed all of `/proc/<pid>/limits` for one number and every field of `stat`; on a
//! push of ~2,800 series once a second that was a fifth of the pusher's CPU. Here a
//! snapshot reads `/proc/self/stat` once (five fields), counts `/proc/self/fd` and asks
//! `getrlimit` for the fd limit; the start time, which cannot change, is worked out once.
//!
//! `process_cpu_seconds_total` keeps the clock tick's resolution (1/100 s) where the
//! crate's counter was whole seconds.

use std::io::Read;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntGauge};

pub(crate) struct ProcessCollector {
    cpu_seconds: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_memory: IntGauge,
    resident_memory: IntGauge,
    start_time: IntGauge,
    threads: IntGauge,
    /// Clock ticks per second, the unit of `stat`'s times.
    ticks: f64,
    page_size: i64,
}

/// The fields of `/proc/self/stat` read here.
#[derive(Debug, PartialEq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    threads: i64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl ProcessCollector {
    pub(crate) fn new() -> prometheus::Result<ProcessCollector> {
        let ticks = rustix::param::clock_ticks_per_second();
        let page_size = i64::try_from(rustix::param::page_size()).unwrap_or(4096);
        let collector = ProcessCollector {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
            open_fds: IntGauge::new("process_open_fds", "Number of open file descriptors.")?,
            max_fds: IntGauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            virtual_memory: IntGauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            resident_memory: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            start_time: IntGauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )?,
            threads: IntGauge::new("process_threads", "Number of OS threads in the process.")?,
            ticks: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: page_size.max(1),
        };
        if let (Some(stat), Some(boot)) = (read_stat(), boot_time()) {
            let since_boot = stat.start_ticks as f64 / collector.ticks;
            collector.start_time.set(boot + since_boot as i64);
        }
        Ok(collector)
    }

    fn refresh(&self) {
        if let Some(stat) = read_stat() {
            let seconds = stat.cpu_ticks as f64 / self.ticks;
            // A counter only goes up; the kernel's tick count does too.
            let delta = seconds - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.threads.set(stat.threads);
            self.virtual_memory
                .set(i64::try_from(stat.virtual_bytes).unwrap_or(i64::MAX));
            let resident = i64::try_from(stat.resident_pages).unwrap_or(i64::MAX);
            self.resident_memory
                .set(resident.saturating_mul(self.page_size));
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(entries.count() as i64);
        }
        // `None` is "unlimited": the gauge keeps its last value rather than a made-up one.
        if let Some(current) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        {
            self.max_fds.set(i64::try_from(current).unwrap_or(i64::MAX));
        }
    }
}

impl ProcessCollector {
    /// The seven families, in the order the crate's collector listed them.
    fn families(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu_seconds,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.start_time,
            &self.threads,
        ]
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.families().into_iter().flat_map(|f| f.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.families()
            .into_iter()
            .flat_map(|f| f.collect())
            .collect()
    }
}

fn read_stat() -> Option<Stat> {
    // The line is a few hundred bytes; a stack buffer spares an allocation per snapshot.
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open("/proc/self/stat").ok()?;
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]).ok()? {
            0 => break,
            n => len += n,
        }
        if len == buf.len() {
            return None;
        }
    }
    parse_stat(std::str::from_utf8(&buf[..len]).ok()?)
}

/// Fields 14, 15, 20, 22, 23 and 24 of `proc_pid_stat(5)`. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so counting starts
/// after the last `)`, with field 3.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let utime = fields.nth(14 - 3)??;
    let stime = fields.next()??;
    let threads = fields.nth(20 - 16)??;
    let start_ticks = fields.nth(22 - 21)??;
    let virtual_bytes = fields.next()??;
    let resident_pages = fields.next()??;
    Some(Stat {
        cpu_ticks: utime + stime,
        threads: i64::try_from(threads).ok()?,
        start_ticks,
        virtual_bytes,
        resident_pages,
    })
}

/// Boot time in Unix seconds: `btime` of `/proc/stat`.
fn boot_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may choose.
        let line = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    150 25 0 0 20 0 7 0 12345 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 175,
                threads: 7,
                start_ticks: 12345,
                virtual_bytes: 987_654_321,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("4242 (short) S 1 2 3"), None);
    }

    #[test]
    fn the_seven_families_read_this_process() {
        let collector = ProcessCollector::new().unwrap();
        let families = collector.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds_total",
                "process_open_fds",
                "process_max_fds",
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes",
                "process_start_time_seconds",
                "process_threads",
            ]
        );
        let gauge = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap()
        };
        // This test binary has stdin/out/err open, runs test threads, and started
        // after 2020 and not in the future.
        assert!(gauge("process_open_fds") >= 3.0);
        assert!(gauge("process_max_fds") >= gauge("process_open_fds"));
        assert!(gauge("process_threads") >= 1.0);
        assert!(gauge("process_resident_memory_bytes") > 0.0);
        assert!(gauge("process_virtual_memory_bytes") >= gauge("process_resident_memory_bytes"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = gauge("process_start_time_seconds");
        assert!(started > 1.6e9 && started <= now + 1.0, "{started}");
    }
}
