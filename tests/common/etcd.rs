//! Real etcd servers for tests. This module owns starting etcd (Debian's, or the binaries named by
//! `EAE_ETCD_BIN` and `EAE_ETCDCTL_BIN`) on loopback with client and peer ports leased from
//! [`super::ports`] (held while the member lives, so a restart finds them still free) and a
//! temporary data dir (single member via [`Etcd::start`], or a [`Cluster`]), waiting until it is
//! healthy (a start that loses a port race anyway is retried on new ports; one that fails
//! otherwise panics with the tail of etcd's log), talking to it with `etcdctl` (API v3), and
//! injecting server faults: pause/resume (SIGSTOP/SIGCONT), kill (SIGKILL), restart from the same
//! data dir and ports. Dropping an [`Etcd`] or [`Cluster`] SIGKILLs and reaps every server and
//! removes its directory.

use super::ports::{lease, PortLease};
use super::{kill_and_wait, wait_for, TempDir};
use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The etcd server binary: `EAE_ETCD_BIN` (`make test` runs the suites again against other etcd
/// versions this way), else Debian's `etcd` on `PATH`.
fn etcd_bin() -> String {
    std::env::var("EAE_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// The `etcdctl` to go with it: `EAE_ETCDCTL_BIN`, else Debian's `etcdctl` on `PATH`.
fn etcdctl_bin() -> String {
    std::env::var("EAE_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into())
}
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried before a port conflict is a failure.
const START_ATTEMPTS: usize = 3;
/// Lines of etcd's log shown when it cannot start.
const LOG_TAIL_LINES: usize = 40;

/// Why a member did not become healthy.
#[derive(Debug)]
enum StartError {
    /// One of its ports was taken after all: worth a new start on other ports.
    PortInUse(String),
    Failed(String),
}

impl StartError {
    fn message(self) -> String {
        match self {
            StartError::PortInUse(m) | StartError::Failed(m) => m,
        }
    }
}

/// Options for starting a single etcd member.
#[derive(Clone, Debug)]
pub struct EtcdBuilder {
    extra_args: Vec<String>,
    etcdctl_args: Vec<String>,
    client_scheme: String,
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        EtcdBuilder {
            extra_args: Vec::new(),
            etcdctl_args: Vec::new(),
            client_scheme: "http".into(),
        }
    }
}

impl EtcdBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Extra command-line arguments for `etcd` (e.g. `--cert-file`, `--key-file`, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra arguments given to every `etcdctl` call (e.g. `--cacert`, `--cert`, `--key`).
    pub fn etcdctl_args(mut self, args: &[&str]) -> Self {
        self.etcdctl_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Scheme of the client URLs (`http` by default, `https` for TLS).
    pub fn client_scheme(mut self, scheme: &str) -> Self {
        self.client_scheme = scheme.to_string();
        self
    }

    pub fn start(self) -> Etcd {
        let mut attempt = 1;
        loop {
            let mut e = Etcd::new_member(&self, "solo", lease(), lease(), None);
            e.spawn();
            match e.wait_healthy() {
                Ok(()) => return e,
                Err(StartError::PortInUse(_)) if attempt < START_ATTEMPTS => attempt += 1,
                Err(err) => panic!("{}", err.message()),
            }
        }
    }
}

/// One etcd member process.
pub struct Etcd {
    name: String,
    client_port: u16,
    peer_port: u16,
    _ports: [PortLease; 2],
    initial_cluster: String,
    token: String,
    opts: EtcdBuilder,
    dir: TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// A single-member etcd on loopback, healthy when this returns.
    pub fn start() -> Etcd {
        EtcdBuilder::new().start()
    }

    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::new()
    }

    fn new_member(
        opts: &EtcdBuilder,
        name: &str,
        client: PortLease,
        peer: PortLease,
        cluster: Option<(&str, &str)>,
    ) -> Etcd {
        let (client_port, peer_port) = (client.port(), peer.port());
        let dir = TempDir::new(&format!("etcd-{name}"));
        let (initial_cluster, token) = match cluster {
            Some((ic, tok)) => (ic.to_string(), tok.to_string()),
            None => (
                format!("{name}=http://127.0.0.1:{peer_port}"),
                format!("eae-{client_port}"),
            ),
        };
        Etcd {
            name: name.to_string(),
            client_port,
            peer_port,
            _ports: [client, peer],
            initial_cluster,
            token,
            opts: opts.clone(),
            dir,
            child: None,
        }
    }

    fn client_url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.opts.client_scheme, self.client_port
        )
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("open etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.client_url();
        let data = self.dir.join("data");
        let child = Command::new(etcd_bin())
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(["--log-outputs", "stderr"])
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", etcd_bin()));
        self.child = Some(child);
    }

    /// Poll `etcdctl endpoint health` against this member until it succeeds.
    fn wait_healthy(&mut self) -> Result<(), StartError> {
        let what = format!(
            "etcd {} at {} to become healthy",
            self.name,
            self.endpoint()
        );
        let deadline = std::time::Instant::now() + HEALTHY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    let log = self.log_tail();
                    let msg = format!(
                        "etcd {} (client port {}, peer port {}) exited with {st} while waiting \
                         for health; its log ends:\n{log}",
                        self.name, self.client_port, self.peer_port
                    );
                    return Err(if log.contains("address already in use") {
                        StartError::PortInUse(msg)
                    } else {
                        StartError::Failed(msg)
                    });
                }
            }
            let out = self.etcdctl(&[
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
                "endpoint",
                "health",
            ]);
            if out.status.success() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let last = String::from_utf8_lossy(&out.stderr);
                return Err(StartError::Failed(format!(
                    "timed out waiting for {what}; last etcdctl error: {last}\nits log ends:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Pid of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The member's temp dir (holds `data/` and `etcd.log`); removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything the server logged (errors only, by default).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// The last lines of the server's log, for a failure message.
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Run `etcdctl` (ETCDCTL_API=3) against this member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_etcdctl(&[self.endpoint()], &self.opts.etcdctl_args, args)
    }

    /// `etcdctl put`, panicking on failure.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value]);
        assert_success(&out, &format!("etcdctl put {key}"));
    }

    /// `etcdctl lease grant TTL`: the new lease's id.
    pub fn grant_lease(&self, ttl_secs: u64) -> i64 {
        let out = self.etcdctl(&["lease", "grant", &ttl_secs.to_string()]);
        assert_success(&out, "etcdctl lease grant");
        // "lease 0694d9b5b1e1ec40 granted with TTL(30s)": zero-padded, unlike the `%x` of the
        // keys etcd's election recipe names after a lease.
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.split_whitespace().nth(1);
        hex.and_then(|h| i64::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("no lease id in {text:?}"))
    }

    /// `etcdctl put --lease=LEASE KEY` with the value on etcdctl's stdin: any bytes of any size
    /// (an argument holds at most 128 KiB, and no NUL). Panics on failure.
    pub fn put_bytes(&self, key: &str, value: &[u8], lease: i64) {
        let mut child = etcdctl_command(&[self.endpoint()], &self.opts.etcdctl_args)
            .args(["put", &format!("--lease={lease:x}"), key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", etcdctl_bin()));
        let mut stdin = child.stdin.take().expect("etcdctl's stdin");
        // From a thread, closed when written: etcdctl may fail before it has read everything.
        let out = std::thread::scope(|s| {
            s.spawn(move || std::io::Write::write_all(&mut stdin, value));
            child.wait_with_output().expect("wait for etcdctl")
        });
        assert_success(&out, &format!("etcdctl put {key} ({} bytes)", value.len()));
    }

    /// `etcdctl get --print-value-only`, `None` if the key does not exist; panics on failure.
    pub fn get(&self, key: &str) -> Option<String> {
        get_value(self.etcdctl(&["get", "--print-value-only", key]), key)
    }

    /// Keys under `prefix` (`etcdctl get --prefix --keys-only`), in etcd's (sorted) order.
    pub fn get_prefix_keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        assert_success(&out, &format!("etcdctl get --prefix {prefix}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Requests of these gRPC methods (`"Range"`, `"Txn"`, ...) this server has answered, from
    /// its Prometheus metrics on the client URL.
    pub fn handled(&self, methods: &[&str]) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter(|l| {
                methods
                    .iter()
                    .any(|m| l.contains(&format!("grpc_method=\"{m}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// An unlabelled sample of this server's Prometheus metrics (a counter such as
    /// `etcd_server_proposals_committed_total`).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("etcd's /metrics has no {name}"))
    }

    /// This server's Prometheus metrics, from the client URL.
    fn metrics_text(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.client_port());
        let (code, body) =
            super::http("GET", &url, Duration::from_secs(5)).expect("etcd /metrics answers");
        assert_eq!(code, 200);
        body
    }

    /// Number of live leases (`etcdctl lease list`).
    pub fn lease_count(&self) -> usize {
        let out = self.etcdctl(&["lease", "list"]);
        assert_success(&out, "etcdctl lease list");
        parse_lease_count(&String::from_utf8_lossy(&out.stdout))
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid().expect("etcd is not running");
        assert!(super::signal_pid(pid, sig), "kill({pid}, {sig}) failed");
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaw a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL the server and reap it. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_wait(&mut c);
        }
    }

    /// Start again from the same data dir and ports (killing it first if it still runs) and wait
    /// until healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(err) = self.wait_healthy() {
            panic!("restart: {}", err.message());
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A multi-member etcd cluster on loopback.
pub struct Cluster {
    members: Vec<Etcd>,
}

impl Cluster {
    /// Start `n` members and wait until every one of them is healthy.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, EtcdBuilder::new())
    }

    pub fn start_with(n: usize, opts: EtcdBuilder) -> Cluster {
        assert!(n >= 1);
        let mut attempt = 1;
        loop {
            match Self::try_start(n, &opts) {
                Ok(cluster) => return cluster,
                Err(StartError::PortInUse(_)) if attempt < START_ATTEMPTS => attempt += 1,
                Err(err) => panic!("{}", err.message()),
            }
        }
    }

    /// One start on newly leased ports; a failed start's members are killed when dropped here.
    fn try_start(n: usize, opts: &EtcdBuilder) -> Result<Cluster, StartError> {
        let ports: Vec<(PortLease, PortLease)> = (0..n).map(|_| (lease(), lease())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{}", p.port()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("eae-cluster-{}", ports[0].0.port());
        let mut members: Vec<Etcd> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (c, p))| {
                Etcd::new_member(
                    opts,
                    &format!("m{i}"),
                    c,
                    p,
                    Some((&initial_cluster, &token)),
                )
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_healthy()?;
        }
        Ok(Cluster { members })
    }

    /// Client endpoints (`127.0.0.1:PORT`) of all members, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restart member `i` from its data dir and wait until it is healthy.
    pub fn restart_member(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// `etcdctl` against all currently running members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(Etcd::endpoint)
            .collect();
        run_etcdctl(&eps, &self.members[0].opts.etcdctl_args, args)
    }

    /// Index of the member that is currently the raft leader, asking each running member for its
    /// status until one of them reports itself as leader (panics after 15 s).
    pub fn raft_leader_index(&self) -> usize {
        wait_for(Duration::from_secs(15), "a raft leader", || {
            self.members.iter().enumerate().find_map(|(i, m)| {
                if !m.is_running() {
                    return None;
                }
                let out = m.etcdctl(&[
                    "--dial-timeout",
                    "1s",
                    "--command-timeout",
                    "1s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ]);
                if !out.status.success() {
                    return None;
                }
                let s = String::from_utf8_lossy(&out.stdout);
                let me = json_uint::<u64>(&s, "\"member_id\":")?;
                let leader = json_uint::<u64>(&s, "\"leader\":")?;
                (me == leader).then_some(i)
            })
        })
    }
}

fn etcdctl_command(endpoints: &[String], extra: &[String]) -> Command {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        // Its default of 5 s ran out under a load of 39 on two cores (flake hunt, run 15: an
        // authenticated get, bcrypt included); the tests' own deadlines are the bounds.
        .arg("--command-timeout=30s")
        .args(extra);
    cmd
}

fn run_etcdctl(endpoints: &[String], extra: &[String], args: &[&str]) -> Output {
    etcdctl_command(endpoints, extra)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", etcdctl_bin()))
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout: {} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get_value(out: Output, key: &str) -> Option<String> {
    assert_success(&out, &format!("etcdctl get {key}"));
    let s = String::from_utf8_lossy(&out.stdout);
    if s.is_empty() {
        None
    } else {
        Some(s.strip_suffix('\n').unwrap_or(&s).to_string())
    }
}

fn parse_lease_count(s: &str) -> usize {
    // "found N leases" followed by one id per line.
    s.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("found ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("unexpected `etcdctl lease list` output: {s:?}"))
}

/// The unsigned number following the first occurrence of `key` (e.g. `"leader":`) in `s`,
/// parsed as `T` (`None` if absent or out of range for `T`).
pub fn json_uint<T: std::str::FromStr>(s: &str, key: &str) -> Option<T> {
    let rest = &s[s.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl Cluster {
    /// `put` through the running members, panicking on failure.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value]);
        assert_success(&out, &format!("etcdctl put {key} (cluster)"));
    }
}

/// What `etcdctl` runs against: one server, or a cluster (every member an endpoint).
pub trait Etcdctl {
    fn etcdctl(&self, args: &[&str]) -> Output;
}

impl Etcdctl for Etcd {
    fn etcdctl(&self, args: &[&str]) -> Output {
        Etcd::etcdctl(self, args)
    }
}

impl Etcdctl for Cluster {
    fn etcdctl(&self, args: &[&str]) -> Output {
        Cluster::etcdctl(self, args)
    }
}
