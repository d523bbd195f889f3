//! Tests of the test fixtures themselves: the invariant checker provably detects overlaps (and
//! does not invent them), the test child behaves as documented, the fault proxy's modes do what
//! they say against a real etcd, the etcd single-member and cluster fixtures survive the
//! faults they inject, leased ports are outside the ephemeral range and locked machine-wide, and
//! an exited child is seen without being reaped.

mod common;

use common::etcd::{Cluster, Etcd};
use common::invariant::{compute_overlaps, Monitor, Proc};
use common::proxy::{Mode, Proxy};
use common::records::{child_bin, monotonic_ns, read_records, Kind};
use common::{wait_until, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// A test child started directly (no wrapper), killed and reaped on drop.
struct Direct(Child);

impl Direct {
    fn spawn(log: &std::path::Path, id: &str, args: &[&str]) -> Direct {
        let c = Command::new(child_bin())
            .args(["--id", id])
            .args(args)
            .env("EAE_TEST_LOG", log)
            .env("ETCD_AWAIT_ELECTION_LEADER_KEY", "lock/abc")
            .env("ETCD_AWAIT_ELECTION_LEADER_REVISION", "42")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn test child");
        Direct(c)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: the child leads its own process group.
        unsafe { libc::kill(-(self.pid() as i32), sig) };
    }

    /// Its exit status; it is reaped only on drop, so that [`Direct::signal_group`] can never
    /// hit a stranger's group of the same id.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        common::wait_child_unreaped(&self.0, timeout)
            .unwrap_or_else(|| panic!("test child did not exit"))
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn overlapping_children_are_reported() {
    let dir = TempDir::new("fx-overlap");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = Direct::spawn(&log, "a", &[]);
    let ra = mon.wait_for_start(Some("a"), T);
    assert_eq!(ra.pid, a.pid());
    let mut b = Direct::spawn(&log, "b", &[]);
    mon.wait_for_start(Some("b"), T);
    let ov = mon.overlaps();
    assert_eq!(ov.len(), 1, "{ov:?}");
    assert!(ov[0].ongoing);
    assert_eq!(mon.running_identities(), vec!["a", "b"]);

    a.signal_group(libc::SIGTERM);
    b.signal_group(libc::SIGTERM);
    assert_eq!(a.wait(T).code(), Some(143));
    assert_eq!(b.wait(T).code(), Some(143));
    mon.wait_until_all_dead(T);
    let ov = mon.overlaps();
    assert_eq!(ov.len(), 1, "{ov:?}");
    assert!(!ov[0].ongoing);
    assert!(ov[0].len() > Duration::ZERO);
    let kinds: Vec<Kind> = read_records(&log).iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::Term).count(),
        2,
        "{kinds:?}"
    );
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mon.assert_no_overlap()))
        .expect_err("assert_no_overlap must panic on an overlap");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("overlap") && msg.contains("a(pid"), "{msg}");
}

/// The sweep behind `compute_overlaps` lists exactly the pairs, spans and order a scan of every
/// pair lists: on random intervals, some still running, some ending before they start, some of
/// one identity.
#[test]
fn overlaps_by_sweep_are_those_of_every_pair() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut found, now) = (0, 1_000);
    for _ in 0..200 {
        let procs: Vec<Proc> = (0..next(30))
            .map(|pid| {
                let start_ns = next(900);
                let end = (next(5) != 0)
                    .then(|| start_ns + next(120))
                    .map(|e| e - next(2) * e / 2);
                Proc {
                    identity: format!("id{}", next(4)),
                    pid: pid as u32,
                    start_ns,
                    stop_ns: end.filter(|_| next(2) == 0),
                    term_ns: Vec::new(),
                    death_ns: end,
                    alive_ns: None,
                }
            })
            .collect();
        let mut pairs = Vec::new();
        for (i, a) in procs.iter().enumerate() {
            for b in &procs[i + 1..] {
                let (ae, be) = (a.end_ns(), b.end_ns());
                let span = (
                    a.start_ns.max(b.start_ns),
                    ae.unwrap_or(now).min(be.unwrap_or(now)),
                );
                if a.identity != b.identity && span.0 < span.1 {
                    pairs.push((a.pid, b.pid, span, ae.is_none() || be.is_none()));
                }
            }
        }
        let swept: Vec<_> = compute_overlaps(&procs, now)
            .iter()
            .map(|o| (o.a_pid, o.b_pid, (o.start_ns, o.end_ns), o.ongoing))
            .collect();
        assert_eq!(swept, pairs, "{procs:#?}");
        found += pairs.len();
    }
    assert!(
        found > 100,
        "the random intervals overlap too seldom: {found}"
    );
}

