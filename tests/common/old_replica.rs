//! A stand-in for a replica of the Go `etcd-await-election` (aenix-io) that our wrapper replaces,
//! so rolling upgrades can be tested with old and new replicas competing for one lock. This
//! module owns that protocol, driven through `etcd_client` on a tokio current-thread runtime on
//! its own std thread:
//!
//! * the lock is the single key `<LOCK>`, value = identity, bound to a lease of `lease_secs`
//!   (granted at start and kept alive every third of it from then on);
//! * at start, with `force` the key is deleted unconditionally; otherwise it is deleted only if it
//!   holds our own identity (restart takeover);
//! * acquiring is a transaction `create_revision(<LOCK>) == 0 → put <LOCK> with our lease`, polled
//!   every `retry` until it succeeds;
//! * once acquired the command (`eae-test-child`, with `ETCD_AWAIT_ELECTION_IDENTITY` and
//!   `EAE_TEST_LOG`) starts at once, in its own process group; it is stopped (SIGTERM, SIGKILL
//!   after 2 s) when a watch sees `<LOCK>` deleted, when the keep-alive fails, or on
//!   [`OldReplica::stop`]; when the command exits by itself the replica ends too;
//! * at the end, like the Go process exiting, the lease is revoked. A replica is used once: it
//!   does not poll again after losing the lock (a restarted pod is a new `OldReplica`).
//!
//! Every interesting moment is stamped on CLOCK_MONOTONIC (the clock of the child's records) in
//! [`OldStatus`]. Dropping an [`OldReplica`] SIGKILLs and reaps its command, revokes the lease
//! and joins the thread.

use super::records::{child_bin, monotonic_ns};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Grace between SIGTERM and SIGKILL when the old replica stops its command.
const KILL_AFTER: Duration = Duration::from_secs(2);
/// Bound of each etcd request.
const REQ: Duration = Duration::from_secs(5);

/// What an old replica did so far. All `*_ns` are CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct OldStatus {
    pub lease: Option<i64>,
    /// Failed acquisition attempts (the key was held by someone).
    pub polls: u64,
    /// Force: just before / just after the unconditional delete of `<LOCK>`.
    pub force_sent_ns: Option<u64>,
    pub forced_ns: Option<u64>,
    /// Restart takeover: `<LOCK>` held our identity and we deleted it.
    pub took_over: bool,
    /// The acquiring transaction succeeded (stamped when its answer arrived).
    pub acquired_ns: Option<u64>,
    /// Revision of the acquiring put.
    pub acquired_rev: Option<i64>,
    pub child_pid: Option<u32>,
    /// The watch saw `<LOCK>` deleted while we held it.
    pub key_deleted_ns: Option<u64>,
    /// The keep-alive failed (or reported the lease gone) while we held it.
    pub keepalive_failed_ns: Option<u64>,
    /// Our command was seen to have exited by itself.
    pub child_exited_ns: Option<u64>,
    /// Our command was reaped after we stopped it.
    pub child_stopped_ns: Option<u64>,
    /// The revoke that releases the lock was sent (the command is gone by then): the earliest a
    /// successor can learn of the release, whatever delayed this thread before it.
    pub released_ns: Option<u64>,
    /// The run ended (lease revoked or revoke attempted).
    pub done: bool,
    /// Human-readable log of what happened, for failure messages.
    pub events: Vec<String>,
    pub error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    /// Set by Drop: stop the command with SIGKILL rather than SIGTERM.
    kill: AtomicBool,
    status: Mutex<OldStatus>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut OldStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn event(&self, what: String) {
        let line = format!("{} {what}", monotonic_ns());
        self.update(|s| s.events.push(line));
    }
}

#[derive(Clone, Debug)]
struct Cfg {
    endpoint: String,
    lock: String,
    identity: String,
    lease_secs: i64,
    retry: Duration,
    force: bool,
    log: PathBuf,
    /// etcd user and password, with etcd authentication on.
    user: Option<(String, String)>,
}

pub struct OldReplica {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    identity: String,
}

impl OldReplica {
    /// Start an old replica; it polls for `<lock>` right away.
    pub fn start(
        endpoint: &str,
        lock: &str,
        identity: &str,
        lease_secs: i64,
        retry: Duration,
        force: bool,
        log: &Path,
    ) -> OldReplica {
        let cfg = Cfg {
            endpoint: endpoint.into(),
            lock: lock.into(),
            identity: identity.into(),
            lease_secs,
            retry,
            force,
            log: log.to_path_buf(),
            user: None,
        };
        Self::launch(cfg)
    }

