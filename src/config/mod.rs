//! Reading the `ETCD_AWAIT_ELECTION_*` environment into a validated [`Config`].
//!
//! This module owns every rule about what a valid configuration is: which variables are required
//! together, how durations and booleans are spelled, what an endpoint looks like, and that the TLS
//! files exist and hold PEM data. Every error names the variable at fault. It does not talk to
//! etcd and does not decide what happens at run time.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::timing;

mod health;

use health::{read_health, HEALTH_INTERVAL_RANGE, MAX_HEALTH_COUNT, MIN_HEALTH_TIMEOUT};
pub use health::{Check, Health, HttpUrl};

/// A variable of ours, as `--help` and the command-line flags know it.
pub struct Var {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
    /// Setting it switches the wrapper from plain `exec` to election mode.
    pub election: bool,
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> Var {
    Var {
        name,
        default,
        meaning,
        election: true,
    }
}

pub const VARIABLES: &[Var] = &[
    var(LOCK_NAME, "(required)", "name of the election in etcd"),
    var(
        IDENTITY,
        "(required)",
        "unique identity of this candidate, e.g. the pod name",
    ),
    var(
        ENDPOINTS,
        "(required)",
        "comma-separated etcd endpoints: host:port, http://..., https://...",
    ),
    var(
        STATUS_ENDPOINT,
        "(none)",
        "host:port or :port to serve the HTTP status on",
    ),
    var(
        ADVERTISE,
        "(none)",
        "address the leader publishes for clients, e.g. http://10.0.0.5:8080/",
    ),
    var(LEASE_DURATION, "15", "lease TTL in whole seconds"),
    var(
        RENEW_DEADLINE,
        "10",
        "stop the command when no renewal succeeded for this long",
    ),
    var(
        RETRY_PERIOD,
        "2",
        "back-off between failed attempts to reach etcd",
    ),
    var(CERT, "(none)", "TLS client certificate (PEM), with KEY"),
    var(KEY, "(none)", "TLS client private key (PEM), with CERT"),
    var(
        CACERT,
        "(none)",
        "CA bundle (PEM) to verify the etcd servers; enables TLS",
    ),
    var(USERNAME, "(none)", "etcd user name"),
    var(PASSWORD, "(none)", "etcd password (prefer PASSWORD_FILE)"),
    var(PASSWORD_FILE, "(none)", "file holding the etcd password"),
    var(
        FORCE_ACQUIRE,
        "false",
        "ask the leader to yield at start (a preferred primary); not with WAIT_TIMEOUT",
    ),
    var(
        LEGACY_LOCK,
        "true",
        "changes nothing: LOCK_NAME is always held (kept for the Go tool's users)",
    ),
    var(
        WAIT_TIMEOUT,
        "(none)",
        "exit 73 unless leading within this; 0: try once; not with FORCE_ACQUIRE",
    ),
    var(
        HEALTH_CMD,
        "(none)",
        "health check: a command run with /bin/sh -c, exit 0 is healthy",
    ),
    var(
        HEALTH_URL,
        "(none)",
        "health check: an http:// URL, a 2xx answer is healthy",
    ),
    var(HEALTH_INTERVAL, "5s", "time between two health checks"),
    var(
        HEALTH_TIMEOUT,
        "2s, at most HEALTH_INTERVAL",
        "a longer check is killed with its group, and fails",
    ),
    var(
        HEALTH_FALL,
        "3",
        "consecutive failed checks that make the candidate unhealthy",
    ),
    var(
        HEALTH_RISE,
        "2",
        "consecutive passed checks that make it healthy again",
    ),
    Var {
        election: false,
        ..var(
            LOG_LEVEL,
            "info",
            "error, warn, info, debug or trace (else RUST_LOG)",
        )
    },
    Var {
        election: false,
        ..var(
            LOG_FORMAT,
            "text",
            "text or json (one JSON object per line)",
        )
    },
];

pub const LOCK_NAME: &str = "ETCD_AWAIT_ELECTION_LOCK_NAME";
pub const IDENTITY: &str = "ETCD_AWAIT_ELECTION_IDENTITY";
pub const ENDPOINTS: &str = "ETCD_AWAIT_ELECTION_ENDPOINTS";
pub const ADVERTISE: &str = "ETCD_AWAIT_ELECTION_ADVERTISE";
pub const STATUS_ENDPOINT: &str = "ETCD_AWAIT_ELECTION_STATUS_ENDPOINT";
pub const LEASE_DURATION: &str = "ETCD_AWAIT_ELECTION_LEASE_DURATION";
pub const RENEW_DEADLINE: &str = "ETCD_AWAIT_ELECTION_RENEW_DEADLINE";
pub const RETRY_PERIOD: &str = "ETCD_AWAIT_ELECTION_RETRY_PERIOD";
pub const CERT: &str = "ETCD_AWAIT_ELECTION_CERT";
pub const KEY: &str = "ETCD_AWAIT_ELECTION_KEY";
pub const CACERT: &str = "ETCD_AWAIT_ELECTION_CACERT";
pub const FORCE_ACQUIRE: &str = "ETCD_AWAIT_ELECTION_FORCE_ACQUIRE";
pub const USERNAME: &str = "ETCD_AWAIT_ELECTION_USERNAME";
pub const PASSWORD: &str = "ETCD_AWAIT_ELECTION_PASSWORD";
pub const PASSWORD_FILE: &str = "ETCD_AWAIT_ELECTION_PASSWORD_FILE";
pub const LEGACY_LOCK: &str = "ETCD_AWAIT_ELECTION_LEGACY_LOCK";
pub const WAIT_TIMEOUT: &str = "ETCD_AWAIT_ELECTION_WAIT_TIMEOUT";
pub const HEALTH_CMD: &str = "ETCD_AWAIT_ELECTION_HEALTH_CMD";
pub const HEALTH_URL: &str = "ETCD_AWAIT_ELECTION_HEALTH_URL";
pub const HEALTH_INTERVAL: &str = "ETCD_AWAIT_ELECTION_HEALTH_INTERVAL";
pub const HEALTH_TIMEOUT: &str = "ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT";
pub const HEALTH_FALL: &str = "ETCD_AWAIT_ELECTION_HEALTH_FALL";
pub const HEALTH_RISE: &str = "ETCD_AWAIT_ELECTION_HEALTH_RISE";
pub const LOG_LEVEL: &str = "ETCD_AWAIT_ELECTION_LOG_LEVEL";
pub const LOG_FORMAT: &str = "ETCD_AWAIT_ELECTION_LOG_FORMAT";

#[derive(Debug, Clone)]
pub struct Config {
    pub lock_name: String,
    pub identity: String,
    pub endpoints: Vec<String>,
    pub status_endpoint: Option<String>,
    /// The address published while we lead (see `election::queue`).
    pub advertise: Option<String>,
    /// Requested lease TTL in whole seconds; etcd may grant more.
    pub lease_ttl: i64,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub tls: Option<Tls>,
    pub force_acquire: bool,
    /// etcd user name and password.
    pub user: Option<(String, Secret)>,
    /// Not leading within this: withdraw (`Some(ZERO)`: unless leading at the first try).
    pub wait_timeout: Option<Duration>,
    pub health: Option<Health>,
}

/// A password: never printed, not even by `{:?}`.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// PEM bytes read at start-up, so a file that vanishes later cannot surprise us.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// `Ok(None)` when no election variable is set at all: the caller should simply `exec`.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, ConfigError> {
    read(get, Role::Candidate)
}

