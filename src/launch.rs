//! Starting a program as `posix_spawn` does, with room for our own steps before its exec; and
//! finding the program as a shell does.
//!
//! This module owns two things. First, how a command name becomes an exec: [`Program`] is what
//! `execvp` would try — the name itself if it has a `/`, otherwise the name in each `PATH`
//! directory, in order — and a file the kernel does not run (no `#!`, not a binary) is run by
//! `/bin/sh FILE ARGS...`, as glibc's `execvp` and every shell do (musl's does not). A file the
//! kernel refuses that looks like a binary (an ELF header, or a NUL byte in its first line, as
//! bash judges it) is not: `/bin/sh` would run whatever lines it finds in a binary for another
//! machine or a truncated one. Everything an
//! exec needs, the shell's argument list included, is built beforehand, so trying it only makes
//! system calls and writes nowhere but what was built for it: glibc's `execvp` builds the
//! shell's argument list on the caller's stack (`argc + 2` pointers), which a long argument list
//! overruns. Second, `clone(CLONE_VM | CLONE_VFORK)` and the exec that follows it: the child
//! shares our memory until its exec, so no page table is copied (a `fork` of the wrapper costs
//! about as much as the exec itself, on the handover's path) and we sleep only until the exec is
//! done. The child runs on a stack mapped for it alone, with an inaccessible page below it, and
//! may only make system calls on what was built before the clone: no allocation, no lock, no
//! panic. What the steps before the exec are (the process group, the death signal, the guardian)
//! is `supervisor`'s concern.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;

use libc::c_char;

/// The child's steps before the exec; `Err(errno)` ends it without an exec.
pub type BeforeExec<'a> = &'a dyn Fn() -> Result<(), i32>;

/// Where a name without a `/` is looked for when `PATH` is unset (musl's choice).
const DEFAULT_PATH: &[u8] = b"/usr/local/bin:/bin:/usr/bin";

/// What runs a file the kernel does not (no `#!`, not a binary).
const SHELL: &CStr = c"/bin/sh";

/// How much of a file the kernel refused is read to tell a binary from a script (bash's sample).
const SAMPLE: usize = 80;

/// The child's stack. Its steps are system calls on values built before the clone: they use
/// about 1.4 KiB in a debug build (measured with the command on a terminal).
const STACK_SIZE: usize = 16 * 1024;

/// Why a program did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No child: its stack or the clone itself failed with this errno.
    Start(i32),
    /// A step before the exec failed with this errno.
    Before(i32),
    /// No file ran; the errno as `execvp` reports it (`EACCES` when a file was found but none
    /// could be executed, `ENOENT` when a `PATH` search found nothing).
    Exec(i32),
    /// The file has no `#!` and is no binary the kernel runs; `/bin/sh` could not run it.
    Shell(i32),
    /// The kernel refused the file (ENOEXEC) and it looks like a binary, so it is not given to
    /// `/bin/sh` either.
    Binary,
}