    /// An old replica (not forcing, retrying every 200 ms) that authenticates as `user` (name,
    /// password).
    pub fn start_as(
        endpoint: &str,
        lock: &str,
        identity: &str,
        lease_secs: i64,
        user: (&str, &str),
        log: &Path,
    ) -> OldReplica {
        Self::launch(Cfg {
            endpoint: endpoint.into(),
            lock: lock.into(),
            identity: identity.into(),
            lease_secs,
            retry: Duration::from_millis(200),
            force: false,
            log: log.to_path_buf(),
            user: Some((user.0.into(), user.1.into())),
        })
    }

    fn launch(cfg: Cfg) -> OldReplica {
        let identity = cfg.identity.clone();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            kill: AtomicBool::new(false),
            status: Mutex::new(OldStatus::default()),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("old-replica-{identity}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let mut child = None;
                if let Err(e) = rt.block_on(run(&cfg, &sh, &mut child)) {
                    sh.event(format!("error: {e}"));
                    sh.update(|s| s.error = Some(e));
                }
                // Whatever happened, the command does not outlive the replica's run.
                if let Some(mut c) = child.take() {
                    kill_group(&c);
                    let _ = c.wait();
                }
                sh.update(|s| s.done = true);
            })
            .expect("spawn old replica thread");
        OldReplica {
            shared,
            thread: Some(thread),
            identity,
        }
    }

    pub fn status(&self) -> OldStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True while it holds the lock and its command runs.
    pub fn is_holding(&self) -> bool {
        let s = self.status();
        s.acquired_ns.is_some() && !s.done && s.child_stopped_ns.is_none()
    }

    /// Wait until `f` yields a value; panics with the replica's event log on timeout.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&OldStatus) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if let Some(v) = f(&s) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "old replica {}: timed out after {timeout:?} waiting for {what}; status: \
                     {s:#?}",
                    self.identity
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until it acquired the lock; returns when (ns).
    pub fn wait_acquired(&self, timeout: Duration) -> u64 {
        self.wait_for(timeout, "acquiring the lock", |s| s.acquired_ns)
    }

    /// Wait until its run ended (command gone, lease revoked).
    pub fn wait_done(&self, timeout: Duration) -> OldStatus {
        self.wait_for(timeout, "the end of its run", |s| s.done.then(|| s.clone()))
    }

    /// Graceful stop, like SIGTERM to the Go process: SIGTERM the command, wait for it (SIGKILL
    /// after 2 s), revoke the lease. Returns the final status.
    pub fn stop(&mut self) -> OldStatus {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.status()
    }
}