#[test]
fn sequential_children_do_not_overlap() {
    let dir = TempDir::new("fx-seq");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = Direct::spawn(&log, "a", &["--exit-after", "100", "--exit-code", "7"]);
    assert_eq!(a.wait(T).code(), Some(7));
    mon.wait_until_dead(a.pid(), T);
    let mut b = Direct::spawn(&log, "b", &["--exit-after", "50"]);
    assert_eq!(b.wait(T).code(), Some(0));
    mon.wait_until_all_dead(T);
    mon.assert_no_overlap();
    let procs = mon.procs();
    assert_eq!(procs.len(), 2);
    assert!(procs.iter().all(|p| p.stop_ns.is_some()));
    assert!(mon.running().is_empty());
}

#[test]
fn sigkilled_child_ends_when_last_known_alive() {
    let dir = TempDir::new("fx-kill");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = Direct::spawn(&log, "a", &["--ignore-term"]);
    mon.wait_for_start(Some("a"), T);
    // --ignore-term: a term record, and it keeps running.
    a.signal_group(libc::SIGTERM);
    mon.wait_for_record("term of a", T, |r| r.kind == Kind::Term);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(mon.running().len(), 1);
    let before = monotonic_ns();
    a.0.kill().unwrap(); // not reaped yet: a zombie must count as dead
    let death = mon.wait_until_dead(a.pid(), T);
    assert!(death >= before);
    let p = &mon.procs()[0];
    assert_eq!(p.stop_ns, None);
    // It ends where the monitor last knew it alive: after its term record (it ran on for 100
    // ms), no later than its observed death.
    let term = p.term_ns[0];
    assert!(p.end_ns().is_some_and(|e| e > term && e <= death), "{p:?}");
    a.wait(T);

    // A successor started after its death does not overlap.
    let mut b = Direct::spawn(&log, "b", &["--exit-after", "20"]);
    b.wait(T);
    mon.wait_until_all_dead(T);
    mon.assert_no_overlap();

    // observe_death for a pid learned otherwise.
    let mut c = Command::new("sleep").arg("30").spawn().unwrap();
    mon.observe_death(c.id());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(mon.death_ns(c.id()), None);
    c.kill().unwrap();
    mon.wait_until_dead(c.id(), T);
    c.wait().unwrap();
}

