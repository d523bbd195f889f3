//! The status endpoint's HTTP server: one request per connection, answered and closed, by one
//! thread running one `poll(2)` loop over nonblocking sockets.
//!
//! It owns the mechanics only (accepting, reading a request head, writing the answer, time and
//! size limits); what to answer comes from a callback. It takes requests as probes and tools
//! send them, not only as RFC 9112 spells them: lines may end in a bare LF (`printf ... | nc`),
//! empty lines before the request line are passed over (RFC 9112 §2.2), HTTP/1.0 or 1.1, any
//! method (HEAD gets the head only), the target in origin form or absolute (`GET
//! http://host:port/healthz`, as sent to a proxy), with a query string, which is ignored. The
//! design is what keeps it from being
//! starved: a connection costs a slot and no thread, never more than [`MAX_HEAD`] bytes of head,
//! and at most [`IO_TIMEOUT`] for the whole exchange. When all [`MAX_CONNECTIONS`] slots are
//! taken, a new connection evicts the oldest one that has not sent a byte (else the oldest one
//! still reading its request, else the oldest), and only one the loop has polled since its
//! accept: the rest wait in the listen backlog a round. Clients that connect and send nothing —
//! or a flood of them — only push each other out, while a probe that sends its request at once
//! is answered within a round of the loop. Requests that have arrived are answered before new
//! connections are accepted, so a flood of connects cannot evict a request that is already
//! there. Memory and
//! threads stay bounded whatever clients do. (A thread per connection, tried before, let 32 idle
//! clients hold every slot for the whole time limit while probes were turned away.)

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::debug;

/// A connection may take this long from accept to having taken its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer request heads are refused: nothing we serve needs more.
const MAX_HEAD: usize = 8 * 1024;
/// Connections open at once; a new one beyond this evicts one (see `victim`) or waits its turn.
const MAX_CONNECTIONS: usize = 32;
/// After a failed accept (out of file descriptors), the listener rests this long instead of
/// waking the loop again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// An answer: status code, content type, body, and where a redirect points (`Location:`, which
/// the caller makes sure holds no control character).
pub struct Answer {
    pub code: u16,
    pub kind: &'static str,
    pub body: String,
    pub location: Option<String>,
}

