//! `etcd-await-election CMD [ARGS...]`: run CMD only while this instance leads an etcd election.
//!
//! `main` holds the start-up steps, in tini's order: block every signal (so none is lost before
//! the signal thread exists), parse the command line, start logging, read the configuration
//! (without any, `exec` the command), check TLS, then hand over to the state machine (`machine`),
//! or, given `--leader` instead of a command, to the reader of who leads (`leader`).
//!
//! # Layout
//!
//! - Start-up: `cli` (the command line, `--help`), `config` (the `ETCD_AWAIT_ELECTION_*`
//!   settings), `exit` (the exit codes, one table for `main`, `--help` and the README),
//!   `logging`.
//! - The state machine: `machine` (awaiting → leading → stopping → resigning → exit, the renew
//!   deadline; standing aside while sick and `WAIT_TIMEOUT` in its room `aside`), with `timing` (its pure rules) on `clock` (`CLOCK_BOOTTIME`, the alarm).
//! - The election thread: `election` (the recipe, in rooms: join, rights, session, campaign,
//!   force, leading, retry, queue, scan, adopt, observe) on `etcd` (the gateway: bounded requests, watches, typed
//!   errors), with `failure` (what an error means: retry or give up).
//! - The child: `supervisor` (its process group, the guardian, `waitpid`), `launch` (resolving
//!   and starting the program), `signals` (the signal thread).
//! - The health check: `health` (its thread, the check, FALL/RISE counted into a verdict).
//! - Reporting: `status` (the HTTP status endpoint and metrics) on `http`, `leader` (who leads, as
//!   `--leader` and `/leader` show it), and `format` (escaping what others chose).

// A function past 60 lines is asking to be split (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

mod cli;
mod clock;
mod config;
mod election;
mod etcd;
mod exit;
mod failure;
mod format;
mod health;
mod http;
mod launch;
mod leader;
mod logging;
mod machine;
mod signals;
mod status;
mod supervisor;
mod timing;

use std::ffi::OsString;
use std::process::exit;
use std::time::Duration;

use log::error;

use config::Config;

const USAGE: &str =
    "usage: etcd-await-election [OPTIONS] [--] CMD [ARGS...] | [OPTIONS] --leader [--watch] (see --help)";

/// How long an exiting wrapper waits on a write of its last log lines that does not return. Bounded:
/// a stderr nobody reads must not keep the process — and its lease — alive.
const LOG_FLUSH: Duration = Duration::from_millis(250);

/// Exits once the queued log lines are out, or a write of them has been stuck for
/// [`LOG_FLUSH`].
fn quit(code: i32) -> ! {
    logging::flush(LOG_FLUSH);
    exit(code)
}

fn main() {
    // Before anything else, so that no signal is lost or acted on by default before the signal
    // thread exists (see `signals`).
    signals::block();
    let (options, run) = command_line();
    // A flag wins over its variable.
    let get = |name: &str| {
        let option = options.iter().rev().find(|(n, _)| *n == name);
        option
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    };
    start_logging(&get);
    let command = match run {
        Run::Command(command) => command,
        Run::Leader { watch } => leader(&get, watch),
    };
    let cfg = match config::from_env(get) {
        Ok(Some(cfg)) => cfg,
        // Not configured: the command itself, in our place.
        Ok(None) => {
            let e = supervisor::exec(&command);
            error!("cannot run {:?}: {e}", command[0]);
            quit(e.exit_code());
        }
        Err(e) => {
            error!("{e}");
            quit(exit::CONFIG);
        }
    };
    check_tls(&cfg);
    match machine::Wrapper::start(cfg, command) {
        Ok(wrapper) => quit(wrapper.run()),
        Err(e) => {
            error!("{e}");
            quit(exit::INTERNAL);
        }
    }
}

/// What to run: a command, or `--leader`.
enum Run {
    Command(Vec<OsString>),
    Leader { watch: bool },
}

/// `--leader`: prints who leads, and exits.
fn leader(get: &dyn Fn(&str) -> Option<String>, watch: bool) -> ! {
    let cfg = match config::for_observer(get) {
        Ok(cfg) => cfg,
        Err(e) => {
            error!("{e}");
            quit(exit::CONFIG);
        }
    };
    check_tls(&cfg);
    quit(leader::run(cfg, watch))
}

/// The options given as flags, and what to run; exits for `--help`, `--version` and usage errors.
fn command_line() -> (Vec<(&'static str, String)>, Run) {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli::Action::Help) => {
            print!("{}", cli::help());
            exit(0);
        }
        Ok(cli::Action::Version) => {
            println!("{}", cli::VERSION);
            exit(0);
        }
        Ok(cli::Action::Run { options, command }) if !command.is_empty() => {
            (options, Run::Command(command))
        }
        Ok(cli::Action::Leader { options, watch }) => (options, Run::Leader { watch }),
        Ok(cli::Action::Run { .. }) => {
            eprintln!("{USAGE}");
            exit(exit::USAGE);
        }
        Err(e) => {
            eprintln!("etcd-await-election: {e}\n{USAGE}");
            exit(exit::USAGE);
        }
    }
}

fn start_logging(get: &dyn Fn(&str) -> Option<String>) {
    match logging::init(
        get(config::LOG_LEVEL).as_deref(),
        get(config::LOG_FORMAT).as_deref(),
    ) {
        Ok(()) => {}
        Err(e @ logging::Error::Format(_)) => {
            eprintln!("etcd-await-election: {}: {e}", config::LOG_FORMAT);
            exit(exit::CONFIG);
        }
        Err(e) => {
            eprintln!("etcd-await-election: {e}");
            exit(exit::INTERNAL);
        }
    }
}

/// A TLS setup that can never work is a configuration error, found before anything starts.
fn check_tls(cfg: &Config) {
    if let Err(e) = etcd::check_tls(cfg) {
        error!(
            "{}/{}/{}: unusable TLS configuration: {e}",
            config::CERT,
            config::KEY,
            config::CACERT
        );
        quit(exit::CONFIG);
    }
}
