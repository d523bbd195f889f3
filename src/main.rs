//! `etcd-await-election CMD [ARGS...]`: run CMD only while this instance leads an etcd election.
//!
//! `main` owns the state machine (awaiting → leading → stopping → exit) and the renew deadline.
//! It reads one channel of events from the election thread and the signal thread, and decides:
//! start the child, forward a signal, stop the child's group before the lease can expire on the
//! server, resign, exit. It never talks to etcd itself.

mod adopt;
mod cli;
mod config;
mod election;
mod etcd;
mod force;
mod format;
mod logging;
mod queue;
mod signals;
mod status;
mod supervisor;

use std::ffi::OsString;
use std::process::exit;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};

use config::Config;
use status::Phase;
use supervisor::Child;

/// Exit codes of the wrapper itself; otherwise it exits with the child's code (128+N for a
/// child killed by signal N).
mod code {
    /// Withdrew from the election on SIGTERM/SIGINT before leading.
    pub const WITHDRAWN: i32 = 0;
    /// No command given.
    pub const USAGE: i32 = 64;
    /// The wrapper's own failure: cannot start a thread, bind the status endpoint, ...
    pub const INTERNAL: i32 = 70;
    /// Leadership was lost (renew deadline passed, lease expired, key deleted): the command was
    /// stopped.
    pub const LOST: i32 = 75;
    /// Another live candidate renews a key under our identity: identities must be unique.
    pub const TWIN: i32 = 76;
    /// etcd refused our credentials.
    pub const REFUSED: i32 = 77;
    /// A configuration variable is missing or invalid.
    pub const CONFIG: i32 = 78;
}

/// Everything `main` waits for, on one channel.
#[derive(Debug)]
pub enum Event {
    Election(election::Event),
    Signal(i32),
}

const USAGE: &str = "usage: etcd-await-election [OPTIONS] [--] CMD [ARGS...] (see --help)";

fn main() {
    let (options, command) = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli::Action::Help) => {
            print!("{}", cli::help());
            exit(0);
        }
        Ok(cli::Action::Version) => {
            println!("etcd-await-election {}", env!("CARGO_PKG_VERSION"));
            exit(0);
        }
        Ok(cli::Action::Run { options, command }) if !command.is_empty() => (options, command),
        Ok(cli::Action::Run { .. }) => {
            eprintln!("{USAGE}");
            exit(code::USAGE);
        }
        Err(e) => {
            eprintln!("etcd-await-election: {e}\n{USAGE}");
            exit(code::USAGE);
        }
    };
    let get = |name: &str| {
        let option = options.iter().rev().find(|(n, _)| *n == name);
        option
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    };
    let level = get(config::LOG_LEVEL);
    if let Err(e) = logging::init(level.as_deref(), get(config::LOG_FORMAT).as_deref()) {
        eprintln!("etcd-await-election: {}: {e}", config::LOG_FORMAT);
        exit(code::CONFIG);
    }
    let cfg = match config::from_env(get) {
        Ok(cfg) => cfg,
        Err(e) => {
            error!("{e}");
            exit(code::CONFIG);
        }
    };
    let Some(cfg) = cfg else {
        let e = supervisor::exec(&command);
        error!("cannot run {:?}: {}", command[0], e.error);
        exit(e.code);
    };
    if let Err(e) = etcd::check_tls(&cfg) {
        error!(
            "{}/{}/{}: unusable TLS configuration: {e}",
            config::CERT,
            config::KEY,
            config::CACERT
        );
        exit(code::CONFIG);
    }
    exit(Wrapper::start(cfg, command).run());
}

enum State {
    Awaiting,
    Leading(Child),
    /// Leadership is lost, or the child exited and left processes in its group: the group got
    /// SIGTERM and gets SIGKILL at `kill_at`. Once the child has exited, `exited` holds the code to
    /// resign with when the whole group is gone.
    Stopping {
        child: Child,
        kill_at: Instant,
        killed: bool,
        exited: Option<i32>,
    },
    /// Waiting for the election thread to revoke the lease, then exit with this code.
    Resigning {
        code: i32,
        until: Instant,
    },
    Done(i32),
}

struct Wrapper {
    cfg: Config,
    cmd: Vec<OsString>,
    events: mpsc::Receiver<Event>,
    election: election::Handle,
    status: status::Shared,
    /// Send time and TTL of the last successful renewal: the lease lives on the server until at
    /// least `sent + ttl`.
    renewal: Option<(Instant, Duration)>,
}