impl From<(u16, &'static str, String)> for Answer {
    fn from((code, kind, body): (u16, &'static str, String)) -> Answer {
        Answer {
            code,
            kind,
            body,
            location: None,
        }
    }
}

struct Conn {
    stream: TcpStream,
    opened: Instant,
    head: Vec<u8>,
    /// The answer and how much of it is written, once the head is complete.
    out: Option<(Vec<u8>, usize)>,
}

/// Binds at once, so a bad or busy address is reported before the election starts, then serves
/// on a thread of its own. `answer(method, target)` must not block.
pub fn serve(
    addr: &str,
    answer: impl Fn(&str, &str) -> Answer + Send + 'static,
) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || run(&listener, &answer))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn run(listener: &TcpListener, answer: &dyn Fn(&str, &str) -> Answer) {
    let mut conns: Vec<Conn> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CONNECTIONS + 1);
    let mut resting_until = None;
    loop {
        let now = Instant::now();
        let resting = resting_until.is_some_and(|t| now < t);
        fds.clear();
        fds.push(pollfd(
            listener.as_raw_fd(),
            if resting { 0 } else { libc::POLLIN },
        ));
        for c in &conns {
            let events = if c.out.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let next = conns
            .iter()
            .map(|c| c.opened + IO_TIMEOUT)
            .chain(resting_until.filter(|_| resting))
            .min();
        let timeout = next.map_or(-1, |t| {
            let ms = t.saturating_duration_since(now).as_millis() + 1;
            ms.min(i32::MAX as u128) as i32
        });
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            // EINTR; anything else (ENOMEM) is retried after the backoff rather than spun on.
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            continue;
        }
        // Requests that have arrived first: nothing accepted below may evict them.
        let now = Instant::now();
        let mut i = 0;
        conns.retain_mut(|c| {
            i += 1;
            let ready = fds[i].revents != 0;
            (!ready || step(c, answer)) && now < c.opened + IO_TIMEOUT
        });
        if fds[0].revents & libc::POLLIN != 0 {
            resting_until = accept_all(listener, &mut conns, answer);
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Accepts pending connections, making room when the slots are full (see [`victim`]). Returns
/// when the listener may be polled again if accepting failed.
fn accept_all(
    listener: &TcpListener,
    conns: &mut Vec<Conn>,
    answer: &dyn Fn(&str, &str) -> Answer,
) -> Option<Instant> {
    let round = Instant::now();
    loop {
        // Chosen before accepting, so that a full house with no victim leaves the rest in the
        // listen backlog; evicted only once the new connection needs the slot.
        let victim = if conns.len() >= MAX_CONNECTIONS {
            Some(victim(conns, round)?)
        } else {
            None
        };
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("status: accept: {e}");
                return Some(Instant::now() + ACCEPT_BACKOFF);
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let mut c = Conn {
            stream,
            opened: Instant::now(),
            head: Vec::new(),
            out: None,
        };
        // A client usually sends its request right after connecting: it may be here already,
        // then it is answered now and takes no slot.
        if step(&mut c, answer) {
            if let Some(v) = victim {
                conns.swap_remove(v);
            }
            conns.push(c);
        }
    }
}

/// Which connection a new one pushes out of a full house: the oldest idle one (nothing sent),
/// else the oldest still reading its request, else the oldest. Only one accepted in an earlier
/// round of the loop: one accepted in this round has been polled only at its accept (its
/// request may have arrived since), and a flood that reconnects as fast as it is pushed out
/// would otherwise push it out before the loop polls it; and while idle ones of this round
/// remain, none, so a flood's newest never outlasts a request under way. With no victim, the
/// rest wait in the listen backlog for the next round, when every connection is of an earlier one.
fn victim(conns: &[Conn], round: Instant) -> Option<usize> {
    let earlier = |i: usize| (conns[i].opened < round).then_some(i);
    if let Some(i) = oldest(conns, |c| c.out.is_none() && c.head.is_empty()) {
        return earlier(i);
    }
    oldest(conns, |c| c.out.is_none())
        .or_else(|| oldest(conns, |_| true))
        .and_then(earlier)
}

fn oldest(conns: &[Conn], pick: impl Fn(&Conn) -> bool) -> Option<usize> {
    (0..conns.len())
        .filter(|&i| pick(&conns[i]))
        .min_by_key(|&i| conns[i].opened)
}

/// Reads or writes what the socket takes now. False once the connection is done with.
fn step(c: &mut Conn, answer: &dyn Fn(&str, &str) -> Answer) -> bool {
    if c.out.is_none() {
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => c.head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    debug!("status: {e}");
                    return false;
                }
            }
            if head_complete(&c.head) {
                c.out = Some((request(&c.head, answer), 0));
                break;
            }
            if c.head.len() > MAX_HEAD {
                let body = r#"{"error":"request too large"}"#.to_string();
                c.out = Some((response(false, &(431, JSON, body).into()), 0));
                break;
            }
        }
    }
    let Some((out, written)) = &mut c.out else {
        return true;
    };
    while *written < out.len() {
        match c.stream.write(&out[*written..]) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                debug!("status: {e}");
                return false;
            }
        }
    }
    false
}

/// The head ends with an empty line; a line ends with LF, a CR before it optional. Empty lines
/// before the request line are no end: they are passed over.
fn head_complete(head: &[u8]) -> bool {
    let head = past_empty_lines(head);
    head.windows(2).any(|w| w == b"\n\n") || head.windows(3).any(|w| w == b"\n\r\n")
}

/// `head` from its first line that is not empty: a server SHOULD ignore at least one empty line
/// received before the request line (RFC 9112 §2.2), which some clients send after a body.
fn past_empty_lines(mut head: &[u8]) -> &[u8] {
    while let Some(rest) = head
        .strip_prefix(b"\n")
        .or_else(|| head.strip_prefix(b"\r\n"))
    {
        head = rest;
    }
    head
}

const JSON: &str = "application/json";

fn request(head: &[u8], answer: &dyn Fn(&str, &str) -> Answer) -> Vec<u8> {
    let line = past_empty_lines(head)
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return bad_request();
    };
    if !version.starts_with("HTTP/1.") {
        return bad_request();
    }
    response(method == "HEAD", &answer(method, path(target)))
}

fn bad_request() -> Vec<u8> {
    let body = r#"{"error":"bad request"}"#.to_string();
    response(false, &(400, JSON, body).into())
}

