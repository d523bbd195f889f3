//! The HTTP status endpoint, answered from an in-memory snapshot.
//!
//! `main` is the only writer of the [`Snapshot`]; the server thread only reads it, so a flood of
//! requests costs no etcd request and cannot delay the election. This module does not know how
//! the snapshot's facts are learned.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Awaiting,
    Running,
    Stopping,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Awaiting => "awaiting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub identity: String,
    pub lock: String,
    pub phase: Phase,
    pub since: SystemTime,
    pub leader: Option<String>,
}

pub type Shared = Arc<Mutex<Snapshot>>;

pub fn shared(identity: &str, lock: &str) -> Shared {
    Arc::new(Mutex::new(Snapshot {
        identity: identity.to_string(),
        lock: lock.to_string(),
        phase: Phase::Awaiting,
        since: SystemTime::now(),
        leader: None,
    }))
}

/// Binds at once, so a bad or busy address is reported before the election starts.
pub fn serve(addr: &str, snapshot: Shared) -> Result<(), String> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let s = snapshot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let (code, body) = match request.url() {
                    "/" => (200, to_json(&s)),
                    _ => (404, "{\"error\":\"not found\"}".to_string()),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("static header is valid");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                if let Err(e) = request.respond(response) {
                    debug!("status: {e}");
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn to_json(s: &Snapshot) -> String {
    let leader = s.leader.as_deref().unwrap_or("unknown");
    format!(
        "{{\"status\":\"ok\",\"phase\":\"{}\",\"leader\":{},\"identity\":{},\"lock\":{},\"since\":\"{}\"}}",
        s.phase.as_str(),
        json_string(leader),
        json_string(&s.identity),
        json_string(&s.lock),
        rfc3339(s.since),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// UTC, whole seconds. Days-to-civil from Howard Hinnant's `chrono`-compatible algorithm.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600 + 3661);
        assert_eq!(rfc3339(t), "2026-11-22T01:01:01Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
