//! The wrapper as a parent: orphans reparented to it are reaped (it is a child subreaper, and
//! PID 1 in a container), and nothing of a finished command survives into the next leader's turn.

mod common;

use std::process::Command;
use std::time::Duration;

use common::candidate::{wrapper_bin, Candidate};
use common::etcd::Etcd;
use common::procfs::{self, children_of};
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
        .args(&["-c", "(sleep 0.3 &); exec sleep 30"])
        .spawn();
    let wrapper = c.pid();
    let orphan = wait_for(
        Duration::from_secs(10),
        "the orphan under the wrapper",
        || {
            children_of(wrapper).into_iter().map(|s| s.pid).find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\u{0}0.3"))
            })
        },
    );
    wait_until(Duration::from_secs(3), "the orphan reaped", || {
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
