//! Rendering shared by the status endpoint and the logs: JSON strings, UTC timestamps, and text
//! that came from outside (values other clients wrote to etcd, server messages) made safe to
//! write: escaped and bounded. Small enough that a serialization or date crate would cost more
//! than it saves. The sinks (`logging`, `status`) decide where each is applied.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// At most this many bytes of a value from etcd are shown (escapes included): an identity is a
/// host or pod name, far shorter.
pub const SHOWN: usize = 512;

/// Characters that must not reach a log line or a terminal as they are: control characters
/// (newline, carriage return, ESC of an ANSI sequence, DEL, C1), the Unicode line and paragraph
/// separators, and the bidirectional overrides that make text display other than it reads.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{61c}' | '\u{200e}' | '\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `c` escaped as Rust's `{:?}` does: `\n`, `\r`, `\t`, `\u{1b}`.
fn escape_char(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// What is appended where a value is cut.
fn cut_marker(left_out: usize) -> String {
    format!("… ({left_out} bytes left out)")
}

/// `bytes` as one line of text: valid UTF-8 as it is but for [`unsafe_char`]s, escaped as `{:?}`
/// escapes them, and bytes that are not UTF-8 as `\xNN`; with `quoted`, in quotes with `"` and
/// `\` escaped too. At most `max` bytes of output, then a marker saying how many bytes of
/// `bytes` were left out.
fn escape(bytes: &[u8], max: usize, quoted: bool) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 2);
    if quoted {
        out.push('"');
    }
    let limit = max + out.len();
    let mut piece = String::new();
    let mut taken = 0;
    'all: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            piece.clear();
            match c {
                '"' | '\\' if quoted => {
                    piece.push('\\');
                    piece.push(c);
                }
                c if unsafe_char(c) => escape_char(c, &mut piece),
                c => piece.push(c),
            }
            if out.len() + piece.len() > limit {
                break 'all;
            }
            out.push_str(&piece);
            taken += c.len_utf8();
        }
        for b in chunk.invalid() {
            if out.len() + 4 > limit {
                break 'all;
            }
            let _ = write!(out, "\\x{b:02x}");
            taken += 1;
        }
    }
    if quoted {
        out.push('"');
    }
    if taken < bytes.len() {
        out.push_str(&cut_marker(bytes.len() - taken));
    }
    out
}

/// `s` for one line of text (a log line): [`unsafe_char`]s escaped as `{:?}` escapes them, cut
/// after `max` bytes of output with a marker saying how many bytes were left out. Borrowed when
/// there is nothing to do.
pub fn escaped(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(escape(s.as_bytes(), max, false))
}

/// `s` cut after at most `max` bytes (at a character boundary), with a marker saying how many
/// bytes were left out; for a sink that escapes by itself (JSON).
pub fn cut(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    Cow::Owned(format!("{}{}", &s[..end], cut_marker(s.len() - end)))
}

/// A value read from etcd (another client's identity, a key), which anybody with write access
/// to the lock's keys chose: shown escaped (control characters as `{:?}` escapes them, bytes that
/// are not UTF-8 as `\xNN`) and at most [`SHOWN`] bytes of it, then how many bytes were left
/// out. `{}` shows it bare, `{:?}` in quotes (with `"` and `\` escaped too).
pub struct Foreign<'a>(pub &'a [u8]);

impl fmt::Display for Foreign<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0, SHOWN, false))
    }
}

impl fmt::Debug for Foreign<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0, SHOWN, true))
    }
}

/// `s` as a JSON string. Besides what JSON requires, every [`unsafe_char`] is escaped as well,
/// so that a reader printing the raw line cannot be fooled either.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // All of them are in the basic plane: four hex digits.
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// RFC 3339 in UTC with milliseconds. Days-to-civil is Howard Hinnant's algorithm.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis((1_795_305_600 + 3661) * 1000 + 42);
        assert_eq!(rfc3339(t), "2026-11-22T01:01:01.042Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn json_escapes_what_a_terminal_would_act_on() {
        assert_eq!(
            json_string("\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}ä"),
            r#""\u001b[31m\u007f\u0085\u2028\u202eä""#
        );
    }

    #[test]
    fn foreign_values_are_escaped() {
        let v = b"a\nINFO forged\r\x1b[31mred\xff\xfe\"\\ \xe2\x80\xae ok \xc3\xa4";
        assert_eq!(
            Foreign(v).to_string(),
            r#"a\nINFO forged\r\u{1b}[31mred\xff\xfe"\ \u{202e} ok ä"#
        );
        assert_eq!(
            format!("{:?}", Foreign(v)),
            r#""a\nINFO forged\r\u{1b}[31mred\xff\xfe\"\\ \u{202e} ok ä""#
        );
        assert_eq!(Foreign(b"pod-7").to_string(), "pod-7");
    }

    #[test]
    fn foreign_values_are_bounded_with_a_marker() {
        let mut v = vec![b'x'; 1 << 20];
        v[0] = b'\n';
        let shown = Foreign(&v).to_string();
        let kept = SHOWN - 2;
        assert_eq!(
            shown,
            format!(
                "\\n{}… ({} bytes left out)",
                "x".repeat(kept),
                (1 << 20) - kept - 1
            )
        );
        // Never half an escape, nor half a character.
        let s = Foreign("\u{1b}".repeat(SHOWN).as_bytes()).to_string();
        assert!(s.starts_with(r"\u{1b}") && s.contains(r"\u{1b}… ("), "{s}");
        let s = format!("{:?}", Foreign("ä".repeat(SHOWN).as_bytes()));
        assert!(
            s.starts_with("\"ää") && s.ends_with("ä\"… (512 bytes left out)"),
            "{s}"
        );
    }

    #[test]
    fn escaped_and_cut_text() {
        assert!(matches!(escaped("plain", 8), Cow::Borrowed("plain")));
        assert_eq!(escaped("a\nb\tc", 99), r"a\nb\tc");
        assert_eq!(escaped("abcdef", 3), "abc… (3 bytes left out)");
        assert!(matches!(cut("abc", 3), Cow::Borrowed("abc")));
        assert_eq!(cut("aä\n", 2), "a… (3 bytes left out)");
    }
}
