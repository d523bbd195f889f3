//! The child: starting it, signalling it, reaping it, and making sure nothing of it survives.
//!
//! This module owns the child's process group and its guardian. The child is started in a group
//! of its own with `PR_SET_PDEATHSIG`, so it dies with the wrapper. A *guardian*, forked before
//! the child and moved into a session of its own (so `kill -9 -- -PGID` or a terminal hangup
//! aimed at the wrapper's group or session cannot take it along), holds the read end of a pipe
//! whose writers are the wrapper and — until its exec — the child. The child writes its group id
//! into that pipe before it execs; when the pipe closes (the wrapper died, even by SIGKILL) the
//! guardian kills that group, so grandchildren, and a setuid or file-capability command whose
//! exec cleared the death signal, die with the wrapper too. No guardian, no command: if the
//! guardian cannot be started the command is not either, and a guardian that dies while the
//! command runs is replaced at once ([`Child::reap`]).
//!
//! The wrapper makes itself a child subreaper, so orphaned grandchildren are reparented to it and
//! reaped in the one `waitpid(-1)` loop here, which also notices the guardian's death and a
//! stopped child. A process is signalled by pid only while it is our unreaped child (through a
//! pidfd where the kernel has them), so a recycled pid is never hit; the group is signalled by
//! its id, which the kernel does not hand out again while a member (the unreaped child, or what
//! it left) still holds it. It does not decide *when* to stop the child: `main` does.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use log::{debug, error, warn};

use crate::launch;

/// A running (or exited, with leftovers) child, its process group and its guardian.
pub struct Child {
    /// The child's pid, which is also its process group id.
    pub pid: libc::pid_t,
    proc: Proc,
    /// The child's code (128+N for signal N) once reaped.
    exit: Option<i32>,
    /// `None` only when a dead guardian could not be replaced: `main` then stops the command.
    guardian: Option<Guardian>,
}

/// One of our own children, signalled only until it is reaped.
struct Proc {
    pid: libc::pid_t,
    /// Absent on kernels without pidfds (before 5.3): then plain `kill`, which is safe for the
    /// same reason — we never signal it after reaping it.
    pidfd: Option<OwnedFd>,
    reaped: bool,
}

/// A guardian forked ahead of the command, by a candidate next in line, so that the handover
/// does not wait for a fork. Dropped unused, it closes the pipe before any group was written to
/// it, and the guardian exits by itself.
pub struct Guardian {
    proc: Proc,
    /// The wrapper dying closes it, and that makes the guardian kill the child's group.
    pipe: OwnedFd,
}

impl Guardian {
    /// Must be called from the main thread, as [`spawn`].
    pub fn standby() -> io::Result<Guardian> {
        spawn_guardian()
    }
}

/// Why the command was not started.
#[derive(Debug)]
pub enum SpawnError {
    /// Not found or not executable; `code` follows the shell's convention (127, 126).
    Exec { code: i32, failure: launch::Failure },
    /// No guardian: the command is not started without one.
    Guardian(io::Error),
}

impl SpawnError {
    /// What the wrapper exits with when the command cannot be started.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::Exec { code, .. } => *code,
            SpawnError::Guardian(_) => crate::exit::INTERNAL,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SpawnError::Exec { failure, .. } => failure.fmt(f),
            SpawnError::Guardian(e) => write!(
                f,
                "cannot start the guardian that kills the command if the wrapper dies \
                 ({e}); check the process and file limits (ulimit -u, ulimit -n)"
            ),
        }
    }
}

/// What one round of reaping learned about the child.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// The child is gone (it may have left processes in its group); its code, 128+N for signal N.
    Exited(i32),
    /// The child was stopped (Ctrl-Z, SIGSTOP) by this signal.
    Stopped(i32),
}

