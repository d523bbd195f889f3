//! The child: starting it, signalling it, reaping it, and making sure nothing of it survives.
//!
//! This module owns the child's process group. The child is started in a group of its own with
//! `PR_SET_PDEATHSIG`, so it dies with the wrapper; a forked *guardian* holds the read end of a
//! pipe whose only writer is the wrapper, and kills the whole group when that pipe closes, so
//! grandchildren (which no death signal reaches) die with a SIGKILLed wrapper too. The wrapper
//! makes itself a child subreaper, so orphaned grandchildren are reparented to it and reaped in
//! the one `waitpid(-1)` loop here. It does not decide *when* to stop the child: `main` does.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use log::{debug, warn};

/// A running child and its guardian.
pub struct Child {
    pub pid: libc::pid_t,
    guardian: Option<Guardian>,
}

struct Guardian {
    pid: libc::pid_t,
    /// The wrapper dying closes it, and that makes the guardian kill the child's group.
    pipe: libc::c_int,
}

/// The command could not be started; the exit code follows the shell's convention.
#[derive(Debug)]
pub struct SpawnError {
    pub code: i32,
    pub error: io::Error,
}

/// Orphaned grandchildren become ours to reap, and to wait for, instead of init's.
pub fn become_subreaper() {
    // SAFETY: plain prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Replaces this process with the command (no election configured). Returns only on failure.
pub fn exec(argv: &[OsString]) -> SpawnError {
    let error = Command::new(&argv[0]).args(&argv[1..]).exec();
    spawn_error(error)
}

fn spawn_error(error: io::Error) -> SpawnError {
    let code = match error.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    SpawnError { code, error }
}

/// Must be called from the main thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked
/// the child exits, and only the main thread lives as long as the process.
pub fn spawn(argv: &[OsString], env: &[(&str, String)]) -> Result<Child, SpawnError> {
    // SAFETY: getpid and getpgrp have no preconditions.
    let (parent, parent_group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The wrapper may have died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            hand_terminal(parent_group, libc::getpid());
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_error)?;
    let pid = child.id() as libc::pid_t;
    // `Child` is dropped without waiting: reaping happens only in `reap`.
    drop(child);
    // Also from the parent side, so that signalling the group right away cannot race the
    // child's own setpgid.
    // SAFETY: plain syscall; EACCES after the child's exec is expected and harmless.
    unsafe { libc::setpgid(pid, pid) };
    let guardian = spawn_guardian(pid)
        .map_err(|e| warn!("no guardian for the child's group: {e}"))
        .ok();
    Ok(Child { pid, guardian })
}

/// Moves the terminal's foreground from group `from` to group `to`, if `from` has it: to the
/// child's group when it starts, or interactive commands would stop with SIGTTIN, and back to
/// ours when it is gone. SIGTTOU is ignored around the call because a background group may not
/// change the foreground otherwise. Async-signal-safe, as it also runs between fork and exec.
fn hand_terminal(from: libc::pid_t, to: libc::pid_t) {
    // SAFETY: async-signal-safe calls on fd 0.
    unsafe {
        if libc::isatty(0) == 1 && libc::tcgetpgrp(0) == from {
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, to);
            libc::signal(libc::SIGTTOU, old);
        }
    }
}

fn spawn_guardian(pgid: libc::pid_t) -> io::Result<Guardian> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: the forked process runs only async-signal-safe calls and never returns.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(e)
        }
        0 => unsafe {
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
            // Signals sent to the wrapper's whole group (a terminal, systemd) are the wrapper's
            // to handle; the guardian must outlive them to do its one job.
            for sig in crate::signals::FORWARDED {
                libc::signal(*sig, libc::SIG_IGN);
            }
            let mut byte = 0u8;
            loop {
                let n = libc::read(pipe, (&mut byte as *mut u8).cast(), 1);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(0)
        },
        pid => {
            unsafe { libc::close(read_end) };
            Ok(Guardian {
                pid,
                pipe: write_end,
            })
        }
    }
}

impl Child {
    /// Forwards a signal to the child itself, as if it had been sent to the child directly.
    pub fn forward(&self, sig: i32) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Signals the child's whole process group.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(-self.pid, sig) };
    }

    /// Reaps whatever exited (the child too, discarding its status: collect that first when it
    /// matters) and tells whether anything of the group still lives.
    pub fn group_alive(&self) -> bool {
        reap(None);
        // SAFETY: signal 0 only checks for existence.
        let r = unsafe { libc::kill(-self.pid, 0) };
        r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }

    /// Kills whatever is left of the group (the child too, if it still runs; its exit status is
    /// then discarded) and waits until the group is empty, so no part of the command outlives
    /// our leadership.
    pub fn finish(self) {
        let started = Instant::now();
        let mut warned = false;
        loop {
            self.signal_group(libc::SIGKILL);
            if !self.group_alive() {
                break;
            }
            if !warned && started.elapsed() > Duration::from_secs(1) {
                warn!(
                    "processes of group {} survive SIGKILL (uninterruptible sleep?); waiting",
                    self.pid
                );
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.release();
    }

    /// Once the group is empty: the terminal comes back to us and the guardian is let go.
    pub fn release(mut self) {
        // SAFETY: getpgrp has no preconditions.
        hand_terminal(self.pid, unsafe { libc::getpgrp() });
        if let Some(g) = self.guardian.take() {
            // Killed, not woken by closing its pipe: woken, it would signal the group id, which
            // is free now and could already name somebody else's group. It is our unreaped
            // child, so its own pid is still ours to signal.
            // SAFETY: plain syscalls on our child and our own pipe end.
            unsafe {
                libc::kill(g.pid, libc::SIGKILL);
                libc::close(g.pipe);
            }
            debug!("stopped guardian {}", g.pid);
        }
    }
}

/// Reaps every exited process; returns the child's exit code (128+N for signal N) if the child
/// itself is among them. Everything else (guardians, reparented orphans) is discarded here, the
/// one place that waits, so no exit status is lost to another waiter.
pub fn reap(child: Option<libc::pid_t>) -> Option<i32> {
    let mut code = None;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return code;
        }
        if Some(pid) == child {
            code = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        } else {
            debug!("reaped {pid}");
        }
    }
}
