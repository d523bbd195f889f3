"""Benchmarks of etcd-await-election against a real etcd, next to `etcdctl lock`.

    python3 scripts/bench [--out BENCHMARKS.md] [--quick] [--only A,B] [--no-build] [--keep]
                          [--report-only]

Starts throwaway single-node etcds on loopback (ports by the protocol of tests/common/ports.rs,
--heartbeat-interval 100 --election-timeout 1000 so a 2 s lease TTL is allowed): one with its
data dir on /dev/shm for every scenario, one on disk for the handovers again, six more on
/dev/shm for what a lock costs etcd (one per tool and lock size: etcd counts requests per member)
and a fresh one on disk per fleet. Runs the scenarios against them with the release build of
etcd-await-election and with etcd's own `etcdctl lock NAME CMD...` (at our TTL wherever the
figure is a cost), and writes the figures to BENCHMARKS.md, its plots to benchmarks/ beside it,
and the raw samples to target/bench/results.json; a soak's results (target/bench/soak.json, left
by `make soak`) are shown beside them, never produced here. --quick runs few rounds, small fleets
and none of 5,000 candidates.

Every command under test is `target/release/eae-test-child` (tests/support/child.rs): it
appends `start|term|stop <identity> <pid> <CLOCK_MONOTONIC ns>` to $EAE_TEST_LOG, so handover
times are measured between two records written by the commands themselves, and the script's
own timestamps (time.clock_gettime_ns(CLOCK_MONOTONIC)) are on the same clock.

Only the Python standard library is used, and matplotlib for the plots (from target/pydeps:
scripts/install-deps.sh --bench). Everything started here (etcds, wrappers, etcdctl, commands,
the TCP proxy) is stopped on exit, on an exception, on Ctrl-C and on SIGTERM/SIGHUP.

Modules: base (paths, clock, statistics), ports, procs (what was started, /proc), etcd (the
fixture and its metrics), childlog (the commands' records), proxy, candidates (launching and
queueing), headroom (what the machine has left for a fleet), one module per scenario family
(handover, failover, footprint, cost, fleet, observe), report and markdown (BENCHMARKS.md) with a
room per family that needs more than rows (costreport, fleetreport, soakreport), plots, cli (the
run).
"""
