//! Strangers: what other clients wrote to etcd, and what probes and tools send to the status
//! endpoint.
//!
//! A value anybody with write access to the lock's keys chose (the identity of an `etcdctl
//! elect` candidate, the holder record of an old replica) reaches every sink escaped and
//! bounded: the text log, the JSON log, the status JSON and the metrics. It can neither forge a
//! log line, nor drive a terminal, nor make a line or a status body as large as itself. The
//! values are put with real `etcdctl`, bound to real leases, and read back from the real
//! wrapper's stderr and status port.
//!
//! The status endpoint answers the request forms common probes send (bare LF line ends, HTTP/1.0,
//! HEAD, an absolute URI, a query string), raw over TCP, and stays bounded in size and time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::candidate::Candidate;
use common::etcd::Etcd;
use common::invariant::Monitor;
use common::{free_port, wait_for, wait_until, TempDir};

const T: Duration = Duration::from_secs(15);

/// Everything at once: a newline and a forged log line behind it, a carriage return, ANSI colour
/// sequences, bytes that are not UTF-8; padded to 1 MiB.
const HOSTILE: &[u8] =
    b"evil\n2099-01-01T00:00:00.000Z INFO  FORGED line\r\x1b[31mred\x1b[0m \xff\xfe not UTF-8 ";
/// How the start of it must be shown.
const SHOWN: &str = r"evil\n2099-01-01T00:00:00.000Z INFO  FORGED line\r\u{1b}[31mred\u{1b}[0m \xff\xfe not UTF-8 xxx";
const MIB: usize = 1 << 20;

fn hostile() -> Vec<u8> {
    let mut v = HOSTILE.to_vec();
    v.resize(MIB, b'x');
    v
}

/// How a stranger sits on the lock.
enum Stranger {
    /// A candidate key `LOCK/<hex lease>` bound to its lease, as `etcdctl elect` (and `etcdctl
    /// lock`) create it: the head of the queue.
    Candidate,
    /// The holder record `LOCK` bound to its lease, as an old replica (the Go tool) holds it.
    Holder,
}

/// One etcd, a stranger holding [`hostile`] on the lock under a live lease, and one candidate of
/// ours waiting behind it with a status endpoint; its stderr goes to a file of ours, read as
/// bytes (it might not be UTF-8).
struct Waiting {
    ours: Candidate,
    port: u16,
    stderr: PathBuf,
    _dir: TempDir,
    _etcd: Etcd,
}

impl Waiting {
    fn start(lock: &str, stranger: Stranger, log_format: &str) -> Waiting {
        let etcd = Etcd::start();
        let dir = TempDir::new(&format!("strangers-{lock}"));
        let lease = etcd.grant_lease(120);
        let key = match stranger {
            Stranger::Candidate => format!("{lock}/{lease:x}"),
            Stranger::Holder => lock.to_string(),
        };
        etcd.put_bytes(&key, &hostile(), lease);
        let stderr = dir.join("stderr");
        let file = std::fs::File::create(&stderr).expect("create the stderr file");
        let port = free_port();
        let ours = Candidate::new("ours")
            .lock(lock)
            .endpoints(&etcd.endpoint())
            .lease(10)
            .renew("8s")
            .retry("300ms")
            .status_port(port)
            .log(&dir.join("records"))
            .env("ETCD_AWAIT_ELECTION_LOG_FORMAT", log_format)
            .stderr(OwnedFd::from(file))
            .spawn();
        let w = Waiting {
            ours,
            port,
            stderr,
            _dir: dir,
            _etcd: etcd,
        };
        // It has seen the stranger once the lines about it are complete: the main thread logs
        // the leader, the election thread what it waits for, in either order.
        let waits = match stranger {
            Stranger::Candidate => &b" to go"[..],
            Stranger::Holder => b"waiting for it to stop",
        };
        let complete =
            |bytes: &[u8], m: &[u8]| find(bytes, m).is_some_and(|i| bytes[i..].contains(&b'\n'));
        let t0 = Instant::now();
        while ![&b"leader is "[..], waits]
            .iter()
            .all(|m| complete(&w.stderr_bytes(), m))
        {
            assert!(
                t0.elapsed() < T,
                "the lines naming the stranger are not in the wrapper's stderr: {}",
                head(&String::from_utf8_lossy(&w.stderr_bytes()), 4000)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        w
    }

    fn stderr_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.stderr).unwrap_or_default()
    }

