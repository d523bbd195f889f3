//! The wrapper as a parent: orphans reparented to it are reaped (it is a child subreaper, and
//! PID 1 in a container), and nothing of a finished command survives into the next leader's turn.
//! Its grip on the command holds whatever happens to it: a group kill of the wrapper, a setuid
//! command, a guardian killed early, a group that cannot be emptied, Ctrl-Z, SIGTTOU, and a
//! signal that arrives before it is ready. And the command starts with the signal state it would
//! have had without it.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::Duration;

use common::candidate::{wrapper_bin, Candidate, CandidateBuilder};
use common::etcd::Etcd;
use common::procfs::{self, children_of};
use common::scene::Scene;
use common::{wait_for, wait_until};

/// The command orphans a short-lived grandchild (its parent subshell exits at once). The orphan
/// is reparented to the wrapper, not to init, and is reaped when it exits: no zombie lingers.
#[test]
fn orphans_are_reparented_and_reaped() {
    let etcd = Etcd::start();
    let c = Candidate::new("reaper")
        .lock("reap")
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .command("sh")
        // Long enough to be seen under the wrapper by a test descheduled for a while.
        .args(&["-c", "(sleep 2 &); exec sleep 30"])
        .spawn();
    let wrapper = c.pid();
    let orphan = wait_for(
        Duration::from_secs(10),
        "the orphan under the wrapper",
        || {
            children_of(wrapper).into_iter().map(|s| s.pid).find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\u{0}2\u{0}"))
            })
        },
    );
    wait_until(Duration::from_secs(10), "the orphan reaped", || {
        !children_of(wrapper).iter().any(|s| s.pid == orphan)
    });
    let zombies: Vec<_> = children_of(wrapper)
        .into_iter()
        .filter(|s| s.state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies under the wrapper: {zombies:?}");
}

/// As PID 1 of a new PID namespace (a container's init), the wrapper execs or supervises its
/// command and exits with its code; orphans left behind are reaped, so it exits at all.
#[test]
fn works_as_pid_1() {
    let unshare = |args: &[&str]| {
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", wrapper_bin()])
            .args(args)
            .env_remove("ETCD_AWAIT_ELECTION_LOCK_NAME")
            .output()
    };
    let probe = unshare(&["true"]).expect("run unshare");
    assert!(
        probe.status.success(),
        "this test needs PID namespaces (root): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let etcd = Etcd::start();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", wrapper_bin()])
        .args(["sh", "-c", "(sleep 0.2 &); echo pid=$$; exit 3"])
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "pid1")
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "init")
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
        .env("ETCD_AWAIT_ELECTION_LEASE_DURATION", "3")
        .env("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", "2s")
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // PID 1 is the wrapper; its command is another process.
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "pid=1");
    assert!(stderr.contains("resigned"), "{stderr}");
    assert!(etcd.get_prefix_keys("pid1").is_empty());
}

/// The guardian (the wrapper's forked child that kills the command's group if the wrapper dies)
/// keeps only stdio and its pipe: inherited copies of the wrapper's etcd sockets would keep those
/// connections open after the wrapper dropped them.
#[test]
fn guardian_holds_only_its_pipe() {
    let etcd = Etcd::start();
    let c = Candidate::new("guarded")
        .lock("guard")
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .status_port(common::free_port())
        .command("sleep")
        .args(&["30"])
        .spawn();
    let wrapper = c.pid();
    let guardian = wait_for(Duration::from_secs(10), "the guardian", || {
        children_of(wrapper).into_iter().find_map(|s| {
            let pid = s.pid;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            exe.ends_with("etcd-await-election").then_some(pid)
        })
    });
    // Right after fork the guardian still holds copies of every wrapper fd; it closes them
    // before it blocks on the pipe. Wait for that, and fail if it never happens.
    let open_fds = || {
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{guardian}/fd"))
            .expect("read the guardian's fds")
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect();
        fds.sort();
        fds
    };
    let settled = wait_for(Duration::from_secs(5), "the guardian to close fds", || {
        // Blocked in read(2) on its pipe: every close before it is done.
        (procfs::stat(guardian)?.state == 'S').then(open_fds)
    });
    assert_eq!(settled, [0, 1, 2, 3], "the guardian's open fds");
    let pipe = std::fs::read_link(format!("/proc/{guardian}/fd/3")).expect("fd 3");
    assert!(pipe.to_string_lossy().starts_with("pipe:"), "{pipe:?}");
}

