//! A scene: one test's world. An etcd (one server, or a cluster), proxies in front of it if the
//! test wants them, one record log watched by an invariant [`Monitor`], one lock name, a temp dir
//! holding the log, and the test's candidates ([`Cast`]). It owns the failure dump: when a test
//! panics, the monitor's timeline and every candidate's stderr (with the test's phase marks) are
//! printed. Test files add their own helpers on top (as a local extension trait) and pick their
//! own candidate timings through [`Scene::candidate`].

use super::candidate::{Candidate, CandidateBuilder};
use super::etcd::{Cluster, Etcd};
use super::invariant::Monitor;
use super::proxy::Proxy;
use super::records::monotonic_ns;
use super::TempDir;
use std::path::PathBuf;

/// Fields drop in order: the candidates (and their process trees) first, then the monitor, the
/// proxies, etcd and the temp dir.
pub struct Scene<S = Etcd> {
    pub cast: Cast,
    pub mon: Monitor,
    pub proxies: Vec<Proxy>,
    /// One server ([`Etcd`]) or a [`Cluster`].
    pub etcd: S,
    pub lock: String,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Scene {
    /// Start an etcd and a monitor on a fresh record log in a temp dir named after `tag` and
    /// `lock`.
    pub fn new(tag: &str, lock: &str) -> Scene {
        Scene::around(Etcd::start(), tag, lock)
    }

    /// As [`Scene::new`], around an etcd the test started with settings of its own.
    pub fn on(etcd: Etcd, tag: &str, lock: &str) -> Scene {
        Scene::around(etcd, tag, lock)
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

impl Scene<Cluster> {
    /// As [`Scene::new`], around a cluster of `members`.
    pub fn cluster(tag: &str, lock: &str, members: usize) -> Scene<Cluster> {
        Scene::around(Cluster::start(members), tag, lock)
    }
}

impl<S> Scene<S> {
    fn around(etcd: S, tag: &str, lock: &str) -> Scene<S> {
        let dir = TempDir::new(&format!("{tag}-{lock}"));
        let log = dir.join("records");
        let mon = Monitor::start(&log);
        Scene {
            cast: Cast::default(),
            mon,
            proxies: Vec::new(),
            etcd,
            lock: lock.to_string(),
            log,
            _dir: dir,
        }
    }

    /// Spawns a candidate into the cast; its index there.
    pub fn spawn(&mut self, b: CandidateBuilder) -> usize {
        self.cast.add(b)
    }

    /// Notes a phase (a fault injected, healed, ...): printed into the candidates' stderr dumps
    /// on failure, and to the test's output. Returns when, on `CLOCK_MONOTONIC`.
    pub fn mark(&mut self, label: &str) -> u64 {
        let now = monotonic_ns();
        let line = format!("[{}] {label}", self.mon.rel(now));
        eprintln!("{line}");
        self.cast.mark(line);
        now
    }
}

impl<S> Drop for Scene<S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- monitor timeline ----\n{}", self.mon.timeline());
        }
        // The cast's own drop prints the candidates' stderr next.
    }
}

/// The candidates of one test: a scene's, or a test's own beside its scene (then dropped before
/// the scene: declared after it). On a panic, each one's stderr is printed, cut by the phase
/// marks, before their process trees go.
#[derive(Default)]
pub struct Cast {
    cands: Vec<Candidate>,
    /// Phase marks: the line to print, and how far each candidate's stderr had got.
    marks: Vec<(String, Vec<usize>)>,
}

impl Cast {
    pub fn add(&mut self, b: CandidateBuilder) -> usize {
        self.cands.push(b.spawn());
        self.cands.len() - 1
    }

    /// The newest candidate with this identity.
    pub fn by_id(&mut self, id: &str) -> &mut Candidate {
        self.cands
            .iter_mut()
            .rev()
            .find(|c| c.identity() == id)
            .unwrap_or_else(|| panic!("no candidate {id}"))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Candidate> {
        self.cands.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Candidate> {
        self.cands.iter_mut()
    }

    fn mark(&mut self, line: String) {
        let at = self.cands.iter().map(|c| c.stderr_text().len()).collect();
        self.marks.push((line, at));
    }

    /// `c`'s stderr with the marks made while it ran, each where its stderr had got.
    fn stderr_marked(&self, i: usize, c: &Candidate) -> String {
        let text = c.stderr_text();
        let mut out = String::new();
        let mut pos = 0;
        for (line, at) in &self.marks {
            let Some(&off) = at.get(i) else { continue };
            let off = off.clamp(pos, text.len());
            out.push_str(&text[pos..off]);
            out.push_str(&format!("======== {line} ========\n"));
            pos = off;
        }
        out.push_str(&text[pos..]);
        out
    }
}

impl std::ops::Index<usize> for Cast {
    type Output = Candidate;
    fn index(&self, i: usize) -> &Candidate {
        &self.cands[i]
    }
}

impl std::ops::IndexMut<usize> for Cast {
    fn index_mut(&mut self, i: usize) -> &mut Candidate {
        &mut self.cands[i]
    }
}

impl Drop for Cast {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.cands.len() {
            let text = self.stderr_marked(i, &self.cands[i]);
            self.cands[i].print_stderr(&text);
        }
    }
}
