//! Starting a program as `posix_spawn` does, with room for our own steps before its exec.
//!
//! This module owns one thing: `clone(CLONE_VM | CLONE_VFORK)` and the exec that follows it. The
//! child shares our memory until its exec, so no page table is copied (a `fork` of the wrapper
//! costs about as much as the exec itself, on the handover's path) and we sleep only until the
//! exec is done. In between, the child may only make system calls on what was built before the
//! clone: no allocation, no lock, no panic. What the steps are (the process group, the death
//! signal, the guardian) is `supervisor`'s concern.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

/// The child's steps before the exec; `Err(errno)` ends it without an exec.
pub type BeforeExec<'a> = &'a dyn Fn() -> Result<(), i32>;

/// What the child needs, built before the clone.
struct Image<'a> {
    /// `argv[0]` is also the file to run (looked up in `PATH` when it has no slash).
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    before_exec: BeforeExec<'a>,
    /// Why the child did not exec: written by the child, read by us once it is gone.
    errno: i32,
}

/// Starts `argv` with our environment plus `env`, running `before_exec` in the child first.
/// Returns once the child has exec'd; an error if it could not (the child is reaped then).
pub fn spawn(
    argv: &[OsString],
    env: &[(&str, String)],
    before_exec: BeforeExec,
) -> io::Result<libc::pid_t> {
    let args: Vec<CString> = argv
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<_>>()?;
    if args.is_empty() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut vars: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if !env.iter().any(|(name, _)| OsStr::new(name) == k) {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            vars.push(c_string(&kv)?);
        }
    }
    for (k, v) in env {
        vars.push(c_string(OsStr::new(&format!("{k}={v}")))?);
    }
    let null = std::iter::once(std::ptr::null());
    let mut image = Image {
        argv: args
            .iter()
            .map(|a| a.as_ptr())
            .chain(null.clone())
            .collect(),
        envp: vars.iter().map(|v| v.as_ptr()).chain(null).collect(),
        before_exec,
        errno: 0,
    };
    // The child runs on this stack until its exec; we sleep meanwhile (CLONE_VFORK).
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack grows down from its (16-byte aligned) top; `image` and `stack` outlive
    // the child's use of them, since CLONE_VFORK returns only after its exec or exit.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut image as *mut Image).cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if image.errno != 0 {
        // It exited without an exec: ours to reap, now, before anyone mistakes it for the command.
        // SAFETY: our own child, which has exited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::from_raw_os_error(image.errno));
    }
    Ok(pid)
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The child, between the clone and the exec. System calls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Image`, alive and untouched while the parent sleeps.
    let image = unsafe { &mut *arg.cast::<Image>() };
    let errno = match (image.before_exec)() {
        // SAFETY: pointers into `image`, null-terminated arrays of C strings.
        Ok(()) => unsafe {
            libc::execvpe(image.argv[0], image.argv.as_ptr(), image.envp.as_ptr());
            *libc::__errno_location()
        },
        Err(errno) => errno,
    };
    image.errno = errno.max(1);
    // SAFETY: ends this process without running anything of the parent's (no atexit, no flush).
    unsafe { libc::_exit(127) }
}
