//! The state machine: awaiting → leading → stopping → resigning → exit, and, with a health check,
//! standing aside (out of the queue until healthy again). It enforces the renew deadline, applying
//! the rules of `timing` on `CLOCK_BOOTTIME` (`clock`), and `WAIT_TIMEOUT`. It reads one channel
//! of events from the election thread, the signal thread, the alarm thread and the health thread,
//! and decides: start the child, forward a signal, stop the child's group before the lease can
//! expire on the server, resign, stand aside, join again, exit. It never talks to etcd itself
//! (`election` does), never runs a health check (`health` does), and never waits on a process but
//! through `supervisor`.
//!
//! Its room `aside` holds the rules of a candidate that stands aside while sick and of one that
//! gives up when it does not lead in time (`WAIT_TIMEOUT`).

use std::ffi::OsString;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use log::{debug, error, info, warn};

use crate::clock::{self, Boot};
use crate::config::{self, Config};
use crate::election;
use crate::exit;
use crate::format::Foreign;
use crate::health::{self, Verdict};
use crate::leader::Leader;
use crate::signals;
use crate::status::{self, Phase};
use crate::supervisor::{self, Child, Wait};
use crate::timing::{self, Due, Renewal, Stop};

mod aside;

/// Everything the state machine waits for, on one channel.
#[derive(Debug)]
pub enum Event {
    Election(election::Event),
    Signal(i32),
    /// The deadline set on the [`clock::Alarm`] came, maybe during a suspend.
    Alarm,
    Health(Verdict),
}

/// How often a group being stopped is checked: its members need not be our children, so their
/// deaths may not be reported to us.
const POLL: Duration = Duration::from_millis(10);

enum State {
    Awaiting,
    Leading(Child),
    /// Leadership is lost, or the child exited and left processes in its group: the group got
    /// SIGTERM and gets SIGKILL at its kill deadline. Once the child has exited, `exited` holds the
    /// code to resign with when the whole group is gone. A group still not empty a kill budget
    /// after its SIGKILL cannot be emptied: the wrapper exits without resigning.
    Stopping {
        child: Child,
        stop: Stop,
        exited: Option<i32>,
    },
    /// Waiting for the election thread to revoke the lease, then exit with this code.
    Resigning {
        code: i32,
        until: Boot,
    },
    /// Out of the queue while unhealthy (`resigned`: the election thread confirmed it); joins
    /// again once healthy.
    Aside {
        resigned: bool,
    },
    Done(i32),
}

pub struct Wrapper {
    cfg: Config,
    cmd: Vec<OsString>,
    events: mpsc::Receiver<Event>,
    election: election::Handle,
    status: status::Shared,
    /// The last successful renewal: the lease lives on the server until at least `sent + ttl`,
    /// counted on `CLOCK_BOOTTIME` as the server counts it, suspends included.
    renewal: Option<Renewal>,
    /// Wakes `main` at its deadline on `CLOCK_BOOTTIME`, also right after a resume.
    alarm: clock::Alarm,
    /// Next in line: the command's guardian, forked ahead.
    standby: Option<supervisor::Guardian>,
    /// Elected while the last counted renewal was too old to run on until the next one
    /// (`Renewal::starts`: an etcd outage just ended, or a waiter's renewals, which count one in
    /// three): the command starts with the next counted renewal. Key, revision, lease.
    pending: Option<(String, i64, i64)>,
    /// The health check's verdict (true without a check; false until its first verdict).
    healthy: bool,
    /// Leading: a candidate waits behind us, as last reported.
    successor: bool,
    /// Leading while unhealthy with nobody to hand over to: said once in the log.
    said_staying: bool,
    /// The group is being stopped to hand over for health: once it is empty we stand aside
    /// instead of exiting.
    stepping_down: bool,
    /// SIGTERM or SIGINT came: whatever follows ends in an exit, never in standing aside.
    terminating: bool,
    /// The command was started at least once: `WAIT_TIMEOUT` is met.
    led: bool,
    /// Not leading by then: withdraw (`WAIT_TIMEOUT` above zero, or trying once while etcd
    /// fails).
    wait_until: Option<Boot>,
}

