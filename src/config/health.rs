//! The health check's settings: `HEALTH_CMD` or `HEALTH_URL`, and the rhythm `HEALTH_INTERVAL`,
//! `HEALTH_TIMEOUT`, `HEALTH_FALL`, `HEALTH_RISE`, read and checked at start-up like the rest.
//! Running the check is `health`'s.

use std::time::Duration;

use super::{
    check_host_port, err, parse_duration, ConfigError, HEALTH_CMD, HEALTH_FALL, HEALTH_INTERVAL,
    HEALTH_RISE, HEALTH_TIMEOUT, HEALTH_URL,
};

/// The health check and its rhythm (`health` runs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that make a healthy candidate unhealthy.
    pub fall: u32,
    /// Consecutive successes that make an unhealthy candidate healthy.
    pub rise: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Run with `/bin/sh -c`.
    Command(String),
    Url(HttpUrl),
}

/// An `http://` URL, taken apart for a plain GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// As given, for the log.
    pub text: String,
    /// `host:port` (`[v6]:port`), as `Host:` and for resolving.
    pub authority: String,
    pub path: String,
}

/// The accepted range of `HEALTH_INTERVAL`: as `RETRY_PERIOD`'s, the least is no storm of
/// processes, the most still notices a sick service within the hour.
pub const HEALTH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// The least `HEALTH_TIMEOUT`; the most is `HEALTH_INTERVAL`: one check at a time.
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_HEALTH_COUNT: u32 = 100;

/// The health check: `HEALTH_CMD` or `HEALTH_URL` (not both), and its rhythm, which means
/// nothing without one.
pub(super) fn read_health(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Health>, ConfigError> {
    let set = |var: &'static str| get(var).filter(|v| !v.trim().is_empty());
    no_blank_check(get)?;
    let check = match (set(HEALTH_CMD), set(HEALTH_URL)) {
        (Some(_), Some(_)) => {
            return Err(err(
                HEALTH_URL,
                format!("set either {HEALTH_CMD} or {HEALTH_URL}, not both"),
            ))
        }
        (Some(cmd), None) => Check::Command(check_shell(cmd)?),
        (None, Some(url)) => Check::Url(parse_http_url(url.trim())?),
        (None, None) => {
            let rhythm = [HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTH_FALL, HEALTH_RISE];
            return match rhythm.into_iter().find(|v| set(v).is_some()) {
                Some(var) => Err(err(
                    var,
                    format!("means nothing without {HEALTH_CMD} or {HEALTH_URL}"),
                )),
                None => Ok(None),
            };
        }
    };
    let duration = |var: &'static str, default: Duration| match set(var) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|p| err(var, p)),
    };
    let interval = duration(HEALTH_INTERVAL, Duration::from_secs(5))?;
    // The default timeout fits a shorter interval: only a timeout the user set can exceed it.
    let timeout = duration(HEALTH_TIMEOUT, Duration::from_secs(2).min(interval))?;
    let (min, max) = HEALTH_INTERVAL_RANGE;
    if !(min..=max).contains(&interval) {
        let p = format!("{interval:?} is out of range: {min:?} to {max:?}");
        return Err(err(HEALTH_INTERVAL, p));
    }
    if !(MIN_HEALTH_TIMEOUT..=interval).contains(&timeout) {
        let p = format!(
            "{timeout:?} is out of range: {MIN_HEALTH_TIMEOUT:?} to {HEALTH_INTERVAL} \
             ({interval:?}): one check runs at a time"
        );
        return Err(err(HEALTH_TIMEOUT, p));
    }
    let count = |var: &'static str, default: u32| match set(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_HEALTH_COUNT).contains(&n) => Ok(n),
            _ => Err(err(
                var,
                format!("{v:?} is not a count from 1 to {MAX_HEALTH_COUNT}"),
            )),
        },
    };
    Ok(Some(Health {
        check,
        interval,
        timeout,
        fall: count(HEALTH_FALL, 3)?,
        rise: count(HEALTH_RISE, 2)?,
    }))
}

/// Empty is unset; blanks would silently disable a check somebody meant to configure.
fn no_blank_check(get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    for var in [HEALTH_CMD, HEALTH_URL] {
        if get(var).is_some_and(|v| !v.is_empty() && v.trim().is_empty()) {
            return Err(err(
                var,
                "is blank: give a check, or leave it empty or unset",
            ));
        }
    }
    Ok(())
}

/// A command check needs a shell: found missing here rather than at the first check.
fn check_shell(cmd: String) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shell = std::fs::metadata(crate::health::SHELL);
    if !shell.is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        return Err(err(
            HEALTH_CMD,
            format!(
                "needs {} in the image (or use {HEALTH_URL}, which needs nothing)",
                crate::health::SHELL
            ),
        ));
    }
    Ok(cmd)
}

/// `http://host[:port][/path]`: no TLS, no user info (a check goes over loopback or a pod's
/// network to the service itself).
fn parse_http_url(v: &str) -> Result<HttpUrl, ConfigError> {
    let bad = |p: String| err(HEALTH_URL, format!("{v:?}: {p}"));
    let rest = v
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are checked".into()))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.chars().any(|c| c.is_control() || c == ' ') || authority.contains('@') {
        return Err(bad(
            "a path with spaces or control characters, or user info".into(),
        ));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !p.contains(']') && !h.is_empty());
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    check_host_port(&authority).map_err(bad)?;
    Ok(HttpUrl {
        text: v.to_string(),
        authority,
        path,
    })
}
