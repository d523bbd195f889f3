//! A participant of etcd's own election recipe on the lock: a real `etcdctl lock LOCK CMD`, the
//! client every user of etcd has (Debian's 3.4 by default, or `EAE_ETCDCTL_BIN`). It creates
//! `LOCK/<its lease hex>`, waits only until every key under `LOCK/` created before its own is
//! gone (3.4 never checks that its own key still exists), runs CMD — here `eae-test-child`, whose
//! records the invariant monitor reads like any candidate's — and when CMD ends deletes its key
//! and revokes its lease. It never reads our holder record or yield request.
//!
//! Dropping a [`LockClient`] kills its process group (etcdctl and its command) and reaps it.

use super::records::child_bin;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct LockClient {
    child: Child,
}

impl LockClient {
    /// `etcdctl lock LOCK eae-test-child ARGS...` with identity `id`, records to `log`.
    pub fn start(endpoint: &str, lock: &str, id: &str, log: &Path, args: &[&str]) -> LockClient {
        let etcdctl = std::env::var("EAE_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into());
        let child = Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .env("ETCD_AWAIT_ELECTION_IDENTITY", id)
            .env("EAE_TEST_LOG", log)
            .arg(format!("--endpoints={endpoint}"))
            // `--`: the command's flags are not etcdctl's.
            .args(["lock", lock, "--", child_bin()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("run {etcdctl} lock: {e}"));
        LockClient { child }
    }

    /// etcdctl's exit, once its command ended and it let go; panics after `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for etcdctl") {
                return st;
            }
            assert!(
                Instant::now() < until,
                "etcdctl lock still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LockClient {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this fixture created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