/// Orphaned grandchildren become ours to reap, and to wait for, instead of init's.
pub fn become_subreaper() {
    // SAFETY: plain prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Replaces this process with the command (no election configured), found and run as the
/// leader's command is. Returns only on failure.
pub fn exec(argv: &[OsString]) -> SpawnError {
    let failure = launch::exec(argv, &|| {
        crate::signals::restore_in_child();
        Ok(())
    });
    SpawnError::Exec {
        code: failure.code(),
        failure,
    }
}

/// Must be called from the main thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked
/// the child exits, and only the main thread lives as long as the process. With a guardian
/// forked ahead ([`Guardian::standby`]), or a new one if that one has died meanwhile.
pub fn spawn(
    argv: &[OsString],
    env: &[(&str, String)],
    standby: Option<Guardian>,
) -> Result<Child, SpawnError> {
    if let Some(g) = standby {
        match start(argv, env, g) {
            Err(SpawnError::Guardian(e)) => debug!("the guardian forked ahead is gone ({e})"),
            started => return started,
        }
    }
    start(argv, env, spawn_guardian().map_err(SpawnError::Guardian)?)
}

fn start(
    argv: &[OsString],
    env: &[(&str, String)],
    guardian: Guardian,
) -> Result<Child, SpawnError> {
    // SAFETY: getpid and getpgrp have no preconditions.
    let (parent, parent_group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let pipe = guardian.pipe.as_raw_fd();
    let before_exec = move || in_child(parent, parent_group, pipe);
    let pid = match launch::spawn(argv, env, &before_exec) {
        Ok(pid) => pid,
        Err(failure) => {
            guardian.dismiss();
            return Err(match failure {
                // The one step that can fail is the write to the guardian's pipe.
                launch::Failure::Before(_) => SpawnError::Guardian(io::Error::other("it died")),
                _ => SpawnError::Exec {
                    code: failure.code(),
                    failure,
                },
            });
        }
    };
    // Also from the parent side, so that signalling the group right away cannot race the
    // child's own setpgid.
    // SAFETY: plain syscall; EACCES after the child's exec is expected and harmless.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Child {
        pid,
        proc: Proc::new(pid),
        exit: None,
        guardian: Some(guardian),
    })
}

/// Runs in the child between the clone and the exec, on our memory, so async-signal-safe calls
/// only: getpid, setpgid, prctl, getppid, signal, write (to the guardian's pipe), _exit; isatty,
/// tcgetpgrp, tcsetpgrp (`hand_terminal`); signal, sigemptyset on a local set and sigprocmask
/// (`signals::restore_in_child`). Then `launch` tries the execs.
fn in_child(parent: libc::pid_t, parent_group: libc::pid_t, pipe: RawFd) -> Result<(), i32> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: async-signal-safe system calls on values copied before the clone.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // The wrapper may have died before the death signal was armed.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        // From here on the guardian knows the group, before an exec (setuid, file capabilities)
        // can clear the death signal. Our copy of the pipe closes at exec. SIGPIPE is ignored
        // (as in the wrapper) until `restore_in_child`: a dead guardian is an error, not a death.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let n = libc::write(pipe, (&me as *const libc::pid_t).cast(), size_of_val(&me));
        if n != size_of_val(&me) as isize {
            return Err(libc::EPIPE);
        }
    }
    hand_terminal(parent_group, me);
    crate::signals::restore_in_child();
    Ok(())
}

/// Moves the terminal's foreground from group `from` to group `to`, if `from` has it: to the
/// child's group when it starts, or interactive commands would stop with SIGTTIN, and back to
/// ours when it is gone. SIGTTOU, which a background group changing the foreground would get, is
/// ignored in the wrapper (and still, before its reset, in the child). Async-signal-safe.
fn hand_terminal(from: libc::pid_t, to: libc::pid_t) {
    // SAFETY: async-signal-safe calls on fd 0.
    unsafe {
        if libc::isatty(0) == 1 && libc::tcgetpgrp(0) == from {
            libc::tcsetpgrp(0, to);
        }
    }
}

/// Forks the guardian. It learns the group to kill from the pipe: the child writes it before its
/// exec, a replacement gets it from us.
fn spawn_guardian() -> io::Result<Guardian> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the forked process runs only async-signal-safe calls and never returns.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { guard(read_end.as_raw_fd(), write_end.as_raw_fd()) },
        pid => Ok(Guardian {
            proc: Proc::new(pid),
            pipe: write_end,
        }),
    }
}

