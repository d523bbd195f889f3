//! The command line: options before the command, `--help`, `--version`, and `--leader [--watch]`
//! given instead of a command.
//!
//! Every variable of [`config::VARIABLES`] is also a long option (`ETCD_AWAIT_ELECTION_LOCK_NAME`
//! is `--lock-name`); options win over the environment. Parsing stops at the first argument that
//! is not an option, or after `--`: everything from there on is the command, untouched. This
//! module does not validate values; `config` does, naming the variable.

use std::ffi::OsString;

use lexopt::Arg::{Long, Short, Value};

use crate::config::{self, Var, VARIABLES};
use crate::exit;

/// What `--version` prints: the version and the git commit the binary was built from (see
/// build.rs).
pub const VERSION: &str = concat!(
    "etcd-await-election ",
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EAE_GIT_COMMIT"),
    ")"
);

pub enum Action {
    Help,
    Version,
    /// `--leader` (`--watch`: and every change): print who leads instead of running a command.
    Leader {
        options: Vec<(&'static str, String)>,
        watch: bool,
    },
    Run {
        /// `(variable name, value)` for every option given.
        options: Vec<(&'static str, String)>,
        command: Vec<OsString>,
    },
}

/// `--leader` and `--watch` are flags, not a subcommand word: a word would shadow a program of
/// that name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, String> {
    let (mut leader, mut watch) = (false, false);
    let action = options(args, &mut leader, &mut watch)?;
    match action {
        Action::Run { options, command } if leader && command.is_empty() => {
            Ok(Action::Leader { options, watch })
        }
        Action::Run { .. } if leader => {
            Err("--leader is given instead of a command, not with one".into())
        }
        Action::Run { .. } if watch => Err("--watch goes with --leader".into()),
        other => Ok(other),
    }
}

fn options(
    args: impl IntoIterator<Item = OsString>,
    leader: &mut bool,
    watch: &mut bool,
) -> Result<Action, String> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut options = Vec::new();
    loop {
        match parser.next().map_err(|e| e.to_string())? {
            Some(Long("help") | Short('h')) => return Ok(Action::Help),
            Some(Long("version") | Short('V')) => return Ok(Action::Version),
            Some(Long("leader")) => *leader = true,
            Some(Long("watch")) => *watch = true,
            Some(Long(name)) => {
                let name = name.to_string();
                let var = VARIABLES
                    .iter()
                    .find(|v| flag(v) == name)
                    .ok_or_else(|| format!("unknown option --{name} (see --help)"))?;
                let value = if is_bool(var) {
                    parser.optional_value()
                } else {
                    Some(parser.value().map_err(|e| e.to_string())?)
                };
                let value = match value {
                    None => "true".to_string(),
                    Some(v) => v
                        .into_string()
                        .map_err(|_| format!("--{name}: the value is not valid UTF-8"))?,
                };
                options.push((var.name, value));
            }
            Some(Short(c)) => return Err(format!("unknown option -{c} (see --help)")),
            Some(Value(first)) => {
                let mut command = vec![first];
                command.extend(parser.raw_args().map_err(|e| e.to_string())?);
                return Ok(Action::Run { options, command });
            }
            None => {
                return Ok(Action::Run {
                    options,
                    command: Vec::new(),
                })
            }
        }
    }
}

fn flag(v: &Var) -> String {
    v.name
        .trim_start_matches("ETCD_AWAIT_ELECTION_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn is_bool(v: &Var) -> bool {
    [config::FORCE_ACQUIRE, config::LEGACY_LOCK].contains(&v.name)
}

pub fn help() -> String {
    let mut out = format!(
        "etcd-await-election {}
Runs a command only while this instance leads an etcd election; without any election
variable it simply executes the command.

Usage: etcd-await-election [OPTIONS] [--] CMD [ARGS...]
       etcd-await-election [OPTIONS] --leader [--watch]

Options (each is also an environment variable; options win):
",
        env!("CARGO_PKG_VERSION")
    );
    for v in VARIABLES {
        let arg = if is_bool(v) { "[=BOOL]" } else { " VALUE" };
        let default = match v.default {
            d if d.starts_with('(') => d.to_string(),
            d => format!("(default: {d})"),
        };
        out.push_str(&format!(
            "  --{}{arg}\n      {}\n      {} {default}\n",
            flag(v),
            v.name,
            v.meaning,
        ));
        if let Some(range) = config::range(v.name) {
            out.push_str(&format!("      range: {range}\n"));
        }
    }
    out.push_str(&format!(
        "  --leader         instead of a command: print who leads as one JSON line (leader,
                   address, revision) and exit 0, or 3 when nobody leads
  --watch          with --leader: a line at start and on every change, until SIGTERM/SIGINT
  -h, --help       this help
  -V, --version    the version and the git commit it was built from

Durations: a plain number is seconds; RENEW_DEADLINE, RETRY_PERIOD, WAIT_TIMEOUT and the HEALTH_
durations also take 500ms, 1.5s, 2m.
A value out of its range is refused (exit {}); the README says why each range is what it is.

Exit codes:
",
        exit::CONFIG
    ));
    for e in exit::TABLE {
        out.push_str(&row(&e.label(), e.when));
    }
    out.push_str(
        "
Example:
  ETCD_AWAIT_ELECTION_LOCK_NAME=my-job ETCD_AWAIT_ELECTION_IDENTITY=$HOSTNAME \\
  ETCD_AWAIT_ELECTION_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379 \\
  etcd-await-election my-job --serve
",
    );
    out
}