/// The configuration of `--leader`, which only reads who leads: `IDENTITY` is not needed (and
/// not used), and `LOCK_NAME` and `ENDPOINTS` are required even when nothing else is set.
pub fn for_observer(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    match read(get, Role::Observer)? {
        Some(cfg) => Ok(cfg),
        None => Err(err(LOCK_NAME, "is required by --leader")),
    }
}

#[derive(PartialEq, Eq)]
enum Role {
    Candidate,
    Observer,
}

fn read(get: impl Fn(&str) -> Option<String>, role: Role) -> Result<Option<Config>, ConfigError> {
    if VARIABLES
        .iter()
        .all(|v| !v.election || get(v.name).is_none())
    {
        return Ok(None);
    }
    let required = |var: &'static str| match get(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(err(
            var,
            "is required when any ETCD_AWAIT_ELECTION_* variable is set",
        )),
    };
    let lock_name = required(LOCK_NAME)?;
    no_control_characters(LOCK_NAME, &lock_name)?;
    check_lock_name(&lock_name)?;
    let identity = match role {
        Role::Candidate => required(IDENTITY)?,
        Role::Observer => get(IDENTITY).unwrap_or_default(),
    };
    no_control_characters(IDENTITY, &identity)?;
    check_identity_length(&identity)?;
    let endpoints_raw = required(ENDPOINTS)?;

    let (lease_ttl, renew_deadline, retry_period) = read_timing(&get)?;

    let tls = read_tls(&get)?;
    let endpoints = parse_endpoints(&endpoints_raw, tls.is_some())?;
    let status_endpoint = match get(STATUS_ENDPOINT) {
        None => None,
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(parse_status_endpoint(v.trim())?),
    };
    let advertise = read_advertise(&get)?;
    let force_acquire = read_flags(&get)?;
    let user = read_user(&get)?;

    Ok(Some(Config {
        user,
        lock_name,
        identity,
        endpoints,
        status_endpoint,
        advertise,
        lease_ttl,
        renew_deadline,
        retry_period,
        tls,
        force_acquire,
        wait_timeout: read_wait_timeout(&get, force_acquire)?,
        health: read_health(&get)?,
    }))
}

/// `FORCE_ACQUIRE`, and `LEGACY_LOCK`, which is only checked: accepted for the Go tool's users,
/// as the key `LOCK_NAME` is now always held, as the record of who may be running the command
/// (see `queue`).
fn read_flags(get: &impl Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
    if let Some(v) = get(LEGACY_LOCK) {
        parse_bool(&v).map_err(|p| err(LEGACY_LOCK, p))?;
    }
    match get(FORCE_ACQUIRE) {
        None => Ok(false),
        Some(v) => parse_bool(&v).map_err(|p| err(FORCE_ACQUIRE, p)),
    }
}