/// A child SIGKILLed 100 ms after a successor started overlaps it: ended where the monitor last
/// knew it alive, it still ends after the successor's start, as the monitor looks every ~2 ms
/// (only a monitor not scheduled for the whole 100 ms would miss it).
#[test]
fn a_sigkilled_child_outliving_a_successors_start_overlaps_it() {
    let dir = TempDir::new("fx-kill-overlap");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = Direct::spawn(&log, "a", &["--ignore-term"]);
    mon.wait_for_start(Some("a"), T);
    let mut b = Direct::spawn(&log, "b", &[]);
    let rb = mon.wait_for_start(Some("b"), T);
    a.signal_group(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    let killed = monotonic_ns();
    a.signal_group(libc::SIGKILL);
    let death = mon.wait_until_dead(a.pid(), T);
    a.wait(T);
    b.signal_group(libc::SIGTERM);
    b.wait(T);
    mon.wait_until_all_dead(T);
    let ov = mon.overlaps();
    assert_eq!(ov.len(), 1, "{}", mon.timeline());
    let o = &ov[0];
    assert!(!o.ongoing, "{o:?}");
    // From b's start to where a was last seen alive: after b's start (the monitor looked at
    // least once in the 100 ms), no later than its death.
    assert_eq!(o.start_ns, rb.ns, "{o:?}");
    assert!(o.end_ns > rb.ns && o.end_ns <= death, "{o:?}");
    assert!(death >= killed, "{o:?}");
}

#[test]
fn forked_grandchildren_are_tracked_and_print_env() {
    let dir = TempDir::new("fx-fork");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = Direct::spawn(&log, "a", &["--fork", "2", "--print-env"]);
    wait_until(T, "3 starts", || mon.starts().len() == 3);
    let pids: Vec<u32> = mon.starts().iter().map(|r| r.pid).collect();
    assert_eq!(pids[0], a.pid());
    assert!(pids[1] != pids[2] && pids[1] != pids[0]);
    // While `a`'s tree runs, a `b` is an overlap with every member of the tree.
    let mut b = Direct::spawn(&log, "b", &["--exit-after", "30"]);
    b.wait(T);
    mon.wait_until_dead(b.pid(), T);
    assert_eq!(mon.overlaps().len(), 3);

    a.signal_group(libc::SIGTERM);
    assert_eq!(a.wait(T).code(), Some(143));
    mon.wait_until_all_dead(T);
    let recs = read_records(&log);
    for pid in &pids {
        for k in [Kind::Term, Kind::Stop] {
            assert!(
                recs.iter().any(|r| r.pid == *pid && r.kind == k),
                "{pid} lacks {k:?}: {recs:?}"
            );
        }
    }
    let mut out = String::new();
    a.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.contains(&format!("env a {} lock/abc 42", a.pid()).as_str()));
}

fn etcdctl_via(ep: &str, args: &[&str]) -> (bool, Duration) {
    let t = Instant::now();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(["--dial-timeout", "1s", "--command-timeout", "1s"])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), t.elapsed())
}

/// A raw HTTP/1 request to etcd's client port (it answers /version). `None` if nothing came back
/// within `wait` (or the connection failed/closed).
fn http_version(ep: &str, wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect(ep).ok()?;
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.contains("etcdserver").then_some(text)
}

#[test]
fn proxy_modes_against_real_etcd() {
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd.endpoint());
    let ep = proxy.endpoint();

    let (ok, _) = etcdctl_via(&ep, &["put", "k", "v1"]);
    assert!(ok, "put through pass proxy");
    assert!(http_version(&ep, Duration::from_secs(2)).is_some());

    // A long-lived connection opened in Pass: used to watch Blackhole and Reset happen to it.
    let mut held = TcpStream::connect(&ep).unwrap();

    proxy.set_mode(Mode::Blackhole);
    let (ok, took) = etcdctl_via(&ep, &["put", "k", "v2"]);
    assert!(!ok, "put must fail while blackholed");
    assert!(
        took >= Duration::from_millis(900),
        "blackhole failed too fast: {took:?}"
    );
    assert!(http_version(&ep, Duration::from_millis(500)).is_none());
    held.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 512];
    let e = held.read(&mut buf).expect_err("no bytes while blackholed");
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));

    proxy.set_mode(Mode::Reset);
    // The held connection is torn down at once.
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t = Instant::now();
    let r = held.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)) && t.elapsed() < Duration::from_secs(1),
        "held connection not reset: {r:?} after {:?}",
        t.elapsed()
    );
    assert_eq!(proxy.open_connections(), 0);
    // New connections are closed immediately.
    let t = Instant::now();
    assert!(http_version(&ep, Duration::from_secs(2)).is_none());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let (ok, took) = etcdctl_via(&ep, &["put", "k", "v3"]);
    assert!(!ok, "put must fail while resetting");
    assert!(took < Duration::from_secs(3), "{took:?}");

    proxy.set_mode(Mode::Pass);
    let (ok, _) = etcdctl_via(&ep, &["put", "k", "v4"]);
    assert!(ok, "put after heal");
    assert_eq!(etcd.get("k").as_deref(), Some("v4"));

    // Blackhole then heal: a connection holding bytes resumes and gets its answer.
    let mut s = TcpStream::connect(&ep).unwrap();
    wait_until(T, "proxy to connect upstream", || {
        proxy.open_connections() >= 1
    });
    proxy.set_mode(Mode::Blackhole);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(s.read(&mut buf).is_err(), "bytes leaked through blackhole");
    proxy.set_mode(Mode::Pass);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(String::from_utf8_lossy(&resp).contains("etcdserver"));
}

