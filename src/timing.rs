//! The timing rules, as pure functions of the lease actually held (the TTL of the last renewal),
//! the configuration and the time now: when a leader's command must get SIGTERM and SIGKILL and
//! when its group is given up, how often the lease is renewed, how long resigning may take, and
//! the margin a lease must leave above the renew deadline to be led with at all.
//!
//! Pure so that they are tested over the whole accepted range of the settings (see `config`) and
//! against a host suspended for any length of time. `main` applies them to its state, `election`
//! paces its keep-alives by them, and `clock` supplies the time; nothing here reads a clock.

use std::time::Duration;

use crate::clock::Boot;

/// The least time between the renew deadline and the lease's expiry (`T − R`): half of it at
/// least is the kill budget, and half of it at least separates SIGTERM from SIGKILL.
pub const MIN_MARGIN: Duration = Duration::from_secs(1);

/// The most the kill budget grows to, however long the margin.
const MAX_KILL_BUDGET: Duration = Duration::from_secs(1);

/// Whether a lease of this TTL can be led with under this renew deadline: it leaves
/// [`MIN_MARGIN`] between them.
pub fn leaves_margin(ttl: Duration, renew_deadline: Duration) -> bool {
    ttl.checked_sub(renew_deadline)
        .is_some_and(|margin| margin >= MIN_MARGIN)
}

/// A keep-alive sent at `sent` succeeded: the lease lives on the server until at least
/// `sent + ttl`, `ttl` being the lease's granted TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub sent: Boot,
    pub ttl: Duration,
}

impl Renewal {
    /// When a leader without a newer renewal stops its command (`s + R`).
    pub fn renew_deadline(self, renew_deadline: Duration) -> Boot {
        self.sent.saturating_add(renew_deadline)
    }

    /// Whether a command elected at `now` may start on this renewal: inside the renew deadline
    /// with a leader's renewal bound to spare. Closer to it, the command would be stopped at the
    /// deadline unless the next counted renewal came first, and one may take that bound; that
    /// renewal is already due (a leader's period, at most `R/2`, after the last counted one, or
    /// at once after a waiter's keep-alive that did not count) or in flight, so the command
    /// starts with it instead. Past the deadline, it must: the lease may have been lost meanwhile.
    pub fn starts(self, renew_deadline: Duration, now: Boot) -> bool {
        let bound = renewal_bound(Role::Leading, self.ttl, renew_deadline);
        now < self.renew_deadline(renew_deadline).saturating_sub(bound)
    }

    /// How long before the lease can expire the group gets SIGKILL: at most a second and at most
    /// half the margin `T − R` (so at least half a second for a lease that leaves the margin).
    pub fn kill_budget(self, renew_deadline: Duration) -> Duration {
        (self.ttl.saturating_sub(renew_deadline) / 2).min(MAX_KILL_BUDGET)
    }

    /// When the group must be gone at the latest (`s + T − k`).
    pub fn kill_at(self, renew_deadline: Duration) -> Boot {
        // `k ≤ T/2`: the subtraction cannot saturate, and the sum saturates only at the end of
        // time.
        let before_expiry = self.ttl.saturating_sub(self.kill_budget(renew_deadline));
        self.sent.saturating_add(before_expiry)
    }
}

/// What is due for the command's group at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing before this time.
    Nothing(Boot),
    /// SIGTERM: no renewal within the renew deadline.
    Stop,
    /// SIGKILL: the lease can expire within the kill budget (a host resumed from a suspend
    /// longer than the margin gets here at once, SIGTERM and SIGKILL together).
    Kill,
    /// SIGKILL was sent a kill budget ago and the group is not empty: leave it to the guardian,
    /// exit without resigning.
    GiveUp,
}

/// A leader's command at `now`: it runs until the renew deadline of the last renewal.
pub fn leading(renewal: Renewal, renew_deadline: Duration, now: Boot) -> Due {
    if now >= renewal.kill_at(renew_deadline) {
        Due::Kill
    } else if now >= renewal.renew_deadline(renew_deadline) {
        Due::Stop
    } else {
        Due::Nothing(renewal.renew_deadline(renew_deadline))
    }
}

