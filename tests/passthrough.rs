//! Without any `ETCD_AWAIT_ELECTION_*` variable the wrapper is a plain `exec`: the command gets
//! its argv byte for byte, runs as the wrapper's own pid, and its exit status is the wrapper's.
//! Failures to run it follow the shell's conventions (127 not found, 126 not executable), and a
//! missing command is a usage error (64).

mod common;

use common::candidate::wrapper_bin;
use common::{Run, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A command whose environment holds no `ETCD_AWAIT_ELECTION_*` variable, whatever the test
/// process itself inherited.
fn clean(program: &str) -> Command {
    let mut cmd = common::clean_command(program);
    cmd.stdin(Stdio::null());
    cmd
}

fn run(cmd: Command) -> Run {
    common::run(cmd, TIMEOUT)
}

/// `etcd-await-election ARGS...` with a clean environment.
fn wrapper(args: &[&str]) -> Run {
    let mut cmd = clean(wrapper_bin());
    cmd.args(args);
    run(cmd)
}

#[test]
fn argv_arrives_intact() {
    let r = wrapper(&[
        "sh",
        "-c",
        r#"printf "[%s]" "$@""#,
        "sh",
        "a b",
        "",
        "c",
        "  lead and trail  ",
        "*",
        "$HOME",
        "--",
        "-x",
    ]);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "[a b][][c][  lead and trail  ][*][$HOME][--][-x]");
    assert_eq!(r.stderr, "", "the wrapper must not add output of its own");
}

#[test]
fn environment_is_passed_through_unchanged() {
    let mut cmd = clean(wrapper_bin());
    cmd.env("EAE_PASSTHROUGH_PROBE", "x y").args([
        "sh",
        "-c",
        r#"printf "%s|%s" "$EAE_PASSTHROUGH_PROBE" "${ETCD_AWAIT_ELECTION_LEADER_KEY-unset}""#,
    ]);
    let r = run(cmd);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "x y|unset");
}

#[test]
fn exit_codes_propagate() {
    for code in [0, 1, 3, 42, 255] {
        let r = wrapper(&["sh", "-c", &format!("exit {code}")]);
        assert_eq!(r.status.code(), Some(code), "stderr: {}", r.stderr);
    }
}

#[test]
fn signal_death_is_the_commands_own() {
    for (sig, name, code) in [(libc::SIGTERM, "TERM", 143), (libc::SIGKILL, "KILL", 137)] {
        let script = format!("kill -{name} $$");
        // The wrapper *is* the command: its parent sees it die of the signal itself...
        let r = wrapper(&["sh", "-c", &script]);
        assert_eq!(r.status.signal(), Some(sig), "{name}: {:?}", r.status);
        // ...which a shell reports as 128+N.
        let mut sh = clean("sh");
        sh.args(["-c", r#""$@"; echo "rc=$?""#, "sh", wrapper_bin()])
            .args(["sh", "-c", &script]);
        let r = run(sh);
        assert_eq!(r.stdout, format!("rc={code}\n"), "{name}: {}", r.stderr);
    }
}

#[test]
fn command_replaces_the_wrapper() {
    let r = wrapper(&["sh", "-c", "echo $$"]);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        r.pid.to_string(),
        "the command must run as the wrapper's own pid (exec, not fork)"
    );
}

#[test]
fn command_not_found_is_127() {
    for cmd in ["eae-no-such-command-xyz", "/nonexistent/dir/cmd"] {
        let r = wrapper(&[cmd, "arg"]);
        assert_eq!(r.status.code(), Some(127), "{cmd}: stderr: {}", r.stderr);
        assert!(r.stderr.contains(cmd), "{cmd}: stderr: {}", r.stderr);
        assert_eq!(r.stdout, "");
    }
}

#[test]
fn found_but_not_executable_is_126() {
    let dir = TempDir::new("noexec");
    let file = dir.join("noexec.sh");
    std::fs::write(&file, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let subdir = dir.join("a-directory");
    std::fs::create_dir(&subdir).unwrap();

    for path in [&file, &subdir] {
        let p = path.to_str().unwrap();
        let r = wrapper(&[p]);
        assert_eq!(r.status.code(), Some(126), "{p}: stderr: {}", r.stderr);
        assert_eq!(r.stdout, "", "{p} must not have run");
        assert!(r.stderr.contains(p), "{p}: stderr: {}", r.stderr);
    }

    // Found through PATH, but not executable: still 126, as in a shell.
    let mut cmd = clean(wrapper_bin());
    cmd.env("PATH", dir.path()).arg("noexec.sh");
    let r = run(cmd);
    assert_eq!(r.status.code(), Some(126), "via PATH: stderr: {}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn no_command_is_a_usage_error() {
    for args in [&[][..], &["--"][..]] {
        let r = wrapper(args);
        assert_eq!(r.status.code(), Some(64), "{args:?}: {:?}", r.status);
        assert!(
            r.stderr.to_lowercase().contains("usage"),
            "{args:?}: stderr: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "usage goes to stderr");
    }
}

#[test]
fn double_dash_before_the_command_is_accepted() {
    let r = wrapper(&[
        "--",
        "sh",
        "-c",
        r#"printf "[%s]" "$@"; exit 5"#,
        "sh",
        "--",
        "x",
    ]);
    assert_eq!(r.status.code(), Some(5), "stderr: {}", r.stderr);
    // Only the first `--` is the wrapper's; a later one belongs to the command.
    assert_eq!(r.stdout, "[--][x]");
    assert_eq!(r.stderr, "");
}