impl Drop for OldReplica {
    fn drop(&mut self) {
        // The thread SIGKILLs the command (it alone reaps it, so no pid can be recycled under
        // us), revokes the lease and finishes.
        self.shared.kill.store(true, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kill_group(c: &Child) {
    // SAFETY: the command leads its own process group and has not been reaped.
    unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQ, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQ:?}")),
    }
}

/// The lease keep-alive, one request in flight at a time. `Err` when the lease is gone or the
/// keep-alive failed: the Go tool then stops its command.
struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl KeepAlive {
    async fn once(&mut self) -> Result<(), String> {
        let r = timed("keep-alive", async {
            self.keeper.keep_alive().await?;
            self.stream.message().await
        })
        .await?;
        match r {
            Some(r) if r.ttl() > 0 => Ok(()),
            Some(_) => Err("lease expired or revoked".into()),
            None => Err("keep-alive stream ended".into()),
        }
    }
}

async fn run(cfg: &Cfg, sh: &Shared, child: &mut Option<Child>) -> Result<(), String> {
    let opts = cfg
        .user
        .as_ref()
        .map(|(user, password)| ConnectOptions::new().with_user(user, password));
    let mut c = timed("connect", Client::connect([cfg.endpoint.as_str()], opts)).await?;
    let grant = timed("lease grant", c.lease_grant(cfg.lease_secs, None)).await?;
    let lease = grant.id();
    sh.update(|s| s.lease = Some(lease));
    sh.event(format!("granted lease {lease:x} ({}s)", grant.ttl()));
    let result = hold(cfg, sh, &mut c, lease, child).await;
    // Like the Go process exiting: the command is gone, the lease is revoked.
    if let Some(mut ch) = child.take() {
        stop_child(sh, &mut ch).await;
    }
    sh.update(|s| s.released_ns = Some(monotonic_ns()));
    match timed("lease revoke", c.lease_revoke(lease)).await {
        Ok(_) => sh.event(format!("revoked lease {lease:x}")),
        Err(e) => sh.event(format!("revoke: {e}")),
    }
    result
}

async fn hold(
    cfg: &Cfg,
    sh: &Shared,
    c: &mut Client,
    lease: i64,
    child: &mut Option<Child>,
) -> Result<(), String> {
    let lock = cfg.lock.as_str();
    let (keeper, stream) = timed("keep-alive", c.lease_keep_alive(lease)).await?;
    let mut ka = KeepAlive { keeper, stream };
    let period = Duration::from_secs(cfg.lease_secs as u64) / 3;
    let mut next_ka = tokio::time::Instant::now() + period;

    if cfg.force {
        let sent = monotonic_ns();
        let r = timed("force delete", c.delete(lock, None)).await?;
        let done = monotonic_ns();
        sh.update(|s| {
            s.force_sent_ns = Some(sent);
            s.forced_ns = Some(done);
        });
        sh.event(format!("force: deleted {lock} ({} keys)", r.deleted()));
    } else {
        let takeover = Txn::new()
            .when([Compare::value(
                lock,
                CompareOp::Equal,
                cfg.identity.as_str(),
            )])
            .and_then([TxnOp::delete(lock, None)]);
        if timed("takeover", c.txn(takeover)).await?.succeeded() {
            sh.update(|s| s.took_over = true);
            sh.event(format!("{lock} held our identity: deleted it"));
        }
    }

    // Poll: create the key if absent, else sleep RETRY_PERIOD and try again.
    let rev = loop {
        if sh.stop.load(Ordering::SeqCst) {
            sh.event("stopped while polling".into());
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(lock, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                lock,
                cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let r = timed("acquire", c.txn(txn)).await?;
        if r.succeeded() {
            let rev = r.header().map_or(0, |h| h.revision());
            sh.update(|s| {
                s.acquired_ns = Some(monotonic_ns());
                s.acquired_rev = Some(rev);
            });
            sh.event(format!("acquired {lock} at revision {rev}"));
            break rev;
        }
        sh.update(|s| s.polls += 1);
        let wake = tokio::time::Instant::now() + cfg.retry;
        while tokio::time::Instant::now() < wake {
            if sh.stop.load(Ordering::SeqCst) {
                break;
            }
            if tokio::time::Instant::now() >= next_ka {
                ka.once().await?;
                next_ka += period;
            }
            let until = wake.min(next_ka);
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + ms(10))).await;
        }
    };

    // Lead: start the command at once, then watch the key.
    let mut cmd = Command::new(child_bin());
    cmd.env("ETCD_AWAIT_ELECTION_IDENTITY", &cfg.identity)
        .env("EAE_TEST_LOG", &cfg.log)
        .env_remove("RUST_LOG")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let ch = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", child_bin()))?;
    let pid = ch.id();
    sh.update(|s| s.child_pid = Some(pid));
    sh.event(format!("started command {pid}"));
    *child = Some(ch);

    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut watch = timed("watch", c.watch(lock, Some(opts))).await?;
    let mut tick = tokio::time::interval(ms(10));
    loop {
        tokio::select! {
            m = watch.message() => {
                let m = m.map_err(|e| format!("watch: {e}"))?;
                let Some(m) = m else { return Err("watch stream ended".into()) };
                if m.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    sh.update(|s| s.key_deleted_ns = Some(monotonic_ns()));
                    sh.event(format!("{lock} deleted: stopping the command"));
                    return Ok(());
                }
            }
            _ = tokio::time::sleep_until(next_ka) => {
                next_ka += period;
                if let Err(e) = ka.once().await {
                    sh.update(|s| s.keepalive_failed_ns = Some(monotonic_ns()));
                    sh.event(format!("keep-alive failed ({e}): stopping the command"));
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                if sh.stop.load(Ordering::SeqCst) {
                    sh.event("stop requested".into());
                    return Ok(());
                }
                let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(st) = exited {
                    *child = None;
                    sh.update(|s| s.child_exited_ns = Some(monotonic_ns()));
                    sh.event(format!("command exited by itself ({st})"));
                    return Ok(());
                }
            }
        }
    }
}

/// SIGTERM the command's group, wait up to [`KILL_AFTER`], then SIGKILL; reap it.
async fn stop_child(sh: &Shared, ch: &mut Child) {
    if sh.kill.load(Ordering::SeqCst) {
        kill_group(ch);
    } else {
        // SAFETY: the command leads its own process group and has not been reaped.
        unsafe { libc::kill(-(ch.id() as libc::pid_t), libc::SIGTERM) };
    }
    let deadline = Instant::now() + KILL_AFTER;
    loop {
        if let Ok(Some(_)) = ch.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            sh.event("command ignored SIGTERM: SIGKILL".into());
            kill_group(ch);
            let _ = ch.wait();
            break;
        }
        tokio::time::sleep(ms(5)).await;
    }
    sh.update(|s| s.child_stopped_ns = Some(monotonic_ns()));
    sh.event(format!("command {} stopped", ch.id()));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