/// A group being stopped: SIGTERM sent, SIGKILL due at `kill_at`, and the group given up one kill
/// budget after the SIGKILL was sent (at the earliest expiry of the lease, when it was sent on
/// time; a kill budget after a resume, when the host slept through the kill deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    kill_at: Boot,
    budget: Duration,
    killed: Option<Boot>,
}

impl Stop {
    /// Stopping from now: SIGKILL at the kill deadline of the last renewal (at once without one).
    pub fn new(renewal: Option<Renewal>, renew_deadline: Duration, now: Boot) -> Stop {
        let (kill_at, budget) = match renewal {
            Some(r) => (r.kill_at(renew_deadline), r.kill_budget(renew_deadline)),
            None => (now, Duration::ZERO),
        };
        Stop {
            kill_at,
            budget,
            killed: None,
        }
    }

    /// SIGKILL sent now, without a SIGTERM first (the wrapper is abandoning its command).
    pub fn killed_now(renewal: Option<Renewal>, renew_deadline: Duration, now: Boot) -> Stop {
        let mut stop = Stop::new(renewal, renew_deadline, now);
        stop.kill(now);
        stop
    }

    /// SIGKILL was sent at `now`.
    pub fn kill(&mut self, now: Boot) {
        self.killed.get_or_insert(now);
    }

    pub fn is_killed(self) -> bool {
        self.killed.is_some()
    }

    /// What is due at `now`.
    pub fn due(self, now: Boot) -> Due {
        match self.killed {
            None if now >= self.kill_at => Due::Kill,
            None => Due::Nothing(self.kill_at),
            Some(at) => match at.saturating_add(self.budget) {
                give_up if now >= give_up => Due::GiveUp,
                give_up => Due::Nothing(give_up),
            },
        }
    }
}

/// What a candidate's lease is kept alive for, which sets how often and how carefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Queued behind others: the lease only keeps our place. Its keep-alives are not confirmed
    /// and do not count towards a renew deadline, but for one in `WAITER_CONFIRMS_ONE_IN`, which
    /// is (they cost etcd less than an `etcdctl lock` waiter's).
    Waiting,
    /// Next in line (our predecessor holds the record, or nobody is queued ahead of us, or we
    /// force): we may be handed the lock at any moment, and start at once only with a counted
    /// renewal inside the renew deadline.
    Next,
    Leading,
}

impl Role {
    /// Whether each renewal is confirmed by a linearizable read and counted.
    pub fn counts(self) -> bool {
        self != Role::Waiting
    }
}

/// A waiter confirms one keep-alive in this many (a linearizable read, as a renewal that counts
/// does): one talking to a member whose raft loop stalled, which answers keep-alives but not
/// reads (etcd-io/etcd#15247), learns it within 1.75 TTLs (1.5 to its next read, and that read's
/// `renewal_bound`), moves to another member and keeps (or takes again) its place. Every other
/// one would cost a fleet 1.10 times `etcdctl lock`'s requests; every one, 1.4 times.
pub const WAITER_CONFIRMS_ONE_IN: u32 = 3;

/// How often the lease is renewed, from the send of the last renewal.
pub fn keep_alive_period(role: Role, ttl: Duration, renew_deadline: Duration) -> Duration {
    match role {
        Role::Waiting => longest_period(ttl, false),
        // Within half the renew deadline: elected, `main` starts the command only with a
        // renewal inside its deadline, and the next one is due a leader's period after it,
        // within the other half.
        Role::Next | Role::Leading => longest_period(ttl, true).min(renew_deadline / 2),
    }
}

/// The longest a live candidate goes between renewals, whatever its renew deadline. Next in line
/// or leading, a third of the lease, as etcd's own sessions renew: a renewal and its read cost
/// etcd twice a waiter's keep-alive. Otherwise (`counts` false) half the lease: an attempt gets a
/// quarter (`renewal_bound`), and a second one fits before the lease ends; a waiter whose lease
/// ends anyway only joins again, behind.
pub fn longest_period(ttl: Duration, counts: bool) -> Duration {
    if counts {
        ttl / 3
    } else {
        ttl / 2
    }
}