/// The guardian's whole life, in the forked process. Async-signal-safe calls only.
unsafe fn guard(read_end: RawFd, write_end: RawFd) -> ! {
    // A session (and group) of its own: signals to the wrapper's group or session miss it.
    libc::setsid();
    // And nothing else but SIGKILL reaches it: blocked, not ignored, so nothing is inherited by
    // an exec (there is none) and a stray signal is merely left pending.
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    // Keep only the pipe: inherited copies of the wrapper's sockets would keep its etcd
    // connections (and the status port) open after the wrapper dropped them.
    let pipe = 3;
    if write_end != pipe {
        libc::close(write_end);
    }
    if read_end != pipe {
        libc::dup2(read_end, pipe);
    }
    if libc::syscall(libc::SYS_close_range, pipe + 1, libc::c_uint::MAX, 0) != 0 {
        for fd in pipe + 1..65_536 {
            libc::close(fd);
        }
    }
    let mut pgid: libc::pid_t = 0;
    let mut got = 0;
    let mut byte = 0u8;
    loop {
        let n = if got < size_of_val(&pgid) {
            let at = (&mut pgid as *mut libc::pid_t).cast::<u8>().add(got);
            libc::read(pipe, at.cast(), size_of_val(&pgid) - got)
        } else {
            libc::read(pipe, (&mut byte as *mut u8).cast(), 1)
        };
        match n {
            n if n > 0 => got += n as usize,
            n if n < 0 && *libc::__errno_location() == libc::EINTR => {}
            _ => break,
        }
    }
    // Closed before the group was known: the wrapper died before the child could exec, and the
    // child's death signal (armed before its write) ends it.
    if got >= size_of_val(&pgid) && pgid > 0 {
        libc::kill(-pgid, libc::SIGKILL);
    }
    libc::_exit(0)
}

impl Proc {
    fn new(pid: libc::pid_t) -> Proc {
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot name anyone else.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a new fd owned by nobody else.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        Proc {
            pid,
            pidfd,
            reaped: false,
        }
    }

    fn signal(&self, sig: i32) {
        if self.reaped {
            return;
        }
        // SAFETY: plain syscalls on our own unreaped child.
        unsafe {
            match &self.pidfd {
                Some(fd) => {
                    let null = std::ptr::null::<libc::siginfo_t>();
                    libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, null, 0)
                }
                None => libc::kill(self.pid, sig).into(),
            }
        };
    }
}

impl Guardian {
    /// Killed, not woken by closing its pipe: woken, it would signal a group id that may be
    /// free by now and name somebody else's group.
    fn dismiss(self) {
        self.proc.signal(libc::SIGKILL);
        debug!("stopped guardian {}", self.proc.pid);
    }
}

