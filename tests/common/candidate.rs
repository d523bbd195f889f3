//! Candidates: instances of the wrapper under test (`etcd-await-election`). This module owns
//! configuring a candidate through its `ETCD_AWAIT_ELECTION_*` environment, running it (by
//! default around `eae-test-child`) in its own process group with stdout/stderr captured to files
//! in a temp dir, signalling and waiting for it, and cleaning up: dropping a [`Candidate`]
//! SIGKILLs its process group, reaps it, and SIGKILLs any of its logged test children that are
//! still alive (even ones that escaped into another process group). An exited wrapper is left
//! unreaped until then, so that its process group id cannot meanwhile become a stranger's.

use super::records::{child_bin, read_records, Kind};
use super::TempDir;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The wrapper as every test starts it: the binary itself, or, with `EAE_KERNEL_FLOOR` set (to
/// anything but empty), [`floor_wrapper_bin`], so that a whole suite runs as on the oldest kernel
/// supported (`make unit-test` does this for the suites that exercise the supervisor and the
/// election).
pub fn wrapper_bin() -> &'static str {
    if std::env::var_os("EAE_KERNEL_FLOOR").is_some_and(|v| !v.is_empty()) {
        floor_wrapper_bin()
    } else {
        env!("CARGO_BIN_EXE_etcd-await-election")
    }
}

/// A script that runs the wrapper, with its arguments, under `eae-kernel-floor`
/// (tests/support/kernel_floor.rs): every system call newer than the README's minimum kernel
/// fails with ENOSYS, in the wrapper and in everything it starts. The script execs, so the
/// wrapper keeps the pid it was started with. Written once per test process, by rename, so that
/// test processes running side by side never see half of it.
pub fn floor_wrapper_bin() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let helper = env!("CARGO_BIN_EXE_eae-kernel-floor");
        let wrapper = env!("CARGO_BIN_EXE_etcd-await-election");
        assert!(
            !helper.contains('\'') && !wrapper.contains('\''),
            "a quote in the target directory's path"
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let script = dir.join("etcd-await-election-at-kernel-floor");
        let tmp = dir.join(format!("kernel-floor.{}", std::process::id()));
        std::fs::write(
            &tmp,
            format!("#!/bin/sh\nexec '{helper}' '{wrapper}' \"$@\"\n"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &script)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", script.display()));
        script.to_str().expect("a UTF-8 target directory").into()
    })
}

#[derive(Clone, Debug)]
pub struct CandidateBuilder {
    identity: String,
    lock: Option<String>,
    endpoints: Option<String>,
    lease: Option<String>,
    renew: Option<String>,
    retry: Option<String>,
    status_port: Option<u16>,
    force: Option<bool>,
    env: Vec<(String, String)>,
    command: Option<String>,
    args: Vec<String>,
    log: Option<PathBuf>,
    stderr: Option<Arc<OwnedFd>>,
}

impl CandidateBuilder {
    /// `ETCD_AWAIT_ELECTION_LOCK_NAME` (default `eae-test-lock`).
    pub fn lock(mut self, name: &str) -> Self {
        self.lock = Some(name.into());
        self
    }

    /// `ETCD_AWAIT_ELECTION_ENDPOINTS`, e.g. `127.0.0.1:2379,127.0.0.1:22379`.
    pub fn endpoints(mut self, eps: &str) -> Self {
        self.endpoints = Some(eps.into());
        self
    }

    /// `ETCD_AWAIT_ELECTION_LEASE_DURATION` in whole seconds.
    pub fn lease(mut self, secs: u64) -> Self {
        self.lease = Some(secs.to_string());
        self
    }

    /// `ETCD_AWAIT_ELECTION_RENEW_DEADLINE`, e.g. `1500ms`.
    pub fn renew(mut self, d: &str) -> Self {
        self.renew = Some(d.into());
        self
    }