#[test]
fn etcd_pause_resume_restart_keep_data() {
    let mut etcd = Etcd::start();
    etcd.put("/p/a", "1");
    etcd.put("/p/b", "2");
    etcd.put("/q", "3");
    assert_eq!(etcd.get_prefix_keys("/p/"), vec!["/p/a", "/p/b"]);
    assert_eq!(etcd.lease_count(), 0);
    let out = etcd.etcdctl(&["lease", "grant", "60"]);
    assert!(out.status.success());
    assert_eq!(etcd.lease_count(), 1);

    etcd.pause();
    let (ok, took) = etcdctl_via(&etcd.endpoint(), &["get", "/q"]);
    assert!(!ok && took >= Duration::from_millis(900), "{ok} {took:?}");
    etcd.resume();
    assert_eq!(etcd.get("/q").as_deref(), Some("3"));

    etcd.restart();
    assert_eq!(etcd.get("/p/a").as_deref(), Some("1"));
    assert_eq!(etcd.lease_count(), 1);
    etcd.kill();
    assert!(!etcd.is_running());
    let (ok, _) = etcdctl_via(&etcd.endpoint(), &["get", "/q"]);
    assert!(!ok);
    etcd.restart();
    assert_eq!(etcd.get("/q").as_deref(), Some("3"));
}

#[test]
fn cluster_survives_leader_loss() {
    let mut c = Cluster::start(3);
    assert_eq!(c.endpoints().len(), 3);
    c.member(0).put("x", "1");
    assert_eq!(c.member(1).get("x").as_deref(), Some("1"));
    let leader = c.raft_leader_index();
    c.kill_member(leader);
    let other = (leader + 1) % 3;
    wait_until(T, "a put to succeed after the leader died", || {
        c.etcdctl(&["--command-timeout", "1s", "put", "x", "2"])
            .status
            .success()
    });
    assert_eq!(c.member(other).get("x").as_deref(), Some("2"));
    let new_leader = c.raft_leader_index();
    assert_ne!(new_leader, leader);
    c.restart_member(leader);
    assert_eq!(c.member(leader).get("x").as_deref(), Some("2"));
}

#[test]
fn fixtures_clean_up_after_a_panic() {
    fn alive(pid: u32) -> bool {
        // A reaped process is gone; a zombie would still answer kill(0), so check /proc state.
        common::procfs::stat(pid).is_some_and(|s| s.state != 'Z')
    }
    let mut seen: Option<(Vec<u32>, Vec<std::path::PathBuf>)> = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let dir = TempDir::new("fx-panic");
        let log = dir.join("log");
        let mon = Monitor::start(&log);
        let etcd = Etcd::start();
        let proxy = Proxy::start(&etcd.endpoint());
        let _conn = TcpStream::connect(proxy.endpoint()).unwrap();
        let child = Direct::spawn(&log, "a", &["--fork", "1", "--ignore-term"]);
        wait_until(T, "2 starts", || mon.starts().len() == 2);
        let mut pids: Vec<u32> = mon.starts().iter().map(|r| r.pid).collect();
        pids.push(etcd.pid().unwrap());
        seen = Some((
            pids,
            vec![dir.path().to_path_buf(), etcd.dir().to_path_buf()],
        ));
        let _keep = (&child, &proxy);
        panic!("deliberate");
    }));
    assert!(r.is_err());
    let (pids, dirs) = seen.unwrap();
    // The forked grandchild is reparented (to init or a subreaper), so give it a moment to go.
    wait_until(T, "all fixture processes to be gone", || {
        pids.iter().all(|p| !alive(*p))
    });
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// Whether another process can take the machine-wide lock of `port` right now.
fn port_lock_is_free(port: u16) -> bool {
    Command::new("flock")
        .args(["-n", &format!("{}/{port}", common::ports::LOCK_DIR), "true"])
        .status()
        .expect("run flock")
        .success()
}

