//! Shared integration-test fixtures. This module owns the small helpers every fixture uses
//! (self-removing temp dirs, deadline polling, running a command); each fixture, and the
//! machine-wide port protocol ([`ports`]), lives in its own submodule and cleans up every process and directory it creates when dropped, even when
//! the test panics.
#![allow(dead_code)]

pub mod candidate;
pub mod etcd;
pub mod invariant;
pub mod old_replica;
pub mod ports;
pub mod procfs;
pub mod proxy;
pub mod recipe;
pub mod records;
pub mod scene;

// Not every test binary asks for a port.
#[allow(unused_imports)]
pub use ports::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A uniquely named directory under `std::env::temp_dir()`, removed recursively on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "eae-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            records::monotonic_ns()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Poll `cond` every few milliseconds until it returns `Some`, or panic after `timeout` with
/// `what` in the message.
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(status code, body)` of one HTTP request (answers with an error status count too); `None`
/// when no complete answer arrives within `timeout`. Chunked bodies (etcd's) are decoded.
pub fn http(method: &str, url: &str, timeout: Duration) -> Option<(u16, String)> {
    match ureq::request(method, url).timeout(timeout).call() {
        Ok(r) => Some((r.status(), r.into_string().ok()?)),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().ok()?)),
        Err(_) => None,
    }
}

/// The value of the unlabelled Prometheus sample `name` in a metrics body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Like [`wait_for`] for a boolean condition.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Poll `child` every few milliseconds until it exits (`Some(status)`) or `timeout` passes
/// (`None`; the child is left running).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `program` with no `ETCD_AWAIT_ELECTION_*` variable and no `RUST_LOG` in its environment,
/// whatever the test process itself inherited.
pub fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_AWAIT_ELECTION_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// The kernel's limit on the arguments and environment of one exec, their pointers and the
/// file name included (`getconf ARG_MAX`): a quarter of the stack limit, within 128 KiB..6 MiB.
pub fn arg_max() -> usize {
    let mut stack = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) filling a struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut stack) },
        0
    );
    (stack.rlim_cur / 4).clamp(128 << 10, 6 << 20) as usize
}

/// The longest one argument can be, its NUL included (the kernel's `MAX_ARG_STRLEN`).
pub const MAX_ARG_STRLEN: usize = 128 << 10;

/// An argument list as long as an exec takes beside this process's environment, less `spare`
/// bytes (for the file name, the wrapper's own arguments and the variables a test adds): one
/// argument as long as the kernel takes, then one-letter ones. Each costs its bytes, its NUL and
/// its pointer.
pub fn longest_argv(spare: usize) -> Vec<String> {
    let pointer = size_of::<usize>();
    let env: usize = std::env::vars_os()
        .map(|(k, v)| k.len() + v.len() + 2 + pointer)
        .sum();
    let budget = arg_max()
        .checked_sub(env + spare + MAX_ARG_STRLEN + pointer)
        .expect("a stack limit (ulimit -s) that leaves room for a 128 KiB argument");
    std::iter::once("x".repeat(MAX_ARG_STRLEN - 1))
        .chain(std::iter::repeat_n("a".to_string(), budget / (2 + pointer)))
        .collect()
}

/// What a finished [`run`] left: its exit status, pid and output.
pub struct Run {
    pub status: ExitStatus,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, capturing stdout and stderr in files; panics (with its stderr) if it
/// has not finished within `timeout`, after killing it.
pub fn run(cmd: Command, timeout: Duration) -> Run {
    try_run(cmd, timeout).expect("spawn")
}

/// Like [`run`], but a failure to start `cmd` (its exec's error) is returned.
pub fn try_run(mut cmd: Command, timeout: Duration) -> std::io::Result<Run> {
    let dir = TempDir::new("run");
    let out = std::fs::File::create(dir.join("out")).expect("create stdout file");
    let err = std::fs::File::create(dir.join("err")).expect("create stderr file");
    let mut child = cmd.stdout(out).stderr(err).spawn()?;
    let pid = child.id();
    let Some(status) = wait_child(&mut child, timeout) else {
        kill_and_wait(&mut child);
        panic!(
            "{cmd:?} did not finish within {timeout:?}; stderr: {}",
            std::fs::read_to_string(dir.join("err")).unwrap_or_default()
        );
    };
    Ok(Run {
        status,
        pid,
        stdout: std::fs::read_to_string(dir.join("out")).expect("read stdout"),
        stderr: std::fs::read_to_string(dir.join("err")).expect("read stderr"),
    })
}

/// The exit status of `child` once it has exited, without reaping it (`waitid` with `WNOWAIT`):
/// it stays a zombie, so its pid, and the id of a process group it leads, cannot be given to
/// another process until its owner reaps it (`Child::wait`). A group signalled after its leader
/// was reaped can be a stranger's: the kernel reuses a free pid (pid_max may be only 32768).
/// `block`: wait for the exit instead of returning `None` while it runs.
pub fn exit_status_unreaped(child: &Child, block: bool) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitid(2) on our own child, writing into a zeroed siginfo_t we own.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, child.id(), &mut info, flags) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("waitid({}): {err}", child.id());
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo (si_pid 0: WNOHANG and still running).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        return Some(ExitStatus::from_raw(match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        }));
    }
}

/// Like [`wait_child`], but leaves the exited child unreaped (see [`exit_status_unreaped`]).
pub fn wait_child_unreaped(child: &Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = exit_status_unreaped(child, false) {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL a child and reap it; errors (already dead, already reaped) are ignored.
pub fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Send a signal to a pid; returns false if it failed (e.g. the process is gone).
pub fn signal_pid(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a concrete pid.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Kills, when dropped (a failed test included), the processes whose command line starts with
/// its prefix (NUL-separated): what a hanging health check left. The prefix is unique to the test
/// process, so nothing else is hit.
pub struct Leftovers(pub String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in procfs::alive_with_cmdline(&self.0) {
            signal_pid(pid, libc::SIGKILL);
        }
    }
}