/// The path of a request target: `/healthz` of `/healthz?verbose=1` and of
/// `http://host:port/healthz` (absolute form, `/` when it has no path).
fn path(target: &str) -> &str {
    let target = match target.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => {
            // The authority ends at the first `/`, `?` or `#` (RFC 3986 §3.2): a `/` in the
            // query of `http://host?next=/x` is not the path's.
            let rest = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
            if rest.starts_with('/') {
                rest
            } else {
                "/"
            }
        }
        _ => target,
    };
    target.split(['?', '#']).next().unwrap_or(target)
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`. A target in origin form starts
/// with `/`, so it is none, whatever `://` its query holds.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn response(head_only: bool, a: &Answer) -> Vec<u8> {
    let Answer {
        code,
        kind,
        body,
        location,
    } = a;
    let reason = match code {
        200 => "OK",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let location = location
        .as_ref()
        .map_or_else(String::new, |l| format!("Location: {l}\r\n"));
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_request_targets() {
        for (target, want) in [
            ("/healthz", "/healthz"),
            ("/healthz?verbose=1", "/healthz"),
            ("http://127.0.0.1:8080/healthz", "/healthz"),
            ("HTTP://host/metrics?x=1#y", "/metrics"),
            ("http://host:1", "/"),
            ("http://host?x", "/"),
            ("http://127.0.0.1?next=/readyz", "/"),
            ("http://host#/readyz", "/"),
            ("http://host:1?a=/b#/c", "/"),
            ("http://host/?next=/readyz", "/"),
            ("/a?b=http://c/d", "/a"),
            ("x?next=http://host/readyz", "x"),
            ("*", "*"),
        ] {
            assert_eq!(path(target), want, "{target}");
        }
    }

    #[test]
    fn heads_end_with_an_empty_line_of_either_kind() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.0\n\n",
            b"GET / HTTP/1.1\nHost: x\r\n\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"\n\r\n\nGET / HTTP/1.0\n\n",
        ] {
            assert!(head_complete(head), "{head:?}");
        }
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET / HTTP/1.1\n",
            b"\r\n\r\n",
            b"\n\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n",
        ] {
            assert!(!head_complete(head), "{head:?}");
        }
    }

    fn listener() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        (listener, addr)
    }

    fn ok(_: &str, _: &str) -> Answer {
        (200, "text/plain", String::new()).into()
    }

    /// Whether `conns` holds the server's side of `client`.
    fn holds(conns: &[Conn], client: &TcpStream) -> bool {
        let addr = client.local_addr().ok();
        conns.iter().any(|c| c.stream.peer_addr().ok() == addr)
    }

    /// Every slot taken by an idle connection of an earlier round, and the clients' ends.
    fn full_house(
        listener: &TcpListener,
        addr: std::net::SocketAddr,
    ) -> (Vec<Conn>, Vec<TcpStream>) {
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut conns = Vec::new();
        accept_all(listener, &mut conns, &ok);
        assert_eq!(conns.len(), MAX_CONNECTIONS);
        (conns, held)
    }

    /// A connection accepted in a round is not evicted in that round, however many follow it:
    /// its request may be in its socket, unread (the flood of `tests/status_flood.rs` once had
    /// two probes of twenty pushed out that way).
    #[test]
    fn a_connection_survives_the_round_that_accepted_it() {
        let (listener, addr) = listener();
        let (mut conns, mut held) = full_house(&listener, addr);
        let probe = TcpStream::connect(addr).expect("connect");
        held.extend((0..MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).expect("connect")));
        accept_all(&listener, &mut conns, &ok);
        assert!(
            holds(&conns, &probe),
            "the probe was evicted in its own round"
        );
        assert_eq!(conns.len(), MAX_CONNECTIONS);
    }

    /// A request that has arrived by its accept is answered there and pushes nobody out.
    #[test]
    fn a_request_answered_at_its_accept_evicts_nobody() {
        let (listener, addr) = listener();
        let (mut conns, held) = full_house(&listener, addr);
        let mut probe = TcpStream::connect(addr).expect("connect");
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .expect("send");
        accept_all(&listener, &mut conns, &ok);
        let mut answer = String::new();
        probe.read_to_string(&mut answer).expect("the answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(
            held.iter().all(|h| holds(&conns, h)),
            "a connection was evicted"
        );
    }

    /// A request under way (part of its head sent) outlasts the idle connections of a flood:
    /// once the older idle ones are gone, the flood's newest wait for the next round.
    #[test]
    fn a_request_under_way_outlasts_a_flood() {
        let (listener, addr) = listener();
        let (mut conns, mut held) = full_house(&listener, addr);
        // Half the house starts a request; the loop reads what came.
        for h in &mut held[..MAX_CONNECTIONS / 2] {
            h.write_all(b"GET /hea").expect("send");
        }
        for c in &mut conns {
            assert!(step(c, &ok));
        }
        let under_way: Vec<TcpStream> = held.drain(..MAX_CONNECTIONS / 2).collect();
        held.extend((0..2 * MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).expect("connect")));
        accept_all(&listener, &mut conns, &ok);
        assert!(
            under_way.iter().all(|u| holds(&conns, u)),
            "a request under way was evicted"
        );
        assert_eq!(conns.len(), MAX_CONNECTIONS);
    }
}