/// How long one renewal (with its confirming read) may take before it is given up and retried
/// on a fresh connection: half a period, so that a lost answer leaves time for another attempt
/// before the renew deadline (or the lease's end).
pub fn renewal_bound(role: Role, ttl: Duration, renew_deadline: Duration) -> Duration {
    keep_alive_period(role, ttl, renew_deadline) / 2
}

/// How long a leader may go without a counted renewal before `/healthz` calls it failing: a
/// period and its attempt's bound, so a renewal under way is not taken for trouble.
pub fn renewal_overdue(ttl: Duration, renew_deadline: Duration) -> Duration {
    let role = Role::Leading;
    keep_alive_period(role, ttl, renew_deadline) + renewal_bound(role, ttl, renew_deadline)
}

/// How long resigning keeps trying to revoke the lease: until it would have expired anyway, or
/// 8 s, within `main`'s backstop.
pub fn resign_budget(ttl: Duration) -> Duration {
    ttl.min(Duration::from_secs(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};
    use crate::etcd::op_timeout;
    use crate::failure::grace;

    const MS: Duration = Duration::from_millis(1);
    const NS: Duration = Duration::from_nanos(1);
    const S: Duration = Duration::from_secs(1);

    /// splitmix64: a fixed sequence, so that a failure is reproduced by running the test again.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce5_e4b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `[lo, hi]`, in nanoseconds.
        fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
            let (lo, hi) = (lo.as_nanos(), hi.as_nanos());
            let x = (u128::from(self.next()) << 64 | u128::from(self.next())) % (hi - lo + 1);
            let n = lo + x;
            Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32)
        }
    }

    /// The edges of `[lo, hi]` and what lies just inside them, plus a few values between.
    fn edges(lo: Duration, hi: Duration, rng: &mut Random) -> Vec<Duration> {
        let mut v = vec![
            lo,
            hi,
            lo.saturating_add(NS).min(hi),
            hi.saturating_sub(NS).max(lo),
        ];
        v.extend((0..4).map(|_| rng.between(lo, hi)));
        v
    }

    /// One accepted configuration: lease TTL (seconds), renew deadline, retry period.
    fn configs(rng: &mut Random) -> Vec<(i64, Duration, Duration)> {
        let (retry_min, retry_max) = config::RETRY_PERIOD_RANGE;
        let mut ttls = vec![
            config::MIN_LEASE_TTL,
            config::MIN_LEASE_TTL + 1,
            15,
            config::MAX_LEASE_TTL - 1,
            config::MAX_LEASE_TTL,
        ];
        ttls.extend((0..6).map(|_| {
            let t = rng.between(S * 2, S * 60).as_secs();
            i64::try_from(t).unwrap()
        }));
        ttls.push(
            i64::try_from(rng.next() % config::MAX_LEASE_TTL as u64)
                .unwrap()
                .max(2),
        );
        let mut out = Vec::new();
        for t in ttls {
            let ttl = Duration::from_secs(t as u64);
            for r in edges(config::MIN_RENEW_DEADLINE, ttl - MIN_MARGIN, rng) {
                for retry in edges(retry_min, retry_max, rng) {
                    out.push((t, r, retry));
                }
            }
        }
        out
    }

    fn config(ttl: i64, renew_deadline: Duration, retry_period: Duration) -> Config {
        Config {
            lock_name: "lock".into(),
            identity: "me".into(),
            endpoints: vec!["http://127.0.0.1:2379".into()],
            status_endpoint: None,
            advertise: None,
            lease_ttl: ttl,
            renew_deadline,
            retry_period,
            tls: None,
            force_acquire: false,
            user: None,
            wait_timeout: None,
            health: None,
        }
    }

    /// The TTLs a leader may hold under a configuration: the one asked for, more (etcd may grant
    /// more), and any adopted one that leaves the margin.
    fn held_ttls(cfg: &Config, rng: &mut Random) -> Vec<Duration> {
        let asked = Duration::from_secs(cfg.lease_ttl as u64);
        let least = (cfg.renew_deadline + MIN_MARGIN).as_secs_f64().ceil() as u64;
        let mut v = vec![asked, asked + S, Duration::from_secs(least)];
        v.push(Duration::from_secs(config::MAX_LEASE_TTL as u64));
        v.push(Duration::from_secs(rng.next() % config::MAX_LEASE_TTL as u64).max(asked));
        v
    }

    /// Every timing rule over the accepted range of every setting, at the edges and at random
    /// points between, with renewals sent at any time since boot up to the end of time: no
    /// panic (overflow), and the invariants that keep two commands from running at once.
    #[test]
    fn the_rules_hold_over_the_whole_accepted_range() {
        let mut rng = Random(0x5eed);
        let base = Boot::now();
        let sents = [
            base,
            base.saturating_add(Duration::from_secs(u64::MAX / 2)),
            base.saturating_add(Duration::MAX),
        ];
        let mut checked = 0;
        for (t, r, retry) in configs(&mut rng) {
            let cfg = config(t, r, retry);
            assert!(
                config::check_timing(t, r, retry).is_ok(),
                "{t} {r:?} {retry:?}"
            );
            let op = op_timeout(&cfg);
            assert!((2 * S..=5 * S).contains(&op), "op_timeout {op:?}");
            let g = grace(retry);
            assert!(g >= retry * 3 && g >= 5 * S, "grace {g:?} for {retry:?}");
            for ttl in held_ttls(&cfg, &mut rng) {
                assert!(leaves_margin(ttl, r), "{ttl:?} {r:?}");
                for role in [Role::Waiting, Role::Next, Role::Leading] {
                    let (p, b) = (keep_alive_period(role, ttl, r), renewal_bound(role, ttl, r));
                    // Counted: a renewal and a retry after a lost answer fit in the deadline.
                    let within = if role.counts() { r } else { ttl };
                    assert!(
                        p > Duration::ZERO && b > Duration::ZERO && p + b < within,
                        "{role:?}: period {p:?}, bound {b:?} for {ttl:?}/{r:?}"
                    );
                    assert!(p <= longest_period(ttl, false), "{role:?} {ttl:?}/{r:?}");
                    assert!(
                        p <= longest_period(ttl, role.counts()),
                        "{role:?} {ttl:?}/{r:?}"
                    );
                }
                assert!(renewal_overdue(ttl, r) < r, "{ttl:?}/{r:?}");
                let budget = resign_budget(ttl);
                assert!(budget > Duration::ZERO && budget <= ttl.min(8 * S));
                for sent in sents {
                    check_renewal(Renewal { sent, ttl }, r);
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked} cases");
    }

    /// The deadlines of one renewal, and the decisions along the way to its expiry and past it.
    fn check_renewal(renewal: Renewal, r: Duration) {
        let Renewal { sent, ttl } = renewal;
        let k = renewal.kill_budget(r);
        assert!(k >= MS * 500 && k <= S, "kill budget {k:?}");
        let (stop, kill) = (renewal.renew_deadline(r), renewal.kill_at(r));
        // SIGKILL before expiry: renewal + R <= kill_at <= renewal + T - 0.5 s.
        assert!(stop <= kill, "{renewal:?} R {r:?}");
        assert!(
            kill <= sent.saturating_add(ttl - MS * 500),
            "{renewal:?} R {r:?}"
        );
        let end = sent.saturating_add(Duration::MAX);
        if end == sent || stop == end {
            // At the end of time: nothing later can be told apart.
            return;
        }
        assert_eq!(stop.saturating_duration_since(sent), r);
        assert_eq!(kill.saturating_duration_since(sent), ttl - k);
        // Elected on it: a command starts on a renewal answered within its bound, and on one as
        // old as the next in line's can be (its next renewal due a period later, in flight for
        // up to a bound); not so close to the deadline that it could end before a renewal came.
        let (p, b) = (
            keep_alive_period(Role::Next, ttl, r),
            renewal_bound(Role::Leading, ttl, r),
        );
        assert!(
            renewal.starts(r, sent.saturating_add(b)),
            "{renewal:?} R {r:?}"
        );
        let next_in_line = sent.saturating_add(p + b).saturating_sub(NS);
        assert!(renewal.starts(r, next_in_line), "{renewal:?} R {r:?}");
        assert!(
            !renewal.starts(r, stop.saturating_sub(b)),
            "{renewal:?} R {r:?}"
        );
        assert!(!renewal.starts(r, stop), "{renewal:?} R {r:?}");
        assert_eq!(leading(renewal, r, sent), Due::Nothing(stop));
        assert_eq!(
            leading(renewal, r, stop.saturating_sub(NS)),
            Due::Nothing(stop)
        );
        assert_eq!(leading(renewal, r, stop), Due::Stop);
        assert_eq!(leading(renewal, r, kill.saturating_sub(NS)), Due::Stop);
        assert_eq!(leading(renewal, r, kill), Due::Kill);
        assert_eq!(leading(renewal, r, end), Due::Kill);
        let mut s = Stop::new(Some(renewal), r, stop);
        assert_eq!(s.kill_at, kill);
        assert_eq!(s.due(stop), Due::Nothing(kill));
        assert_eq!(s.due(kill), Due::Kill);
        // Given up one budget after a SIGKILL sent on time: by the earliest expiry (the guardian
        // and the lease take it from there).
        s.kill(kill);
        let give_up = kill.saturating_add(k);
        assert!(give_up <= sent.saturating_add(ttl));
        assert_eq!(s.due(kill), Due::Nothing(give_up));
        assert_eq!(s.due(give_up.saturating_sub(NS)), Due::Nothing(give_up));
        assert_eq!(s.due(give_up), Due::GiveUp);
        let abandoned = Stop::killed_now(Some(renewal), r, stop);
        assert_eq!(abandoned.due(stop), Due::Nothing(stop.saturating_add(k)));
        assert_eq!(abandoned.due(end), Due::GiveUp);
    }

    /// The host suspended while leading: `CLOCK_BOOTTIME` jumps by the suspend's length when it
    /// resumes, and the decision taken on waking is the one for the time that really passed.
    #[test]
    fn a_suspend_turns_into_stop_now_or_kill_now() {
        let r = Duration::from_secs(10);
        let renewal = Renewal {
            sent: Boot::now(),
            ttl: Duration::from_secs(15),
        };
        let before = renewal.sent.saturating_add(Duration::from_secs(3));
        assert_eq!(
            leading(renewal, r, before),
            Due::Nothing(renewal.renew_deadline(r))
        );
        // Suspended 8 s: past the renew deadline, before the kill deadline.
        let resumed = before.saturating_add(Duration::from_secs(8));
        assert_eq!(leading(renewal, r, resumed), Due::Stop);
        // Suspended a night: the lease expired on the server long ago. SIGKILL at once, and the
        // group is given up on a kill budget from now, not from a deadline long past.
        let night = before.saturating_add(Duration::from_secs(8 * 3600));
        assert_eq!(leading(renewal, r, night), Due::Kill);
        let mut s = Stop::new(Some(renewal), r, night);
        assert_eq!(s.due(night), Due::Kill);
        s.kill(night);
        assert_eq!(s.due(night), Due::Nothing(night.saturating_add(S)));
        // Suspended while stopping, before the SIGKILL: SIGKILL on waking, and a kill budget for
        // the group to go from then, not from a deadline long past.
        let mut s = Stop::new(Some(renewal), r, resumed);
        assert_eq!(s.due(resumed), Due::Nothing(renewal.kill_at(r)));
        let woke = resumed.saturating_add(Duration::from_secs(60));
        assert_eq!(s.due(woke), Due::Kill);
        s.kill(woke);
        assert_eq!(s.due(woke), Due::Nothing(woke.saturating_add(S)));
        // Suspended after the SIGKILL: given up on waking.
        let later = woke.saturating_add(Duration::from_secs(60));
        assert_eq!(s.due(later), Due::GiveUp);
    }

    #[test]
    fn the_margin_counts_the_lease_held() {
        let r = Duration::from_millis(14_900);
        assert!(!leaves_margin(Duration::from_secs(15), r));
        assert!(leaves_margin(Duration::from_secs(16), r));
        assert!(leaves_margin(Duration::from_secs(30), r));
        assert!(!leaves_margin(Duration::from_secs(10), r));
        assert!(leaves_margin(Duration::from_secs(2), S));
        // A lease without the margin would be stopped 50 ms before its SIGKILL.
        let adopted = Renewal {
            sent: Boot::now(),
            ttl: Duration::from_secs(15),
        };
        assert_eq!(adopted.kill_budget(r), MS * 50);
    }
}