impl Wrapper {
    /// Starts the threads and the status endpoint; says what could not be started.
    pub fn start(cfg: Config, cmd: Vec<OsString>) -> Result<Wrapper, String> {
        let fail = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
        supervisor::become_subreaper();
        let (tx, events) = mpsc::channel();
        signals::spawn(tx.clone(), Event::Signal).map_err(fail("cannot handle signals"))?;
        let alarm = clock::Alarm::spawn(tx.clone(), || Event::Alarm)
            .map_err(fail("cannot start the CLOCK_BOOTTIME timer"))?;
        let status = status::Shared::new(
            &cfg.identity,
            &cfg.lock_name,
            timing::renewal_overdue(
                Duration::from_secs(cfg.lease_ttl as u64),
                cfg.renew_deadline,
            ),
            cfg.retry_period,
        );
        if let Some(addr) = &cfg.status_endpoint {
            status::serve(addr, status.clone())
                .map_err(|e| format!("{}: {e}", config::STATUS_ENDPOINT))?;
        }
        if let Some(h) = &cfg.health {
            health::spawn(h.clone(), tx.clone(), Event::Health)
                .map_err(fail("cannot start the health thread"))?;
            status.update(|s| s.health = Some(status::Health::default()));
        }
        let election = election::spawn(cfg.clone(), tx, Event::Election)
            .map_err(fail("cannot start the election thread"))?;
        if cfg.health.is_none() {
            election.join();
        }
        info!(
            "lock={} identity={}: awaiting leadership{}",
            cfg.lock_name,
            cfg.identity,
            if cfg.health.is_some() {
                " once healthy"
            } else {
                ""
            }
        );
        let wait_until = cfg.wait_timeout.filter(|w| !w.is_zero());
        Ok(Wrapper {
            healthy: cfg.health.is_none(),
            successor: false,
            said_staying: false,
            stepping_down: false,
            terminating: false,
            led: false,
            wait_until: wait_until.map(|w| Boot::now().saturating_add(w)),
            cfg,
            cmd,
            events,
            election,
            status,
            renewal: None,
            alarm,
            standby: None,
            pending: None,
        })
    }

    pub fn run(mut self) -> i32 {
        // With a health check, the queue is joined on its first healthy verdict.
        let mut state = if self.cfg.health.is_some() {
            State::Aside { resigned: true }
        } else {
            State::Awaiting
        };
        loop {
            // The deadline the state has, and whether a group being stopped is polled: leftovers
            // of an exited child that are not our children die without a SIGCHLD to us, and so
            // does a killed group.
            let (due, poll) = match &state {
                State::Awaiting | State::Aside { .. } => (self.wait_deadline(), false),
                State::Leading(_) => (self.renew_deadline(), false),
                State::Stopping { stop, exited, .. } => match stop.due(Boot::now()) {
                    Due::Nothing(at) => (Some(at), stop.is_killed() || exited.is_some()),
                    _ => (Some(Boot::now()), false),
                },
                State::Resigning { until, .. } => (Some(*until), false),
                State::Done(code) => return *code,
            };
            // The wait below runs on the monotonic clock, which never gets ahead of the boottime
            // one: it ends no earlier than the deadline. A suspend stops it; the alarm, a timer
            // on the boottime clock, ends it on resume instead. (Waits capped at short slices
            // would do too, but would wake a leader many times a second for all its life.)
            self.alarm.set(due);
            let left = due.map(|d| d.saturating_duration_since(Boot::now()));
            let wait = if poll {
                left.map(|l| l.min(POLL))
            } else {
                left
            };
            // A passed deadline wins over queued events: a storm of signals must not delay it.
            let event = match wait {
                Some(w) if w.is_zero() => Err(RecvTimeoutError::Timeout),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(w) => self.events.recv_timeout(w),
            };
            state = match (state, event) {
                (state, Err(RecvTimeoutError::Disconnected)) => {
                    let next = self.abandon(state, exit::INTERNAL);
                    error!("internal channel closed");
                    next
                }
                (state, Err(RecvTimeoutError::Timeout)) => self.on_deadline(state),
                // Looked at again with the time now, at the top of the loop.
                (state, Ok(Event::Alarm)) => state,
                (state, Ok(Event::Signal(sig))) => self.on_signal(state, sig),
                (state, Ok(Event::Election(e))) => self.on_election(state, e),
                (state, Ok(Event::Health(v))) => self.on_health(state, v),
            };
        }
    }

