//! `eae-kernel-floor PROGRAM ARGS...`: runs PROGRAM as on the oldest kernel the wrapper supports
//! (Linux 3.15, the README's minimum), on whatever kernel the tests run on.
//!
//! It owns nothing but that pretence: it installs a seccomp filter that makes every system call
//! added after 3.15 fail with ENOSYS, exactly as a 3.15 kernel answers a call it does not know
//! (setting `no_new_privs` first where the kernel asks for it: without root), then execs PROGRAM. The filter is inherited by every process PROGRAM
//! starts (the wrapper's guardian, its command, the command's children) and cannot be removed.
//! What it cannot pretend: a flag or a behaviour an old kernel lacks inside a call it has (those
//! are the README's to name). Only std and libc are used.
//!
//! The kernel numbers the system calls of x86_64 and of the generic table (aarch64) in the order
//! they were added, so "added after 3.15" is "numbered from `seccomp` (3.17) up": `getrandom`,
//! `memfd_create`, `statx`, `rseq`, `pidfd_send_signal`, `pidfd_open`, `clone3`, `close_range`,
//! `epoll_pwait2` and everything later. A call made through i386's `int 0x80` (another audit
//! arch) is left alone: nothing under test makes one. x32 calls are not: they report the x86_64
//! arch with bit 30 set in the number, so every one of them fails with ENOSYS.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// `AUDIT_ARCH_*` of the native ABI, as `seccomp_data.arch` reports it.
#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7;

fn die(msg: &str) -> ! {
    eprintln!("eae-kernel-floor: {msg}");
    std::process::exit(125);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn install_filter() -> std::io::Result<()> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // Offsets in `struct seccomp_data`: `int nr; __u32 arch; ...`.
    const NR: u32 = 0;
    const ARCH_AT: u32 = 4;
    let first_new = libc::SYS_seccomp as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let program = [
        stmt(BPF_LD | BPF_W | BPF_ABS, ARCH_AT),
        // Another ABI: allowed (jump to the last instruction).
        jump(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, NR),
        jump(BPF_JMP | BPF_JGE | BPF_K, first_new, 0, 1),
        stmt(BPF_RET | BPF_K, enosys),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl on this process with a program that outlives the call (the kernel copies it).
    let install = || unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if install() == 0 {
        return Ok(());
    }
    // Without CAP_SYS_ADMIN the kernel wants `no_new_privs` first. As root it is left off: it
    // would make a setuid command run with the wrapper's ids, which no old kernel does.
    // SAFETY: prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 || install() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn install_filter() -> std::io::Result<()> {
    Err(std::io::Error::other(
        "no system call table for this architecture (x86_64 and aarch64 only)",
    ))
}

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| die("an argument holds a NUL")))
        .collect();
    if args.is_empty() {
        die("usage: eae-kernel-floor PROGRAM ARGS...");
    }
    if let Err(e) = install_filter() {
        die(&format!("cannot install the seccomp filter: {e}"));
    }
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: a null-terminated array of C strings that outlive the call.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    die(&format!(
        "cannot run {:?}: {}",
        args[0],
        std::io::Error::last_os_error()
    ));
}