impl Failure {
    /// The shell's convention: 127 when there is nothing to run, 126 when it cannot be run.
    pub fn code(self) -> i32 {
        match self {
            Failure::Exec(libc::ENOENT) => crate::exit::NOT_FOUND,
            _ => crate::exit::CANNOT_EXECUTE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let errno = match *self {
            Failure::Start(e) => {
                write!(f, "cannot start a process: ")?;
                e
            }
            Failure::Before(e) | Failure::Exec(e) => e,
            Failure::Shell(e) => {
                write!(
                    f,
                    "it has no #! line and is not a binary, and /bin/sh cannot run it: "
                )?;
                e
            }
            Failure::Binary => {
                write!(
                    f,
                    "cannot execute binary file (a binary for another machine, or a damaged \
                     one?): "
                )?;
                libc::ENOEXEC
            }
        };
        io::Error::from_raw_os_error(errno).fmt(f)?;
        if errno == libc::E2BIG {
            write!(
                f,
                "; the arguments and the environment together exceed the kernel's limit \
                 (`getconf ARG_MAX` bytes, a quarter of the stack limit `ulimit -s`), or one of \
                 them is longer than 128 KiB"
            )?;
        }
        Ok(())
    }
}

/// What `execvp` would try for one argument list, built so that trying it allocates nothing.
struct Program {
    /// The files to try, in order.
    files: Vec<CString>,
    /// The files come from a `PATH` search: finding none of them is "not found", whatever the
    /// directories said (a `PATH` entry that is a file says ENOTDIR).
    searched: bool,
    /// The strings `argv` points to.
    _args: Vec<CString>,
    /// `[/bin/sh, argv[0], argv[1], ..., NULL]`: from index 1, the command's argument list; from
    /// index 0, once index 1 is set to the file, the shell's for a file without `#!`.
    argv: Vec<*const c_char>,
}

impl Program {
    fn new(argv: &[OsString]) -> Result<Program, Failure> {
        let args: Vec<CString> = argv.iter().map(|a| c_string(a)).collect::<Result<_, _>>()?;
        let name = args.first().ok_or(Failure::Exec(libc::EINVAL))?.as_bytes();
        let searched = !name.contains(&b'/');
        let files = if searched {
            let path = std::env::var_os("PATH");
            search_path(name, path.as_ref().map_or(DEFAULT_PATH, |p| p.as_bytes()))?
        } else {
            vec![args[0].clone()]
        };
        let argv = std::iter::once(SHELL.as_ptr())
            .chain(args.iter().map(|a| a.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(Program {
            files,
            searched,
            _args: args,
            argv,
        })
    }

    /// Tries each file in turn as `execvp` does, and returns only if none ran. Async-signal-safe:
    /// system calls only, and the one write is to `self.argv`.
    fn exec(&mut self, envp: *const *const c_char) -> Failure {
        let mut denied = false;
        let mut last = libc::ENOENT;
        for file in &self.files {
            // SAFETY: null-terminated arrays of C strings that `self` owns; the command's list
            // starts at index 1 of `argv`, which holds at least `[SHELL, argv[0], NULL]`.
            let errno = unsafe {
                libc::execve(file.as_ptr(), self.argv.as_ptr().add(1), envp);
                *libc::__errno_location()
            };
            match errno {
                libc::ENOEXEC => {
                    if looks_binary(file) {
                        return Failure::Binary;
                    }
                    self.argv[1] = file.as_ptr();
                    // SAFETY: as above, the shell's list from index 0.
                    return unsafe {
                        libc::execve(SHELL.as_ptr(), self.argv.as_ptr(), envp);
                        Failure::Shell(*libc::__errno_location())
                    };
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {
                    last = errno
                }
                _ => return Failure::Exec(errno),
            }
        }
        Failure::Exec(match (denied, self.searched) {
            (true, _) => libc::EACCES,
            (false, true) => libc::ENOENT,
            (false, false) => last,
        })
    }
}

/// Whether `file`, which the kernel refused to run, starts as a binary does, judged as bash
/// judges it before running a file as a script. A file that cannot be read is not judged (the
/// shell says why it cannot run it). Async-signal-safe: system calls into a buffer on the stack.
fn looks_binary(file: &CStr) -> bool {
    // O_NONBLOCK: should the file have become a FIFO since the exec, the open must not wait for
    // a writer. The kernel runs only regular files, on which it does nothing.
    // SAFETY: a C string that `file` owns.
    let fd = unsafe {
        libc::open(
            file.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut sample = [0u8; SAMPLE];
    let n = loop {
        // SAFETY: reads into a buffer of ours, of the length given.
        let n = unsafe { libc::read(fd, sample.as_mut_ptr().cast(), sample.len()) };
        // SAFETY: reads errno only.
        if n >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            break usize::try_from(n).unwrap_or(0);
        }
    };
    // SAFETY: the descriptor opened above, ours alone.
    unsafe { libc::close(fd) };
    binary_sample(&sample[..n])
}

/// bash's `check_binary_file`: an ELF header, or a NUL byte before the first newline (the second
/// after a `#!` line) in the sample.
fn binary_sample(sample: &[u8]) -> bool {
    if sample.starts_with(b"\x7fELF") {
        return true;
    }
    let lines = if sample.starts_with(b"#!") { 2 } else { 1 };
    sample
        .split_inclusive(|&b| b == b'\n')
        .take(lines)
        .any(|line| line.contains(&0))
}

/// `name` in each directory of `path` (`PATH`'s value); an empty entry is the current directory.
fn search_path(name: &[u8], path: &[u8]) -> Result<Vec<CString>, Failure> {
    if name.is_empty() {
        return Ok(Vec::new());
    }
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut file = dir.to_vec();
            if !dir.is_empty() {
                file.push(b'/');
            }
            file.extend_from_slice(name);
            CString::new(file).map_err(|_| Failure::Exec(libc::EINVAL))
        })
        .collect()
}

fn c_string(s: &OsStr) -> Result<CString, Failure> {
    CString::new(s.as_bytes()).map_err(|_| Failure::Exec(libc::EINVAL))
}

/// Replaces this process with `argv`, found and run as [`spawn`] does, with the environment as
/// it is; `before_exec` runs first. Returns only if it could not.
pub fn exec(argv: &[OsString], before_exec: BeforeExec) -> Failure {
    extern "C" {
        static environ: *const *const c_char;
    }
    let mut program = match Program::new(argv) {
        Ok(p) => p,
        Err(f) => return f,
    };
    if let Err(errno) = before_exec() {
        return Failure::Before(errno);
    }
    // SAFETY: the C library's environment, which nothing in this process changes.
    program.exec(unsafe { environ })
}

/// What the child needs, built before the clone.
struct Image<'a> {
    program: Program,
    envp: Vec<*const c_char>,
    before_exec: BeforeExec<'a>,
    /// Why the child did not exec: written by the child, read by us once it is gone.
    failure: Option<Failure>,
}

/// Starts `argv` with our environment plus `env`, running `before_exec` in the child first.
/// Returns once the child has exec'd; an error if it could not (the child is reaped then).
pub fn spawn(
    argv: &[OsString],
    env: &[(&str, String)],
    before_exec: BeforeExec,
) -> Result<libc::pid_t, Failure> {
    let program = Program::new(argv)?;
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
    let mut image = Image {
        program,
        envp: vars
            .iter()
            .map(|v| v.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        before_exec,
        failure: None,
    };
    let stack = Stack::new().map_err(Failure::Start)?;
    // SAFETY: `image` and `stack` outlive the child's use of them, since CLONE_VFORK returns only
    // after its exec or exit; the child touches nothing else of ours.
    let pid = unsafe {
        libc::clone(
            child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut image as *mut Image).cast(),
        )
    };
    if pid < 0 {
        return Err(Failure::Start(errno()));
    }
    if let Some(failure) = image.failure {
        // It exited without an exec: ours to reap, now, before anyone mistakes it for the command.
        // SAFETY: our own child, which has exited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(failure);
    }
    Ok(pid)
}

/// The child, between the clone and the exec. System calls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Image`, alive and untouched while the parent sleeps.
    let image = unsafe { &mut *arg.cast::<Image>() };
    image.failure = Some(match (image.before_exec)() {
        Ok(()) => image.program.exec(image.envp.as_ptr()),
        Err(errno) => Failure::Before(errno),
    });
    // SAFETY: ends this process without running anything of the parent's (no atexit, no flush).
    unsafe { libc::_exit(127) }
}

/// The child's stack: mapped for it alone, with an inaccessible page below it, so that running
/// past its end kills the child instead of writing over our memory. Unmapped on drop.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> Result<Stack, i32> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_SIZE.next_multiple_of(page) + page;
        // SAFETY: a new private anonymous mapping, ours alone.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(errno());
        }
        let stack = Stack { base, len };
        // The stack grows down, towards the guard page.
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(errno());
        }
        Ok(stack)
    }

    /// Where the child's stack pointer starts (page-aligned, so 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_entries_become_files_and_an_empty_one_is_the_current_directory() {
        let files = search_path(b"cmd", b":/usr/bin::/opt/x/").unwrap();
        let files: Vec<&[u8]> = files.iter().map(|f| f.as_bytes()).collect();
        assert_eq!(
            files,
            [&b"cmd"[..], b"/usr/bin/cmd", b"cmd", b"/opt/x//cmd"]
        );
        assert!(search_path(b"", b"/usr/bin").unwrap().is_empty());
    }

    #[test]
    fn binaries_are_told_from_scripts_as_bash_tells_them() {
        for binary in [
            &b"\x7fELF\x02\x01\x01\x00garbage\nexit 42\n"[..],
            b"\x7fELF",
            b"echo hi\0\nexit 3\n",
            b"\0",
            b"#!/no/such\n\0\n",
        ] {
            assert!(binary_sample(binary), "{binary:?}");
        }
        for script in [
            &b""[..],
            b"\x7fEL",
            b"echo hi\nexit 3\0\n",
            b"#!/no/such\necho\n\0",
            b"exit 7",
        ] {
            assert!(!binary_sample(script), "{script:?}");
        }
    }

    #[test]
    fn the_shells_exit_codes_and_the_limit_in_words() {
        assert_eq!(Failure::Exec(libc::ENOENT).code(), 127);
        for f in [
            Failure::Exec(libc::EACCES),
            Failure::Exec(libc::E2BIG),
            Failure::Exec(libc::ENOTDIR),
            Failure::Shell(libc::ENOENT),
            Failure::Binary,
        ] {
            assert_eq!(f.code(), 126, "{f:?}");
        }
        let e2big = Failure::Shell(libc::E2BIG).to_string();
        assert!(
            e2big.contains("/bin/sh") && e2big.contains("ARG_MAX"),
            "{e2big}"
        );
    }
}
