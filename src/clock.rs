//! Time as etcd counts a lease: `CLOCK_BOOTTIME`, which goes on while the host is suspended,
//! where Rust's `Instant` (`CLOCK_MONOTONIC`) stops. A leader that timed its renew deadline on the
//! monotonic clock would, after a resume, believe fresh a lease that etcd let expire while the
//! host slept, and keep its command running beside the next leader's.
//!
//! This module owns that clock: [`Boot`], an instant on it whose arithmetic saturates (a deadline
//! too far to represent is one that never comes, not a panic), and [`Alarm`], a timer on it that
//! wakes `main` at a deadline, also one that passed while the host was suspended. It decides no
//! deadline itself (`timing` does), and the election's own pacing (keep-alive periods, request
//! timeouts) stays on tokio's monotonic timers: only the deadlines that must not outlive the
//! lease are measured here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// A point in time on `CLOCK_BOOTTIME`: the time since boot, suspended time included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Boot(Duration);

impl Boot {
    pub fn now() -> Boot {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime(2) writing into a timespec we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        // It fails only for an unknown clock (Linux before 2.6.39) or a bad pointer; std's
        // `Instant::now` asserts the same of CLOCK_MONOTONIC.
        assert_eq!(
            rc,
            0,
            "clock_gettime(CLOCK_BOOTTIME): {}",
            io::Error::last_os_error()
        );
        Boot(Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        ))
    }

    /// `d` later, or the end of time.
    pub fn saturating_add(self, d: Duration) -> Boot {
        Boot(self.0.saturating_add(d))
    }

    /// `d` earlier, or boot.
    pub fn saturating_sub(self, d: Duration) -> Boot {
        Boot(self.0.saturating_sub(d))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Boot) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time passed since this instant, suspended time included.
    pub fn elapsed(self) -> Duration {
        Boot::now().saturating_duration_since(self)
    }

    /// As a timer's time: beyond 68 years after boot (what any `time_t` holds), the timer fires
    /// then, and `main` finds nothing due and waits on. The nanoseconds, below 10^9, fit the
    /// `c_long` of every target (32 bits on armv7).
    fn timespec(self) -> libc::timespec {
        libc::timespec {
            tv_sec: i32::try_from(self.0.as_secs()).unwrap_or(i32::MAX).into(),
            tv_nsec: i32::try_from(self.0.subsec_nanos()).unwrap_or(0).into(),
        }
    }
}

/// A one-shot timer on `CLOCK_BOOTTIME` (a timerfd) and a thread blocked reading it, which sends
/// an event to `main` each time it fires. The kernel fires a boottime timer whose time passed
/// during a suspend as soon as the host resumes, where a wait on the monotonic clock would still
/// have the whole remaining time to go. At rest it costs a blocked thread and a descriptor:
/// no wake-up until a deadline is due (a wait capped at short slices would wake a leader many
/// times a second for all its life).
pub struct Alarm {
    fd: Arc<OwnedFd>,
    armed: Option<Boot>,
}

impl Alarm {
    pub fn spawn<E: Send + 'static>(tx: Sender<E>, event: fn() -> E) -> io::Result<Alarm> {
        // SAFETY: timerfd_create(2) has no memory arguments; the descriptor is ours alone.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let timer = fd.clone();
        std::thread::Builder::new()
            .name("alarm".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                let mut expirations = [0u8; 8];
                // SAFETY: read(2) into a buffer of the length given, on a descriptor we hold.
                let n =
                    unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                // A failure other than an interruption ends the thread: `main`'s own wait still
                // ends at the deadline, only not early after a suspend.
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return;
                }
                if n == 8 && tx.send(event()).is_err() {
                    return;
                }
            })?;
        Ok(Alarm { fd, armed: None })
    }

    /// Fires at `at` (at once if it has passed), or never: a system call only when it changes.
    pub fn set(&mut self, at: Option<Boot>) {
        if self.armed == at {
            return;
        }
        self.armed = at;
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: zero,
            // A zero time disarms; a boottime instant is never zero.
            it_value: at.map_or(zero, Boot::timespec),
        };
        // SAFETY: timerfd_settime(2) on our descriptor, reading a spec we own. It fails only on
        // a bad descriptor or spec; `main`'s own wait would then still end at the deadline.
        unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn arithmetic_saturates() {
        let now = Boot::now();
        let end = now.saturating_add(Duration::MAX);
        assert_eq!(end.saturating_add(Duration::from_secs(1)), end);
        assert!(end > now);
        assert_eq!(now.saturating_duration_since(end), Duration::ZERO);
        assert_eq!(
            Boot(Duration::ZERO).saturating_sub(Duration::MAX).0,
            Duration::ZERO
        );
        // As text: `time_t` is i64 here and i32 on older 32-bit targets.
        assert_eq!(end.timespec().tv_sec.to_string(), i32::MAX.to_string());
        assert!(now.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn the_alarm_fires_at_its_time_and_at_once_for_a_passed_one() {
        let (tx, rx) = mpsc::channel();
        let mut alarm = Alarm::spawn(tx, || ()).unwrap();
        let t0 = Instant::now();
        alarm.set(Some(Boot::now().saturating_add(Duration::from_millis(50))));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        alarm.set(Some(Boot::now().saturating_sub(Duration::from_secs(1))));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // Disarmed, and a far deadline: nothing.
        alarm.set(None);
        alarm.set(Some(Boot::now().saturating_add(Duration::MAX)));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