/// How wide `--help`'s generated paragraphs are.
const WIDTH: usize = 100;

/// One row of a two-column list: `label`, then `text` wrapped at [`WIDTH`] columns under it.
fn row(label: &str, text: &str) -> String {
    const INDENT: usize = 7;
    let mut out = String::new();
    let mut line = format!("  {label:<w$}", w = INDENT - 2);
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(INDENT);
        } else if !line.ends_with(' ') {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Vec<(&'static str, String)>, Vec<OsString>) {
        match parse(args.iter().map(OsString::from)).unwrap() {
            Action::Run { options, command } => (options, command),
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn options_then_command_untouched() {
        let (o, c) = run(&["--lock-name", "l", "--force-acquire", "sh", "-c", "--x"]);
        assert_eq!(
            o,
            [
                (config::LOCK_NAME, "l".to_string()),
                (config::FORCE_ACQUIRE, "true".to_string())
            ]
        );
        assert_eq!(c, ["sh", "-c", "--x"]);
        let (o, c) = run(&["--legacy-lock=false", "--", "--weird"]);
        assert_eq!(o, [(config::LEGACY_LOCK, "false".to_string())]);
        assert_eq!(c, ["--weird"]);
    }

    #[test]
    fn leader_instead_of_a_command() {
        let parsed = |args: &[&str]| parse(args.iter().map(OsString::from));
        match parsed(&["--lock-name", "l", "--leader", "--watch"]) {
            Ok(Action::Leader { options, watch }) => {
                assert_eq!(options, [(config::LOCK_NAME, "l".to_string())]);
                assert!(watch);
            }
            _ => panic!("not --leader"),
        }
        assert!(matches!(
            parsed(&["--leader"]),
            Ok(Action::Leader { watch: false, .. })
        ));
        // After the command, both are the command's.
        let (_, c) = run(&["sh", "--leader", "--watch"]);
        assert_eq!(c, ["sh", "--leader", "--watch"]);
        assert!(parsed(&["--leader", "sh"]).is_err());
        assert!(parsed(&["--watch", "sh"]).is_err());
        assert!(parsed(&["--watch"]).is_err());
    }

    #[test]
    fn unknown_options_are_errors() {
        assert!(parse(["--nope".into()]).is_err());
        assert!(parse(["-x".into()]).is_err());
        assert!(matches!(parse(["--help".into()]), Ok(Action::Help)));
    }

    #[test]
    fn help_lists_every_variable() {
        let h = help();
        for v in VARIABLES {
            assert!(h.contains(v.name), "{}", v.name);
        }
    }

    #[test]
    fn help_lists_every_exit_code() {
        let h = help();
        let codes = h.split("\nExit codes:").nth(1).unwrap();
        for e in exit::TABLE {
            assert!(
                codes.contains(&format!("\n  {:<5}", e.label())),
                "{} in:\n{h}",
                e.label()
            );
        }
        for line in h.lines() {
            assert!(line.len() <= WIDTH, "longer than {WIDTH}: {line}");
        }
    }

    /// The option is only checked to be a boolean: the record `LOCK_NAME` is held either way.
    #[test]
    fn help_says_legacy_lock_changes_nothing() {
        let h = help();
        let at = h.find(config::LEGACY_LOCK).unwrap();
        let meaning = h[at..].lines().nth(1).unwrap();
        assert!(meaning.contains("changes nothing"), "{meaning}");
    }

    #[test]
    fn help_gives_the_ranges() {
        let h = help();
        for range in [
            "range: 2 to 9000000000 seconds",
            "range: 1s to the lease duration - 1s",
            "range: 100ms to 300s",
        ] {
            assert!(h.contains(range), "{range} in:\n{h}");
        }
    }
}