impl Wrapper {
    fn start(cfg: Config, cmd: Vec<OsString>) -> Wrapper {
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            error!("{what}: {e}");
            exit(code::INTERNAL)
        };
        supervisor::become_subreaper();
        let (tx, events) = mpsc::channel();
        signals::spawn(tx.clone()).unwrap_or_else(|e| fail("cannot handle signals", &e));
        let status = status::Shared::new(
            &cfg.identity,
            &cfg.lock_name,
            cfg.renew_deadline,
            cfg.retry_period,
        );
        if let Some(addr) = &cfg.status_endpoint {
            status::serve(addr, status.clone())
                .unwrap_or_else(|e| fail(config::STATUS_ENDPOINT, &e));
        }
        let election = election::spawn(cfg.clone(), tx)
            .unwrap_or_else(|e| fail("cannot start the election thread", &e));
        info!(
            "lock={} identity={}: awaiting leadership",
            cfg.lock_name, cfg.identity
        );
        Wrapper {
            cfg,
            cmd,
            events,
            election,
            status,
            renewal: None,
        }
    }

    fn run(mut self) -> i32 {
        let mut state = State::Awaiting;
        loop {
            let deadline = match &state {
                State::Awaiting => None,
                State::Leading(_) => self.renew_deadline(),
                // Leftovers of an exited child that are not our children die without a
                // SIGCHLD to us: poll the group until the kill.
                State::Stopping {
                    kill_at,
                    killed: false,
                    exited,
                    ..
                } => Some(match exited {
                    None => *kill_at,
                    Some(_) => (*kill_at).min(Instant::now() + Duration::from_millis(10)),
                }),
                State::Stopping { killed: true, .. } => None,
                State::Resigning { until, .. } => Some(*until),
                State::Done(code) => return *code,
            };
            // A passed deadline wins over queued events: a storm of signals must not delay it.
            let event = match deadline {
                Some(d) if d <= Instant::now() => Err(RecvTimeoutError::Timeout),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self
                    .events
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            state = match (state, event) {
                (state, Err(RecvTimeoutError::Disconnected)) => {
                    error!("internal channel closed");
                    self.abandon(state, code::INTERNAL)
                }
                (state, Err(RecvTimeoutError::Timeout)) => self.on_deadline(state),
                (state, Ok(Event::Signal(sig))) => self.on_signal(state, sig),
                (state, Ok(Event::Election(e))) => self.on_election(state, e),
            };
        }
    }

    fn renew_deadline(&self) -> Option<Instant> {
        self.renewal.map(|(sent, _)| sent + self.cfg.renew_deadline)
    }

    /// When the child must be gone at the latest: the kill needs a moment before the lease can
    /// expire on the server, at most a second and at most half the slack between renew deadline
    /// and TTL.
    fn kill_at(&self) -> Instant {
        let Some((sent, ttl)) = self.renewal else {
            return Instant::now();
        };
        let slack = ttl.saturating_sub(self.cfg.renew_deadline);
        sent + ttl - (slack / 2).min(Duration::from_secs(1))
    }

    fn on_deadline(&mut self, state: State) -> State {
        match state {
            State::Leading(child) => self.stop(child, "no lease renewal within the renew deadline"),
            State::Stopping {
                child,
                kill_at,
                killed,
                exited,
            } => {
                if let Some(code) = exited {
                    if !child.group_alive() {
                        child.release();
                        return self.resign(code);
                    }
                }
                if Instant::now() < kill_at {
                    return State::Stopping {
                        child,
                        kill_at,
                        killed,
                        exited,
                    };
                }
                warn!(
                    "group {} still running as the lease nears expiry: SIGKILL",
                    child.pid
                );
                match exited {
                    Some(code) => {
                        child.finish();
                        self.resign(code)
                    }
                    None => {
                        child.signal_group(libc::SIGKILL);
                        State::Stopping {
                            child,
                            kill_at,
                            killed: true,
                            exited,
                        }
                    }
                }
            }
            State::Resigning { code, .. } => {
                warn!("the election thread did not confirm resigning; the lease expires by itself");
                State::Done(code)
            }
            other => other,
        }
    }

    fn on_signal(&mut self, state: State, sig: i32) -> State {
        if sig == libc::SIGCHLD {
            return self.on_child_exit(state);
        }
        match state {
            State::Leading(ref child) | State::Stopping { ref child, .. } => {
                // A terminal being resized sends SIGWINCH in bursts: not worth a line each.
                let level = if sig == libc::SIGWINCH {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                if matches!(
                    state,
                    State::Stopping {
                        exited: Some(_),
                        ..
                    }
                ) {
                    log::log!(level, "forwarding signal {sig} to group {}", child.pid);
                    child.signal_group(sig);
                } else {
                    log::log!(level, "forwarding signal {sig} to child {}", child.pid);
                    child.forward(sig);
                }
                state
            }
            State::Awaiting if sig == libc::SIGTERM || sig == libc::SIGINT => {
                info!("signal {sig} while awaiting leadership: withdrawing");
                self.resign(code::WITHDRAWN)
            }
            other => other,
        }
    }

    fn on_child_exit(&mut self, state: State) -> State {
        let pid = match &state {
            State::Leading(child)
            | State::Stopping {
                child,
                exited: None,
                ..
            } => child.pid,
            // The child is gone already; this may have been the last of what it left.
            State::Stopping { .. } => return self.on_deadline(state),
            _ => {
                supervisor::reap(None);
                return state;
            }
        };
        // SIGCHLD also comes for the guardian and for reparented orphans.
        let Some(status) = supervisor::reap(Some(pid)) else {
            return state;
        };
        self.status.update(|s| s.child_exit_code = Some(status));
        let (child, code, kill_at, killed) = match state {
            State::Leading(child) => (child, status, None, false),
            State::Stopping {
                child,
                kill_at,
                killed,
                ..
            } => (child, code::LOST, Some(kill_at), killed),
            _ => unreachable!("matched above"),
        };
        let (lock, identity) = (&self.cfg.lock_name, &self.cfg.identity);
        if killed || !child.group_alive() {
            info!("lock={lock} identity={identity}: child {pid} exited with {status}; resigning");
            child.finish();
            return self.resign(code);
        }
        // What the child left is stopped like a lost leader's group: SIGTERM now, SIGKILL at the
        // kill deadline, so it can shut down cleanly and still never outlives the lease.
        info!(
            "lock={lock} identity={identity}: child {pid} exited with {status}; \
             stopping what it left in its group"
        );
        self.set_phase(Phase::Stopping);
        child.signal_group(libc::SIGTERM);
        State::Stopping {
            child,
            kill_at: kill_at.unwrap_or_else(|| self.kill_at()),
            killed: false,
            exited: Some(code),
        }
    }

    fn on_election(&mut self, state: State, e: election::Event) -> State {
        use election::Event as E;
        match e {
            E::Renewed { sent, ttl } => {
                if self.renewal.is_none_or(|(last, _)| sent > last) {
                    self.renewal = Some((sent, ttl));
                }
                let wall = SystemTime::now() - sent.elapsed();
                self.status.update(|s| {
                    s.renewals += 1;
                    s.last_renewal = Some((wall, sent));
                    s.failing_since = None;
                });
                state
            }
            E::Failed { renewal, kind } => {
                self.status.update(|s| {
                    *s.etcd_errors.entry(kind).or_default() += 1;
                    s.renewal_failures += u64::from(renewal);
                    s.failing_since.get_or_insert_with(Instant::now);
                });
                state
            }
            E::Reachable => {
                self.status.update(|s| s.failing_since = None);
                state
            }
            E::Leader(leader) => {
                if let Some(l) = &leader {
                    if !matches!(state, State::Leading(_)) {
                        info!(
                            "lock={} identity={}: leader is {l}",
                            self.cfg.lock_name, self.cfg.identity
                        );
                    }
                }
                self.status.update(|s| s.leader = leader);
                state
            }
            E::Elected {
                key,
                revision,
                lease,
            } => match state {
                State::Awaiting => self.lead(key, revision, lease),
                other => other,
            },
            E::Lost(why) => match state {
                State::Leading(child) => self.stop(child, &why),
                other => other,
            },
            E::Fatal(why) => {
                error!("{why}");
                self.abandon(state, code::REFUSED)
            }
            E::Twin(why) => {
                error!("{why}");
                self.abandon(state, code::TWIN)
            }
            E::Resigned => match state {
                State::Resigning { code, .. } => State::Done(code),
                other => other,
            },
        }
    }

    fn lead(&mut self, key: String, revision: i64, lease: i64) -> State {
        if self.renew_deadline().is_none_or(|d| d <= Instant::now()) {
            warn!("elected, but the lease was not renewed within the renew deadline");
            return self.resign(code::LOST);
        }
        let env = [
            ("ETCD_AWAIT_ELECTION_LEADER_KEY", key.clone()),
            ("ETCD_AWAIT_ELECTION_LEADER_REVISION", revision.to_string()),
        ];
        match supervisor::spawn(&self.cmd, &env) {
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
                self.set_phase(Phase::Running);
                State::Leading(child)
            }
            Err(e) => {
                error!("cannot run {:?}: {}", self.cmd[0], e.error);
                self.resign(e.code)
            }
        }
    }

    fn stop(&mut self, child: Child, why: &str) -> State {
        warn!(
            "lock={} identity={}: leadership lost ({why}); stopping child {}",
            self.cfg.lock_name, self.cfg.identity, child.pid
        );
        self.set_phase(Phase::Stopping);
        child.signal_group(libc::SIGTERM);
        let kill_at = self.kill_at();
        State::Stopping {
            child,
            kill_at,
            killed: false,
            exited: None,
        }
    }

    /// Ends in whatever state: the child (if any) is killed outright, then we resign.
    fn abandon(&mut self, state: State, code: i32) -> State {
        match state {
            State::Leading(child) | State::Stopping { child, .. } => {
                child.finish();
                self.resign(code)
            }
            State::Resigning { .. } | State::Awaiting | State::Done(_) => State::Done(code),
        }
    }

    fn resign(&mut self, code: i32) -> State {
        self.set_phase(Phase::Awaiting);
        self.election.resign();
        // The election thread gives up revoking within 8 s; this is only a backstop in case
        // that thread is gone.
        State::Resigning {
            code,
            until: Instant::now() + Duration::from_secs(10),
        }
    }

    fn set_phase(&self, phase: Phase) {
        let identity = &self.cfg.identity;
        self.status.update(|s| {
            s.phase = phase;
            s.since = SystemTime::now();
            if phase == Phase::Running {
                s.leader = Some(identity.clone());
            }
        });
    }
}