/// The lease TTL (seconds), the renew deadline and the retry period, checked together.
fn read_timing(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(i64, Duration, Duration), ConfigError> {
    let lease_ttl = match get(LEASE_DURATION) {
        None => 15,
        Some(v) => parse_whole_seconds(&v).map_err(|p| err(LEASE_DURATION, p))?,
    };
    let renew_deadline = match get(RENEW_DEADLINE) {
        None => Duration::from_secs(10),
        Some(v) => parse_duration(&v).map_err(|p| err(RENEW_DEADLINE, p))?,
    };
    let retry_period = match get(RETRY_PERIOD) {
        None => Duration::from_secs(2),
        Some(v) => parse_duration(&v).map_err(|p| err(RETRY_PERIOD, p))?,
    };
    check_timing(lease_ttl, renew_deadline, retry_period)?;
    Ok((lease_ttl, renew_deadline, retry_period))
}

/// The accepted range of `LEASE_DURATION`, in seconds. 2: the least that leaves a renew deadline of
/// [`MIN_RENEW_DEADLINE`] and the margin [`timing::MIN_MARGIN`] below it (etcd raises shorter
/// TTLs anyway). etcd's `MaxLeaseTTL` (`server/lease/lessor.go`, the same in 3.4, 3.5 and 3.6): a
/// longer TTL is refused with `OutOfRange: etcdserver: too large lease TTL`.
pub const MIN_LEASE_TTL: i64 = 2;
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The least `RENEW_DEADLINE`: a leader renews at least every half of it, and below a second an etcd
/// leader election (a second with etcd's default flags) would depose every leader.
pub const MIN_RENEW_DEADLINE: Duration = Duration::from_secs(1);

/// The accepted range of `RETRY_PERIOD`. Below 100 ms, a fleet retrying an etcd that is down is a
/// connection storm; above 5 minutes, a candidate notices etcd back only minutes later.
pub const RETRY_PERIOD_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));

/// The accepted range of a variable, as `--help` shows it; `None` for those without one.
pub fn range(var: &str) -> Option<String> {
    let (min_retry, max_retry) = RETRY_PERIOD_RANGE;
    match var {
        LEASE_DURATION => Some(format!("{MIN_LEASE_TTL} to {MAX_LEASE_TTL} seconds")),
        RENEW_DEADLINE => Some(format!(
            "{MIN_RENEW_DEADLINE:?} to the lease duration - {:?}",
            timing::MIN_MARGIN
        )),
        RETRY_PERIOD => Some(format!("{min_retry:?} to {max_retry:?}")),
        ADVERTISE => Some(format!(
            "at most {MAX_ADVERTISE} bytes, no control characters"
        )),
        IDENTITY => Some(format!(
            "at most {MAX_IDENTITY} bytes, no control characters"
        )),
        HEALTH_INTERVAL => Some(format!(
            "{:?} to {:?}",
            HEALTH_INTERVAL_RANGE.0, HEALTH_INTERVAL_RANGE.1
        )),
        HEALTH_TIMEOUT => Some(format!("{MIN_HEALTH_TIMEOUT:?} to {HEALTH_INTERVAL}")),
        HEALTH_FALL | HEALTH_RISE => Some(format!("1 to {MAX_HEALTH_COUNT}")),
        _ => None,
    }
}

/// Every duration the user sets within its range, and the renew deadline leaving the margin below
/// the lease duration: the timing rules (`timing`) hold over exactly these.
pub fn check_timing(
    lease_ttl: i64,
    renew_deadline: Duration,
    retry_period: Duration,
) -> Result<(), ConfigError> {
    if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
        return Err(err(
            LEASE_DURATION,
            format!(
                "{lease_ttl} is out of range: {MIN_LEASE_TTL} to {MAX_LEASE_TTL} seconds \
                 (etcd's maximum lease TTL)"
            ),
        ));
    }
    if renew_deadline < MIN_RENEW_DEADLINE {
        return Err(err(
            RENEW_DEADLINE,
            format!(
                "{renew_deadline:?} is below {MIN_RENEW_DEADLINE:?}: the leader renews at least \
                 every half of it, and an etcd leader election would stop every command"
            ),
        ));
    }
    // The kill budget is half this margin, at most a second: below a second of margin the
    // command would get SIGKILL within an etcd heartbeat or two of its SIGTERM.
    let ttl = Duration::from_secs(lease_ttl.unsigned_abs());
    if !timing::leaves_margin(ttl, renew_deadline) {
        return Err(err(
            RENEW_DEADLINE,
            format!(
                "{renew_deadline:?} must be at least {:?} less than {LEASE_DURATION} \
                 ({lease_ttl}s): the leader must stop its command, SIGTERM then SIGKILL, \
                 before its lease can expire",
                timing::MIN_MARGIN
            ),
        ));
    }
    let (min_retry, max_retry) = RETRY_PERIOD_RANGE;
    if !(min_retry..=max_retry).contains(&retry_period) {
        return Err(err(
            RETRY_PERIOD,
            format!("{retry_period:?} is out of range: {min_retry:?} to {max_retry:?}"),
        ));
    }
    Ok(())
}

/// The most bytes of `IDENTITY`: a name (a pod's, a host's, 253 at most). A joining candidate
/// sends it to etcd once for every key of a page of the queue (`queue::with_identity`), in a
/// request etcd bounds (2 MiB by default): a longer one would be refused there, where nothing
/// but a retry can follow.
pub const MAX_IDENTITY: usize = 1024;

fn check_identity_length(v: &str) -> Result<(), ConfigError> {
    if v.len() > MAX_IDENTITY {
        return Err(err(
            IDENTITY,
            format!(
                "{} bytes is over the {MAX_IDENTITY} allowed: give a name, such as the pod's \
                 or the host's",
                v.len()
            ),
        ));
    }
    Ok(())
}

