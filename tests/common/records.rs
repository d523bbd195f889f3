//! The test-process side of `eae-test-child` (`tests/support/child.rs`): this module owns the
//! record format `start|stop|term <identity> <pid> <CLOCK_MONOTONIC ns>`, parsing a log file into
//! [`Record`]s, reading the same monotonic clock the child uses, and locating the child binary.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Start,
    Stop,
    Term,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub identity: String,
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds at which the child wrote the record.
    pub ns: u64,
}

impl Record {
    /// Parse one line (without its newline). `None` for anything malformed.
    pub fn parse(line: &str) -> Option<Record> {
        let mut it = line.split_whitespace();
        let kind = match it.next()? {
            "start" => Kind::Start,
            "stop" => Kind::Stop,
            "term" => Kind::Term,
            _ => return None,
        };
        let identity = it.next()?.to_string();
        let pid = it.next()?.parse().ok()?;
        let ns = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(Record {
            kind,
            identity,
            pid,
            ns,
        })
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            Kind::Start => "start",
            Kind::Stop => "stop",
            Kind::Term => "term",
        };
        write!(f, "{k} {} {} {}", self.identity, self.pid, self.ns)
    }
}

/// All complete, well-formed records in the file (empty if it does not exist yet).
pub fn read_records(path: &Path) -> Vec<Record> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return Vec::new(),
    };
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| Record::parse(l.trim_end()))
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock the child stamps its records with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Path of the `eae-test-child` binary cargo built for this test run.
pub fn child_bin() -> &'static str {
    env!("CARGO_BIN_EXE_eae-test-child")
}