    /// `ETCD_AWAIT_ELECTION_RETRY_PERIOD`, e.g. `200ms`.
    pub fn retry(mut self, d: &str) -> Self {
        self.retry = Some(d.into());
        self
    }

    /// `ETCD_AWAIT_ELECTION_STATUS_ENDPOINT` = `127.0.0.1:<port>`.
    pub fn status_port(mut self, port: u16) -> Self {
        self.status_port = Some(port);
        self
    }

    /// `ETCD_AWAIT_ELECTION_FORCE_ACQUIRE`.
    pub fn force(mut self, on: bool) -> Self {
        self.force = Some(on);
        self
    }

    /// Any extra environment variable (set last, so it can override the ones above).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Command to run instead of `eae-test-child`.
    pub fn command(mut self, cmd: &str) -> Self {
        self.command = Some(cmd.into());
        self
    }

    /// Arguments for the command (the test child by default), e.g. `&["--ignore-term"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// `EAE_TEST_LOG`: where the test child appends its records.
    pub fn log(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    /// The wrapper's stderr goes to `fd` (say, a pipe nobody reads) instead of a file.
    pub fn stderr(mut self, fd: OwnedFd) -> Self {
        self.stderr = Some(Arc::new(fd));
        self
    }

    pub fn spawn(self) -> Candidate {
        let dir = TempDir::new(&format!("cand-{}", self.identity));
        let stderr = match &self.stderr {
            Some(fd) => Stdio::from(fd.try_clone().expect("dup the stderr fd")),
            None => Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).expect("create stderr file"),
            ),
        };
        let stdout = std::fs::File::create(dir.join("stdout.log")).expect("create stdout file");
        let mut cmd = Command::new(wrapper_bin());
        cmd.arg(self.command.as_deref().unwrap_or(child_bin()))
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .env(
                "ETCD_AWAIT_ELECTION_LOCK_NAME",
                self.lock.as_deref().unwrap_or("eae-test-lock"),
            )
            .env("ETCD_AWAIT_ELECTION_IDENTITY", &self.identity);
        let opt = [
            ("ETCD_AWAIT_ELECTION_ENDPOINTS", self.endpoints.clone()),
            ("ETCD_AWAIT_ELECTION_LEASE_DURATION", self.lease.clone()),
            ("ETCD_AWAIT_ELECTION_RENEW_DEADLINE", self.renew.clone()),
            ("ETCD_AWAIT_ELECTION_RETRY_PERIOD", self.retry.clone()),
            (
                "ETCD_AWAIT_ELECTION_STATUS_ENDPOINT",
                self.status_port.map(|p| format!("127.0.0.1:{p}")),
            ),
            (
                "ETCD_AWAIT_ELECTION_FORCE_ACQUIRE",
                self.force.map(|f| f.to_string()),
            ),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        if let Some(l) = &self.log {
            cmd.env("EAE_TEST_LOG", l);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", wrapper_bin()));
        Candidate {
            identity: self.identity,
            status_port: self.status_port,
            log: self.log,
            child,
            exit: None,
            dir,
            stderr_shown: false,
        }
    }
}

pub struct Candidate {
    identity: String,
    status_port: Option<u16>,
    log: Option<PathBuf>,
    child: Child,
    exit: Option<ExitStatus>,
    dir: TempDir,
    /// Whether its stderr was printed already ([`Candidate::print_stderr`]).
    stderr_shown: bool,
}

impl Candidate {
    /// Start configuring a candidate with this identity.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(identity: &str) -> CandidateBuilder {
        CandidateBuilder {
            identity: identity.into(),
            lock: None,
            endpoints: None,
            lease: None,
            renew: None,
            retry: None,
            status_port: None,
            force: None,
            env: Vec::new(),
            command: None,
            args: Vec::new(),
            log: None,
            stderr: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Pid of the wrapper (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `sig` to the wrapper. Returns false if it has already exited or kill(2) failed.
    pub fn signal(&mut self, sig: i32) -> bool {
        if self.exited().is_some() {
            return false;
        }
        super::signal_pid(self.pid(), sig)
    }

    /// SIGKILL the wrapper alone (its children are left to fend for themselves) and wait for it
    /// to die.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(st) = self.exit {
            return st;
        }
        let _ = self.child.kill();
        let st = super::exit_status_unreaped(&self.child, true).expect("the wrapper's exit");
        self.exit = Some(st);
        st
    }