#[test]
fn ports_are_outside_the_ephemeral_range_and_locked_machine_wide() {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u16> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let lease = common::ports::lease();
    let port = lease.port();
    assert!(
        port < bounds[0] || port > bounds[1],
        "port {port} is inside the ephemeral range {text:?}"
    );
    assert!(!port_lock_is_free(port), "a leased port is not locked");
    drop(lease);
    assert!(port_lock_is_free(port), "a dropped lease kept its lock");

    // An etcd holds its ports' locks for its whole life (a restart reuses them).
    let etcd = Etcd::start();
    assert!(!port_lock_is_free(etcd.client_port()));
    let client_port = etcd.client_port();
    drop(etcd);
    assert!(port_lock_is_free(client_port));

    // The scripts' implementation hands out the same range.
    let out = Command::new("bash")
        .args(["-c", "source scripts/ports.sh && port_range"])
        .output()
        .expect("run bash");
    let (from, to) = common::ports::range();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{from} {to}")
    );
}

#[test]
fn an_exited_child_is_seen_without_being_reaped() {
    use std::os::unix::process::ExitStatusExt;
    let mut c = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
    let st = common::wait_child_unreaped(&c, T).expect("sh exits");
    assert_eq!(st.code(), Some(7));
    // Still a zombie: its pid (and group id) cannot be anyone else's yet.
    assert_eq!(common::procfs::stat(c.id()).map(|s| s.state), Some('Z'));
    assert_eq!(c.wait().unwrap(), st);

    let mut c = Command::new("sleep").arg("30").spawn().unwrap();
    assert_eq!(common::exit_status_unreaped(&c, false), None);
    c.kill().unwrap();
    let st = common::exit_status_unreaped(&c, true).expect("sleep is killed");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_eq!(c.wait().unwrap(), st);
}

/// `eae-kernel-floor` (what `EAE_KERNEL_FLOOR` runs every wrapper under) answers the system calls
/// newer than the minimum kernel with ENOSYS, as that kernel does, in the wrapper's command and
/// its children too, and leaves the older ones alone; without it the same calls are known.
#[test]
fn the_kernel_floor_makes_newer_system_calls_unknown() {
    // Numbers from 424 up are the same on every architecture (the kernel's unified table).
    let probe = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def report(name, call):
    try:
        call()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
def syscall(nr, *args):
    def call():
        if libc.syscall(nr, *[ctypes.c_long(a) for a in args]) < 0:
            raise OSError(ctypes.get_errno(), "")
    return call
report("pidfd_send_signal", syscall(424, -1, 0, 0, 0))
report("pidfd_open", syscall(434, os.getpid(), 0))
report("clone3", syscall(435, 0, 0))
report("close_range", syscall(436, 1000, 1000, 0))
report("getrandom", lambda: os.getrandom(1))
report("pipe2", lambda: os.pipe2(os.O_CLOEXEC))
"#;
    let results = |mut cmd: Command| {
        // Through `sh`, so the probe is a child of the command, not the command itself.
        cmd.args(["sh", "-c", "exec python3 -c \"$0\"", probe]);
        let r = common::run(cmd, T);
        assert!(r.status.success(), "{}", r.stderr);
        r.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(call, result)| (call.to_string(), result.to_string()))
            .collect::<Vec<_>>()
    };
    let newer = [
        "pidfd_send_signal",
        "pidfd_open",
        "clone3",
        "close_range",
        "getrandom",
    ];
    // Without the filter: this machine's kernel knows them all.
    let host = results(common::clean_command("env"));
    assert_eq!(host.len(), newer.len() + 1, "{host:?}");
    for (call, result) in &host {
        assert_ne!(result, "ENOSYS", "{call} without the filter: {host:?}");
    }
    // Through the wrapper (no election: it execs the command), as the fixtures start it.
    let floor = results(common::clean_command(common::candidate::floor_wrapper_bin()));
    let expected: Vec<(String, String)> = newer
        .iter()
        .map(|c| (c.to_string(), "ENOSYS".to_string()))
        .chain([("pipe2".to_string(), "ok".to_string())])
        .collect();
    assert_eq!(floor, expected);
}
