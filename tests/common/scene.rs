//! A scene: one etcd, one record log watched by an invariant [`Monitor`], one lock name, and a
//! temp dir holding the log. Test files add their own helpers on top (as a local extension trait)
//! and pick their own candidate timings through [`Scene::candidate`].

use super::candidate::{Candidate, CandidateBuilder};
use super::etcd::Etcd;
use super::invariant::Monitor;
use super::TempDir;
use std::path::PathBuf;

pub struct Scene {
    pub lock: String,
    pub mon: Monitor,
    pub log: PathBuf,
    _dir: TempDir,
    pub etcd: Etcd,
}

impl Scene {
    /// Start an etcd and a monitor on a fresh record log in a temp dir named after `tag` and
    /// `lock`.
    pub fn new(tag: &str, lock: &str) -> Scene {
        let etcd = Etcd::start();
        let dir = TempDir::new(&format!("{tag}-{lock}"));
        let log = dir.join("records");
        let mon = Monitor::start(&log);
        Scene {
            lock: lock.to_string(),
            mon,
            log,
            _dir: dir,
            etcd,
        }
    }

    /// A candidate on this scene's etcd, lock and record log, with the given lease TTL (seconds),
    /// renew deadline and retry period (override further as needed).
    pub fn candidate(&self, id: &str, lease: u64, renew: &str, retry: &str) -> CandidateBuilder {
        Candidate::new(id)
            .endpoints(&self.etcd.endpoint())
            .lock(&self.lock)
            .lease(lease)
            .renew(renew)
            .retry(retry)
            .log(&self.log)
    }
}
