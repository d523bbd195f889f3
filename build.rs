//! Build script: records the git commit the binary is built from, for `--version`.
//! Outside a git checkout (a source tarball, a container build without `.git`) it takes
//! `EAE_GIT_COMMIT` from the environment, else says `unknown`; the build never fails over it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=EAE_GIT_COMMIT");
    let commit = std::env::var("EAE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Run again when HEAD moves: a checkout changes HEAD, a commit the ref it names (a loose
    // file, or packed-refs). Only existing paths: a missing one would rerun every build.
    let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", head_ref.as_deref().unwrap_or("HEAD"), "packed-refs"];
    for path in watched
        .iter()
        .filter_map(|p| git(&["rev-parse", "--git-path", p]))
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=EAE_GIT_COMMIT={commit}");
}
