//! The mutual-exclusion invariant checker. This module owns the observed timeline of every
//! process that `eae-test-child` logs: a background thread tails the shared log file (every
//! ~2 ms), opens a pidfd for every `start` record at once, and stamps the CLOCK_MONOTONIC time at
//! which each process is seen dead (pidfd readable; ESRCH at open => dead at open time), and the
//! last time it was known alive before that (the start of the last poll that found it alive).
//! A process's interval is `[start, stop record]`, else `[start, last known alive]`, else
//! `[start, seen dead]` (dead by its first poll: a successor that starts and dies at once beside
//! a running command still overlaps it), else `[start, now)` while alive. On a loaded machine
//! the thread is not always scheduled, and a death seen late is not a death that came late (a
//! grandchild SIGKILLed and reaped by its wrapper before the hand-over was seen dead 15 ms after
//! the heir's start, the monitor starved for 25 ms): an overlap shorter than such a blind spot
//! goes unseen; the children's own records (`start`, `stop`) are exact. [`Monitor::overlaps`]
//! lists every span where processes of two different identities were alive at once;
//! [`Monitor::assert_no_overlap`] panics with a readable timeline. Dropping the monitor stops the
//! thread and closes all pidfds.

use super::records::{monotonic_ns, Kind, Record};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One process seen in the log.
#[derive(Debug, Clone)]
pub struct Proc {
    pub identity: String,
    pub pid: u32,
    pub start_ns: u64,
    pub stop_ns: Option<u64>,
    pub term_ns: Vec<u64>,
    /// When the monitor saw the process dead (pidfd readable, or ESRCH at pidfd_open).
    pub death_ns: Option<u64>,
    /// The last time it was known alive before it was seen dead: it died after this.
    pub alive_ns: Option<u64>,
}

impl Proc {
    /// End of the interval: `stop` record, else the last time known alive before it was seen
    /// dead, else `None` (still alive).
    pub fn end_ns(&self) -> Option<u64> {
        self.stop_ns.or(self.alive_ns).or(self.death_ns)
    }
}

/// A span in which processes of two different identities were both alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub a_identity: String,
    pub a_pid: u32,
    pub b_identity: String,
    pub b_pid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// True if at least one of the two was still alive when this was computed.
    pub ongoing: bool,
}

impl Overlap {
    pub fn len(&self) -> Duration {
        Duration::from_nanos(self.end_ns - self.start_ns)
    }
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    procs: Vec<Proc>,
    /// pid -> index of the newest proc with that pid.
    by_pid: HashMap<u32, usize>,
    /// Deaths of pids asked for via `observe_death`.
    deaths: HashMap<u32, u64>,
    pending_watch: Vec<u32>,
    consumed_starts: HashSet<usize>,
    error: Option<String>,
}

struct Inner {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
}

pub struct Monitor {
    inner: Arc<Inner>,
    t0: u64,
    thread: Option<JoinHandle<()>>,
}

struct Watch {
    fd: i32,
    pid: u32,
    proc_idx: Option<usize>,
    /// The last time it was known alive.
    alive_ns: Option<u64>,
}

/// A death seen, not yet published: the process, when it was seen dead, when last known alive.
type Death = (Option<usize>, u32, u64, Option<u64>);

fn pidfd_open(pid: u32) -> Result<i32, i32> {
    // SAFETY: plain syscall; the returned fd is owned by the caller.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as i32)
    }
}

