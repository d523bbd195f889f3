//! Log output: level, and text or JSON lines, on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) text lines carry no timestamp, since journald adds its
//! own. This module does not decide what is logged.

use std::io::Write;
use std::time::SystemTime;

use crate::format::{json_string, rfc3339};

/// `level` is an `env_logger` filter (e.g. `debug` or `info,tonic=warn`); `None` falls back to
/// `RUST_LOG`, then `info`.
pub fn init(level: Option<&str>, format: Option<&str>) -> Result<(), String> {
    let json = match format.map(str::trim) {
        None | Some("" | "text") => false,
        Some("json") => true,
        Some(other) => return Err(format!("{other:?} is not a log format (use text or json)")),
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        b.parse_filters(level);
    }
    let timestamps = std::env::var_os("JOURNAL_STREAM").is_none();
    b.format(move |buf, r| {
        let ours = r.target().starts_with(env!("CARGO_CRATE_NAME"));
        let msg = r.args().to_string();
        if json {
            return writeln!(
                buf,
                r#"{{"ts":"{}","level":"{}","target":{},"msg":{}}}"#,
                rfc3339(SystemTime::now()),
                r.level().as_str().to_ascii_lowercase(),
                json_string(r.target()),
                json_string(&msg)
            );
        }
        if timestamps {
            write!(buf, "{} ", rfc3339(SystemTime::now()))?;
        }
        if ours {
            writeln!(buf, "{:<5} {msg}", r.level())
        } else {
            writeln!(buf, "{:<5} {}: {msg}", r.level(), r.target())
        }
    });
    b.init();
    Ok(())
}
