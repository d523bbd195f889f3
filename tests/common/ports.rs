//! Listening ports for fixtures, handed out so that they cannot collide. This module owns the
//! machine-wide port protocol that `scripts/ports.sh` and `scripts/bench/ports.py` follow too:
//!
//! - ports come from outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`):
//!   `[max(1024, low/2), low)`, or `(high, 65535]` when that is too small. The kernel never
//!   picks such a port as the source port of an outgoing connection, so a port handed out here
//!   cannot be taken by some client's `connect` before its server binds it (binding port 0 and
//!   dropping the socket could: that was a flaky etcd "address already in use");
//! - a port is handed out only under an exclusive `flock` on `/tmp/etcd-await-election-ports/
//!   <port>`, held for as long as its owner lives (a [`PortLease`], or the whole test process
//!   for [`free_port`]), so no other test, test process or script is handed it meanwhile; the
//!   kernel drops the lock when its holder dies, so a crash leaves nothing stale;
//! - a locked port is bound once before it is handed out, which skips ports that some other
//!   program (or an orphaned server of a killed run) is listening on.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

/// Where the per-port lock files live: one fixed path, so every user of the protocol on the
/// machine (whatever its `TMPDIR`) shares it.
pub const LOCK_DIR: &str = "/tmp/etcd-await-election-ports";
/// The fewest ports a usable range may have.
const MIN_RANGE: u32 = 1024;

/// A port reserved for its owner: its lock is released when this is dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: File,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A port for a listener that the caller starts later (a status endpoint, an etcd member).
/// Reserved until this test process exits.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<PortLease>> = Mutex::new(Vec::new());
    let lease = lease();
    let port = lease.port;
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lease);
    port
}

/// A port reserved until the returned lease is dropped.
pub fn lease() -> PortLease {
    let (from, to) = range();
    std::fs::create_dir_all(LOCK_DIR)
        .unwrap_or_else(|e| panic!("create the port lock dir {LOCK_DIR}: {e}"));
    // Anyone on the machine may add lock files (sticky, like /tmp itself).
    let _ = std::fs::set_permissions(LOCK_DIR, std::fs::Permissions::from_mode(0o1777));
    let span = to - from;
    // Spread concurrent callers over the range; the locks, not the start, make it safe.
    let start = (std::process::id() as u64 ^ super::records::monotonic_ns()) % span as u64;
    for i in 0..span {
        let port = (from + (start as u32 + i) % span) as u16;
        if let Some(lease) = try_lease(port) {
            return lease;
        }
    }
    panic!("no port in {from}..{to} is free: every one is locked under {LOCK_DIR} or bound");
}

fn try_lease(port: u16) -> Option<PortLease> {
    let path = Path::new(LOCK_DIR).join(port.to_string());
    // Read-only is enough to lock, and all we get on a lock file another user created.
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&path)
        .or_else(|_| File::open(&path))
        .ok()?;
    // SAFETY: flock(2) on an fd we own; it is released when the fd is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return None;
    }
    TcpListener::bind(("127.0.0.1", port)).ok()?;
    Some(PortLease { port, _lock: lock })
}

/// The half-open range ports are handed out from (see the module doc).
pub fn range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let mut it = text
        .split_whitespace()
        .filter_map(|w| w.parse::<u32>().ok());
    let (low, high) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    let below = ((low / 2).max(1024), low);
    let above: (u32, u32) = (high + 1, 65536);
    if below.1.saturating_sub(below.0) >= MIN_RANGE {
        below
    } else if above.1.saturating_sub(above.0) >= MIN_RANGE {
        above
    } else {
        panic!(
            "ip_local_port_range is {low} {high}: no {MIN_RANGE} ports outside it for test \
             listeners; narrow it, e.g. sysctl -w net.ipv4.ip_local_port_range='32768 60999'"
        )
    }
}