/// The most bytes of `ADVERTISE`: an address, not a document; every client reads it.
pub const MAX_ADVERTISE: usize = 256;

/// `ADVERTISE`: any text a client can use (a URL, `host:port`), at most [`MAX_ADVERTISE`] bytes
/// without control characters (it ends up in a `Location:` header and in log lines); empty is
/// none.
fn read_advertise(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(v) = get(ADVERTISE).map(|v| v.trim().to_string()) else {
        return Ok(None);
    };
    if v.is_empty() {
        return Ok(None);
    }
    no_control_characters(ADVERTISE, &v)?;
    if v.len() > MAX_ADVERTISE {
        return Err(err(
            ADVERTISE,
            format!(
                "{} bytes is over the {MAX_ADVERTISE} allowed: give an address \
                 (http://10.0.0.5:8080/, 10.0.0.5:5432)",
                v.len()
            ),
        ));
    }
    Ok(Some(v))
}

/// A control character would reach the logs raw (a newline forges a log line) and the keys.
fn no_control_characters(var: &'static str, v: &str) -> Result<(), ConfigError> {
    match v.chars().find(|c| c.is_control()) {
        // `{:?}` escapes it, so the message itself cannot forge anything.
        Some(c) => Err(err(
            var,
            format!("{v:?} contains the control character {c:?}"),
        )),
        None => Ok(()),
    }
}

/// The election keys are `LOCK_NAME/<lease>`: a trailing `/` or an empty segment (`a//b`)
/// makes keys that no one reading the name would expect (`a//<lease>`). One leading `/`, the
/// usual "absolute" etcd key (`/app`), is kept as it is: existing locks use it.
fn check_lock_name(v: &str) -> Result<(), ConfigError> {
    let relative = v.strip_prefix('/').unwrap_or(v);
    if relative.is_empty() || relative.split('/').any(str::is_empty) {
        return Err(err(
            LOCK_NAME,
            format!(
                "{v:?} ends in '/' or has an empty segment ('//'); \
                 use e.g. \"app\", \"/app\" or \"team/app\""
            ),
        ));
    }
    Ok(())
}

/// The password comes from the environment or, to keep it out of `/proc/*/environ`, a file
/// (one trailing newline is dropped, as editors and `echo` add one).
fn read_user(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, Secret)>, ConfigError> {
    let set = |var: &'static str| get(var).filter(|v| !v.is_empty());
    let password = match (set(PASSWORD), set(PASSWORD_FILE)) {
        (Some(_), Some(_)) => {
            return Err(err(
                PASSWORD_FILE,
                format!("set either {PASSWORD} or {PASSWORD_FILE}, not both"),
            ))
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path.trim())
                .map_err(|e| err(PASSWORD_FILE, format!("cannot read {path:?}: {e}")))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            Some(text.strip_suffix('\r').unwrap_or(text).to_string())
        }
        (None, None) => None,
    };
    match (set(USERNAME), password) {
        (None, None) => Ok(None),
        (Some(user), Some(p)) => Ok(Some((user, Secret(p)))),
        (Some(_), None) => Err(err(
            PASSWORD,
            format!("{PASSWORD} or {PASSWORD_FILE} is required with {USERNAME}"),
        )),
        (None, Some(_)) => Err(err(USERNAME, "is required with a password")),
    }
}

/// A whole number of seconds; one too large for any range reads as `i64::MAX`, so that the range
/// check names the maximum.
fn parse_whole_seconds(v: &str) -> Result<i64, String> {
    let s = v.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    match s.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err(format!("{v:?} must be a positive number of seconds")),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(i64::MAX),
        Err(_) => Err(format!("{v:?} is not a whole number of seconds")),
    }
}

/// A plain number is seconds (the original tool's form); `ms`, `s` and `m` suffixes allow
/// fractions, e.g. `500ms`, `1.5s`, `2m`. Read exactly, in decimal (no binary floating point: a
/// value at a range's bound is at it); digits finer than a nanosecond are dropped, and a value too
/// long for a `Duration` reads as `Duration::MAX`, so that the range check names the maximum.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let s = v.trim();
    let (number, unit_ns): (&str, u128) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000_000_000)
    } else {
        (s, 1_000_000_000)
    };
    let bad = || format!("{v:?} is not a duration (use e.g. 10, 500ms, 1.5s or 2m)");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let decimal = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !decimal(whole) || !decimal(fraction) {
        return Err(bad());
    }
    // 12 digits resolve a nanosecond of a minute; u128 holds them times any unit.
    let fraction = &fraction[..fraction.len().min(12)];
    let value = |d: &str| {
        d.bytes().try_fold(0u128, |n, b| {
            n.checked_mul(10)?.checked_add(u128::from(b - b'0'))
        })
    };
    let fraction_ns = value(fraction).unwrap_or(0) * unit_ns / 10u128.pow(fraction.len() as u32);
    let ns = value(whole)
        .and_then(|w| w.checked_mul(unit_ns))
        .and_then(|w| w.checked_add(fraction_ns));
    let d = ns
        .and_then(|ns| {
            let secs = u64::try_from(ns / 1_000_000_000).ok()?;
            Some(Duration::new(secs, (ns % 1_000_000_000) as u32))
        })
        .unwrap_or(Duration::MAX);
    if d.is_zero() {
        return Err(format!("{v:?} must be greater than zero"));
    }
    Ok(d)
}

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(format!(
            "{v:?} is not a boolean (use true/false, yes/no, on/off or 1/0)"
        )),
    }
}