    fn renew_deadline(&self) -> Option<Boot> {
        let renewal = self.renewal?;
        Some(renewal.renew_deadline(self.cfg.renew_deadline))
    }

    /// Stopping the group from now on: SIGKILL at the kill deadline of the lease held, given up
    /// one kill budget after it.
    fn stopping(&self, child: Child, exited: Option<i32>) -> State {
        State::Stopping {
            child,
            stop: Stop::new(self.renewal, self.cfg.renew_deadline, Boot::now()),
            exited,
        }
    }

    fn on_deadline(&mut self, state: State) -> State {
        match state {
            State::Leading(child) => {
                let due = self.renewal.map_or(Due::Kill, |r| {
                    timing::leading(r, self.cfg.renew_deadline, Boot::now())
                });
                match due {
                    Due::Nothing(_) => State::Leading(child),
                    Due::Kill => self.stop(
                        child,
                        "no lease renewal before the kill deadline (was the host suspended?); \
                         SIGKILL follows at once",
                    ),
                    _ => self.stop(child, "no lease renewal within the renew deadline"),
                }
            }
            State::Stopping { .. } => self.supervise_stop(state),
            State::Resigning { code, .. } => {
                warn!("the election thread did not confirm resigning; the lease expires by itself");
                State::Done(code)
            }
            State::Awaiting | State::Aside { .. }
                if self.wait_deadline().is_some_and(|d| d <= Boot::now()) =>
            {
                let why = if self.tries_once() {
                    "etcd failed the one try for the start-up grace"
                } else {
                    ""
                };
                self.give_up(state, why)
            }
            other => other,
        }
    }

    fn on_signal(&mut self, state: State, sig: i32) -> State {
        if sig == libc::SIGCHLD {
            return self.on_child_exit(state);
        }
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            // Stopping the wrapper: a hand-over for health under way ends in an exit, and none
            // starts (the child has the signal and its exit is ours).
            self.stepping_down = false;
            self.terminating = true;
        }
        match state {
            State::Leading(ref child) | State::Stopping { ref child, .. } => {
                // Once the child is gone, what it left gets the signal.
                let to = if let State::Stopping {
                    exited: Some(_), ..
                } = state
                {
                    child.signal_group(sig);
                    "group"
                } else {
                    child.forward(sig);
                    "child"
                };
                // A terminal being resized sends SIGWINCH in bursts: not worth a line each.
                let level = if sig == libc::SIGWINCH {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                log::log!(level, "forwarded signal {sig} to {to} {}", child.pid);
                state
            }
            State::Awaiting if sig == libc::SIGTERM || sig == libc::SIGINT => {
                let next = self.resign(exit::WITHDRAWN);
                info!("signal {sig} while awaiting leadership: withdrawing");
                next
            }
            State::Aside { resigned } if sig == libc::SIGTERM || sig == libc::SIGINT => {
                info!("signal {sig} while out of the queue: exiting");
                self.leave_aside(resigned, exit::WITHDRAWN)
            }
            other => other,
        }
    }

