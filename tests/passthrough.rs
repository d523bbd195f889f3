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

/// An executable file that writes `$0`, its argument count and the length of its first argument,
/// then exits 7; without `#!`, so the kernel refuses it (ENOEXEC) and `/bin/sh` must run it.
fn script_without_shebang(path: &std::path::Path) {
    std::fs::write(
        path,
        "printf '%s %s %s\\n' \"$0\" \"$#\" \"${#1}\"\nexit 7\n",
    )
    .expect("write the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A file without `#!` is run by `/bin/sh FILE ARGS...`, as a shell does (and glibc's `execvp`;
/// musl's, in the static release binary, said 126), by its path and found through `PATH`, with
/// an argument list as long as the kernel takes (an argument of the longest length, then as many
/// as fit beside the environment).
#[test]
fn a_script_without_shebang_runs_with_sh_whatever_its_argument_list() {
    let dir = TempDir::new("no-shebang");
    let script = dir.join("no-shebang");
    script_without_shebang(&script);
    let args = common::longest_argv(16 << 10);
    let expected = format!("{} {} {}\n", script.display(), args.len(), args[0].len());
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    for (name, path) in [
        (script.to_str().expect("utf-8"), None),
        ("no-shebang", Some(&path)),
    ] {
        let mut cmd = clean(wrapper_bin());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        cmd.arg(name).args(&args);
        let r = run(cmd);
        assert_eq!(r.status.code(), Some(7), "{name}: stderr: {}", r.stderr);
        assert_eq!(r.stdout, expected, "{name}");
        assert_eq!(r.stderr, "", "{name}");
    }
}

/// Files the kernel refuses (ENOEXEC) that look like binaries, as bash judges them: an ELF header
/// it cannot load (a binary for another machine, a truncated download) and a NUL byte in the
/// first line. Each holds `exit 42` on a line of its own, which `/bin/sh` would run.
fn refused_binaries(dir: &TempDir) -> Vec<std::path::PathBuf> {
    [
        ("elf", &b"\x7fELF\x02\x01\x01\x00garbage\nexit 42\n"[..]),
        ("nul", b"true\0\nexit 42\n"),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let file = dir.join(name);
        std::fs::write(&file, bytes).expect("write the file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        file
    })
    .collect()
}

/// A binary the kernel refuses is not handed to `/bin/sh`, which would run whatever lines it
/// finds in it: 126 and the reason, as bash says it.
#[test]
fn a_binary_the_kernel_refuses_is_not_run_as_a_shell_script() {
    let dir = TempDir::new("refused-binary");
    for file in refused_binaries(&dir) {
        let r = wrapper(&[file.to_str().expect("utf-8 path")]);
        assert_eq!(
            r.status.code(),
            Some(126),
            "{file:?} was run by /bin/sh: stdout {:?}, stderr {:?}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stderr.contains("cannot execute binary file") && r.stderr.contains("another machine"),
            "{file:?}: {}",
            r.stderr
        );
    }
}

/// `PATH` is searched as a shell does: a directory without the file, an entry that is a file
/// and a file that is not executable are passed over, and the first file that runs wins; with
/// `PATH` unset, `/usr/local/bin:/bin:/usr/bin`.
#[test]
fn path_is_searched_as_a_shell_does() {
    let dir = TempDir::new("path-search");
    let (empty, denied, found) = (dir.join("empty"), dir.join("denied"), dir.join("found"));
    for d in [&empty, &denied, &found] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let not_a_dir = dir.join("not-a-dir");
    std::fs::write(&not_a_dir, "").expect("write a file");
    std::fs::write(denied.join("cmd"), "#!/bin/sh\necho denied\n").expect("write");
    std::fs::set_permissions(denied.join("cmd"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    std::fs::write(found.join("cmd"), "#!/bin/sh\necho found \"$@\"\n").expect("write");
    std::fs::set_permissions(found.join("cmd"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let path = [&empty, &not_a_dir, &denied, &found]
        .map(|p| p.display().to_string())
        .join(":");
    let mut cmd = clean(wrapper_bin());
    cmd.env("PATH", &path).args(["cmd", "x"]);
    let r = run(cmd);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "found x\n");

    let mut cmd = clean(wrapper_bin());
    cmd.env_remove("PATH").args(["sh", "-c", "echo unset"]);
    let r = run(cmd);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "unset\n");
}

/// What became of one run of the wrapper in [`a_script_whose_shell_argv_is_over_the_limit_is_126`].
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The script ran.
    Ran,
    /// The wrapper could not exec the script's shell: too long.
    ShellTooLong,
    /// Anything else: the wrapper's code and stderr, or its own exec's error.
    Other(Option<i32>, String),
}

/// An argument list that fits the kernel's limit for the wrapper, and for the file it runs, but
/// not once `/bin/sh` and the file's path are added for a file without `#!`: 126 and the reason,
/// never a crash. Found at the limit itself, by bisection over the length of a last argument:
/// the longest list that still runs, plus one byte.
#[test]
fn a_script_whose_shell_argv_is_over_the_limit_is_126() {
    let base = TempDir::new("shell-e2big");
    // The shell's list holds the file's path where the wrapper's held the wrapper's path twice
    // (file name and argv[0]): a long directory makes the shell's the longest of the three.
    let mut dir = base.path().to_path_buf();
    while dir.as_os_str().len() < 2 * wrapper_bin().len() + 64 {
        dir.push("d".repeat(100));
    }
    std::fs::create_dir_all(&dir).expect("mkdir");
    script_without_shebang(&dir.join("s"));
    let args = common::longest_argv(64 << 10);
    let outcome = |filler: usize| {
        let mut cmd = clean(wrapper_bin());
        cmd.env("PATH", &dir)
            .arg("s")
            .args(&args)
            .arg("f".repeat(filler));
        match common::try_run(cmd, TIMEOUT) {
            Err(e) => Outcome::Other(None, e.to_string()),
            Ok(r) if r.status.code() == Some(7) => Outcome::Ran,
            Ok(r)
                if r.status.code() == Some(126)
                    && r.stderr
                        .contains("/bin/sh cannot run it: Argument list too long")
                    && r.stderr.contains("ARG_MAX") =>
            {
                Outcome::ShellTooLong
            }
            Ok(r) => Outcome::Other(r.status.code(), r.stderr),
        }
    };
    let (mut runs, mut fails) = (0, common::MAX_ARG_STRLEN - 1);
    assert_eq!(
        outcome(runs),
        Outcome::Ran,
        "with {} bytes to spare",
        64 << 10
    );
    assert_ne!(outcome(fails), Outcome::Ran, "a last argument of 128 KiB");
    while fails - runs > 1 {
        let mid = (runs + fails) / 2;
        if outcome(mid) == Outcome::Ran {
            runs = mid;
        } else {
            fails = mid;
        }
    }
    assert_eq!(outcome(fails), Outcome::ShellTooLong, "one byte over");
}