/// Accepts `host:port`, `http://host:port` and `https://host:port`, including `[v6]:port`.
/// Bare endpoints get the scheme implied by whether TLS is configured, so the etcd client never
/// has to guess.
fn parse_endpoints(raw: &str, tls: bool) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for ep in raw.split(',').map(str::trim) {
        if ep.is_empty() {
            return Err(err(ENDPOINTS, format!("{raw:?} has an empty entry")));
        }
        let (scheme, rest) = match ep.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (s, rest),
            Some((s, _)) => {
                return Err(err(
                    ENDPOINTS,
                    format!("{ep:?}: unsupported scheme {s:?} (use http or https)"),
                ))
            }
            None => (if tls { "https" } else { "http" }, ep),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        check_host_port(rest).map_err(|p| err(ENDPOINTS, format!("{ep:?}: {p}")))?;
        match (scheme, tls) {
            ("https", false) => {
                return Err(err(
                    ENDPOINTS,
                    format!("{ep:?} is https but {CACERT} is not set to verify the server"),
                ))
            }
            ("http", true) => {
                return Err(err(
                    ENDPOINTS,
                    format!("{ep:?} is plain http but TLS files are configured"),
                ))
            }
            _ => {}
        }
        out.push(format!("{scheme}://{rest}"));
    }
    Ok(out)
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6
                .split_once("]:")
                .ok_or("expected [ipv6]:port".to_string())?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
            (host, port)
        }
        None => s.rsplit_once(':').ok_or("expected host:port".to_string())?,
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

/// `:8080` means all interfaces, like the original tool.
fn parse_status_endpoint(v: &str) -> Result<String, ConfigError> {
    let addr = if v.starts_with(':') {
        format!("0.0.0.0{v}")
    } else {
        v.to_string()
    };
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|_| {
            err(
                STATUS_ENDPOINT,
                format!("{v:?} is not host:port or :port with a numeric address"),
            )
        })
}

fn read_tls(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Tls>, ConfigError> {
    let path = |var: &'static str| get(var).filter(|v| !v.trim().is_empty());
    let (cert, key, ca) = (path(CERT), path(KEY), path(CACERT));
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => return Err(err(KEY, format!("is required together with {CERT}"))),
        (None, Some(_)) => return Err(err(CERT, format!("is required together with {KEY}"))),
        (Some(c), Some(k)) => Some((
            read_pem(CERT, &c, "CERTIFICATE")?,
            read_pem(KEY, &k, "PRIVATE KEY")?,
        )),
    };
    let ca = match ca {
        Some(c) => Some(read_pem(CACERT, &c, "CERTIFICATE")?),
        None => None,
    };
    if identity.is_some() && ca.is_none() {
        return Err(err(
            CACERT,
            format!("is required with {CERT}/{KEY}: without it the server cannot be verified"),
        ));
    }
    Ok(ca.map(|ca| Tls {
        ca: Some(ca),
        identity,
    }))
}