/// On a terminal, the command gets the foreground: it can read the terminal instead of being
/// stopped by SIGTTIN (script(1) gives the wrapper a pseudo-terminal of its own).
#[test]
fn interactive_command_reads_the_terminal() {
    let etcd = Etcd::start();
    let wrapped = format!("{} sh -c 'read line; echo got:$line'", wrapper_bin());
    let mut child = Command::new("script")
        .args(["-qec", &wrapped, "/dev/null"])
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "tty")
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "tty")
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
        .env("ETCD_AWAIT_ELECTION_LEASE_DURATION", "3")
        .env("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", "2s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run script(1)");
    // Typed only once the command leads and waits for it.
    wait_until(Duration::from_secs(10), "the command leads", || {
        etcd.get_prefix_keys("tty/").len() == 1
    });
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("type a line");
    let status = common::wait_child(&mut child, Duration::from_secs(10));
    if status.is_none() {
        common::kill_and_wait(&mut child);
    }
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read output");
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {out}");
    assert!(out.contains("got:hello"), "{out}");
}

/// The wrapper's guardian: its child that runs the wrapper's own binary.
fn guardian_of(wrapper: u32, not: Option<u32>) -> Option<u32> {
    children_of(wrapper).into_iter().find_map(|s| {
        let pid = s.pid;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (exe.ends_with("etcd-await-election") && Some(pid) != not).then_some(pid)
    })
}