    /// Still waiting behind the stranger, whatever it wrote.
    fn assert_waiting(&mut self) {
        assert!(self.ours.is_running(), "the wrapper exited");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The number in `… (N bytes left out)` after `after` in `s`.
fn left_out(s: &str, after: &str) -> usize {
    let rest = &s[s
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not in {s:?}"))..];
    let marker = rest
        .split("… (")
        .nth(1)
        .unwrap_or_else(|| panic!("no cut marker after {after:?} in {s:?}"));
    let n = marker.split(" bytes left out)").next().unwrap_or_default();
    n.parse()
        .unwrap_or_else(|_| panic!("no byte count in {marker:?}"))
}

/// Most of a 1 MiB value was left out, and said so.
fn assert_cut(s: &str, after: &str) {
    let n = left_out(s, after);
    assert!(
        (MIB - 1024..MIB).contains(&n),
        "{n} bytes left out in {s:?}"
    );
}

/// The first `n` characters of `s`, for a failure message that must not be 1 MiB long.
fn head(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// How the line naming the leader starts to show it: the value as shown elsewhere, in quotes (so
/// that none of it passes for more fields of the line), its backslashes escaped.
fn leader_is() -> String {
    format!("leader is \"{}", SHOWN.replace('\\', "\\\\"))
}

/// No line of the text log is forged, and none carries what a terminal acts on; the lines
/// naming an old replica as leader and as holder show the value escaped, and cut.
#[test]
fn text_log_escapes_and_bounds_a_strangers_value() {
    let mut w = Waiting::start("text-log", Stranger::Holder, "text");
    let bytes = w.stderr_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let forged: Vec<_> = text
        .lines()
        .filter(|l| l.contains("FORGED") && !l.contains("leader is ") && !l.contains(" holds "))
        .map(|l| head(l, 120))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
    for c in ['\r', '\u{1b}', '\u{fffd}'] {
        assert!(!text.contains(c), "{c:?} in stderr: {}", head(&text, 2000));
    }
    assert!(std::str::from_utf8(&bytes).is_ok(), "stderr is not UTF-8");
    assert!(
        bytes.len() < 64 * 1024,
        "a 1 MiB value made {} bytes of stderr",
        bytes.len()
    );
    let leader = text.lines().find(|l| l.contains("leader is ")).unwrap();
    assert!(leader.contains(&leader_is()), "{leader}");
    assert_cut(leader, "leader is ");
    // The line naming the holder, its value quoted.
    let holds = text.lines().find(|l| l.contains(" holds ")).unwrap();
    assert!(holds.contains(&format!("INFO  \"{SHOWN}")), "{holds}");
    assert_cut(holds, "INFO  \"evil");
    w.assert_waiting();
}

/// Every line of the JSON log is one JSON object, short, whose message shows the value as the
/// text log does.
#[test]
fn json_log_escapes_and_bounds_a_strangers_value() {
    let mut w = Waiting::start("json-log", Stranger::Candidate, "json");
    let bytes = w.stderr_bytes();
    let text = String::from_utf8(bytes).expect("stderr is UTF-8");
    let mut leader = None;
    for line in text.lines() {
        assert!(
            line.len() < 16 * 1024,
            "a log line of {} bytes: {}…",
            line.len(),
            head(line, 200)
        );
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", head(line, 200)));
        for field in ["ts", "level", "target", "msg"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        let msg = v["msg"].as_str().unwrap_or_default().to_string();
        assert!(!msg.chars().any(char::is_control), "{line}");
        if msg.contains("leader is ") {
            leader = Some(msg);
        }
    }
    let leader = leader.expect("the leader line");
    assert!(leader.contains(&leader_is()), "{leader}");
    assert_cut(&leader, "leader is ");
    w.assert_waiting();
}

/// `(status code, head, body)` of one request sent raw, read until the server closes.
fn exchange(port: u16, request: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let end = find(&answer, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, head, answer[end + 4..].to_vec()))
}

fn get(port: u16, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let (code, _, body) = wait_for(T, &format!("an answer to GET {path}"), || {
        exchange(port, request.as_bytes())
    });
    (code, String::from_utf8(body).expect("a UTF-8 body"))
}

/// The status JSON names the head of the queue, an `etcdctl elect` candidate with a hostile
/// identity: escaped as the logs show it, cut, and the body still small and valid JSON.
#[test]
fn status_json_escapes_and_bounds_a_strangers_value() {
    let mut w = Waiting::start("status-json", Stranger::Candidate, "text");
    let (code, body) = wait_for(T, "the status to name the leader", || {
        let (code, body) = get(w.port, "/");
        (!body.contains(r#""leader":"unknown""#)).then_some((code, body))
    });
    assert_eq!(code, 200);
    assert!(
        body.len() < 4096,
        "a 1 MiB value made a status body of {} bytes",
        body.len()
    );
    assert!(!body.chars().any(char::is_control), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("the status is JSON");
    let leader = v["leader"].as_str().expect("a leader");
    assert!(leader.starts_with(SHOWN), "{leader}");
    assert_cut(leader, "evil");
    assert_eq!(get(w.port, "/healthz").0, 200);
    w.assert_waiting();
}

/// One metric line: `name{label="value",...} number`, the values quoted as the Prometheus text
/// format wants.
fn assert_sample(line: &str) {
    let (series, value) = line.rsplit_once(' ').expect("a sample and its value");
    assert!(value.parse::<f64>().is_ok(), "{line}");
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.strip_suffix('}').expect("closed labels")),
        None => (series, ""),
    };
    assert!(
        name.starts_with("etcd_await_election_")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{line}"
    );
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let escaped = chars.next().map(|(_, c)| c);
                    assert!(matches!(escaped, Some('\\' | '"' | 'n')), "{line}");
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value: {line}"),
            }
        };
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
}

/// The metrics carry no stranger's value (their labels are the wrapper's own causes, escaped as
/// any label value would be), and stay well-formed and small with one holding the lock.
#[test]
fn metrics_stay_well_formed_with_a_stranger_on_the_lock() {
    let mut w = Waiting::start("metrics", Stranger::Holder, "text");
    let (code, body) = get(w.port, "/metrics");
    assert_eq!(code, 200);
    assert!(body.len() < 8192, "{} bytes of metrics", body.len());
    assert!(!body.contains("evil"), "{body}");
    for line in body.lines() {
        assert!(!line.chars().any(char::is_control), "{line:?}");
        if !line.starts_with("# HELP ") && !line.starts_with("# TYPE ") {
            assert_sample(line);
        }
    }
    w.assert_waiting();
}

// ---------------------------------------------------------------------------------------------
// What probes send
// ---------------------------------------------------------------------------------------------

/// A leader with a status endpoint, its command running.
struct Leader {
    port: u16,
    _ours: Candidate,
    _mon: Monitor,
    _dir: TempDir,
    _etcd: Etcd,
}

fn leader(lock: &str) -> Leader {
    let etcd = Etcd::start();
    let dir = TempDir::new(&format!("probes-{lock}"));
    let log = dir.join("records");
    let mon = Monitor::start(&log);
    let port = free_port();
    let ours = Candidate::new("leader")
        .lock(lock)
        .endpoints(&etcd.endpoint())
        .lease(10)
        .renew("8s")
        .retry("300ms")
        .status_port(port)
        .log(&log)
        .spawn();
    mon.wait_for_start(Some("leader"), T);
    wait_until(T, "the leader to be ready", || {
        get(port, "/readyz").0 == 200
    });
    Leader {
        port,
        _ours: ours,
        _mon: mon,
        _dir: dir,
        _etcd: etcd,
    }
}

/// Sends `request` raw and expects `code` with `body`; the head of the answer. (A request the
/// endpoint does not recognise as complete gets no answer: it is closed after 2 s.)
fn expect(port: u16, request: &str, code: u16, body: &str) -> String {
    let t0 = Instant::now();
    let answer = exchange(port, request.as_bytes());
    let took = t0.elapsed();
    let Some((got, head, got_body)) = answer else {
        panic!("no answer to {request:?} (connection closed after {took:?})");
    };
    let got_body = String::from_utf8_lossy(&got_body);
    assert_eq!(
        (got, got_body.as_ref()),
        (code, body),
        "answer to {request:?}: {head}"
    );
    head
}

/// `printf 'GET /healthz HTTP/1.0\n\n' | nc HOST PORT`, and its CRLF twin.
#[test]
fn probe_http_1_0_with_bare_lf() {
    let l = leader("probe-10");
    for request in [
        "GET /healthz HTTP/1.0\n\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /readyz HTTP/1.0\nUser-Agent: probe\n\n",
    ] {
        let want = if request.contains("readyz") {
            r#"{"status":"leading"}"#
        } else {
            r#"{"status":"ok"}"#
        };
        expect(l.port, request, 200, want);
    }
}

/// HTTP/1.1 with headers, lines ending in a bare LF, or mixed.
#[test]
fn probe_http_1_1_with_bare_lf() {
    let l = leader("probe-11");
    for request in [
        "GET /healthz HTTP/1.1\nHost: 127.0.0.1\nUser-Agent: probe/1\nAccept: */*\n\n",
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\nAccept: */*\r\n\n",
    ] {
        expect(l.port, request, 200, r#"{"status":"ok"}"#);
    }
}

/// HEAD: the head of the GET answer (its length too), no body.
#[test]
fn probe_head() {
    let l = leader("probe-head");
    for request in [
        "HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "HEAD /healthz HTTP/1.0\n\n",
    ] {
        let head = expect(l.port, request, 200, "");
        assert!(head.contains("\r\nContent-Length: 15\r\n"), "{head}");
    }
}

/// The absolute form a client sends to a proxy, with or without a path.
#[test]
fn probe_absolute_uri() {
    let l = leader("probe-abs");
    let p = l.port;
    let requests = [
        format!("GET http://127.0.0.1:{p}/healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n"),
        format!("GET http://127.0.0.1:{p}/readyz?x=1 HTTP/1.0\n\n"),
    ];
    expect(p, &requests[0], 200, r#"{"status":"ok"}"#);
    expect(p, &requests[1], 200, r#"{"status":"leading"}"#);
    let root = format!("GET http://127.0.0.1:{p} HTTP/1.1\nHost: 127.0.0.1:{p}\n\n");
    let (code, _, body) = exchange(p, root.as_bytes()).expect("an answer to GET http://host:port");
    assert_eq!(code, 200);
    assert!(body.starts_with(br#"{"status":"ok","phase":"running""#));
}

/// `GET http://host?next=/readyz` asks for `/`: the authority ends at the `?` (RFC 3986), and a
/// `/` in the query (or the fragment) is not the path.
#[test]
fn probe_absolute_uri_with_a_slash_in_its_query() {
    let l = leader("probe-abs-query");
    let p = l.port;
    for request in [
        format!("GET http://127.0.0.1:{p}?next=/readyz HTTP/1.1\r\n\r\n"),
        format!("GET http://127.0.0.1:{p}?next=/healthz HTTP/1.0\n\n"),
        format!("GET http://127.0.0.1:{p}#/readyz HTTP/1.1\r\n\r\n"),
    ] {
        let (code, _, body) =
            exchange(p, request.as_bytes()).unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!(code, 200, "{request:?}");
        assert!(
            body.starts_with(br#"{"status":"ok","phase":"running""#),
            "`/` was asked for by {request:?}, another path answered: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Empty lines before the request line are passed over (RFC 9112 §2.2: a server SHOULD ignore
/// at least one), whatever they end with.
#[test]
fn probe_empty_lines_before_the_request_line() {
    let l = leader("probe-empty-lines");
    for request in [
        "\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "\n\r\n\nGET /healthz HTTP/1.0\n\n",
    ] {
        expect(l.port, request, 200, r#"{"status":"ok"}"#);
    }
}

/// A query string is ignored, whatever the line ends.
#[test]
fn probe_query_string() {
    let l = leader("probe-query");
    expect(
        l.port,
        "GET /healthz?verbose=1 HTTP/1.1\nHost: 127.0.0.1\n\n",
        200,
        r#"{"status":"ok"}"#,
    );
    expect(
        l.port,
        "GET /readyz?verbose=1&x=%2F HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        200,
        r#"{"status":"leading"}"#,
    );
    expect(
        l.port,
        "GET /nope?healthz HTTP/1.0\n\n",
        404,
        r#"{"error":"not found"}"#,
    );
}

/// Bare-LF heads are held to the same limits: past 8 KiB refused, unfinished closed at 2 s.
#[test]
fn bare_lf_heads_are_still_bounded() {
    let l = leader("probe-bounds");
    // One byte over, so that the endpoint reads all of it before it answers: a close with
    // unread data would reset the connection, and the answer with it.
    let mut long = b"GET /healthz HTTP/1.1\nX-Filler: ".to_vec();
    long.resize(8 * 1024, b'a');
    long.push(b'\n');
    let (code, _, _) = exchange(l.port, &long).expect("an answer to an over-long head");
    assert_eq!(code, 431);

    // One LF (the request line's) is no end of the head: no answer, closed at the time limit.
    let t0 = Instant::now();
    let answer = exchange(l.port, b"GET /healthz HTTP/1.1\nHost: x\n");
    let took = t0.elapsed();
    assert!(answer.is_none(), "answered an unfinished head: {answer:?}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&took),
        "an unfinished head was closed after {took:?}"
    );
}