/// Reads a PEM file and checks it holds a block of the expected kind (e.g. `CERTIFICATE`, or a
/// `PRIVATE KEY` of any algorithm), so a swapped or truncated file fails here, not at the first
/// TLS handshake.
fn read_pem(var: &'static str, path: &str, kind: &str) -> Result<Vec<u8>, ConfigError> {
    let p = PathBuf::from(path.trim());
    let bytes = std::fs::read(&p).map_err(|e| err(var, format!("cannot read {p:?}: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(kind))
    });
    if !has_block || !text.contains("-----END ") {
        return Err(err(
            var,
            format!("{p:?} does not contain a PEM {kind} block"),
        ));
    }
    Ok(bytes)
}

/// `0` (in any unit) tries once; any other duration is how long a candidate waits to lead. Not
/// with `FORCE_ACQUIRE`: a forcer asks the holder to yield at once, and one that then gave up
/// (before the hand-over, or at its first try) would leave the lock with nobody running.
fn read_wait_timeout(
    get: &impl Fn(&str) -> Option<String>,
    force_acquire: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = get(WAIT_TIMEOUT).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    if force_acquire {
        return Err(err(
            WAIT_TIMEOUT,
            format!(
                "cannot be used with {FORCE_ACQUIRE}: a forcer asks the leader to stop its \
                 command, and giving up after that would leave nobody running; unset one of them"
            ),
        ));
    }
    let number = v.trim().trim_end_matches(['m', 's']);
    if !number.is_empty() && number.bytes().all(|b| b == b'0' || b == b'.') {
        return Ok(Some(Duration::ZERO));
    }
    parse_duration(&v)
        .map(Some)
        .map_err(|p| err(WAIT_TIMEOUT, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Option<Config>, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(|k| m.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        (LOCK_NAME, "lock"),
        (IDENTITY, "me"),
        (ENDPOINTS, "127.0.0.1:2379"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Option<Config>, ConfigError> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        cfg(&v)
    }

    #[test]
    fn nothing_set_means_exec() {
        assert!(cfg(&[]).unwrap().is_none());
    }

    #[test]
    fn defaults_match_the_original_tool() {
        let c = with(&[]).unwrap().unwrap();
        assert_eq!(c.lease_ttl, 15);
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379"]);
        assert!(!c.force_acquire);
    }

    #[test]
    fn missing_required_names_the_variable() {
        let e = cfg(&[(LOCK_NAME, "x")]).unwrap_err();
        assert_eq!(e.var, IDENTITY);
        let e = cfg(&[(IDENTITY, "x"), (ENDPOINTS, "a:1")]).unwrap_err();
        assert_eq!(e.var, LOCK_NAME);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in [
            "",
            "0",
            "0ms",
            "-1",
            "x",
            "1h",
            "1.2.3s",
            "ms",
            "1e3",
            ".",
            "0.0000000001s",
            "+1",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // Exact, in decimal: no binary rounding at a bound.
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("14000ms"), Ok(Duration::from_secs(14)));
        assert_eq!(parse_duration("0.000001ms"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2."), Ok(Duration::from_secs(2)));
        // Too long for a Duration: the longest, which every range refuses by name.
        assert_eq!(parse_duration("18446744073709551616"), Ok(Duration::MAX));
        assert_eq!(parse_duration(&"9".repeat(400)), Ok(Duration::MAX));
    }

    /// Every bound: just below, at, and just above.
    #[test]
    fn ranges() {
        let var = |extra: &[(&'static str, &'static str)]| with(extra).err().map(|e| e.var);
        for (value, refused) in [
            ("99ms", true),
            ("99.999999999ms", true),
            ("100ms", false),
            ("0.1s", false),
            ("300s", false),
            ("5m", false),
            ("300.000000001s", true),
            ("5.01m", true),
            ("0.000001ms", true),
            ("10000000000000000000", true),
            ("18446744073709551616", true),
        ] {
            let expected = refused.then_some(RETRY_PERIOD);
            assert_eq!(var(&[(RETRY_PERIOD, value)]), expected, "{value}");
        }
        for (value, refused) in [
            ("999ms", true),
            ("999.999999999ms", true),
            ("1s", false),
            ("1000ms", false),
        ] {
            let expected = refused.then_some(RENEW_DEADLINE);
            assert_eq!(var(&[(RENEW_DEADLINE, value)]), expected, "{value}");
        }
        for (lease, renew, refused) in [
            ("2", "1s", false),
            ("2", "1000.000001ms", true),
            ("15", "14s", false),
            ("15", "14.000000001s", true),
            ("9000000000", "8999999999", false),
            ("9000000000", "8999999999.000000001", true),
            ("9000000000", "18446744073709551615", true),
        ] {
            let expected = refused.then_some(RENEW_DEADLINE);
            let got = var(&[(LEASE_DURATION, lease), (RENEW_DEADLINE, renew)]);
            assert_eq!(got, expected, "{lease} {renew}");
        }
        for (value, refused) in [
            ("1", true),
            ("2", false),
            ("9000000000", false),
            ("9000000001", true),
            ("99999999999999999999999", true),
        ] {
            let got = var(&[(LEASE_DURATION, value), (RENEW_DEADLINE, "1s")]);
            assert_eq!(got, refused.then_some(LEASE_DURATION), "{value}");
        }
    }

    #[test]
    fn renew_deadline_must_be_below_lease() {
        let e = with(&[(LEASE_DURATION, "5"), (RENEW_DEADLINE, "5")]).unwrap_err();
        assert_eq!(e.var, RENEW_DEADLINE);
        let e = with(&[(LEASE_DURATION, "5"), (RENEW_DEADLINE, "4900ms")]).unwrap_err();
        assert_eq!(e.var, RENEW_DEADLINE, "less than a second of kill budget");
        assert!(with(&[(LEASE_DURATION, "5"), (RENEW_DEADLINE, "4s")]).is_ok());
        let e = with(&[(LEASE_DURATION, "1.5")]).unwrap_err();
        assert_eq!(e.var, LEASE_DURATION);
    }

    #[test]
    fn endpoints() {
        let c = with(&[(ENDPOINTS, "a:1, http://b:2,[::1]:3")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, ["http://a:1", "http://b:2", "http://[::1]:3"]);
        for bad in [
            "a",
            "a:",
            "a:0",
            "a:99999",
            "ftp://a:1",
            "a:1,",
            "https://a:1",
            "a b:1",
        ] {
            assert_eq!(
                with(&[(ENDPOINTS, bad)]).unwrap_err().var,
                ENDPOINTS,
                "{bad}"
            );
        }
    }

    #[test]
    fn booleans() {
        assert!(
            with(&[(FORCE_ACQUIRE, "TRUE")])
                .unwrap()
                .unwrap()
                .force_acquire
        );
        assert!(
            !with(&[(FORCE_ACQUIRE, "off")])
                .unwrap()
                .unwrap()
                .force_acquire
        );
        assert_eq!(
            with(&[(FORCE_ACQUIRE, "sure")]).unwrap_err().var,
            FORCE_ACQUIRE
        );
    }

    #[test]
    fn tls_files_are_checked() {
        assert_eq!(with(&[(CERT, "/nonexistent")]).unwrap_err().var, KEY);
        let e = with(&[(CACERT, "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(e.var, CACERT);
        assert!(e.problem.contains("cannot read"));
        let e = with(&[(CACERT, "/etc/hostname")]).unwrap_err();
        assert!(e.problem.contains("PEM CERTIFICATE"), "{e}");
    }

    #[test]
    fn credentials() {
        let c = with(&[(USERNAME, "u"), (PASSWORD, "p")]).unwrap().unwrap();
        let (user, pass) = c.user.clone().unwrap();
        assert_eq!((user.as_str(), pass.0.as_str()), ("u", "p"));
        assert!(!format!("{c:?}").contains("\"p\""));
        assert_eq!(with(&[(USERNAME, "u")]).unwrap_err().var, PASSWORD);
        assert_eq!(with(&[(PASSWORD, "p")]).unwrap_err().var, USERNAME);
        let e = with(&[(USERNAME, "u"), (PASSWORD_FILE, "/nonexistent")]).unwrap_err();
        assert_eq!(e.var, PASSWORD_FILE);
    }

    #[test]
    fn lease_duration_up_to_etcds_maximum() {
        assert_eq!(
            with(&[(LEASE_DURATION, "9000000000")])
                .unwrap()
                .unwrap()
                .lease_ttl,
            9_000_000_000
        );
        let e = with(&[(LEASE_DURATION, "9000000001")]).unwrap_err();
        assert_eq!(e.var, LEASE_DURATION);
        let e = with(&[(LEASE_DURATION, "99999999999")]).unwrap_err();
        assert!(e.problem.contains("maximum lease TTL"), "{e}");
    }

    #[test]
    fn no_control_characters_in_names() {
        for bad in [
            "a\nINFO forged",
            "a\rb",
            "a\u{1b}[31mred",
            "a\tb",
            "a\u{7f}b",
            "a\u{85}b",
        ] {
            let e = with(&[(IDENTITY, bad)]).unwrap_err();
            assert_eq!(e.var, IDENTITY, "{bad:?}");
            assert!(!e.to_string().chars().any(char::is_control), "{e}");
            assert_eq!(with(&[(LOCK_NAME, bad)]).unwrap_err().var, LOCK_NAME);
        }
        assert!(with(&[(IDENTITY, "pod-7 (zone ä)")]).is_ok());
    }

    #[test]
    fn identity_length() {
        let longest: &'static str = "ä".repeat(MAX_IDENTITY / 2).leak();
        assert!(with(&[(IDENTITY, longest)]).is_ok());
        let over: &'static str = format!("{longest}x").leak();
        let e = with(&[(IDENTITY, over)]).unwrap_err();
        assert_eq!(e.var, IDENTITY);
        assert!(e.to_string().contains("1025 bytes"), "{e}");
    }

    #[test]
    fn advertised_addresses() {
        let c = with(&[(ADVERTISE, " http://10.0.0.5:8080/ ")])
            .unwrap()
            .unwrap();
        assert_eq!(c.advertise.as_deref(), Some("http://10.0.0.5:8080/"));
        assert_eq!(with(&[(ADVERTISE, "")]).unwrap().unwrap().advertise, None);
        assert_eq!(with(&[]).unwrap().unwrap().advertise, None);
        let longest: &'static str = "a".repeat(MAX_ADVERTISE).leak();
        assert!(with(&[(ADVERTISE, longest)]).is_ok());
        let long: &'static str = "a".repeat(MAX_ADVERTISE + 1).leak();
        for bad in [long, "10.0.0.5:80\r\nSet-Cookie: x", "a\tb"] {
            let e = with(&[(ADVERTISE, bad)]).unwrap_err();
            assert_eq!(e.var, ADVERTISE, "{bad:?}");
        }
    }

    #[test]
    fn an_observer_needs_no_identity() {
        let m: HashMap<&str, &str> = [(LOCK_NAME, "lock"), (ENDPOINTS, "127.0.0.1:2379")].into();
        let get = |k: &str| m.get(k).map(|v| v.to_string());
        assert_eq!(for_observer(get).unwrap().lock_name, "lock");
        assert_eq!(
            cfg(&[(LOCK_NAME, "lock"), (ENDPOINTS, "127.0.0.1:2379")])
                .unwrap_err()
                .var,
            IDENTITY
        );
        assert_eq!(for_observer(|_| None).unwrap_err().var, LOCK_NAME);
    }

    #[test]
    fn lock_names() {
        for good in ["app", "/app", "team/app", "/team/app", "a.b-c_d"] {
            let c = with(&[(LOCK_NAME, good)]).unwrap().unwrap();
            assert_eq!(c.lock_name, good);
        }
        for bad in ["a/", "/", "//", "a//b", "//app", "/app/", "a/b/"] {
            assert_eq!(
                with(&[(LOCK_NAME, bad)]).unwrap_err().var,
                LOCK_NAME,
                "{bad}"
            );
        }
    }

    #[test]
    fn status_endpoint() {
        let c = with(&[(STATUS_ENDPOINT, ":8080")]).unwrap().unwrap();
        assert_eq!(c.status_endpoint.as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(
            with(&[(STATUS_ENDPOINT, "localhost")]).unwrap_err().var,
            STATUS_ENDPOINT
        );
    }

    #[test]
    fn wait_timeout() {
        assert_eq!(with(&[]).unwrap().unwrap().wait_timeout, None);
        for zero in ["0", "0s", "0ms", "0.0"] {
            let c = with(&[(WAIT_TIMEOUT, zero)]).unwrap().unwrap();
            assert_eq!(c.wait_timeout, Some(Duration::ZERO), "{zero}");
        }
        let c = with(&[(WAIT_TIMEOUT, "1.5s")]).unwrap().unwrap();
        assert_eq!(c.wait_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            with(&[(WAIT_TIMEOUT, "soon")]).unwrap_err().var,
            WAIT_TIMEOUT
        );
        assert_eq!(with(&[(WAIT_TIMEOUT, "-1")]).unwrap_err().var, WAIT_TIMEOUT);
        // A forcer that could give up after asking the leader to yield: refused, naming both.
        for w in ["0", "10s"] {
            let e = with(&[(WAIT_TIMEOUT, w), (FORCE_ACQUIRE, "true")]).unwrap_err();
            assert_eq!(e.var, WAIT_TIMEOUT, "{w}");
            assert!(e.problem.contains(FORCE_ACQUIRE), "{e}");
        }
        let c = with(&[(WAIT_TIMEOUT, "0"), (FORCE_ACQUIRE, "false")])
            .unwrap()
            .unwrap();
        assert_eq!(c.wait_timeout, Some(Duration::ZERO));
    }

    #[test]
    fn health_defaults_and_checks() {
        assert_eq!(with(&[]).unwrap().unwrap().health, None);
        let h = with(&[(HEALTH_CMD, "test -e /ok")]).unwrap().unwrap();
        let h = h.health.unwrap();
        assert_eq!(h.check, Check::Command("test -e /ok".into()));
        assert_eq!(
            (h.interval, h.timeout, h.fall, h.rise),
            (Duration::from_secs(5), Duration::from_secs(2), 3, 2)
        );
        let url = |u: &'static str| match with(&[(HEALTH_URL, u)]) {
            Ok(Some(Config {
                health:
                    Some(Health {
                        check: Check::Url(u),
                        ..
                    }),
                ..
            })) => Ok((u.authority, u.path)),
            Ok(_) => panic!("no URL check"),
            Err(e) => Err(e.var),
        };
        assert_eq!(
            url("http://127.0.0.1:8080/healthz"),
            Ok(("127.0.0.1:8080".into(), "/healthz".into()))
        );
        assert_eq!(url("http://svc"), Ok(("svc:80".into(), "/".into())));
        assert_eq!(
            url("http://[::1]/x?y=1"),
            Ok(("[::1]:80".into(), "/x?y=1".into()))
        );
        assert_eq!(
            url("http://h:8080?ready"),
            Ok(("h:8080".into(), "/?ready".into()))
        );
        for bad in [
            "https://h/",
            "h:80/x",
            "http://",
            "http://h:99999/",
            "http://u@h/",
            "http://h/a b",
        ] {
            assert_eq!(url(bad), Err(HEALTH_URL), "{bad}");
        }
    }

    #[test]
    fn health_settings_are_checked() {
        let e = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![(HEALTH_CMD, "true")];
            v.extend_from_slice(extra);
            with(&v).map(|_| ()).map_err(|e| e.var)
        };
        assert_eq!(
            with(&[(HEALTH_CMD, "true"), (HEALTH_URL, "http://h/")])
                .unwrap_err()
                .var,
            HEALTH_URL
        );
        // Its rhythm means nothing without a check.
        assert_eq!(with(&[(HEALTH_RISE, "2")]).unwrap_err().var, HEALTH_RISE);
        assert_eq!(e(&[(HEALTH_INTERVAL, "50ms")]), Err(HEALTH_INTERVAL));
        assert_eq!(e(&[(HEALTH_INTERVAL, "2h")]), Err(HEALTH_INTERVAL));
        assert_eq!(
            e(&[(HEALTH_INTERVAL, "100ms"), (HEALTH_TIMEOUT, "100ms")]),
            Ok(())
        );
        assert_eq!(e(&[(HEALTH_TIMEOUT, "6s")]), Err(HEALTH_TIMEOUT));
        // The default timeout (2 s) shrinks to a shorter interval rather than exceed it.
        let h = with(&[(HEALTH_CMD, "true"), (HEALTH_INTERVAL, "1s")]);
        assert_eq!(
            h.unwrap().unwrap().health.unwrap().timeout,
            Duration::from_secs(1)
        );
        assert_eq!(
            e(&[(HEALTH_INTERVAL, "1s"), (HEALTH_TIMEOUT, "2s")]),
            Err(HEALTH_TIMEOUT)
        );
        // Blanks do not silently disable a check; empty is unset.
        assert_eq!(with(&[(HEALTH_CMD, " ")]).unwrap_err().var, HEALTH_CMD);
        assert_eq!(with(&[(HEALTH_URL, "\t")]).unwrap_err().var, HEALTH_URL);
        assert_eq!(with(&[(HEALTH_CMD, "")]).unwrap().unwrap().health, None);
        assert_eq!(e(&[(HEALTH_TIMEOUT, "5ms")]), Err(HEALTH_TIMEOUT));
        assert_eq!(e(&[(HEALTH_FALL, "0")]), Err(HEALTH_FALL));
        assert_eq!(e(&[(HEALTH_RISE, "101")]), Err(HEALTH_RISE));
        assert_eq!(e(&[(HEALTH_RISE, "x")]), Err(HEALTH_RISE));
        assert_eq!(e(&[(HEALTH_FALL, "1"), (HEALTH_RISE, "100")]), Ok(()));
    }
}