/// Process group and session of `pid`, from `/proc/PID/stat`.
fn group_and_session(pid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace().skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Effective uid of `pid`, from `/proc/PID/status`.
fn euid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A leader and a follower on one scene; returns the leader and the pids of its command's
/// processes once all `procs` of them have started.
fn leader_with_follower(s: &Scene, a: CandidateBuilder, procs: usize) -> (Candidate, Candidate) {
    let a = a.spawn();
    s.mon.wait_for_start(Some("a"), Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "all of a's processes", || {
        s.mon.starts().iter().filter(|r| r.identity == "a").count() == procs
    });
    let b = s.candidate("b", 3, "2s", "250ms").spawn();
    wait_until(Duration::from_secs(10), "b queued", || {
        s.etcd.get_prefix_keys(&format!("{}/", s.lock)).len() == 2
    });
    (a, b)
}

/// `kill -9 -- -PGID` of a leading wrapper (a shell's `kill -9 %1`) hits the wrapper but not its
/// guardian, which lives in a session of its own: the command and its grandchildren are all dead
/// before the follower starts.
#[test]
fn group_kill_of_a_leading_wrapper_leaves_nothing_of_its_command() {
    let s = Scene::new("supervise", "group-kill");
    let a = s.candidate("a", 3, "2s", "250ms").args(&["--fork", "2"]);
    let (mut a, _b) = leader_with_follower(&s, a, 3);
    let wrapper = a.pid();
    let guardian = wait_for(Duration::from_secs(5), "the guardian", || {
        guardian_of(wrapper, None)
    });
    let (group, session) = group_and_session(guardian).expect("the guardian's stat");
    assert_eq!(
        (group, session),
        (guardian, guardian),
        "the guardian leads a session of its own"
    );
    let tree: Vec<u32> = s.mon.starts().iter().map(|r| r.pid).collect();

    // SAFETY: kill(2) on the wrapper's process group (the candidate leads its own).
    assert_eq!(unsafe { libc::kill(-(wrapper as i32), libc::SIGKILL) }, 0);
    a.kill9();
    let rb = s.mon.wait_for_start(Some("b"), Duration::from_secs(15));
    for pid in &tree {
        let death = s.mon.wait_until_dead(*pid, Duration::from_secs(1));
        assert!(death < rb.ns, "a's process {pid} outlived b's start");
    }
    s.mon.assert_no_overlap();
}

/// A setuid command clears `PR_SET_PDEATHSIG` at exec; it still dies with its SIGKILLed wrapper
/// (here by a group kill), because the guardian learned its group before the exec.
#[test]
fn a_setuid_command_dies_with_its_sigkilled_wrapper() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let s = Scene::new("supervise", "setuid");
    // A setuid copy of the test child, owned by nobody; its records go to a log it may write.
    let bin = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("eae-test-child-setuid-{}", std::process::id()));
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(common::records::child_bin(), &bin).expect("copy the test child");
    let _cleanup = RemoveOnDrop(bin.clone());
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(&bin, Some(65534), Some(65534)).expect("chown to nobody");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log)
        .expect("create the record log");
    log.set_permissions(std::fs::Permissions::from_mode(0o666))
        .expect("chmod the record log");
    let a = s
        .candidate("a", 3, "2s", "250ms")
        .command(bin.to_str().expect("utf-8 path"));
    let (mut a, _b) = leader_with_follower(&s, a, 1);
    let child = s.mon.starts()[0].pid;
    assert_eq!(euid(child), Some(65534), "the command runs setuid");

    let wrapper = a.pid();
    // Taken before the kill: the command may die before a timestamp taken after it.
    let killed = common::records::monotonic_ns();
    // SAFETY: kill(2) on the wrapper's process group (the candidate leads its own).
    assert_eq!(unsafe { libc::kill(-(wrapper as i32), libc::SIGKILL) }, 0);
    a.kill9();
    let death = s.mon.wait_until_dead(child, Duration::from_secs(3));
    assert!(
        death - killed < 1_000_000_000,
        "the setuid command outlived its wrapper by {} ms",
        (death - killed) / 1_000_000
    );
    let rb = s.mon.wait_for_start(Some("b"), Duration::from_secs(15));
    assert!(death < rb.ns);
    s.mon.assert_no_overlap();
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A guardian killed early (the OOM killer, an administrator) is replaced at once by a new one
/// in its own session; the command keeps running undisturbed, and a group kill of the wrapper
/// afterwards still takes the command along.
#[test]
fn a_guardian_killed_early_is_replaced() {
    let s = Scene::new("supervise", "guardian-lost");
    let a = s.candidate("a", 3, "2s", "250ms");
    let (mut a, _b) = leader_with_follower(&s, a, 1);
    let wrapper = a.pid();
    let first = wait_for(Duration::from_secs(5), "the guardian", || {
        guardian_of(wrapper, None)
    });
    assert!(common::signal_pid(first, libc::SIGKILL));
    let second = wait_for(Duration::from_secs(5), "a new guardian", || {
        guardian_of(wrapper, Some(first))
    });
    assert_eq!(group_and_session(second), Some((second, second)));
    s.mon.assert_undisturbed(
        s.mon.starts()[0].pid,
        Duration::from_millis(500),
        "after the guardian was replaced",
        || a.stderr_text(),
    );
    assert!(
        a.stderr_text()
            .contains(&format!("replaced by guardian {second}")),
        "{}",
        a.stderr_text()
    );

    let tree: Vec<u32> = s.mon.starts().iter().map(|r| r.pid).collect();
    // SAFETY: kill(2) on the wrapper's process group (the candidate leads its own).
    assert_eq!(unsafe { libc::kill(-(wrapper as i32), libc::SIGKILL) }, 0);
    a.kill9();
    let rb = s.mon.wait_for_start(Some("b"), Duration::from_secs(15));
    for pid in &tree {
        assert!(s.mon.wait_until_dead(*pid, Duration::from_secs(1)) < rb.ns);
    }
    s.mon.assert_no_overlap();
}

