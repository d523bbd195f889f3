//! The health check (`HEALTH_CMD` or `HEALTH_URL`): run on its own thread every
//! `HEALTH_INTERVAL`, each run bounded by `HEALTH_TIMEOUT`, and counted against `HEALTH_FALL` and
//! `HEALTH_RISE` into a verdict reported to `main` after every check. It decides nothing about
//! leadership (`machine` does, from the verdicts), and a check that hangs stalls only this thread.
//!
//! A command check is `/bin/sh -c CMD` in a process group of its own, killed as a group at its
//! timeout. It is not waited for here: the wrapper reaps every child of its own in one place
//! (`supervisor`, `waitpid(-1)`), which would take a check's exit status from any other waiter.
//! So an outer shell runs the check and writes its exit status to a pipe, which is all this thread
//! reads; the check's own output goes to `/dev/null`, so a process it leaves behind does not hold
//! that pipe open.
//!
//! A check does not outlive the wrapper, however it ends (exit, SIGKILL): the outer shell gets
//! `PR_SET_PDEATHSIG` (SIGTERM), forked from this thread, which lives as long as the process (the
//! signal follows the forking *thread*), and on SIGTERM it kills its whole group, the check's
//! processes included, which a death signal of their own could not reach.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::config::{Check, Health, HttpUrl};

/// The shell a command check runs in.
pub const SHELL: &str = "/bin/sh";

/// One check's result, and where the counts stand after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This check passed.
    pub passed: bool,
    /// Why it failed, or what it returned.
    pub detail: String,
    pub healthy: bool,
    /// `healthy` is new: the first verdict, or FALL failures or RISE successes in a row.
    pub changed: bool,
}

/// Starts the health thread; its verdicts reach `tx` as `wrap(verdict)`.
pub fn spawn<E: Send + 'static>(
    health: Health,
    tx: Sender<E>,
    wrap: fn(Verdict) -> E,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut tally = Tally::new(health.fall, health.rise);
            loop {
                let started = Instant::now();
                let (passed, detail) = match check(&health.check, health.timeout) {
                    Ok(detail) => (true, detail),
                    Err(why) => (false, why),
                };
                let (healthy, changed) = tally.count(passed);
                let verdict = Verdict {
                    passed,
                    detail,
                    healthy,
                    changed,
                };
                if tx.send(wrap(verdict)).is_err() {
                    return;
                }
                std::thread::sleep(health.interval.saturating_sub(started.elapsed()));
            }
        })?;
    Ok(())
}

/// Consecutive results counted into a verdict. The first check decides at once: a candidate
/// neither joins before its service was seen healthy nor waits RISE checks to join at all.
struct Tally {
    fall: u32,
    rise: u32,
    healthy: Option<bool>,
    /// Results in a row against `healthy`.
    against: u32,
}

impl Tally {
    fn new(fall: u32, rise: u32) -> Tally {
        Tally {
            fall,
            rise,
            healthy: None,
            against: 0,
        }
    }

    /// Where the verdict stands after this result, and whether it changed.
    fn count(&mut self, passed: bool) -> (bool, bool) {
        let Some(healthy) = self.healthy else {
            self.healthy = Some(passed);
            return (passed, true);
        };
        if passed == healthy {
            self.against = 0;
            return (healthy, false);
        }
        self.against += 1;
        let needed = if passed { self.rise } else { self.fall };
        if self.against < needed {
            return (healthy, false);
        }
        self.against = 0;
        self.healthy = Some(passed);
        (passed, true)
    }
}

/// Runs one check within `timeout`: `Ok` with what passed, `Err` with why it failed.
fn check(check: &Check, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    match check {
        Check::Command(cmd) => run_command(cmd, deadline, timeout),
        Check::Url(url) => get(url, deadline).map_err(|e| match e.kind() {
            // A socket timeout reads as EAGAIN ("Resource temporarily unavailable").
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("GET {}: no answer within {timeout:?}", url.text)
            }
            _ => format!("GET {}: {e}", url.text),
        }),
    }
}

