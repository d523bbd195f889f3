//! `eae-test-child`: the command the integration tests run under the wrapper.
//!
//! It owns nothing but its own observable behaviour: it appends one-line records
//! `start|stop|term <identity> <pid> <CLOCK_MONOTONIC ns>` to the file named by `EAE_TEST_LOG`
//! (each record a single `write(2)` on an `O_APPEND` descriptor, so lines from many processes never
//! interleave), so the invariant checker in `tests/common/invariant.rs` can reconstruct exactly
//! when each process ran. Only std and libc are used.
//!
//! Flags:
//! * `--id X`            identity (default: env `ETCD_AWAIT_ELECTION_IDENTITY`, else `unknown`)
//! * `--ignore-term`     on SIGTERM write `term` and keep running (grandchildren too)
//! * `--term-delay MS`   on SIGTERM write `term`, keep running MS milliseconds (a service shutting
//!   down slowly), then write `stop` and exit 143
//! * `--fork N`          fork N grandchildren in the same process group; each writes its own
//!   `start`, and handles SIGTERM like the parent. Grandchildren ignore `--exit-after`: they run
//!   until signalled, so they outlive a parent that exits on its own.
//! * `--exit-after MS`   after MS milliseconds write `stop` and exit with `--exit-code N` (default 0)
//! * `--print-env`       print `env <identity> <pid> <LEADER_KEY> <LEADER_REVISION>` to stdout
//!
//! Default on SIGTERM: write `term`, then `stop`, then exit 143. SIGTERM is blocked and collected
//! with `sigtimedwait`, so there is no asynchronous handler at all. SIGINT, SIGQUIT and SIGHUP
//! take their default action (death), whatever dispositions the tests were started with. The
//! parent reaps its grandchildren while it runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::Duration;

struct Opts {
    id: String,
    ignore_term: bool,
    term_delay_ms: u64,
    fork: u32,
    exit_after_ms: Option<u64>,
    exit_code: i32,
    print_env: bool,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn usage(msg: &str) -> ! {
    eprintln!("eae-test-child: {msg}");
    std::process::exit(2);
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        id: std::env::var("ETCD_AWAIT_ELECTION_IDENTITY").unwrap_or_else(|_| "unknown".into()),
        ignore_term: false,
        term_delay_ms: 0,
        fork: 0,
        exit_after_ms: None,
        exit_code: 0,
        print_env: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--id" => o.id = val("--id"),
            "--ignore-term" => o.ignore_term = true,
            "--print-env" => o.print_env = true,
            "--term-delay" => {
                o.term_delay_ms = val("--term-delay")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --term-delay"))
            }
            "--fork" => {
                o.fork = val("--fork")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --fork"))
            }
            "--exit-after" => {
                o.exit_after_ms = Some(
                    val("--exit-after")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --exit-after")),
                )
            }
            "--exit-code" => {
                o.exit_code = val("--exit-code")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --exit-code"))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

struct Log {
    file: Option<File>,
    id: String,
}

impl Log {
    fn record(&self, kind: &str) {
        let line = format!(
            "{kind} {} {} {}\n",
            self.id,
            std::process::id(),
            monotonic_ns()
        );
        if let Some(f) = &self.file {
            // std's File::write is exactly one write(2); O_APPEND makes it atomic w.r.t. others.
            match (&*f).write(line.as_bytes()) {
                Ok(n) if n == line.len() => {}
                other => eprintln!("eae-test-child: short/failed log write: {other:?}"),
            }
        }
    }
}

fn block_sigterm() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait up to `d` for SIGTERM; true if one arrived.
fn wait_term(set: &libc::sigset_t, d: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pointers; a null siginfo is allowed.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    r == libc::SIGTERM
}

fn reap() {
    loop {
        // SAFETY: non-blocking reap of any of our children.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// An ignored signal stays ignored across `fork` and `exec`: `make test` started from a
/// non-interactive shell's background job (`make test &`, `nohup`) passes SIGINT and SIGQUIT (or
/// SIGHUP) ignored all the way down to us, and a test of the wrapper's Ctrl-C would see a
/// command that survives it.
fn default_dispositions() {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: setting a signal to its default action installs no handler.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

fn main() {
    // Block SIGTERM first (one syscall) so a signal arriving right after `start` is not lost
    // to the default action; then the `start` record is the first thing written.
    let set = block_sigterm();
    default_dispositions();
    let opts = parse_opts();
    let file = std::env::var_os("EAE_TEST_LOG").map(|p| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| usage(&format!("cannot open EAE_TEST_LOG {p:?}: {e}")))
    });
    let log = Log {
        file,
        id: opts.id.clone(),
    };
    log.record("start");

    let mut is_grandchild = false;
    let _ = std::io::stdout().flush();
    for _ in 0..opts.fork {
        // SAFETY: we are single-threaded here, so fork is safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            eprintln!("eae-test-child: fork failed");
        } else if pid == 0 {
            is_grandchild = true;
            log.record("start");
            break;
        }
    }

    if opts.print_env {
        let key = std::env::var("ETCD_AWAIT_ELECTION_LEADER_KEY").unwrap_or_else(|_| "-".into());
        let rev =
            std::env::var("ETCD_AWAIT_ELECTION_LEADER_REVISION").unwrap_or_else(|_| "-".into());
        println!("env {} {} {key} {rev}", opts.id, std::process::id());
        let _ = std::io::stdout().flush();
    }

    let deadline = if is_grandchild {
        None
    } else {
        opts.exit_after_ms
            .map(|ms| std::time::Instant::now() + Duration::from_millis(ms))
    };
    loop {
        let slice = match deadline {
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    log.record("stop");
                    std::process::exit(opts.exit_code);
                }
                (d - now).min(Duration::from_millis(50))
            }
            None => Duration::from_millis(50),
        };
        if wait_term(&set, slice) {
            log.record("term");
            if !opts.ignore_term {
                // Still running, as a service finishing its work would: the group stays alive.
                std::thread::sleep(Duration::from_millis(opts.term_delay_ms));
                log.record("stop");
                std::process::exit(143);
            }
        }
        if !is_grandchild {
            reap();
        }
    }
}