/// A process left in the command's group that nobody can reap — the zombie of a parent that
/// escaped with setsid — keeps the group from ever emptying. The wrapper stops at the kill
/// deadline: it exits 71 naming the zombie, without renewing further, so the lease expires
/// within its TTL.
#[test]
fn a_group_with_an_unreapable_zombie_ends_in_an_expired_lease() {
    let etcd = Etcd::start();
    let dir = common::TempDir::new("zombie");
    let escaped = dir.join("escaped");
    // S forks Z in the command's group, then escapes into a session of its own, writes its pid
    // and never reaps Z. The command waits for that, then exits by itself.
    let script = format!(
        r#"sh -c 'true & exec setsid sh -c "echo \$\$ > {f}; exec sleep 1000"' &
           until [ -s {f} ]; do sleep 0.01; done; exit 3"#,
        f = escaped.display()
    );
    let mut c = Candidate::new("zombie")
        .lock("zombie")
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .command("sh")
        .args(&["-c", &script])
        .spawn();
    let st = c.wait_timeout(Duration::from_secs(20));
    let parent: u32 = std::fs::read_to_string(&escaped)
        .expect("the escaped parent's pid")
        .trim()
        .parse()
        .expect("a pid");
    let _parent = KillOnDrop(parent);
    let exited = std::time::Instant::now();
    let stderr = c.stderr_text();
    assert_eq!(st.and_then(|s| s.code()), Some(71), "{stderr}");
    assert!(stderr.contains("(zombie)"), "{stderr}");
    // No renewal after the exit: the lease expires within its TTL (3 s) of it.
    wait_until(Duration::from_secs(4), "the lease to expire", || {
        etcd.get_prefix_keys("zombie/").is_empty()
    });
    assert!(exited.elapsed() <= Duration::from_secs(4));
}

/// SIGKILLs a process by pidfd on drop (it left every group the fixtures clean up).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on a pidfd we own, opened while the process is ours to judge:
        // it is the escaped `sleep`, checked by its command line.
        unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, self.0 as libc::pid_t, 0);
            if fd < 0 {
                return;
            }
            let cmd = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
            if cmd.starts_with(b"sleep\0") {
                let null = std::ptr::null::<libc::siginfo_t>();
                libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, null, 0);
            }
            libc::close(fd as i32);
        }
    }
}

/// Ctrl-Z stops the command's (foreground) group; a stopped leader would hold the lease doing
/// nothing. The wrapper resumes it at once and says so; the command keeps running and leading.
#[test]
fn a_stopped_command_is_resumed() {
    let s = Scene::new("supervise", "ctrl-z");
    let a = s.candidate("a", 3, "2s", "250ms");
    let (a, _b) = leader_with_follower(&s, a, 1);
    let child = s.mon.starts()[0].pid;
    // SAFETY: kill(2) on the command's process group, which its unreaped leader holds.
    assert_eq!(unsafe { libc::kill(-(child as i32), libc::SIGTSTP) }, 0);
    wait_until(Duration::from_secs(5), "the wrapper to resume it", || {
        a.stderr_text().contains("was stopped by signal 20")
    });
    wait_until(Duration::from_secs(1), "the command running", || {
        procfs::stat(child).is_some_and(|st| st.state != 'T')
    });
    s.mon
        .assert_undisturbed(child, Duration::from_millis(500), "after Ctrl-Z", || {
            a.stderr_text()
        });
}