    fn on_child_exit(&mut self, state: State) -> State {
        let mut child = match state {
            State::Leading(child) => child,
            State::Stopping { .. } => return self.supervise_stop(state),
            other => {
                supervisor::reap_orphans(&mut self.standby);
                return other;
            }
        };
        // SIGCHLD also comes for the guardian (replaced by `reap` if it died) and for
        // reparented orphans.
        let status = match child.reap() {
            Some(Wait::Exited(status)) => status,
            Some(Wait::Stopped(sig)) => {
                // Ctrl-Z or SIGSTOP: a stopped leader would hold the lease doing nothing, and
                // could be resumed by anyone after it lost it. Resume it at once; stopping the
                // wrapper (SIGTERM, Ctrl-C) is how a leader is put aside.
                child.signal_group(libc::SIGCONT);
                warn!(
                    "child {} was stopped by signal {sig}; resumed its group (a leader cannot be \
                     suspended: stop the wrapper instead)",
                    child.pid
                );
                return self.check_guardian(child);
            }
            None => return self.check_guardian(child),
        };
        self.status.update(|s| s.child_exit_code = Some(status));
        let (lock, identity) = (self.cfg.lock_name.clone(), self.cfg.identity.clone());
        let pid = child.pid;
        if !child.group_alive() {
            child.release();
            let next = self.resign(status);
            info!("lock={lock} identity={identity}: child {pid} exited with {status}; resigning");
            return next;
        }
        // What the child left is stopped like a lost leader's group: SIGTERM now, SIGKILL at the
        // kill deadline, so it can shut down cleanly and still never outlives the lease.
        child.signal_group(libc::SIGTERM);
        child.signal_group(libc::SIGCONT);
        self.set_phase(Phase::Stopping);
        let next = self.stopping(child, Some(status));
        info!(
            "lock={lock} identity={identity}: child {pid} exited with {status}; \
             stopping what it left in its group"
        );
        next
    }

    /// No guardian, no command: a leader whose dead guardian could not be replaced stops.
    fn check_guardian(&mut self, child: Child) -> State {
        if child.guarded() {
            State::Leading(child)
        } else {
            self.stop(child, "no guardian")
        }
    }

    /// The group is being stopped: learn whether the child exited, resign once the group is
    /// empty, SIGKILL it at the kill deadline, give up on it one kill budget later.
    fn supervise_stop(&mut self, state: State) -> State {
        let State::Stopping {
            mut child,
            stop,
            mut exited,
        } = state
        else {
            return state;
        };
        let reaped = child.reap();
        if let Some(Wait::Stopped(_)) = reaped {
            // So that the SIGTERM it got can take effect.
            child.signal_group(libc::SIGCONT);
        }
        let mut exit_seen = None;
        if let (None, Some(Wait::Exited(status))) = (exited, &reaped) {
            exited = Some(exit::LOST);
            exit_seen = Some(*status);
            self.status.update(|s| s.child_exit_code = Some(*status));
        }
        if let Some(code) = exited {
            if !child.group_alive() {
                let pid = child.pid;
                child.release();
                let next = self.resign(code);
                if let Some(status) = exit_seen {
                    info!("child {pid} exited with {status}; resigning");
                } else {
                    info!("group {pid} is empty; resigning");
                }
                return next;
            }
        }
        self.escalate(child, stop, exited)
    }

    /// SIGKILL for a group still running at its kill deadline; given up on a kill budget later.
    fn escalate(&mut self, child: Child, mut stop: Stop, exited: Option<i32>) -> State {
        if stop.due(Boot::now()) == Due::Kill {
            child.signal_group(libc::SIGKILL);
            stop.kill(Boot::now());
            warn!(
                "group {} still running as the lease nears expiry: SIGKILL",
                child.pid
            );
        }
        if stop.due(Boot::now()) == Due::GiveUp {
            // Nothing more can be done from here: a process in uninterruptible sleep dies when
            // it wakes, a zombie whose parent left the group is only the parent's to reap.
            // Exiting stops the renewals, so the lease expires by itself; the guardian, woken by
            // our exit, sends the group one last SIGKILL.
            error!(
                "lock={} identity={}: group {} cannot be emptied; left: {}; exiting without \
                 resigning, the lease expires within its TTL",
                self.cfg.lock_name,
                self.cfg.identity,
                child.pid,
                child.remaining().join(", ")
            );
            return State::Done(exit::STUCK);
        }
        State::Stopping {
            child,
            stop,
            exited,
        }
    }