impl Monitor {
    /// Start tailing `log_path` (it need not exist yet).
    pub fn start(log_path: &Path) -> Monitor {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let in2 = inner.clone();
        let p2 = log_path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("invariant-monitor".into())
            .spawn(move || observe(&p2, &in2))
            .unwrap();
        Monitor {
            inner,
            t0: monotonic_ns(),
            thread: Some(thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &st.error {
            panic!("invariant monitor failed: {e}");
        }
        st
    }

    /// Wait on the condition variable until `f` yields a value, or panic after `timeout`.
    fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&mut State) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(v) = f(&mut st) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                let listing = self.render(&st);
                drop(st);
                panic!("timed out after {timeout:?} waiting for {what}; timeline:\n{listing}");
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The earliest `start` record (of `identity`, or of anyone) not yet returned by this method;
    /// waits for one up to `timeout`.
    pub fn wait_for_start(&self, identity: Option<&str>, timeout: Duration) -> Record {
        let what = format!("a start record of {}", identity.unwrap_or("anyone"));
        self.wait(timeout, &what, |st| {
            let i = st.records.iter().enumerate().position(|(i, r)| {
                r.kind == Kind::Start
                    && identity_matches(identity, r)
                    && !st.consumed_starts.contains(&i)
            })?;
            st.consumed_starts.insert(i);
            Some(st.records[i].clone())
        })
    }

    /// The first `start` record (of `identity`, or anyone) stamped after `after_ns`; does not
    /// interact with [`Monitor::wait_for_start`]'s bookkeeping.
    pub fn wait_for_start_after(
        &self,
        identity: Option<&str>,
        after_ns: u64,
        timeout: Duration,
    ) -> Record {
        let what = format!(
            "a start record of {} after {after_ns}",
            identity.unwrap_or("anyone")
        );
        self.wait(timeout, &what, |st| {
            st.records
                .iter()
                .find(|r| r.kind == Kind::Start && r.ns > after_ns && identity_matches(identity, r))
                .cloned()
        })
    }

    /// Wait until the log holds a record matching `pred`.
    pub fn wait_for_record(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Record {
        self.wait(timeout, what, |st| {
            st.records.iter().find(|r| pred(r)).cloned()
        })
    }

    /// All records read so far, in log order.
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    /// All `start` records so far.
    pub fn starts(&self) -> Vec<Record> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.kind == Kind::Start)
            .cloned()
            .collect()
    }

    /// Every process seen so far, with its interval data.
    pub fn procs(&self) -> Vec<Proc> {
        self.lock().procs.clone()
    }