impl Child {
    /// Forwards a signal to the child itself, as if it had been sent to the child directly;
    /// nothing once it has exited (its pid may be somebody else's by now).
    pub fn forward(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Signals the child's whole process group.
    pub fn signal_group(&self, sig: i32) {
        // The id is ours while the child is unreaped. After that, `main` signals it only while
        // `group_alive` finds members: leftovers reparented to us die only when we reap them, in
        // this thread; only the last member being reaped by a parent outside the group, and its
        // id being handed out again in between, could slip through (there is no pidfd for a
        // group).
        // SAFETY: plain syscall.
        unsafe { libc::kill(-self.pid, sig) };
    }

    /// False once a dead guardian could not be replaced: the command must be stopped.
    pub fn guarded(&self) -> bool {
        self.guardian.is_some()
    }

    /// Reaps every exited process (the child, the guardian, reparented orphans): the one place
    /// that waits, so no exit status is lost to another waiter. A dead guardian is replaced here,
    /// before anything else happens. Returns the child's exit (every time, once it has exited)
    /// or a stop seen in this round.
    pub fn reap(&mut self) -> Option<Wait> {
        let mut stopped = None;
        while let Some((pid, status)) = wait_any() {
            // A stop is only a notification: the process is still there to be reaped later.
            let gone = !libc::WIFSTOPPED(status);
            // The guardian first: a replacement may have been given the pid of a child that was
            // reaped already.
            if self.guardian.as_ref().is_some_and(|g| g.proc.pid == pid) {
                if gone {
                    self.replace_guardian(status);
                }
            } else if pid == self.pid && !self.proc.reaped {
                if gone {
                    self.proc.reaped = true;
                    self.exit = Some(code(status));
                } else {
                    stopped = Some(libc::WSTOPSIG(status));
                }
            } else if gone {
                debug!("reaped {pid}");
            }
        }
        self.exit.map(Wait::Exited).or(stopped.map(Wait::Stopped))
    }

    /// The guardian died before its time (the OOM killer, an administrator). Its pid is reaped:
    /// never signalled again. While the child is unreaped its group id is still ours to hand
    /// to a new guardian; once the child is gone its leftovers are being stopped anyway.
    fn replace_guardian(&mut self, status: i32) {
        let Some(mut old) = self.guardian.take() else {
            return;
        };
        old.proc.reaped = true;
        let dead = old.proc.pid;
        let replacement = spawn_guardian().and_then(|g| {
            let pgid = self.pid.to_ne_bytes();
            // SAFETY: writing a local buffer to the new guardian's pipe.
            let n = unsafe { libc::write(g.pipe.as_raw_fd(), pgid.as_ptr().cast(), pgid.len()) };
            if n == pgid.len() as isize {
                Ok(g)
            } else {
                let e = io::Error::last_os_error();
                g.dismiss();
                Err(e)
            }
        });
        match replacement {
            Ok(g) => {
                let new = g.proc.pid;
                self.guardian = Some(g);
                warn!(
                    "guardian {dead} of group {} died ({}); replaced by guardian {new}",
                    self.pid,
                    describe(status)
                );
            }
            Err(e) => error!(
                "guardian {dead} of group {} died ({}) and cannot be replaced: {e}",
                self.pid,
                describe(status)
            ),
        }
    }

    /// Reaps whatever exited and tells whether anything of the group still lives (a zombie
    /// member that is not ours to reap counts: it holds the group).
    pub fn group_alive(&mut self) -> bool {
        self.reap();
        // SAFETY: signal 0 only checks for existence.
        let r = unsafe { libc::kill(-self.pid, 0) };
        r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }

    /// What is left in the group, for the record: `pid (state)` of each member found in /proc.
    pub fn remaining(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec!["unknown (no /proc)".into()];
        };
        let mut found = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the parenthesised command name: state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let (state, _ppid, pgrp) = (fields.next(), fields.next(), fields.next());
            if pgrp.and_then(|g| g.parse::<i32>().ok()) == Some(self.pid) {
                let state = match state {
                    Some("Z") => "zombie",
                    Some("D") => "uninterruptible sleep",
                    Some("T" | "t") => "stopped",
                    _ => "running",
                };
                found.push(format!("{pid} ({state})"));
            }
        }
        found
    }

    /// Once the group is empty: the terminal comes back to us and the guardian is let go.
    pub fn release(mut self) {
        // SAFETY: getpgrp has no preconditions.
        hand_terminal(self.pid, unsafe { libc::getpgrp() });
        if let Some(g) = self.guardian.take() {
            g.dismiss();
        }
    }
}

/// For states without a child: reaps and discards whatever exited (reparented orphans, a
/// dismissed guardian). A guardian forked ahead (`standby`) that died is let go with its pid:
/// kept, it would be killed by that pid once dismissed, and the pid may be somebody else's by
/// then (without a pidfd, before Linux 5.3, nothing else stops that signal). `spawn` forks
/// another.
pub fn reap_orphans(standby: &mut Option<Guardian>) {
    while let Some((pid, status)) = wait_any() {
        if libc::WIFSTOPPED(status) {
            continue;
        }
        if standby.as_ref().is_some_and(|g| g.proc.pid == pid) {
            *standby = None;
            debug!("guardian {pid} forked ahead died ({})", describe(status));
        } else {
            debug!("reaped {pid}");
        }
    }
}

/// One exited (or stopped) child of ours, without blocking.
fn wait_any() -> Option<(libc::pid_t, i32)> {
    let mut status = 0;
    // SAFETY: status is a valid pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::WUNTRACED) };
    (pid > 0).then_some((pid, status))
}

fn code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit code {}", code(status))
    }
}