/// The outer shell: runs the check (its first argument) with nothing but a status to say, and
/// says it. On SIGTERM (the wrapper died) it kills its group, the check's. The check runs in the
/// background only so that `wait`, unlike a foreground command, lets the trap run at once.
const OUTER: &str =
    "trap 'kill -KILL 0' TERM; /bin/sh -c \"$1\" </dev/null >/dev/null 2>&1 & wait $!; echo $?";

fn run_command(cmd: &str, deadline: Instant, timeout: Duration) -> Result<String, String> {
    let wrapper = std::process::id() as libc::pid_t;
    let mut outer = Command::new(SHELL);
    outer
        .args(["-c", OUTER, "etcd-await-election-health", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: between fork and exec, async-signal-safe calls only: those of
    // `restore_in_child`, prctl, getppid.
    unsafe {
        outer.pre_exec(move || {
            // The wrapper blocks every signal, and a blocked mask survives exec: the check would
            // run with SIGTERM blocked, and so would the outer shell's trap.
            crate::signals::restore_in_child();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            // The wrapper may have died before the death signal was armed.
            if libc::getppid() != wrapper {
                // No allocation here: ESRCH, the wrapper is gone.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut outer = outer
        .spawn()
        .map_err(|e| format!("cannot run {SHELL}: {e}"))?;
    let group = outer.id() as libc::pid_t;
    let Some(mut pipe) = outer.stdout.take() else {
        return Err("no pipe from the check".into());
    };
    // Never waited for here (see the module's doc): `supervisor` reaps it.
    drop(outer);
    match read_until(&mut pipe, deadline) {
        Ok(Some(said)) => match said.trim().parse::<i32>() {
            Ok(0) => Ok("exit code 0".into()),
            Ok(code) => Err(format!("exit code {code}")),
            Err(_) => Err(format!("the check's shell said {said:?}")),
        },
        Ok(None) => {
            // SAFETY: kill(2) on the check's group. Its leader has not written its status, so it
            // has not exited, or only just: the group id is not anybody else's yet.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            Err(format!(
                "no answer within {timeout:?}: killed its process group"
            ))
        }
        Err(e) => Err(format!("reading the check's status: {e}")),
    }
}

/// Reads the pipe to its end, or `None` if the deadline comes first.
fn read_until(
    pipe: &mut std::process::ChildStdout,
    deadline: Instant,
) -> io::Result<Option<String>> {
    let mut said = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut fd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            0 => continue,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            _ => {}
        }
        match pipe.read(&mut buf)? {
            0 => return Ok(Some(String::from_utf8_lossy(&said).into_owned())),
            n if said.len() < 64 => said.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
}

/// `GET` over HTTP/1.1, bounded by `deadline` (resolving the host name is not: a resolver that
/// hangs delays this thread only). A 2xx status passes.
fn get(url: &HttpUrl, deadline: Instant) -> io::Result<String> {
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
        } else {
            Ok(l)
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    let mut stream = None;
    for addr in url.authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or(last)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: etcd-await-election\r\n\
         Connection: close\r\n\r\n",
        url.path, url.authority
    );
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(request.as_bytes())?;
    // The status line is all we need: `HTTP/1.1 200 OK`.
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match status_code(line) {
        Some(code @ 200..=299) => Ok(format!("status {code}")),
        Some(code) => Err(io::Error::other(format!("status {code}"))),
        None => Err(io::Error::other(format!(
            "not an HTTP answer: {:?}",
            crate::format::Foreign(line.as_bytes())
        ))),
    }
}

/// The code of a status line `HTTP/1.x NNN reason`: three digits, then a space or the end.
fn status_code(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let mut parts = rest.splitn(3, ' ');
    let (minor, code) = (parts.next()?, parts.next()?);
    if minor.len() != 1 || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_check_decides_then_fall_and_rise_count() {
        let mut t = Tally::new(3, 2);
        assert_eq!(t.count(true), (true, true));
        assert_eq!(t.count(false), (true, false));
        assert_eq!(t.count(false), (true, false));
        // A pass in between starts the count again.
        assert_eq!(t.count(true), (true, false));
        assert_eq!(t.count(false), (true, false));
        assert_eq!(t.count(false), (true, false));
        assert_eq!(t.count(false), (false, true));
        assert_eq!(t.count(true), (false, false));
        assert_eq!(t.count(false), (false, false));
        assert_eq!(t.count(true), (false, false));
        assert_eq!(t.count(true), (true, true));
        let mut sick = Tally::new(3, 2);
        assert_eq!(sick.count(false), (false, true));
    }

    #[test]
    fn a_status_code_is_three_digits() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 204"), Some(204));
        assert_eq!(status_code("HTTP/1.1 2000 OK"), None);
        assert_eq!(status_code("HTTP/1.1 20 OK"), None);
        assert_eq!(status_code("HTTP/1.1 2x0 OK"), None);
        assert_eq!(status_code("HTTP/2 200"), None);
    }

    fn url_of(server: &std::net::TcpListener) -> Check {
        let authority = server.local_addr().unwrap().to_string();
        Check::Url(HttpUrl {
            text: format!("http://{authority}/"),
            authority,
            path: "/".into(),
        })
    }

    /// A server answering `2000`: no 2xx status, however it starts.
    #[test]
    fn a_four_digit_status_fails() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url_of(&server);
        let answer = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            c.write_all(b"HTTP/1.1 2000 OK\r\n\r\n").unwrap();
        });
        let r = check(&url, Duration::from_secs(10));
        answer.join().unwrap();
        assert!(
            r.as_ref().is_err_and(|e| e.contains("not an HTTP answer")),
            "{r:?}"
        );
    }

    /// A server that accepts and never answers: the check fails saying so, not with EAGAIN.
    #[test]
    fn a_silent_server_is_no_answer_within_the_timeout() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = check(&url_of(&server), Duration::from_millis(300));
        assert!(
            r.as_ref()
                .is_err_and(|e| e.ends_with("no answer within 300ms")),
            "{r:?}"
        );
    }

    fn cmd(c: &str, timeout: Duration) -> Result<String, String> {
        check(&Check::Command(c.into()), timeout)
    }

    #[test]
    fn a_command_passes_on_exit_code_0_only() {
        let t = Duration::from_secs(10);
        assert_eq!(cmd("true", t), Ok("exit code 0".into()));
        assert_eq!(cmd("exit 3", t), Err("exit code 3".into()));
        // Its output goes nowhere, and cannot pass for the status.
        assert_eq!(cmd("echo 0; exit 1", t), Err("exit code 1".into()));
    }

    /// The wrapper blocks every signal in every thread: a check must not inherit that mask.
    #[test]
    fn a_command_runs_with_no_signal_blocked() {
        // SAFETY: this test's own thread's mask, on local sets, restored below.
        let old = unsafe {
            let (mut all, mut old): (libc::sigset_t, libc::sigset_t) = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            old
        };
        let r = cmd(
            "grep -q '^SigBlk:[[:space:]]*0*$' /proc/self/status",
            Duration::from_secs(10),
        );
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        assert_eq!(r, Ok("exit code 0".into()));
    }

    #[test]
    fn a_hanging_command_is_killed_with_its_group_at_the_timeout() {
        let dir = std::env::temp_dir().join(format!("eae-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let r = cmd(&script, Duration::from_millis(500));
        assert!(r.as_ref().is_err_and(|e| e.contains("killed")), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild went with the group: gone, or a zombie (SIGKILL is delivered at once,
        // but the exit may take a moment on a busy machine).
        let dead = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            matches!(state, None | Some('Z'))
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !dead() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead(), "the check's grandchild {pid} outlived its timeout");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