/// With `stty tostop`, a background process writing to the terminal gets SIGTTOU, which would
/// stop it. The wrapper is in the background while its command has the terminal, and logs
/// there: it ignores SIGTTOU, so it neither stops nor loses its lines, and exits with its
/// command's code. (`set -m` makes the wrapper a job of its own, whose group is not orphaned, so
/// the terminal does send SIGTTOU.)
#[test]
fn sigttou_cannot_stop_the_wrapper() {
    let etcd = Etcd::start();
    let shell = format!(
        "set -m; stty tostop; {} {} --exit-after 1000; echo rc=$?",
        wrapper_bin(),
        common::records::child_bin()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("sh -c '{shell}'"), "/dev/null"])
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "tostop")
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "tty")
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
        .env("ETCD_AWAIT_ELECTION_LEASE_DURATION", "3")
        .env("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", "2s")
        .stdin(std::process::Stdio::null());
    let r = common::run(cmd, Duration::from_secs(20));
    assert!(r.stdout.contains("leading as"), "{}", r.stdout);
    assert!(r.stdout.contains("resigning"), "{}", r.stdout);
    assert!(r.stdout.contains("rc=0"), "{}", r.stdout);
}

/// SIGTERM that arrives before the election starts — here while the wrapper, PID 1 of a PID
/// namespace, is still reading its password file (a FIFO the test holds) — is honoured once
/// the wrapper is ready: it withdraws and exits 0. As PID 1 an unblocked signal without a
/// handler would have been discarded.
#[test]
fn an_early_sigterm_is_honoured_as_pid_1() {
    let dir = common::TempDir::new("early-term");
    let fifo = dir.join("password");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let out = std::fs::File::create(dir.join("stderr")).expect("stderr file");
    let mut unshare = common::clean_command("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            wrapper_bin(),
            "sleep",
            "1000",
        ])
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "early")
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "init")
        // Nothing listens there: the wrapper would retry forever, never lead.
        .env(
            "ETCD_AWAIT_ELECTION_ENDPOINTS",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("ETCD_AWAIT_ELECTION_USERNAME", "u")
        .env("ETCD_AWAIT_ELECTION_PASSWORD_FILE", &fifo)
        .stderr(out)
        .spawn()
        .expect("run unshare");
    // Opening the write end succeeds once the wrapper has the FIFO open for reading: from then
    // on it is blocked reading it, before any thread of its own exists.
    let writer = wait_for(
        Duration::from_secs(10),
        "the wrapper to open the FIFO",
        || {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .ok()
        },
    );
    let wrapper = wait_for(Duration::from_secs(5), "the wrapper (PID 1)", || {
        children_of(unshare.id()).first().map(|s| s.pid)
    });
    assert!(common::signal_pid(wrapper, libc::SIGTERM));
    use std::io::Write;
    (&writer)
        .write_all(b"secret\n")
        .expect("write the password");
    drop(writer);
    let st = common::wait_child(&mut unshare, Duration::from_secs(10));
    if st.is_none() {
        common::kill_and_wait(&mut unshare);
    }
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(stderr.contains("withdrawing"), "{stderr}");
}

/// The script's `guardian=PID sleep=PID` line shows the sleep got the guardian's pid.
fn assert_recycled(r: &common::Run) {
    let pids = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("guardian="))
        .unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    let (guardian, sleep) = pids.split_once(" sleep=").expect("two pids");
    assert_eq!(guardian, sleep, "the pid was not recycled: {}", r.stdout);
}

