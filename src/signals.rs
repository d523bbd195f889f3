//! Signals delivered to the wrapper, turned into events for `main`.
//!
//! A `signal-hook` iterator thread does no work of its own: it only tells `main`, whose state
//! decides what a signal means (forward it to the child, withdraw from the election, or reap).

use std::sync::mpsc::Sender;

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

/// Passed on to the running child unchanged.
pub const FORWARDED: &[i32] = &[SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

pub fn spawn(tx: Sender<crate::Event>) -> std::io::Result<()> {
    let mut signals = Signals::new(FORWARDED.iter().chain(&[SIGCHLD]))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(crate::Event::Signal(sig)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