    /// Its exit status once it has exited (it is reaped only on drop).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = super::exit_status_unreaped(&self.child, false);
        }
        self.exit
    }

    /// Wait up to `timeout` for the wrapper to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = super::wait_child_unreaped(&self.child, timeout);
        }
        self.exit
    }

    /// Like [`Candidate::wait_timeout`] but panics (with the wrapper's stderr) on timeout.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(st) => st,
            None => panic!(
                "candidate {} did not exit within {timeout:?}; stderr:\n{}",
                self.identity,
                self.stderr_text()
            ),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Exit status, if it has been seen.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Everything the wrapper (and its command) wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Everything written to stdout so far (e.g. `--print-env` lines of the test child).
    /// Prints `text` (its stderr, as whoever dumps a failed test's candidates cut it) under a
    /// header naming it; its drop then prints nothing more.
    pub fn print_stderr(&mut self, text: &str) {
        eprintln!(
            "---- stderr of candidate {} (wrapper pid {}, exit {:?}) ----\n{text}",
            self.identity,
            self.pid(),
            self.exit_status(),
        );
        self.stderr_shown = true;
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:<status port><path>`.
    pub fn status_url(&self, path: &str) -> String {
        let port = self.status_port.expect("candidate has no status port");
        format!("http://127.0.0.1:{port}{path}")
    }

    /// SIGKILL every logged test child of this identity that is still alive.
    pub fn kill_logged_children(&self) {
        if let Some(log) = &self.log {
            kill_logged_test_children(log, Some(&self.identity));
        }
    }
}

/// SIGKILL every test child that logged a `start` to `log` (of `identity`, or anyone) and is
/// still alive. Uses a pidfd and checks the process is a test child writing to `log`, so a
/// recycled pid is never hit, not even one now another test's child (tests run side by side,
/// and flapping health checks fork fast enough to wrap the pids around within a test).
pub fn kill_logged_test_children(log: &Path, identity: Option<&str>) {
    let mut pids: Vec<u32> = read_records(log)
        .into_iter()
        .filter(|r| r.kind == Kind::Start && identity.is_none_or(|id| r.identity == id))
        .map(|r| r.pid)
        .collect();
    pids.sort();
    pids.dedup();
    for pid in pids {
        kill_if_test_child(pid, log);
    }
}

/// SIGKILL `pid` if it is (still) a test child (`eae-test-child`) writing its records to `log`;
/// anything else is left alone.
fn kill_if_test_child(pid: u32, log: &Path) {
    let mut ours = b"EAE_TEST_LOG=".to_vec();
    ours.extend_from_slice(log.as_os_str().as_encoded_bytes());
    // SAFETY: plain syscalls on a pidfd we own; the command line and environment checks (made
    // after opening the pidfd, which pins the process) keep a recycled pid from being hit.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if fd < 0 {
            return;
        }
        let fd = fd as i32;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let name = Path::new(child_bin())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let logs_here = environ.split(|&b| b == 0).any(|e| e == ours.as_slice());
        if String::from_utf8_lossy(&cmdline).contains(&name) && logs_here {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        libc::close(fd);
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        // A failed test's candidate that no cast printed: its stderr is the failure's story.
        if std::thread::panicking() && !self.stderr_shown {
            self.print_stderr(&self.stderr_text());
        }
        // The wrapper leads its own process group; take the whole group down, then reap.
        // SAFETY: kill(2) on our own process group: its leader is not reaped yet (alive or a
        // zombie), so the id is still ours.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_logged_children();
    }
}