    fn on_election(&mut self, state: State, e: election::Event) -> State {
        use election::Event as E;
        match e {
            E::Renewed { sent, ttl } => self.on_renewed(state, sent, ttl),
            // One sent while waiting and answered once leading must not pass for a renewal on
            // `/healthz`: the command runs on counted renewals only.
            E::KeptAlive { sent } if matches!(state, State::Awaiting | State::Aside { .. }) => {
                self.status_renewed(sent);
                state
            }
            E::KeptAlive { .. } => state,
            E::Failed { renewal, failure } => {
                self.on_failed(&failure);
                self.status.etcd_failed(failure, renewal);
                state
            }
            E::Reachable => {
                self.status.etcd_answered();
                state
            }
            E::Next => {
                if matches!(state, State::Awaiting) && self.standby.is_none() {
                    // Failing here is only slower: `lead` forks one then.
                    self.standby = supervisor::Guardian::standby()
                        .inspect_err(|e| debug!("cannot fork a guardian ahead: {e}"))
                        .ok();
                }
                state
            }
            E::Leader(leader) => self.on_leader(state, leader),
            E::Elected {
                key,
                revision,
                lease,
            } => match state {
                // Never leads while unhealthy: the record goes on to the next.
                State::Awaiting if !self.healthy => self.stand_aside(),
                State::Awaiting => self.lead(key, revision, lease),
                other => other,
            },
            E::Queued | E::Successor(_) => self.on_queue(state, &e),
            E::Lost(why) => self.on_lost(state, &why),
            E::Fatal(why) => {
                let next = self.abandon(state, exit::REFUSED);
                error!("{why}");
                next
            }
            E::Twin(why) => {
                let next = self.abandon(state, exit::TWIN);
                error!("{why}");
                next
            }
            E::Resigned => match state {
                State::Resigning { code, .. } => State::Done(code),
                State::Aside { resigned: false } if self.healthy => self.rejoin(),
                State::Aside { resigned: false } => State::Aside { resigned: true },
                other => other,
            },
        }
    }

    /// A renewal sent at `sent` counted: the renew deadline moves on, and a command elected while
    /// the lease was overdue starts now.
    fn on_renewed(&mut self, state: State, sent: Boot, ttl: Duration) -> State {
        if self.renewal.is_none_or(|last| sent > last.sent) {
            self.renewal = Some(Renewal { sent, ttl });
        }
        // The pace is the lease's held, which may not be the one configured (etcd raised it, or
        // adopted from a previous life).
        let overdue = timing::renewal_overdue(ttl, self.cfg.renew_deadline);
        self.status.update(|s| s.renewal_overdue = overdue);
        self.status_renewed(sent);
        match (state, self.pending.take()) {
            (State::Awaiting, Some((key, revision, lease))) => self.lead(key, revision, lease),
            (state, _) => state,
        }
    }

