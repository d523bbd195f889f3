//! Reading the process table from `/proc`: who is whose parent, and in which state. Only what
//! the tests ask of it; it never signals or waits for anything.

/// One line of `/proc/PID/stat`, the fields the tests need.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
}

/// The stat of `pid`; `None` once it is reaped.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { pid, ppid, state })
}

/// Every process there is.
pub fn all() -> Vec<Stat> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(stat)
        .collect()
}

/// The processes whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<Stat> {
    all().into_iter().filter(|s| s.ppid == ppid).collect()
}

/// Pids of every live descendant of `pid`, following parent links.
pub fn descendants(pid: u32) -> Vec<u32> {
    let table = all();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for s in table.iter().filter(|s| s.ppid == p) {
            out.push(s.pid);
            todo.push(s.pid);
        }
    }
    out
}

/// The processes alive (not zombies) whose command line starts with `prefix` (NUL-separated).
pub fn alive_with_cmdline(prefix: &str) -> Vec<u32> {
    all()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| c.starts_with(prefix.as_bytes()))
        })
        .map(|p| p.pid)
        .collect()
}

/// What a long-lived process holds: its resident memory, open descriptors and threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// `VmRSS` of `/proc/PID/status`.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// `Threads` of `/proc/PID/status`.
    pub threads: u64,
}

/// The footprint of `pid`; `None` once it is gone (a zombie has no `VmRSS`).
pub fn footprint(pid: u32) -> Option<Footprint> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Footprint {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}
