//! A stderr that takes nothing (a full pipe nobody reads: a stalled journald or log shim, Ctrl-S)
//! must not keep the leader from acting: its command still stops before the follower starts when
//! it is cut off from etcd, and it still resigns when its command exits. Proved from the
//! children's CLOCK_MONOTONIC records; the pipe is filled by the test, so every write the wrapper
//! makes to it would block.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::candidate::{Candidate, CandidateBuilder};
use common::proxy::{Mode, Proxy};
use common::records::monotonic_ns;
use common::scene::Scene;
use common::{wait_for, wait_until};

const LOCK: &str = "eae-stalled";
/// The wrapper's "leadership lost" exit code (`exit::LOST` in src/exit.rs).
const EXIT_LOST: i32 = 75;
/// Generous bound for things that should take about a second.
const T: Duration = Duration::from_secs(15);

/// A pipe whose read end is held open and never read.
struct Unread {
    _read: OwnedFd,
    write: OwnedFd,
}

impl Unread {
    fn new() -> Unread {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fds owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Unread { _read: read, write }
    }

    fn writer(&self) -> OwnedFd {
        self.write.try_clone().expect("dup the pipe's write end")
    }

    /// Fills the pipe to the brim. Through a nonblocking open file description of its own, so
    /// the wrapper's stays blocking: its next write would block for good.
    fn fill(&self) -> usize {
        let path = format!("/proc/self/fd/{}", self.write.as_raw_fd());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("reopen the pipe nonblocking");
        let chunk = [b'x'; 4096];
        let mut total = 0;
        loop {
            match (&f).write(&chunk) {
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
                Err(e) => panic!("fill the pipe: {e}"),
            }
        }
    }
}

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// A scene around one etcd with two proxies in front of it, one per candidate.
fn scene(tag: &str) -> Scene {
    let mut s = Scene::new(&format!("stalled-{tag}"), LOCK);
    let ep = s.etcd.endpoint();
    s.proxies = (0..2).map(|_| Proxy::start(&ep)).collect();
    s
}

/// This file's helpers on a [`Scene`].
trait StalledScene {
    fn cand(&self, id: &str, proxy: usize, lease: u64, renew: &str) -> CandidateBuilder;
    fn leader_and_follower(&mut self, a: CandidateBuilder, b: CandidateBuilder) -> u32;
}

impl StalledScene for Scene {
    fn cand(&self, id: &str, proxy: usize, lease: u64, renew: &str) -> CandidateBuilder {
        Candidate::new(id)
            .lock(LOCK)
            .endpoints(&self.proxies[proxy].endpoint())
            .lease(lease)
            .renew(renew)
            .retry("250ms")
            .log(&self.log)
    }

    /// `a` leads with its stderr on `pipe`, `b` waits behind it; returns a's child pid.
    fn leader_and_follower(&mut self, a: CandidateBuilder, b: CandidateBuilder) -> u32 {
        self.spawn(a);
        let ra = self.mon.wait_for_start(Some("a"), T);
        self.spawn(b);
        wait_until(T, "b queued behind a", || {
            self.etcd.get_prefix_keys(&format!("{LOCK}/")).len() == 2
        });
        ra.pid
    }
}

/// The leader's stderr is full when its link to etcd is cut: its command is still stopped (and
/// dead) before the follower's starts, and the wrapper exits with "leadership lost".
#[test]
fn cut_leader_with_a_stalled_stderr_stops_before_the_follower_starts() {
    let mut s = scene("cut");
    let pipe = Unread::new();
    let a = s.cand("a", 0, 3, "2s").stderr(pipe.writer());
    let b = s.cand("b", 1, 3, "2s");
    let a_pid = s.leader_and_follower(a, b);
    assert!(pipe.fill() > 0, "the pipe took nothing");

    let cut = monotonic_ns();
    s.proxies[0].set_mode(Mode::Blackhole);
    let rb = s.mon.wait_for_start(Some("b"), T + T);
    s.mon.wait_until_dead(a_pid, Duration::from_secs(1));
    s.mon.assert_no_overlap();
    let pa = s.mon.procs().into_iter().find(|p| p.pid == a_pid).unwrap();
    let a_death = pa.death_ns.expect("a's child died");
    assert!(
        a_death < rb.ns,
        "a's child died {:?} after b's started",
        Duration::from_nanos(a_death - rb.ns)
    );
    assert!(
        !pa.term_ns.is_empty(),
        "a's child should have got SIGTERM: {pa:?}"
    );
    assert!(
        Duration::from_nanos(a_death - cut) < Duration::from_secs(3),
        "a's child outlived the TTL after the cut"
    );
    let st = s.cast[0].expect_exit(T);
    assert_eq!(st.code(), Some(EXIT_LOST), "exit status of the cut leader");
    s.mon.assert_no_overlap();
}

/// With its stderr full, the leader keeps logging (the lines are dropped and counted in
/// /metrics), and when its command exits by itself it resigns at once: the follower starts in
/// a fraction of the TTL, not after the lease expired.
#[test]
fn a_command_that_exits_with_a_stalled_stderr_still_resigns() {
    let mut s = scene("exit");
    let pipe = Unread::new();
    let port = common::free_port();
    let a = s
        .cand("a", 0, 10, "5s")
        .status_port(port)
        .stderr(pipe.writer());
    let b = s.cand("b", 1, 10, "5s");
    let a_pid = s.leader_and_follower(a, b);
    assert!(pipe.fill() > 0, "the pipe took nothing");

    // Every forwarded SIGWINCH is a (debug) log line: enough of them overflow the queue.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let dropped = wait_for(T, "log lines dropped", || {
        for _ in 0..200 {
            s.cast[0].signal(libc::SIGWINCH);
        }
        let (_, body) = common::http("GET", &metrics, Duration::from_secs(1))?;
        common::metric(&body, "etcd_await_election_log_lines_dropped_total").filter(|n| *n > 0)
    });
    eprintln!("{dropped} log lines dropped");

    assert!(
        common::signal_pid(a_pid, libc::SIGTERM),
        "a's command is gone"
    );
    let stop = s.mon.wait_for_record("a's stop", T, |r| {
        r.pid == a_pid && r.kind == common::records::Kind::Stop
    });
    let rb = s.mon.wait_for_start(Some("b"), T);
    s.mon.assert_no_overlap();
    let handover = Duration::from_nanos(rb.ns - stop.ns);
    assert!(
        handover < Duration::from_secs(2),
        "b started {handover:?} after a's command exited: a did not resign (TTL 10 s)"
    );
    let st = s.cast[0].expect_exit(T);
    assert_eq!(st.code(), Some(143), "the command's code");
}