    /// The status counts every renewal, a waiter's unconfirmed keep-alives too: etcd answers.
    fn status_renewed(&mut self, sent: Boot) {
        let wall = SystemTime::now()
            .checked_sub(sent.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.status.update(|s| {
            s.renewals += 1;
            s.last_renewal = Some((wall, sent));
            s.failing_since = None;
        });
    }

    fn on_leader(&mut self, state: State, leader: Option<Leader>) -> State {
        if let Some(Leader { identity: l, .. }) = &leader {
            if matches!(state, State::Awaiting) {
                // Escaped and cut (another client chose it), and quoted: bare it could pass for
                // more fields of the line.
                let l = Foreign(l).to_string();
                info!(
                    "lock={} identity={}: leader is {l:?}",
                    self.cfg.lock_name, self.cfg.identity
                );
            }
        }
        self.status.update(|s| s.leader = leader);
        state
    }

    fn on_lost(&mut self, state: State, why: &str) -> State {
        match state {
            State::Leading(child) => self.stop(child, why),
            State::Awaiting if self.pending.take().is_some() => {
                let next = self.resign(exit::LOST);
                warn!("elected, but lost it before a renewal came ({why})");
                next
            }
            other => other,
        }
    }

    fn lead(&mut self, key: String, revision: i64, lease: i64) -> State {
        let deadline = self.cfg.renew_deadline;
        if !self
            .renewal
            .is_some_and(|r| r.starts(deadline, Boot::now()))
        {
            // The keep-alive renews at once once elected if a renewal is (nearly) overdue: start
            // then, or give up if the lease turns out to be gone (`Lost`).
            warn!(
                "elected, but the lease was not renewed recently enough to run on until the next \
                 renewal; starting once it is renewed"
            );
            self.pending = Some((key, revision, lease));
            return State::Awaiting;
        }
        let env = [
            ("ETCD_AWAIT_ELECTION_LEADER_KEY", key.clone()),
            ("ETCD_AWAIT_ELECTION_LEADER_REVISION", revision.to_string()),
        ];
        match supervisor::spawn(&self.cmd, &env, self.standby.take()) {
            Ok(child) => {
                self.status.update(|s| {
                    s.transitions += 1;
                    s.child_starts += 1;
                    s.lease_id = Some(lease);
                    s.revision = Some(revision);
                });
                info!(
                    "lock={} identity={} leader={}: leading as {key} (revision {revision}); started child {}",
                    self.cfg.lock_name, self.cfg.identity, self.cfg.identity, child.pid
                );
                self.led = true;
                self.set_phase(Phase::Running);
                State::Leading(child)
            }
            Err(e) => {
                let next = self.resign(e.exit_code());
                error!("cannot run {:?}: {e}", self.cmd[0]);
                next
            }
        }
    }

    fn stop(&mut self, child: Child, why: &str) -> State {
        // SIGCONT too, so that a stopped group handles its SIGTERM.
        child.signal_group(libc::SIGTERM);
        child.signal_group(libc::SIGCONT);
        self.set_phase(Phase::Stopping);
        let pid = child.pid;
        let next = self.stopping(child, None);
        warn!(
            "lock={} identity={}: leadership lost ({why}); stopped child {pid} (SIGTERM)",
            self.cfg.lock_name, self.cfg.identity
        );
        next
    }

    /// Ends in whatever state: the child's group (if any) is killed outright, and we resign
    /// once it is empty.
    fn abandon(&mut self, state: State, code: i32) -> State {
        self.stepping_down = false;
        match state {
            State::Leading(child) | State::Stopping { child, .. } => {
                child.signal_group(libc::SIGKILL);
                self.set_phase(Phase::Stopping);
                State::Stopping {
                    child,
                    stop: Stop::killed_now(self.renewal, self.cfg.renew_deadline, Boot::now()),
                    exited: Some(code),
                }
            }
            State::Resigning { .. } | State::Awaiting | State::Aside { .. } | State::Done(_) => {
                State::Done(code)
            }
        }
    }

    fn resign(&mut self, code: i32) -> State {
        if std::mem::take(&mut self.stepping_down) {
            return self.stand_aside();
        }
        self.set_phase(Phase::Awaiting);
        self.election.resign();
        // The election thread gives up revoking within 8 s; this is only a backstop in case
        // that thread is gone.
        State::Resigning {
            code,
            until: Boot::now().saturating_add(Duration::from_secs(10)),
        }
    }

    fn set_phase(&self, phase: Phase) {
        let cfg = &self.cfg;
        self.status.update(|s| {
            s.phase = phase;
            s.since = SystemTime::now();
            if phase == Phase::Running {
                s.leader = Some(Leader {
                    identity: cfg.identity.clone().into_bytes(),
                    address: cfg.advertise.clone(),
                    revision: s.revision,
                });
            }
        });
    }
}
