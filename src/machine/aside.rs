//! The machine's rooms for a candidate that may stand aside: out of the queue while its health
//! check says it is sick (`HEALTH_CMD`/`HEALTH_URL`), and giving up when it does not lead in time
//! (`WAIT_TIMEOUT`). The states and the rest of the rules are `machine`'s.

use std::time::Duration;

use log::{debug, info, warn};

use super::{State, Wrapper};
use crate::clock::Boot;
use crate::config;
use crate::election;
use crate::exit;
use crate::failure::{self, Failure};
use crate::health::Verdict;
use crate::status::Phase;
use crate::supervisor::Child;

/// Health, and waiting with a limit.
impl Wrapper {
    /// When a candidate that has not led gives up (`WAIT_TIMEOUT` above zero).
    pub(super) fn wait_deadline(&self) -> Option<Boot> {
        self.wait_until.filter(|_| !self.led)
    }

    /// `WAIT_TIMEOUT=0` and not led yet: a candidate that cannot lead at once gives up.
    pub(super) fn tries_once(&self) -> bool {
        self.cfg.wait_timeout.is_some_and(|w| w.is_zero()) && !self.led
    }

    /// Not leading within `WAIT_TIMEOUT` (`why`, when trying once): withdraws, never to start
    /// the command.
    pub(super) fn give_up(&mut self, state: State, why: &str) -> State {
        let next = match state {
            State::Aside { resigned } => self.leave_aside(resigned, exit::WAIT_TIMEOUT),
            _ => self.resign(exit::WAIT_TIMEOUT),
        };
        info!(
            "lock={} identity={}: not leading within {} ({:?}{}); withdrawing",
            self.cfg.lock_name,
            self.cfg.identity,
            config::WAIT_TIMEOUT,
            self.cfg.wait_timeout.unwrap_or_default(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        );
        next
    }

    /// Trying once, a request failed: the try ends with the start-up grace (riding out a
    /// member still starting or one endpoint down, as start-up does) unless decided by then. A
    /// permanent failure is left to the election, which gives up on it at the same grace
    /// (`REFUSED`, with its remedy).
    pub(super) fn on_failed(&mut self, failure: &Failure) {
        if self.tries_once() && self.wait_until.is_none() && !failure.cause.permanent() {
            let grace = failure::grace(self.cfg.retry_period);
            self.wait_until = Some(Boot::now().saturating_add(grace));
        }
    }

    /// Exits from out of the queue, once the election thread confirmed it resigned.
    pub(super) fn leave_aside(&mut self, resigned: bool, code: i32) -> State {
        if resigned {
            return State::Done(code);
        }
        State::Resigning {
            code,
            until: Boot::now().saturating_add(Duration::from_secs(10)),
        }
    }

    /// What the queue says: somebody ahead of us (a try-once candidate gives up), or behind us
    /// while we lead (an unhealthy leader hands over to it).
    pub(super) fn on_queue(&mut self, state: State, e: &election::Event) -> State {
        match (state, e) {
            (State::Awaiting, election::Event::Queued) if self.tries_once() => self.give_up(
                State::Awaiting,
                "another candidate is queued ahead or holds the lock",
            ),
            (State::Leading(child), election::Event::Successor(waits)) => {
                self.successor = *waits;
                self.unless_healthy(child)
            }
            (state, _) => state,
        }
    }

    pub(super) fn on_health(&mut self, state: State, v: Verdict) -> State {
        self.status.update(|s| {
            let h = s.health.get_or_insert_with(Default::default);
            h.checks += 1;
            h.failures += u64::from(!v.passed);
            h.transitions += u64::from(v.changed && h.healthy.is_some());
            h.healthy = Some(v.healthy);
        });
        if !v.passed {
            debug!("health check failed: {}", v.detail);
        }
        if !v.changed {
            return state;
        }
        self.healthy = v.healthy;
        let (lock, identity) = (&self.cfg.lock_name, &self.cfg.identity);
        if v.healthy {
            self.said_staying = false;
            info!("lock={lock} identity={identity}: healthy ({})", v.detail);
            match state {
                State::Aside { resigned: true } => self.rejoin(),
                other => other,
            }
        } else {
            warn!("lock={lock} identity={identity}: unhealthy ({})", v.detail);
            self.on_sick(state)
        }
    }

    /// Turned unhealthy: a leader hands over if somebody waits; a waiter leaves the queue.
    pub(super) fn on_sick(&mut self, state: State) -> State {
        match state {
            State::Awaiting | State::Aside { .. } if self.tries_once() => {
                self.give_up(state, "unhealthy")
            }
            State::Leading(child) => self.unless_healthy(child),
            State::Awaiting => {
                self.pending = None;
                self.stand_aside()
            }
            other => other,
        }
    }

    /// A leader that is unhealthy stops its command to hand over, if a candidate waits; if none
    /// does, it keeps leading (a sick service beats none), and says so once.
    pub(super) fn unless_healthy(&mut self, child: Child) -> State {
        if self.healthy {
            return State::Leading(child);
        }
        let (lock, identity) = (&self.cfg.lock_name, &self.cfg.identity);
        if !self.successor {
            if !std::mem::replace(&mut self.said_staying, true) {
                warn!(
                    "lock={lock} identity={identity}: unhealthy, but no other candidate waits: \
                     leading on"
                );
            }
            return State::Leading(child);
        }
        if self.terminating {
            return State::Leading(child);
        }
        child.signal_group(libc::SIGTERM);
        child.signal_group(libc::SIGCONT);
        self.stepping_down = true;
        self.set_phase(Phase::Stopping);
        let pid = child.pid;
        let next = self.stopping(child, None);
        warn!(
            "lock={lock} identity={identity}: unhealthy while another candidate waits: stopped \
             child {pid} (SIGTERM) to hand over"
        );
        next
    }

    /// Leaves the queue (a leader: once its group is empty, handing the record on) until healthy.
    pub(super) fn stand_aside(&mut self) -> State {
        self.set_phase(Phase::Awaiting);
        self.election.resign();
        info!(
            "lock={} identity={}: unhealthy: out of the queue until healthy again",
            self.cfg.lock_name, self.cfg.identity
        );
        State::Aside { resigned: false }
    }

    pub(super) fn rejoin(&mut self) -> State {
        self.successor = false;
        self.election.join();
        info!(
            "lock={} identity={}: joining the queue",
            self.cfg.lock_name, self.cfg.identity
        );
        State::Awaiting
    }
}