    /// `(identity, pid)` of every process that has started and has not ended yet.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.lock()
            .procs
            .iter()
            .filter(|p| p.end_ns().is_none())
            .map(|p| (p.identity.clone(), p.pid))
            .collect()
    }

    /// Identities with at least one running process.
    pub fn running_identities(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.running().into_iter().map(|(i, _)| i).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Wait until every process seen so far has been observed dead (not merely wrote `stop`).
    pub fn wait_until_all_dead(&self, timeout: Duration) {
        self.wait(timeout, "all logged processes to die", |st| {
            st.procs.iter().all(|p| p.death_ns.is_some()).then_some(())
        })
    }

    /// Wait until `pid` is observed dead; returns the observed death time. Works for logged pids
    /// and for pids registered with [`Monitor::observe_death`].
    pub fn wait_until_dead(&self, pid: u32, timeout: Duration) -> u64 {
        self.wait(timeout, &format!("pid {pid} to die"), |st| {
            st.by_pid
                .get(&pid)
                .and_then(|&i| st.procs[i].death_ns)
                .or_else(|| st.deaths.get(&pid).copied())
        })
    }

    /// Watch a pid learned some other way (not via a `start` record) for its death.
    pub fn observe_death(&self, pid: u32) {
        self.lock().pending_watch.push(pid);
    }

    /// Observed death time of `pid`, if seen.
    pub fn death_ns(&self, pid: u32) -> Option<u64> {
        let st = self.lock();
        st.by_pid
            .get(&pid)
            .and_then(|&i| st.procs[i].death_ns)
            .or_else(|| st.deaths.get(&pid).copied())
    }

    /// Every span in which processes of two different identities were alive at the same time.
    pub fn overlaps(&self) -> Vec<Overlap> {
        compute_overlaps(&self.lock().procs, monotonic_ns())
    }

    /// Watches `pid` for `window`: it keeps running, never gets SIGTERM, and nothing else runs.
    /// Panics with the timeline and `context()` (say, a wrapper's stderr) otherwise.
    pub fn assert_undisturbed(
        &self,
        pid: u32,
        window: Duration,
        what: &str,
        context: impl Fn() -> String,
    ) {
        let until = Instant::now() + window;
        loop {
            let p = self.procs().into_iter().rev().find(|p| p.pid == pid);
            let p = p.unwrap_or_else(|| panic!("{what}: no logged process {pid}"));
            assert!(
                p.end_ns().is_none() && p.term_ns.is_empty(),
                "{what}: the leader's child was stopped: {p:?}\n{}\n{}",
                self.timeline(),
                context()
            );
            let others: Vec<_> = self
                .running()
                .into_iter()
                .filter(|(_, q)| *q != pid)
                .collect();
            assert!(
                others.is_empty(),
                "{what}: others run: {others:?}\n{}\n{}",
                self.timeline(),
                context()
            );
            self.assert_no_overlap();
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panic with a readable timeline if any two identities ever ran at once.
    pub fn assert_no_overlap(&self) {
        let st = self.lock();
        let ov = compute_overlaps(&st.procs, monotonic_ns());
        if ov.is_empty() {
            return;
        }
        let mut msg = format!("{} overlap(s) between different identities:\n", ov.len());
        for o in &ov {
            let _ = writeln!(
                msg,
                "  {}(pid {}) and {}(pid {}) both alive from {} to {} ({:.3} ms){}",
                o.a_identity,
                o.a_pid,
                o.b_identity,
                o.b_pid,
                self.rel(o.start_ns),
                self.rel(o.end_ns),
                o.len().as_secs_f64() * 1e3,
                if o.ongoing { " [still ongoing]" } else { "" }
            );
        }
        msg.push_str("timeline:\n");
        msg.push_str(&self.render(&st));
        drop(st);
        panic!("{msg}");
    }

    /// Human-readable timeline (relative to monitor start).
    pub fn timeline(&self) -> String {
        self.render(&self.lock())
    }

    /// `ns` relative to the monitor's start, as the timeline shows it (`+12.345ms`).
    pub fn rel(&self, ns: u64) -> String {
        format!("{:+.3}ms", (ns as i128 - self.t0 as i128) as f64 / 1e6)
    }

    fn render(&self, st: &State) -> String {
        let mut s = String::new();
        for p in &st.procs {
            let _ = writeln!(
                s,
                "  {}(pid {}): start {} stop {} died {} terms [{}]",
                p.identity,
                p.pid,
                self.rel(p.start_ns),
                p.stop_ns.map_or("-".into(), |n| self.rel(n)),
                p.death_ns.map_or("alive".into(), |n| self.rel(n)),
                p.term_ns
                    .iter()
                    .map(|n| self.rel(*n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pairwise overlap of processes with different identities; alive processes end at `now`. In
/// the order of the processes' indices, as a pairwise scan would list them.
///
/// A sweep by start time: each process is compared only with those still alive when it started.
/// The soak checks this every 20 ms over thousands of lives in an hour; a pairwise scan of them
/// would take a core of the two the machine has.
pub fn compute_overlaps(procs: &[Proc], now: u64) -> Vec<Overlap> {
    let end = |p: &Proc| p.end_ns().unwrap_or(now);
    let mut order: Vec<usize> = (0..procs.len()).collect();
    order.sort_by_key(|&i| procs[i].start_ns);
    let mut alive: Vec<usize> = Vec::new();
    let mut pairs = Vec::new();
    for &j in &order {
        let later = &procs[j];
        // Ended by this start: they cannot overlap this one, nor any that starts after it.
        alive.retain(|&i| end(&procs[i]) > later.start_ns);
        for &i in &alive {
            let earlier = &procs[i];
            if earlier.identity != later.identity && later.start_ns < end(earlier).min(end(later)) {
                pairs.push((i.min(j), i.max(j)));
            }
        }
        alive.push(j);
    }
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(i, j)| {
            let (a, b) = (&procs[i], &procs[j]);
            Overlap {
                a_identity: a.identity.clone(),
                a_pid: a.pid,
                b_identity: b.identity.clone(),
                b_pid: b.pid,
                start_ns: a.start_ns.max(b.start_ns),
                end_ns: end(a).min(end(b)),
                ongoing: a.end_ns().is_none() || b.end_ns().is_none(),
            }
        })
        .collect()
}

/// The observer thread: tail the log, open pidfds, poll them (the poll doubles as the 2 ms tick).
fn observe(path: &Path, inner: &Inner) {
    let mut file: Option<std::fs::File> = None;
    let mut partial: Vec<u8> = Vec::new();
    let mut watches: Vec<Watch> = Vec::new();
    // Deaths seen but not yet published: a process writes its records before it dies, so its
    // death is published only after a read of the log that began after the death was seen.
    // Otherwise a waiter could see it dead but without its last (`stop`) record.
    let mut dead: Vec<Death> = Vec::new();
    while !inner.stop.load(Ordering::SeqCst) {
        // 1. New log lines.
        if file.is_none() {
            file = std::fs::File::open(path).ok();
        }
        let mut new_records = Vec::new();
        if let Some(f) = file.as_mut() {
            let mut buf = Vec::new();
            if let Err(e) = f.read_to_end(&mut buf) {
                inner.state.lock().unwrap().error = Some(format!("reading {path:?}: {e}"));
                inner.cv.notify_all();
                break;
            }
            partial.extend_from_slice(&buf);
            while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                match Record::parse(&line) {
                    Some(r) => new_records.push(r),
                    None if line.trim().is_empty() => {}
                    None => {
                        let mut st = inner.state.lock().unwrap();
                        st.error = Some(format!("malformed log line {line:?}"));
                    }
                }
            }
        }
        let changed = !new_records.is_empty() || !dead.is_empty();
        let seen_dead = std::mem::take(&mut dead);
        {
            let mut st = inner.state.lock().unwrap();
            for r in new_records {
                match r.kind {
                    Kind::Start => {
                        let idx = st.procs.len();
                        st.procs.push(Proc {
                            identity: r.identity.clone(),
                            pid: r.pid,
                            start_ns: r.ns,
                            stop_ns: None,
                            term_ns: Vec::new(),
                            death_ns: None,
                            alive_ns: None,
                        });
                        st.by_pid.insert(r.pid, idx);
                        match pidfd_open(r.pid) {
                            Ok(fd) => watches.push(Watch {
                                fd,
                                pid: r.pid,
                                proc_idx: Some(idx),
                                alive_ns: None,
                            }),
                            Err(_) => dead.push((Some(idx), r.pid, monotonic_ns(), None)),
                        }
                    }
                    Kind::Stop | Kind::Term => {
                        let idx = st.by_pid.get(&r.pid).copied();
                        match idx {
                            Some(i) if r.kind == Kind::Stop => st.procs[i].stop_ns = Some(r.ns),
                            Some(i) => st.procs[i].term_ns.push(r.ns),
                            None => {
                                st.error = Some(format!("record without start: {r}"));
                            }
                        }
                    }
                }
                st.records.push(r);
            }
            for pid in std::mem::take(&mut st.pending_watch) {
                let proc_idx = st.by_pid.get(&pid).copied();
                match pidfd_open(pid) {
                    Ok(fd) => watches.push(Watch {
                        fd,
                        pid,
                        proc_idx,
                        alive_ns: None,
                    }),
                    Err(_) => dead.push((proc_idx, pid, monotonic_ns(), None)),
                }
            }
            for (proc_idx, pid, ns, alive) in seen_dead {
                if let Some(i) = proc_idx {
                    st.procs[i].death_ns.get_or_insert(ns);
                    st.procs[i].alive_ns = st.procs[i].alive_ns.or(alive);
                }
                st.deaths.entry(pid).or_insert(ns);
            }
        }
        // 2. Wait up to 2 ms for any watched process to die.
        let mut fds: Vec<libc::pollfd> = watches
            .iter()
            .map(|w| libc::pollfd {
                fd: w.fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Not readable when polled: alive then, and so at this earlier moment.
        let polled = monotonic_ns();
        let n = if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
            0
        } else {
            // SAFETY: fds is a valid array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 2) }
        };
        let now = monotonic_ns();
        let mut keep = Vec::with_capacity(watches.len());
        for (mut w, p) in watches.drain(..).zip(fds.iter()) {
            if n < 0 {
                // Interrupted: nothing learnt.
                keep.push(w);
            } else if p.revents != 0 {
                dead.push((w.proc_idx, w.pid, now, w.alive_ns));
                // SAFETY: we own this pidfd.
                unsafe { libc::close(w.fd) };
            } else {
                w.alive_ns = Some(polled);
                keep.push(w);
            }
        }
        watches = keep;
        if changed {
            inner.cv.notify_all();
        }
    }
    for w in watches {
        // SAFETY: we own this pidfd.
        unsafe { libc::close(w.fd) };
    }
}

fn identity_matches(identity: Option<&str>, r: &Record) -> bool {
    match identity {
        None => true,
        Some(id) => r.identity == id,
    }
}
