//! Signals delivered to the wrapper, turned into events for `main`.
//!
//! As in tini, [`block`] runs first thing in `main`, before any other thread exists: every
//! asynchronous signal is blocked in every thread, so none is lost or acted on by default while
//! the wrapper starts (a SIGTERM during the TLS check stays pending — even as PID 1, where an
//! unblocked signal without a handler is discarded), and one thread ([`spawn`]) collects them with
//! `sigwaitinfo`. That thread does no work of its own: it only tells `main`, whose state decides
//! what a signal means (reap on SIGCHLD; withdraw from the election on SIGTERM/SIGINT while
//! waiting; otherwise forward it to the child — every catchable signal, so none kills the
//! wrapper by its default action). Job
//! control signals are ignored instead, so neither a terminal (`stty tostop`, a background read)
//! nor a stray SIGTSTP can stop the wrapper while its command runs; the child gets them back
//! ([`restore_in_child`]).

use std::sync::mpsc::Sender;

use libc::c_int;

/// Ignored by the wrapper, default again in the child.
const JOB_CONTROL: &[c_int] = &[libc::SIGTTOU, libc::SIGTTIN, libc::SIGTSTP];

/// Left alone: raised by the faulting thread itself (blocking them would hang it), unblockable,
/// or already ignored by Rust's runtime (SIGPIPE: writes get EPIPE instead).
const UNTOUCHED: &[c_int] = &[
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
    libc::SIGKILL,
    libc::SIGSTOP,
    libc::SIGPIPE,
];

/// The set [`spawn`]'s thread waits for: everything not untouched and not job control.
fn waited() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in UNTOUCHED.iter().chain(JOB_CONTROL) {
            libc::sigdelset(&mut set, *sig);
        }
        set
    }
}

/// First thing in `main`: block what the signal thread will collect, ignore job control. Every
/// thread started later inherits the mask.
pub fn block() {
    let set = waited();
    // SAFETY: only one thread exists yet; plain mask and disposition changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        for sig in JOB_CONTROL {
            libc::signal(*sig, libc::SIG_IGN);
        }
    }
}

/// Between fork and exec (or before the exec that replaces the wrapper): the command starts
/// with the signal state it would have had without us — nothing blocked, job control and
/// SIGPIPE (ignored by Rust's runtime) at their defaults (a mask and ignored dispositions both
/// survive exec). Async-signal-safe.
pub fn restore_in_child() {
    // SAFETY: sigemptyset, sigprocmask and signal are async-signal-safe; a local set.
    unsafe {
        for sig in JOB_CONTROL.iter().chain(&[libc::SIGPIPE]) {
            libc::signal(*sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Starts the thread that sends blocked signals to `tx`, each as `event(signal)`; signals that
/// arrived since [`block`] are delivered at once.
pub fn spawn<E: Send + 'static>(tx: Sender<E>, event: fn(i32) -> E) -> std::io::Result<()> {
    let set = waited();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            // SAFETY: a valid set; a null siginfo is allowed.
            let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
            if sig < 0 {
                // EINTR (a stop and continue of the whole process under a debugger).
                continue;
            }
            if tx.send(event(sig)).is_err() {
                return;
            }
        })?;
    Ok(())
}