/// A guardian that died early is never signalled again, even once its pid belongs to somebody
/// else. In a PID namespace of its own (where the test can choose the next pid), the dead
/// guardian's pid is handed to an unrelated `sleep`; the wrapper then ends normally (SIGTERM)
/// and the `sleep` is still alive.
#[test]
fn a_dead_guardians_recycled_pid_is_never_signalled() {
    let etcd = Etcd::start();
    let script = r#"
        "$WRAPPER" "$CHILD" & W=$!
        guardian() { # the wrapper's child running the wrapper's binary, other than $1
            for d in /proc/[0-9]*; do
                p=${d#/proc/}
                [ "$p" != "$1" ] || continue
                [ "$(cut -d' ' -f4 "$d/stat" 2>/dev/null)" = "$W" ] || continue
                [ "$(readlink "$d/exe" 2>/dev/null)" = "$WRAPPER_EXE" ] && echo "$p" && return 0
            done
            return 1
        }
        n=0; until G=$(guardian none); do n=$((n+1)); [ $n -lt 1000 ] || exit 9; sleep 0.01; done
        kill -9 "$G"
        n=0; until guardian "$G" >/dev/null; do n=$((n+1)); [ $n -lt 1000 ] || exit 9; sleep 0.01; done
        while [ -e "/proc/$G" ]; do sleep 0.01; done
        echo $((G - 1)) > /proc/sys/kernel/ns_last_pid
        sleep 1000 & S=$!
        echo "guardian=$G sleep=$S"
        kill -TERM "$W"; wait "$W"; echo "rc=$?"
        if kill -0 "$S" 2>/dev/null; then echo survived; else echo killed; fi
        kill -9 "$S"
    "#;
    let mut cmd = common::clean_command("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        script,
    ])
    .env("WRAPPER", wrapper_bin())
    .env("WRAPPER_EXE", env!("CARGO_BIN_EXE_etcd-await-election"))
    .env("CHILD", common::records::child_bin())
    .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "recycled")
    .env("ETCD_AWAIT_ELECTION_IDENTITY", "ns")
    .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
    .env("ETCD_AWAIT_ELECTION_LEASE_DURATION", "3")
    .env("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", "2s");
    let r = common::run(cmd, Duration::from_secs(30));
    assert_recycled(&r);
    assert!(r.stdout.contains("rc=143"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("survived"),
        "the sleep on the dead guardian's pid was killed:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("replaced by guardian"), "{}", r.stderr);
}

/// A guardian forked ahead by the candidate next in line that died while it waited is let go
/// with its pid, not killed by that pid when the candidate leads. Without a pidfd (before Linux
/// 5.3, so here under `eae-kernel-floor`) nothing else would keep that SIGKILL from somebody who
/// got the pid meanwhile: in a PID namespace of its own, the test hands the dead guardian's pid
/// to an unrelated `sleep`, and the `sleep` must survive the candidate's turn.
#[test]
fn a_dead_standby_guardians_recycled_pid_is_never_signalled() {
    let etcd = Etcd::start();
    let script = r#"
        child_of() { # $1's child whose executable is $2
            for d in /proc/[0-9]*; do
                [ "$(cut -d' ' -f4 "$d/stat" 2>/dev/null)" = "$1" ] || continue
                [ "$(readlink "$d/exe" 2>/dev/null)" = "$2" ] && echo "${d#/proc/}" && return 0
            done
            return 1
        }
        ETCD_AWAIT_ELECTION_IDENTITY=leader "$WRAPPER" "$SLEEP" 1000 & L=$!
        n=0; until child_of "$L" "$SLEEP" >/dev/null; do n=$((n+1)); [ $n -lt 1000 ] || exit 9; sleep 0.01; done
        ETCD_AWAIT_ELECTION_IDENTITY=next "$WRAPPER" true & W=$!
        n=0; until G=$(child_of "$W" "$WRAPPER_EXE"); do n=$((n+1)); [ $n -lt 1000 ] || exit 9; sleep 0.01; done
        kill -9 "$G"
        # Reaped by the waiting candidate: only then can the pid be handed out again.
        while [ -e "/proc/$G" ]; do sleep 0.01; done
        echo $((G - 1)) > /proc/sys/kernel/ns_last_pid
        "$SLEEP" 1000 & S=$!
        echo "guardian=$G sleep=$S"
        kill -TERM "$L"; wait "$L"; echo "leader rc=$?"
        wait "$W"; echo "next rc=$?"
        if kill -0 "$S" 2>/dev/null; then echo survived; else echo killed; fi
        kill -9 "$S"
    "#;
    let sleep = std::fs::canonicalize("/bin/sleep").expect("sleep(1)");
    let mut cmd = common::clean_command("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        script,
    ])
    .env("WRAPPER", common::candidate::floor_wrapper_bin())
    .env("WRAPPER_EXE", env!("CARGO_BIN_EXE_etcd-await-election"))
    .env("SLEEP", sleep)
    .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "standby")
    .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
    .env("ETCD_AWAIT_ELECTION_LEASE_DURATION", "3")
    .env("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", "2s")
    .env("RUST_LOG", "debug");
    let r = common::run(cmd, Duration::from_secs(30));
    assert_recycled(&r);
    assert!(
        r.stdout.contains("leader rc=143"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("next rc=0"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("survived"),
        "the sleep on the dead standby guardian's pid was killed:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// The command starts with the signal state it would have had without the wrapper, which blocks
/// every signal it collects and ignores SIGPIPE and job control: nothing blocked, none of the
/// standard signals ignored that its own parent did not ignore. (Above 31, glibc's internal
/// signals depend on what the C library did in each process.)
#[test]
fn the_command_starts_with_the_signal_state_it_would_have_without_us() {
    let status = ["-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    // Blocked and ignored standard signals (1-31), from grep's lines.
    let state = |out: &str| -> Vec<(String, u64)> {
        out.lines()
            .filter_map(|l| l.split_once(":\t"))
            .map(|(k, v)| {
                let bits = u64::from_str_radix(v.trim(), 16).expect("a hex signal set");
                (k.to_string(), bits & 0x7fff_ffff)
            })
            .collect()
    };
    let direct = Command::new("grep")
        .args(status)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run grep");
    let expected = state(&String::from_utf8_lossy(&direct.stdout));
    assert_eq!(expected.len(), 2, "grep found {expected:?}");
    let etcd = Etcd::start();
    let mut c = Candidate::new("signals")
        .lock("signal-state")
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .command("grep")
        .args(&status)
        .spawn();
    let code = c.expect_exit(Duration::from_secs(20));
    assert!(code.success(), "wrapper: {code:?}\n{}", c.stderr_text());
    assert_eq!(
        state(&c.stdout_text()),
        expected,
        "the leader's command's blocked and ignored signals (SigBlk, SigIgn)"
    );
}

/// The leader's command with an argument list as long as the kernel takes (an argument of the
/// longest length, then as many as fit beside the environment), as a file without `#!` (run by
/// `/bin/sh`, as a shell does) and as a binary: it gets every argument, and the wrapper exits
/// with its code and resigns, leaving no key. (glibc's `execvpe` built the shell's argument list
/// on the child's small stack, past its end, into the wrapper's heap: the wrapper aborted, its
/// keys left behind.)
#[test]
fn the_longest_argument_list_reaches_the_leaders_command() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    let dir = common::TempDir::new("long-argv");
    let report = r#"printf '%s %s\n' "$#" "${#1}" > "$EAE_ARGC"; exit 3"#;
    let script = dir.join("no-shebang");
    std::fs::write(&script, report).expect("write the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let args = common::longest_argv(16 << 10);
    let expected = format!("{} {}\n", args.len(), args[0].len());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let commands = [
        ("script", script.to_str().expect("utf-8 path"), &[][..]),
        ("binary", "/bin/sh", &["-c", report, "sh"][..]),
    ];
    for (what, command, before) in commands {
        let argc = dir.join(&format!("argc-{what}"));
        let lock = format!("long-{what}");
        let mut c = Candidate::new(what)
            .lock(&lock)
            .endpoints(&etcd.endpoint())
            .lease(3)
            .renew("2s")
            .env("EAE_ARGC", argc.to_str().expect("utf-8 path"))
            .command(command)
            .args(before)
            .args(&args)
            .spawn();
        let code = c.expect_exit(Duration::from_secs(30));
        assert_eq!(
            code.code(),
            Some(3),
            "{what}: {code:?}\n{}",
            c.stderr_text()
        );
        assert!(c.stderr_text().contains("resigned"), "{}", c.stderr_text());
        let got = std::fs::read_to_string(&argc).unwrap_or_default();
        assert_eq!(
            got, expected,
            "{what}: the command's argument count and first length"
        );
        assert_eq!(etcd.get_prefix_keys(&lock), Vec::<String>::new(), "{what}");
    }
}

/// A leader's command that the kernel refuses and that is a binary (an ELF header it cannot
/// load, as a binary for another machine is) is not handed to `/bin/sh`, which would run the
/// `exit 42` line it holds: 126 with the reason, and the wrapper resigns at once.
#[test]
fn a_binary_the_kernel_refuses_is_not_run_as_a_shell_script() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    let dir = common::TempDir::new("refused-binary-leader");
    let file = dir.join("prog");
    std::fs::write(&file, b"\x7fELF\x02\x01\x01\x00garbage\nexit 42\n").expect("write prog");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = Candidate::new("elf")
        .lock("refused-binary")
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .command(file.to_str().expect("utf-8 path"))
        .spawn();
    let code = c.expect_exit(Duration::from_secs(20));
    let stderr = c.stderr_text();
    assert_eq!(code.code(), Some(126), "run by /bin/sh? {code:?}\n{stderr}");
    assert!(
        stderr.contains("cannot execute binary file") && stderr.contains("another machine"),
        "{stderr}"
    );
    assert!(stderr.contains("resigned"), "{stderr}");
    assert_eq!(etcd.get_prefix_keys("refused-binary"), Vec::<String>::new());
}

/// A leader's command whose argument list is over the kernel's limit — here the wrapper's stack
/// limit was lowered while it waited (prlimit), which lowers `ARG_MAX` for its exec — is
/// refused with the reason in words and 126, as a shell does; the wrapper resigns at once.
#[test]
fn an_argument_list_over_the_kernels_limit_is_126_with_the_reason() {
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let mut holder = Candidate::new("holder")
        .lock("e2big")
        .endpoints(&endpoint)
        .lease(3)
        .renew("2s")
        .spawn();
    wait_until(Duration::from_secs(10), "the holder to lead", || {
        etcd.get_prefix_keys("e2big/").len() == 1
    });
    // Three quarters of the limit the wrapper was started with.
    let arg = "a".repeat(1023);
    let args = vec![arg.as_str(); common::arg_max() * 3 / 4 / 1024];
    let mut c = Candidate::new("over")
        .lock("e2big")
        .endpoints(&endpoint)
        .lease(3)
        .renew("2s")
        .command("/bin/sh")
        .args(&["-c", "exit 0", "sh"])
        .args(&args)
        .spawn();
    wait_until(Duration::from_secs(10), "the wrapper to queue", || {
        etcd.get_prefix_keys("e2big/").len() == 2
    });
    // A stack limit of twice the old `ARG_MAX`: the new `ARG_MAX` (a quarter of it) is half the
    // old, below the list; the wrapper's own stack (the list and a few frames) stays within it.
    let pid = c.pid() as libc::pid_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on the wrapper, our child, reading into a struct we own.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_STACK, std::ptr::null(), &mut limit) },
        0
    );
    limit.rlim_cur = (2 * common::arg_max() as libc::rlim_t).min(limit.rlim_max);
    // SAFETY: as above, from a struct we own.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_STACK, &limit, std::ptr::null_mut()) },
        0
    );
    assert!(holder.signal(libc::SIGTERM));
    let code = c.expect_exit(Duration::from_secs(20));
    let stderr = c.stderr_text();
    assert_eq!(code.code(), Some(126), "{code:?}\n{stderr}");
    assert!(
        stderr.contains("Argument list too long") && stderr.contains("ARG_MAX"),
        "{stderr}"
    );
    assert!(stderr.contains("resigned"), "{stderr}");
    holder.expect_exit(Duration::from_secs(20));
    assert_eq!(etcd.get_prefix_keys("e2big"), Vec::<String>::new());
}
