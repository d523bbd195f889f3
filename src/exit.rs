//! The wrapper's exit codes: one table ([`TABLE`]) of every code it can end with, and when. `main`
//! and `launch` exit with the constants below, `--help` prints the table (`cli`), and the README's
//! "Exit codes" table is checked against it by a test here, so the three cannot drift apart. This
//! module decides no exit: the states that end the wrapper are `main`'s.

/// SIGTERM/SIGINT while waiting: withdrew from the election (`--leader`: somebody leads).
pub const WITHDRAWN: i32 = 0;
/// `--leader`: nobody leads.
pub const NOBODY: i32 = 3;
/// `--leader`: etcd could not be read.
pub const UNREADABLE: i32 = 69;
/// The command line is unusable.
pub const USAGE: i32 = 64;
/// The wrapper's own failure (a thread, a timer, the status endpoint, the guardian).
pub const INTERNAL: i32 = 70;
/// The command's process group could not be emptied by the kill deadline.
pub const STUCK: i32 = 71;
/// Not leading within `WAIT_TIMEOUT`: withdrew, the command never started (sysexits'
/// `EX_CANTCREAT`: the lock could not be taken).
pub const WAIT_TIMEOUT: i32 = 73;
/// Leadership was lost: the command was stopped.
pub const LOST: i32 = 75;
/// Another live candidate uses our identity.
pub const TWIN: i32 = 76;
/// etcd refused us for good at start-up.
pub const REFUSED: i32 = 77;
/// A configuration variable is missing or invalid.
pub const CONFIG: i32 = 78;
/// The command was found but could not be executed (the shell's convention).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found (the shell's convention).
pub const NOT_FOUND: i32 = 127;

/// One way the wrapper ends.
pub struct Exit {
    /// `None`: the command's own code.
    pub code: Option<i32>,
    /// When, in words a user can act on (the README's table holds the same words).
    pub when: &'static str,
}

impl Exit {
    /// The first column of `--help` and of the README's table.
    pub fn label(&self) -> String {
        self.code
            .map_or_else(|| "the command's".to_string(), |c| c.to_string())
    }
}

const fn exit(code: i32, when: &'static str) -> Exit {
    Exit {
        code: Some(code),
        when,
    }
}

pub const TABLE: &[Exit] = &[
    Exit {
        code: None,
        when: "The command exited: its code, or 128+N if it died of signal N.",
    },
    exit(
        WITHDRAWN,
        "SIGTERM/SIGINT while still waiting: withdrew from the election (key deleted, lease \
         revoked); the command never started. --leader: somebody leads; --leader --watch: \
         ended by SIGTERM/SIGINT.",
    ),
    exit(NOBODY, "--leader: nobody leads."),
    exit(
        USAGE,
        "Usage: no command, an unknown option, an option without its value or with a value that \
         is not UTF-8.",
    ),
    exit(
        UNREADABLE,
        "--leader: etcd could not be read (unreachable, no answer within the request bound) \
         after three attempts a RETRY_PERIOD apart; --leader --watch retries until it can.",
    ),
    exit(
        INTERNAL,
        "The wrapper's own failure: a thread or the CLOCK_BOOTTIME timer cannot be started, \
         STATUS_ENDPOINT cannot be bound, the guardian cannot be started (then the command is \
         not started either), --leader cannot write its line. The message says which.",
    ),
    exit(
        STUCK,
        "The command's process group could not be emptied by the kill deadline (a process in \
         uninterruptible sleep, a zombie whose parent left the group with setsid): the wrapper \
         logs the pids left and exits without resigning, so its lease expires by itself.",
    ),
    exit(
        WAIT_TIMEOUT,
        "Not leading within WAIT_TIMEOUT (0: another candidate was queued ahead or held the \
         lock at the first try, or etcd failed it for the start-up grace): withdrew from the \
         election (key deleted, lease revoked); the command never started.",
    ),
    exit(
        LOST,
        "Leadership lost (renew deadline passed, lease expired, key or holder record deleted, \
         asked to yield by a force acquire): the command was stopped.",
    ),
    exit(
        TWIN,
        "Another live candidate renews a key under this IDENTITY (a twin: a copied env file, \
         $HOSTNAME under host networking), or took over this candidate's key while it waited: \
         nothing was started. Give each candidate its own IDENTITY.",
    ),
    exit(
        REFUSED,
        "etcd refused us for good at start-up, before joining the election and after the \
         start-up grace (5 s, or three RETRY_PERIODs if longer): a CA that does not verify the server \
         (CACERT), a server certificate not for the host in ENDPOINTS, an endpoint without TLS, \
         our client certificate rejected (CERT/KEY), credentials refused or given to a server \
         without authentication (USERNAME/PASSWORD), a right missing on the keys of LOCK_NAME \
         (each is proven before joining), a TTL etcd refuses (LEASE_DURATION), a request etcd \
         refuses, a value under LOCK_NAME too large, an etcd allowing fewer than 64 operations \
         in a transaction (its --max-txn-ops; named with ENDPOINTS). The message names the variable to fix; the command never started. --leader ends with it \
         too, at once.",
    ),
    exit(
        CONFIG,
        "Invalid configuration (a value out of its range, unreadable TLS files, a key that does \
         not match its certificate): the message names the variable. Nothing was asked of etcd.",
    ),
    exit(
        CANNOT_EXECUTE,
        "The command was found but could not be executed (not executable, its arguments and \
         environment over the kernel's limit, a binary the kernel refuses, a file without #! \
         that /bin/sh could not run).",
    ),
    exit(NOT_FOUND, "The command was not found."),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the README's "Exit codes" table: (first column, second column), code marks
    /// (backticks) dropped.
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .expect("the README has an \"## Exit codes\" section");
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(2) // the header and its rule
            .map(|l| {
                let cells: Vec<String> = l
                    .trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().replace('`', ""))
                    .collect();
                assert_eq!(cells.len(), 2, "not two columns: {l}");
                (cells[0].clone(), cells[1].clone())
            })
            .collect()
    }

    #[test]
    fn the_readme_table_is_this_table() {
        let ours: Vec<(String, String)> = TABLE
            .iter()
            .map(|e| (e.label(), e.when.to_string()))
            .collect();
        assert_eq!(readme_rows(), ours);
    }

    #[test]
    fn every_code_once() {
        let mut codes: Vec<i32> = TABLE.iter().filter_map(|e| e.code).collect();
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n, "a code listed twice");
        for c in [
            WITHDRAWN,
            NOBODY,
            UNREADABLE,
            USAGE,
            INTERNAL,
            STUCK,
            WAIT_TIMEOUT,
            LOST,
            TWIN,
            REFUSED,
            CONFIG,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ] {
            assert!(codes.contains(&c), "{c} is not in the table");
        }
    }
}
