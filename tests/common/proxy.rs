//! A TCP fault-injection proxy between a candidate and etcd, built on std threads and std::net.
//! This module owns the network faults the tests inject: [`Mode::Pass`] forwards bytes both
//! ways, [`Mode::Blackhole`] keeps every connection open but stops all bytes (a forwarding thread
//! that has read data holds it until the mode changes; new connections are accepted but not
//! connected upstream), [`Mode::Reset`] aborts every connection at once (SO_LINGER 0 +
//! shutdown, so the peer sees RST/EOF immediately) and aborts new ones right after accept.
//! Switching back to `Pass` lets new connections through and lets held connections resume with
//! the bytes they held (like a healed partition). Dropping the [`Proxy`] closes all sockets and
//! joins all threads. Threads block in `accept`/`read`/a condition variable; nothing spins.

use super::ports::{lease, PortLease};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Reset,
}

struct Shared {
    mode: Mutex<Mode>,
    cv: Condvar,
    stop: AtomicBool,
    /// Every socket of every live connection, so Reset/Drop can abort them.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_id: AtomicU64,
    live_threads: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// Block while blackholed. True if bytes may flow (Pass), false if the connection must die.
    fn wait_pass(&self) -> bool {
        let mut m = self.mode.lock().unwrap();
        while *m == Mode::Blackhole && !self.stop.load(Ordering::SeqCst) {
            m = self.cv.wait(m).unwrap();
        }
        *m == Mode::Pass && !self.stop.load(Ordering::SeqCst)
    }

    fn register(&self, id: u64, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.sockets.lock().unwrap().entry(id).or_default().push(c);
        }
    }

    fn unregister(&self, id: u64) {
        if let Some(socks) = self.sockets.lock().unwrap().remove(&id) {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn abort_all(&self) {
        let all: Vec<(u64, Vec<TcpStream>)> = self.sockets.lock().unwrap().drain().collect();
        for (_, socks) in all {
            for s in socks {
                abort(&s);
            }
        }
    }
}

/// Make the socket's final close send RST, and wake everyone blocked on it.
fn abort(s: &TcpStream) {
    set_linger_zero(s);
    let _ = s.shutdown(Shutdown::Both);
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on a valid fd.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Counts a running thread for the lifetime of the guard.
struct ThreadGuard(Arc<Shared>);

impl ThreadGuard {
    fn new(sh: &Arc<Shared>) -> ThreadGuard {
        sh.live_threads.fetch_add(1, Ordering::SeqCst);
        ThreadGuard(sh.clone())
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.live_threads.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Proxy {
    addr: SocketAddr,
    _port: PortLease,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on 127.0.0.1:<a leased port> and forward to `upstream` (`host:port`) in `Pass` mode.
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("proxy upstream {upstream:?}: {e}"))
            .next()
            .expect("proxy upstream resolves to no address");
        let port = lease();
        let listener = TcpListener::bind(("127.0.0.1", port.port()))
            .unwrap_or_else(|e| panic!("proxy bind 127.0.0.1:{}: {e}", port.port()));
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            live_threads: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, upstream, sh))
            .unwrap();
        Proxy {
            addr,
            _port: port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT` to give the client instead of the upstream.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    pub fn set_mode(&self, mode: Mode) {
        {
            let mut m = self.shared.mode.lock().unwrap();
            *m = mode;
            self.shared.cv.notify_all();
        }
        if mode == Mode::Reset {
            // Mode is already Reset, so a connection registering after this drain sees it.
            self.shared.abort_all();
        }
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.shared.sockets.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _m = self.shared.mode.lock().unwrap();
            self.shared.cv.notify_all();
        }
        self.shared.abort_all();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Connection threads exit once their sockets are shut down; wait (bounded) for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.live_threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            self.shared.abort_all();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, sh: Arc<Shared>) {
    for conn in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let client = match conn {
            Ok(c) => c,
            Err(_) => continue,
        };
        if sh.mode() == Mode::Reset {
            set_linger_zero(&client);
            drop(client);
            continue;
        }
        let sh2 = sh.clone();
        let guard = ThreadGuard::new(&sh);
        let _ = std::thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || {
                let _g = guard;
                handle(client, upstream, sh2)
            });
    }
}

fn handle(client: TcpStream, upstream: SocketAddr, sh: Arc<Shared>) {
    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
    sh.register(id, &client);
    // Blackholed new connections wait here without being connected upstream.
    if !sh.wait_pass() {
        abort(&client);
        sh.unregister(id);
        return;
    }
    let up = match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
        Ok(u) => u,
        Err(_) => {
            abort(&client);
            sh.unregister(id);
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let _ = client.set_nodelay(true);
    sh.register(id, &up);
    // A Reset that drained the registry before `up` was registered must still kill us.
    if sh.mode() == Mode::Reset || sh.stop.load(Ordering::SeqCst) {
        abort(&client);
        abort(&up);
        sh.unregister(id);
        return;
    }
    let (c2, u2) = match (client.try_clone(), up.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => {
            sh.unregister(id);
            return;
        }
    };
    let sh2 = sh.clone();
    let guard = ThreadGuard::new(&sh);
    let back = std::thread::Builder::new()
        .name("proxy-down".into())
        .spawn(move || {
            let _g = guard;
            pump(u2, c2, &sh2)
        });
    pump(client, up, &sh);
    if let Ok(h) = back {
        let _ = h.join();
    }
    sh.unregister(id);
}

fn pump(mut src: TcpStream, mut dst: TcpStream, sh: &Shared) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // While blackholed, hold the bytes (and stop reading, so the sender's buffers fill).
        if !sh.wait_pass() {
            break;
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // One direction ended: end the whole connection.
    if sh.mode() == Mode::Reset {
        set_linger_zero(&src);
        set_linger_zero(&dst);
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}
