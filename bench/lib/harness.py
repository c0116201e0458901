"""The data-path benchmark behind bench/run.

Two sections (BENCH_SECTIONS, default both), one lab, all on 127.0.0.1.

"proxy": the proxy core, like for like. Every target points at node0 only:
  direct             PostgreSQL itself
  pghalo-session     pghalo, release build, session pooling
  pghalo-txn         pghalo, transaction pooling (only if it really pools
                     per transaction: probed, not just parsed)
  pgbouncer-session  PgBouncer, pool_mode = session
  pgbouncer-txn      PgBouncer, pool_mode = transaction
  pgpool             pgpool-II, streaming-replication mode, one backend
  bare-relay         a relay that only copies bytes, one server connection
                     per client (examples/bare_relay.rs): the ceiling any
                     proxy can reach on this machine

"routing": reads spread over node0 (primary), node1 and node2 (standbys):
  direct                node0 itself (the reference)
  pghalo-balanced       pghalo, session pooling, replication monitor on,
                        load balancing per session, weight 1 each
  pghalo-balanced-stmt  the same with statement_level_load_balance = true
  pgpool-balanced       pgpool-II, three backends, load_balance_mode = on,
                        weight 1 each, sr_check on
pgbench -S (read-only) and a mixed read/write script; where the
transactions ran is read from every node's pg_stat_database and, through
the proxies, from SHOW POOL_NODES' select_cnt.

pgbench runs at each setting against every target in turn (interleaved,
so machine noise hits them alike), BENCH_REPEAT times; the median tps
("without initial connection time", or for -C "including reconnection
times") is reported. Results: a table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgwire  # noqa: E402
from common import (  # noqa: E402
    HOST, Interrupted, Lab, Session, check_pghalo_config, git_describe,
    install_signal_handlers, log, probe_transaction_pooling, raise_nofile, start_pghalo,
    write_pghalo_config,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results")

TARGET_ORDER = ["direct", "pghalo-session", "pghalo-txn", "pgbouncer-session",
                "pgbouncer-txn", "pgpool", "bare-relay"]
# The routing section: `direct` (node0) and the balancing proxies.
ROUTING_PROXIES = ["pghalo-balanced", "pghalo-balanced-stmt", "pgpool-balanced"]
ROUTING_ORDER = ["direct", *ROUTING_PROXIES]
ALL_TARGETS = TARGET_ORDER + ROUTING_PROXIES
SECTIONS = ["proxy", "routing"]
SECTION_PROXIES = {"proxy": TARGET_ORDER[1:], "routing": ROUTING_PROXIES}
# Nodes of the routing section's lab: node0 primary, the others standbys.
ROUTING_NODES = 3
SR_CHECK_PERIOD = 1  # seconds, pghalo's and pgpool's replication checks


def env_int(name: str, default: int, low: int = 1, high: int = 10**6) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"bench: {name} must be an integer, not {raw!r}")
    if not low <= value <= high:
        raise SystemExit(f"bench: {name} must be between {low} and {high}")
    return value


class Settings:
    def __init__(self) -> None:
        self.seconds = env_int("BENCH_SECONDS", 15, 1, 3600)
        self.repeat = env_int("BENCH_REPEAT", 1, 1, 99)
        self.clients = [int(c) for c in os.environ.get("BENCH_CLIENTS", "1 8 64").split()]
        if not self.clients or any(not 1 <= c <= 1000 for c in self.clients):
            raise SystemExit("bench: BENCH_CLIENTS must list client counts from 1 to 1000")
        self.connect_clients = env_int("BENCH_CONNECT_CLIENTS", 8, 1, 1000)
        self.pool_size = env_int("BENCH_POOL_SIZE", max(64, max(self.clients)), 1, 1000)
        self.scale = env_int("BENCH_SCALE", 10, 1, 1000)
        self.warmup = env_int("BENCH_WARMUP", 3, 0, 600)
        self.keep = os.environ.get("BENCH_KEEP", "0") == "1"
        self.diag = os.environ.get("BENCH_DIAG", "1") != "0"
        self.pin = os.environ.get("BENCH_PIN", "0") == "1"
        if self.pin and len(os.sched_getaffinity(0)) < 2:
            raise SystemExit("bench: BENCH_PIN=1 needs at least 2 CPUs this process may use")
        self.diag_seconds = env_int("BENCH_DIAG_SECONDS", 5, 1, 600)
        wanted = os.environ.get("BENCH_TARGETS", "").split()
        unknown = [t for t in wanted if t not in ALL_TARGETS]
        if unknown:
            raise SystemExit(f"bench: unknown BENCH_TARGETS {unknown}; known: {ALL_TARGETS}")
        self.targets = wanted or list(ALL_TARGETS)
        sections = os.environ.get("BENCH_SECTIONS", "").replace(",", " ").split()
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise SystemExit(f"bench: unknown BENCH_SECTIONS {unknown}; known: {SECTIONS}")
        self.sections = [s for s in SECTIONS if s in sections] if sections else list(SECTIONS)
        if set(wanted) - {"direct"}:
            # A section runs when BENCH_TARGETS names one of its proxies
            # (`direct`, the reference of both, does not count).
            skipped = [s for s in self.sections if not set(wanted) & set(SECTION_PROXIES[s])]
            for s in skipped:
                print(f"bench: BENCH_TARGETS names none of the {s} section's targets "
                      f"({' '.join(SECTION_PROXIES[s])}): {s} section skipped", file=sys.stderr)
            self.sections = [s for s in self.sections if s not in skipped]
            if not self.sections:
                raise SystemExit("bench: nothing to run: BENCH_TARGETS names no proxy of "
                                 f"the sections {sections or SECTIONS}")
        self.routing_clients = [int(c) for c in
                                os.environ.get("BENCH_ROUTING_CLIENTS", "8 64").split()]
        if not self.routing_clients or any(not 1 <= c <= 1000 for c in self.routing_clients):
            raise SystemExit("bench: BENCH_ROUTING_CLIENTS must list client counts from 1 to 1000")
        self.mix = os.environ.get("BENCH_MIX", "select-only@9 simple-update@1").split()
        if not self.mix or any(not re.fullmatch(r"[a-z-]+(@\d+)?", m) for m in self.mix):
            raise SystemExit("bench: BENCH_MIX lists pgbench built-in scripts, "
                             "e.g. \"select-only@9 simple-update@1\"")
        self.stats_settle = env_int("BENCH_STATS_SETTLE", 11, 0, 120)
        # Enough server connections for every pool at once (they all stay
        # warm between runs), plus the direct runs and some slack.
        self.max_connections = 6 * self.pool_size + max(self.clients) + 100
        if "routing" in self.sections:
            # pghalo-balanced and -stmt: a pool per node each; pgpool-balanced:
            # every child holds a connection to every node.
            self.max_connections += 2 * self.pool_size + 2 * max(self.routing_clients) + 8


class Target:
    def __init__(self, name: str, port: int, description: str):
        self.name = name
        self.port = port
        self.description = description
        self.available = True
        self.note = ""
        self.pgids: list[int] = []  # whose CPU time we measure (empty: direct)


class Setting:
    def __init__(self, protocol: str, clients: int, connect: bool = False,
                 script: list[str] | None = None):
        self.protocol = protocol
        self.clients = clients
        self.connect = connect
        # pgbench built-in scripts (-b NAME@WEIGHT); None: -S.
        self.script = script

    @property
    def key(self) -> str:
        return (("mixed " if self.script else "") + f"{self.protocol} c={self.clients}"
                + (" -C" if self.connect else ""))


# ---------------------------------------------------------------- tools


def find_tool(name: str, *candidates: str) -> str | None:
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return shutil.which(name)


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def chown_tree(path: Path, user: str) -> None:
    if os.geteuid() != 0 or not user:
        return
    shutil.chown(path, user, user)
    for p in path.rglob("*"):
        shutil.chown(p, user, user)


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def proc_stats():
    """(pid, fields of /proc/<pid>/stat after the command name) of every
    process; fields[1] is the parent, [2] the process group, [11] and [12]
    utime and stime."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        yield int(entry.name), fields


def group_pids(pgids: list[int]) -> list[int]:
    """Every process in these process groups (pgpool's children too)."""
    wanted = set(pgids)
    return [pid for pid, fields in proc_stats() if int(fields[2]) in wanted]


def group_cpu_ticks(pgids: list[int]) -> int:
    """utime + stime of every process in these process groups."""
    if not pgids:
        return 0
    wanted = set(pgids)
    return sum(int(fields[11]) + int(fields[12])
               for _, fields in proc_stats() if int(fields[2]) in wanted)


def pin_process(pid: int, cpus: set[int]) -> int:
    """Every thread of `pid` onto `cpus`; threads and children it starts
    later inherit the mask. Returns how many threads refused."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0  # the process ended meanwhile
    refused = 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass  # the thread ended meanwhile
        except OSError:
            refused += 1
    return refused


def children_of(parent: int) -> list[int]:
    return [pid for pid, fields in proc_stats() if int(fields[1]) == parent]


def server_cpus() -> set[int]:
    """The first CPU this process may use (a container may not allow 0)."""
    return {min(os.sched_getaffinity(0))}


def proxy_cpus() -> set[int]:
    return os.sched_getaffinity(0) - server_cpus()


def pin_processes(lab: Lab, targets) -> str:
    """BENCH_PIN=1: PostgreSQL (every node) and pgbench on CPU 0, every
    proxy on the other CPUs, so a proxy's CPU does not come out of the
    database's and the client's, as on a host where the proxy has cores
    of its own. Direct runs get CPU 0 alone too."""
    failed = 0
    for node in lab.status().get("nodes", []):
        postmaster = node.get("pid")
        if postmaster:
            for pid in [postmaster, *children_of(postmaster)]:
                failed += pin_process(pid, server_cpus())
    for t in targets:
        for pid in group_pids(t.pgids):
            failed += pin_process(pid, proxy_cpus())
    if failed:
        raise SystemExit(f"bench: BENCH_PIN=1: {failed} threads could not be pinned")
    server = min(server_cpus())
    others = sorted(proxy_cpus())
    shown = ("CPU " if len(others) == 1 else "CPUs ") + ",".join(map(str, others))
    return f"PostgreSQL and pgbench on CPU {server}, each proxy on {shown}"


# ---------------------------------------------------------------- targets


def setup_pgbouncer(session: Session, lab: Lab, binary: str, name: str, port: int,
                    mode: str, pool_size: int) -> Target:
    target = Target(name, port, f"PgBouncer, pool_mode = {mode}, default_pool_size = {pool_size}")
    d = session.work / name
    d.mkdir()
    (d / "userlist.txt").write_text(f'"postgres" "{lab.scram_verifier()}"\n')
    os.chmod(d / "userlist.txt", 0o600)
    (d / "pgbouncer.ini").write_text(
        "; written by pghalo bench\n"
        "[databases]\n"
        f"* = host={HOST} port={lab.node0_port}\n\n"
        "[pgbouncer]\n"
        f"listen_addr = {HOST}\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        f"pidfile = {d}/pgbouncer.pid\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {d}/userlist.txt\n"
        f"pool_mode = {mode}\n"
        f"default_pool_size = {pool_size}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 20000\n"
        "max_db_connections = 0\n"
        "server_reset_query = DISCARD ALL\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    # PgBouncer refuses to run as root: run it as the servers' user.
    user = lab.server_user if os.geteuid() == 0 else None
    chown_tree(d, user or "")
    proc = session.start(name, [binary, str(d / "pgbouncer.ini")], user=user, cwd=d)
    session.wait_port(proc, port)
    target.pgids = [proc.pid]
    return target


def start_bare_relay(session: Session, binary: str, port: int, node_port: int) -> Target:
    # As many workers as pghalo starts: one per CPU it may use.
    workers = len(os.sched_getaffinity(0))
    target = Target("bare-relay", port, f"bytes copied to node0, a server connection per client, "
                                        f"{workers} single-threaded workers "
                                        f"(examples/bare_relay.rs)")
    proc = session.start("bare-relay", [binary, f"{HOST}:{port}", f"{HOST}:{node_port}",
                                        str(workers)])
    session.wait_port(proc, port)
    target.pgids = [proc.pid]
    return target


def start_pgpool(session: Session, lab: Lab, binary: str, target: Target, children: int,
                 backends: str, routing: str, passwd: str) -> Target:
    """Writes pgpool-II's files for `target` (pool_hba, pool_passwd, an empty
    pcp.conf, pgpool.conf with `backends` and `routing` lines) and runs it in
    the foreground of a process group we own."""
    d = session.work / target.name
    port = target.port
    for sub in ("sock", "pcp", "oiddir"):
        (d / sub).mkdir(parents=True)
    (d / "pool_hba.conf").write_text(
        "# written by pghalo bench\n"
        "local all all scram-sha-256\n"
        f"host all all {HOST}/32 scram-sha-256\n"
    )
    # pgpool logs in to PostgreSQL with SCRAM itself, so it needs plain
    # passwords ("TEXT" prefix); the file is 0600 and removed with the run.
    (d / "pool_passwd").write_text(passwd)
    os.chmod(d / "pool_passwd", 0o600)
    (d / "pcp.conf").write_text("# no PCP users\n")
    (d / "pgpool.conf").write_text(
        "# written by pghalo bench\n"
        "backend_clustering_mode = 'streaming_replication'\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {port}\n"
        f"socket_dir = '{d}/sock'\n"
        "pcp_listen_addresses = ''\n"
        f"pcp_port = {port}\n"
        f"pcp_socket_dir = '{d}/pcp'\n"
        f"wd_ipc_socket_dir = '{d}/sock'\n"
        + backends +
        "enable_pool_hba = on\n"
        "pool_passwd = 'pool_passwd'\n"
        f"num_init_children = {children}\n"
        "max_pool = 1\n"
        "reserved_connections = 0\n"
        "child_life_time = 0\n"
        "child_max_connections = 0\n"
        "connection_life_time = 0\n"
        "client_idle_limit = 0\n"
        "connection_cache = on\n"
        + routing +
        "health_check_period = 0\n"
        "failover_on_backend_error = off\n"
        "use_watchdog = off\n"
        "memory_cache_enabled = off\n"
        f"memqcache_oiddir = '{d}/oiddir'\n"
        "log_destination = 'stderr'\n"
        "logging_collector = off\n"
        "log_min_messages = warning\n"
        f"pid_file_name = '{d}/pgpool.pid'\n"
        f"logdir = '{d}'\n"
    )
    # -n: stay in the foreground (we own it); -D: ignore any old status file.
    proc = session.start(target.name, [binary, "-n", "-D", "-f", str(d / "pgpool.conf"),
                                       "-F", str(d / "pcp.conf"), "-a", str(d / "pool_hba.conf")],
                         stop_signal=signal.SIGINT, cwd=d)
    session.wait_port(proc, port, timeout=60)
    target.pgids = [proc.pid]
    return target


def setup_pgpool(session: Session, lab: Lab, binary: str, port: int, children: int) -> Target:
    target = Target("pgpool", port, f"pgpool-II, streaming_replication, 1 backend, "
                                    f"num_init_children = {children}, max_pool = 1")
    backends = (
        f"backend_hostname0 = '{HOST}'\n"
        f"backend_port0 = {lab.node0_port}\n"
        "backend_weight0 = 1\n"
        "backend_flag0 = 'ALWAYS_PRIMARY'\n"
        "backend_application_name0 = 'node0'\n"
    )
    routing = (
        "load_balance_mode = off\n"
        "sr_check_period = 0\n"
        "sr_check_user = 'postgres'\n"
    )
    return start_pgpool(session, lab, binary, target, children, backends, routing,
                        f"postgres:TEXT{lab.password()}\n")


def setup_pgpool_balanced(session: Session, lab: Lab, binary: str, port: int, children: int,
                          nodes: list[dict]) -> Target:
    """pgpool-II in front of every node, spreading reads as pghalo-balanced
    does: load_balance_mode = on (per session, pgpool's default), weight 1
    each, the primary and the standbys found by sr_check as the lab's
    health user. Otherwise as the `pgpool` target."""
    target = Target("pgpool-balanced", port,
                    f"pgpool-II, streaming_replication, {len(nodes)} backends, "
                    f"load_balance_mode = on, backend_weight 1 each, sr_check every "
                    f"{SR_CHECK_PERIOD}s, num_init_children = {children}, max_pool = 1")
    backends = "".join(
        f"backend_hostname{i} = '{HOST}'\n"
        f"backend_port{i} = {node['port']}\n"
        f"backend_weight{i} = 1\n"
        # No failover_command anyway; this keeps pgpool from detaching a node.
        f"backend_flag{i} = 'DISALLOW_TO_FAILOVER'\n"
        f"backend_application_name{i} = '{node['name']}'\n"
        for i, node in enumerate(nodes))
    routing = (
        "load_balance_mode = on\n"
        "statement_level_load_balance = off\n"
        "disable_load_balance_on_write = 'transaction'\n"
        f"sr_check_period = {SR_CHECK_PERIOD}\n"
        "sr_check_user = 'pghalo'\n"
        # '': pgpool takes the health user's password from pool_passwd.
        "sr_check_password = ''\n"
        "sr_check_database = 'postgres'\n"
        "delay_threshold = 0\n"
    )
    return start_pgpool(session, lab, binary, target, children, backends, routing,
                        f"postgres:TEXT{lab.password()}\npghalo:TEXT{lab.password('pghalo')}\n")


def write_pghalo_balanced_config(directory: Path, *, port: int, nodes: list[dict],
                                 pool_size: int, lab: Lab, statement_level: bool) -> Path:
    """pghalo as the proxy-section targets run it (same listen, pool, auth
    and log settings), plus every node as a [[backend]] with weight 1, the
    replication monitor as the lab's health user, and load balancing."""
    directory.mkdir(parents=True, exist_ok=True)
    hba, passwd = lab.pool_files()
    shutil.copyfile(hba, directory / "pool_hba.conf")
    shutil.copyfile(passwd, directory / "pool_passwd")
    os.chmod(directory / "pool_passwd", 0o600)
    # The monitor needs the health user's password itself. The lab's own
    # proxy configuration holds it AES-encrypted with its pool_key: take
    # both, so no plain password is written (else TEXT in a 0600 file).
    lab_proxy = hba.parent
    found = re.search(r'^sr_check_password\s*=\s*"(AES[^"]+)"',
                      (lab_proxy / "pghalo.toml").read_text(), re.M)
    key_line = ""
    if found and (lab_proxy / "pool_key").exists():
        shutil.copyfile(lab_proxy / "pool_key", directory / "pool_key")
        os.chmod(directory / "pool_key", 0o600)
        sr_password = found.group(1)
        key_line = 'pool_key_file = "pool_key"\n'
    else:
        sr_password = "TEXT" + lab.password("pghalo")
    config = directory / "pghalo.toml"
    backends = "".join(
        "\n[[backend]]\n"
        f'name = "{node["name"]}"\n'
        f'host = "{HOST}"\n'
        f"port = {node['port']}\n"
        "weight = 1.0\n"
        for node in nodes)
    config.write_text(
        "# written by pghalo bench (routing section)\n"
        "[listen]\n"
        f'listen_addresses = ["{HOST}"]\n'
        f"port = {port}\n"
        "max_client_connections = 20000\n"
        "authentication_timeout = \"60s\"\n\n"
        "[pool]\n"
        'mode = "session"\n'
        f"max_pool_size = {pool_size}\n"
        'checkout_timeout = "30s"\n\n'
        "[auth]\n"
        'pool_hba = "pool_hba.conf"\n'
        'pool_passwd = "pool_passwd"\n'
        f"{key_line}\n"
        "[streaming_replication]\n"
        'sr_check_user = "pghalo"\n'
        f'sr_check_password = "{sr_password}"\n'
        f'sr_check_period = "{SR_CHECK_PERIOD}s"\n\n'
        "[load_balance]\n"
        "load_balance_mode = true\n"
        f"statement_level_load_balance = {'true' if statement_level else 'false'}\n\n"
        "[log]\n"
        'level = "info"\n'
        + backends
    )
    os.chmod(config, 0o600)
    return config


def pool_nodes(lab: Lab, port: int) -> list[dict]:
    """SHOW POOL_NODES through a proxy (pghalo and pgpool both answer it)."""
    conn = lab.connect(port)
    try:
        columns, rows = conn.query_with_columns("SHOW POOL_NODES")
    finally:
        conn.close()
    return sorted((dict(zip(columns, r)) for r in rows), key=lambda r: int(r["node_id"]))


def select_counts(lab: Lab, target: Target) -> list[int] | None:
    try:
        return [int(r["select_cnt"]) for r in pool_nodes(lab, target.port)]
    except (OSError, TimeoutError, pgwire.PgError, KeyError, ValueError) as e:
        log(f"{target.name}: SHOW POOL_NODES failed: {e}")
        return None


def wait_balancing(lab: Lab, target: Target, nodes: list[dict], timeout: float = 60.0) -> None:
    """Until the proxy knows node0 as the primary and the others as standbys,
    all up: before that, pghalo sends every read to the primary."""
    statuses = ("up", "waiting") if target.name.startswith("pgpool") else ("up",)
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        try:
            rows = pool_nodes(lab, target.port)
            seen = ", ".join(f"node{r['node_id']} {r['status']}/{r['role']}" for r in rows)
            if (len(rows) == len(nodes)
                    and all(r["status"] in statuses for r in rows)
                    and all(r["role"] == ("primary" if i == 0 else "standby")
                            for i, r in enumerate(rows))):
                log(f"{target.name}: SHOW POOL_NODES: {seen}")
                return
        except (OSError, TimeoutError, pgwire.PgError, KeyError, ValueError) as e:
            seen = str(e)
        time.sleep(0.5)
    raise RuntimeError(f"does not show node0 as primary and the others as standbys, all up, "
                       f"after {timeout:.0f}s (last: {seen})")


def node_xact_commits(lab: Lab, nodes: list[dict]) -> list[int | None]:
    """pg_stat_database.xact_commit of database postgres on each node,
    asked directly (a read-only transaction counts on a standby too)."""
    out: list[int | None] = []
    for node in nodes:
        try:
            conn = lab.connect(node["port"])
            try:
                rows = conn.query("SELECT xact_commit FROM pg_stat_database "
                                  "WHERE datname = 'postgres'")
            finally:
                conn.close()
            out.append(int(rows[0][0]))
        except (OSError, TimeoutError, pgwire.PgError, IndexError, ValueError) as e:
            log(f"{node['name']}: reading pg_stat_database failed: {e}")
            out.append(None)
    return out


def wait_replayed(lab: Lab, nodes: list[dict], timeout: float = 300.0) -> None:
    """Until every standby has replayed the primary's WAL up to now."""
    conn = lab.connect(nodes[0]["port"])
    try:
        lsn = conn.query("SELECT pg_current_wal_lsn()")[0][0]
    finally:
        conn.close()
    deadline = time.monotonic() + timeout
    for node in nodes[1:]:
        while True:
            conn = lab.connect(node["port"])
            try:
                done = conn.query(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0][0]
            finally:
                conn.close()
            if done == "t":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node['name']} has not replayed up to {lsn} "
                                   f"after {timeout:.0f}s")
            time.sleep(0.2)


# ---------------------------------------------------------------- pgbench

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(([^)]*)\)", re.M)
TXN_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


class Runner:
    def __init__(self, pgbench: str, lab: Lab, pin: bool = False):
        self.pgbench = pgbench
        self.pin = pin
        self.env = {
            **os.environ,
            "PGPASSFILE": str(lab.dir / "pgpass"),
            # The same for every target: no TLS / GSS negotiation round trip.
            "PGSSLMODE": "disable",
            "PGGSSENCMODE": "disable",
            "PGAPPNAME": "pgbench",
        }
        for var in ("PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGHOST", "PGHOSTADDR"):
            self.env.pop(var, None)

    def run(self, target: Target, setting: Setting, seconds: int) -> dict:
        workload = (["-S"] if not setting.script
                    else [arg for name in setting.script for arg in ("-b", name)])
        argv = [self.pgbench, "-h", HOST, "-p", str(target.port), "-U", "postgres",
                "-n", *workload, "-M", setting.protocol, "-T", str(seconds),
                "-c", str(setting.clients), "-j", str(min(2, setting.clients))]
        if setting.connect:
            argv.append("-C")
        argv.append("postgres")
        load = loadavg()
        cpu0 = group_cpu_ticks(target.pgids)
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                                  timeout=seconds + 60,
                                  preexec_fn=((lambda cpus=server_cpus():
                                               os.sched_setaffinity(0, cpus))
                                              if self.pin else None))
        except subprocess.TimeoutExpired:
            return {"tps": None, "error": f"pgbench did not finish within {seconds + 60}s"}
        except (OSError, subprocess.SubprocessError) as e:
            return {"tps": None, "error": f"pgbench could not start: {e}"}
        wall = time.monotonic() - t0
        cpu = (group_cpu_ticks(target.pgids) - cpu0) / os.sysconf("SC_CLK_TCK")
        out = done.stdout
        tps = TPS_RE.search(out)
        if done.returncode != 0 or not tps:
            lines = [l for l in (done.stderr + out).splitlines()
                     if "error" in l.lower() or "fatal" in l.lower() or "abort" in l.lower()]
            reason = (lines[0] if lines else (done.stderr.strip().splitlines() or ["no tps line"])[-1])
            return {"tps": None, "error": f"pgbench exit {done.returncode}: {reason.strip()[:300]}"}
        lat = LAT_RE.search(out)
        rate = float(tps.group(1))
        return {
            "tps": rate,
            "tps_basis": tps.group(2),
            "latency_ms": float(lat.group(1)) if lat else None,
            "proxy_cpu_pct": round(100 * cpu / wall, 1) if target.pgids else None,
            # CPU time of the proxy's processes per transaction: its
            # efficiency, less sensitive to machine noise than tps.
            "proxy_cpu_us_per_txn": (round(1e6 * cpu / (rate * wall), 1)
                                     if target.pgids and rate > 0 else None),
            "loadavg_before": load,
            "transactions": int(m.group(1)) if (m := TXN_RE.search(out)) else None,
            "failed_transactions": int(m.group(1)) if (m := FAILED_RE.search(out)) else None,
        }


# ---------------------------------------------------------------- perf

PERF_EVENTS = ["raw_syscalls:sys_enter", "context-switches", "syscalls:sys_enter_futex",
               "syscalls:sys_enter_epoll_wait", "task-clock"]


def perf_usable() -> str | None:
    """perf with the software events and syscall tracepoints we count (the
    hardware counters are often missing in VMs and are not needed)."""
    perf = shutil.which("perf")
    if not perf:
        return None
    try:
        done = subprocess.run([perf, "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout + done.stderr
    if done.returncode != 0 or "not supported" in text or "<not counted>" in text:
        return None
    return perf


def diagnose(perf: str, runner: "Runner", target: Target, setting: Setting, seconds: int,
             work: Path) -> dict:
    """One extra run under `perf stat`: syscalls, context switches and CPU
    per transaction of the proxy's processes."""
    pids = group_pids(target.pgids)
    if not pids:
        return {"error": "no process"}
    stat_out = work / f"perf-stat-{target.name}-{setting.clients}{'-C' if setting.connect else ''}.txt"
    stat = subprocess.Popen([perf, "stat", "-x", ",", "-e", ",".join(PERF_EVENTS),
                             "-p", ",".join(map(str, pids)), "-o", str(stat_out), "--",
                             "sleep", str(seconds + 2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    result = runner.run(target, setting, seconds)
    try:
        stat.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        stat.kill()
        stat.wait(timeout=10)
    txns = result.get("transactions")
    if not txns:
        return {"error": result.get("error", "no transactions")}
    out = {"tps": result["tps"], "transactions": txns}
    names = {"raw_syscalls:sys_enter": "syscalls", "context-switches": "context_switches",
             "syscalls:sys_enter_futex": "futex", "syscalls:sys_enter_epoll_wait": "epoll_wait"}
    try:
        for line in stat_out.read_text().splitlines():
            f = line.split(",")
            if len(f) < 3 or line.startswith("#"):
                continue
            try:
                value = float(f[0])
            except ValueError:
                continue
            if f[2] == "task-clock":  # milliseconds
                out["cpu_us_per_txn"] = round(value * 1000 / txns, 1)
            elif f[2] in names:
                out[f"{names[f[2]]}_per_txn"] = round(value / txns, 2)
    except OSError as e:
        out["error"] = f"perf stat: {e}"
    return out


def profile_run(perf: str, runner: "Runner", target: Target, setting: Setting, seconds: int,
                work: Path) -> dict:
    """One extra run under `perf record -e cpu-clock` (a software clock:
    works without hardware counters): where the proxy's CPU time goes."""
    data = work / f"perf-{target.name}-{setting.clients}{'-C' if setting.connect else ''}.data"
    rec = subprocess.Popen([perf, "record", "-q", "-e", "cpu-clock", "-F", "999",
                            "-p", str(target.pgids[0]), "-o", str(data), "--",
                            "sleep", str(seconds + 2)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    runner.run(target, setting, seconds)
    try:
        rec.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        rec.kill()
        rec.wait(timeout=10)
    if not data.exists():
        return {"error": "perf record wrote nothing"}
    return perf_profile(perf, data, "pghalo")


def perf_profile(perf: str, data: Path, binary: str) -> dict:
    """Share of CPU samples per DSO, and the top symbols of the binary."""
    prof: dict = {"dso": {}, "top_symbols": []}
    try:
        done = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso",
                               "--stdio", "-q"], capture_output=True, text=True, timeout=120)
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith("%"):
                prof["dso"][parts[1]] = float(parts[0].rstrip("%"))
        for key, dsos in (("top_symbols", []), ("top_pghalo_symbols", ["--dsos", binary])):
            done = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort",
                                   "dso,sym", *dsos, "--stdio", "-q"],
                                  capture_output=True, text=True, timeout=120)
            prof[key] = []
            for line in done.stdout.splitlines():
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0].endswith("%"):
                    prof[key].append([float(parts[0].rstrip("%")),
                                      " ".join(parts[1].split())[:110]])
                if len(prof[key]) >= 8:
                    break
    except (OSError, subprocess.TimeoutExpired) as e:
        prof["error"] = str(e)
    return prof


def print_diagnostics(diag: dict, profiles: dict) -> None:
    if not diag and not profiles:
        return
    print()
    print("diagnostics: one extra run per proxy under perf stat; per transaction")
    head = ["syscalls", "ctx-sw", "futex", "epoll_wait", "CPU us", "tps"]
    print("".ljust(36) + "".join(h.rjust(11) for h in head))
    for key, row in diag.items():
        for name, d in row.items():
            label = f"{key}  {name}"
            if d.get("error"):
                print(f"{label:<36}  {d['error']}")
                continue
            vals = [d.get("syscalls_per_txn"), d.get("context_switches_per_txn"),
                    d.get("futex_per_txn"), d.get("epoll_wait_per_txn"),
                    d.get("cpu_us_per_txn"), d.get("tps")]
            cells = ["-" if v is None else (f"{v:,.0f}" if i == 5 else f"{v:.2f}")
                     for i, v in enumerate(vals)]
            print(f"{label:<36}" + "".join(c.rjust(11) for c in cells))
    for key, row in profiles.items():
        for name, prof in row.items():
            if prof.get("error") or not prof.get("dso"):
                print(f"{name} profile ({key}): {prof.get('error', 'no samples')}")
                continue
            split = ", ".join(f"{dso} {pct:.0f}%" for dso, pct in
                              sorted(prof["dso"].items(), key=lambda kv: -kv[1])[:4])
            print(f"{name} CPU samples by DSO ({key}, perf record -e cpu-clock): {split}")
            for pct, sym in prof["top_symbols"][:5]:
                print(f"    {pct:5.2f}%  {sym}")
            if prof.get("top_pghalo_symbols"):
                print("  hottest in the pghalo binary itself:")
                for pct, sym in prof["top_pghalo_symbols"][:4]:
                    print(f"    {pct:5.2f}%  {sym}")


# ---------------------------------------------------------------- report


def fmt_tps(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def evaluate(results: dict, settings: list[Setting], targets: dict) -> list[dict]:
    """The MET/MISSED checks."""
    checks = []

    def cell(setting, name):
        return results.get(setting.key, {}).get(name, {}).get("tps")

    def paired(setting, mine, other):
        # Repeat i of both targets ran back to back in the same rotation, so
        # their ratio cancels most of what the machine did meanwhile.
        row = results.get(setting.key, {})
        a = row.get(mine, {}).get("tps_runs") or []
        b = row.get(other, {}).get("tps_runs") or []
        return [x / y for x, y in zip(a, b) if x is not None and y]

    pairs = [("pghalo-session", "pgbouncer-session", "direct")]
    if "pghalo-txn" in targets and targets["pghalo-txn"].available:
        pairs.append(("pghalo-txn", "pgbouncer-txn", "direct"))
    # The same goals for the bare relay: whatever it misses, no proxy that
    # relays the protocol could meet on this machine.
    if "bare-relay" in targets and targets["bare-relay"].available:
        pairs.append(("bare-relay", "pgbouncer-session", "direct"))
    for setting in settings:
        for mine, bouncer, direct in pairs:
            if mine not in targets:
                continue
            if setting.connect:
                if mine == "bare-relay":
                    continue  # it does not pool: every connection is a backend's
                goals = [(bouncer, 1.0)]
            elif setting.clients in (8, 64) and setting.protocol in ("simple", "prepared"):
                goals = [(bouncer, 1.2), (direct, 0.85)]
            else:
                continue
            for other, factor in goals:
                if other not in targets:
                    continue
                a, b = cell(setting, mine), cell(setting, other)
                r = ratio(a, b)
                if b is None:
                    verdict = "n/a"  # nothing to compare with (e.g. PgBouncer prepared + txn)
                elif a is None:
                    verdict = "MISSED"  # pghalo failed the run
                else:
                    verdict = "MET" if r >= factor else "MISSED"
                runs = paired(setting, mine, other)
                checks.append({"setting": setting.key, "target": mine, "versus": other,
                               "goal": f">= {factor:g}x", "ratio": r, "verdict": verdict,
                               "ceiling": mine == "bare-relay",
                               "paired_ratios": runs,
                               # A verdict that one repeat would have turned is noise.
                               "unclear": bool(runs) and min(runs) < factor <= max(runs)})
    return checks


def print_report(results: dict, settings: list[Setting], targets: dict, checks: list,
                 meta: dict) -> None:
    names = [t for t in TARGET_ORDER if t in targets]
    width = max(12, *(len(n) + 1 for n in names))
    print()
    print(f"pgbench -S, {meta['seconds']}s per run, median of {meta['repeat']}, "
          f"-j 2, scale {meta['scale']}, pool size {meta['pool_size']}; "
          f"{meta['cpus']} CPUs, load average {meta['loadavg_at_start']:.2f} at start; "
          f"tps (higher is better)")
    if meta.get("pinned"):
        print(f"pinned (BENCH_PIN=1): {meta['pinned']}; the targets are set for unpinned runs")
    print("setting".ljust(22) + "".join(n.rjust(width) for n in names))
    for s in settings:
        row = results.get(s.key, {})
        print(s.key.ljust(22) + "".join(fmt_tps(row.get(n, {}).get("tps")).rjust(width)
                                        for n in names))
    print()
    columns = ["pghalo/direct", "pghalo/pgbouncer", "pghalo-txn/pgb-txn"]
    relay = "bare-relay" in names and targets["bare-relay"].available
    if relay:
        columns += ["relay/direct", "relay/pgbouncer"]
    print("ratios".ljust(22) + "".join(h.rjust(20) for h in columns))
    for s in settings:
        row = results.get(s.key, {})
        get = lambda n: row.get(n, {}).get("tps")  # noqa: E731
        vals = [ratio(get("pghalo-session"), get("direct")),
                ratio(get("pghalo-session"), get("pgbouncer-session")),
                ratio(get("pghalo-txn"), get("pgbouncer-txn"))]
        if relay:
            vals += [ratio(get("bare-relay"), get("direct")),
                     ratio(get("bare-relay"), get("pgbouncer-session"))]
        print(s.key.ljust(22) + "".join(fmt_ratio(v).rjust(20) for v in vals))
    cpu_names = [n for n in names if targets[n].pgids]
    if cpu_names:
        print()
        print("proxy CPU us/transaction".ljust(22) + "".join(n.rjust(width) for n in cpu_names)
              + "   (% of one core)")
        for s in settings:
            row = results.get(s.key, {})
            cells, pcts = [], []
            for n in cpu_names:
                v = row.get(n, {}).get("proxy_cpu_us_per_txn")
                cells.append(("-" if v is None else f"{v:.1f}").rjust(width))
                p = row.get(n, {}).get("proxy_cpu_pct")
                pcts.append("-" if p is None else f"{p:.0f}")
            print(s.key.ljust(22) + "".join(cells) + "   (" + " / ".join(pcts) + ")")
    for title, ceiling in (("targets", False),
                           ("the same goals for the bare relay (what relaying alone allows here)",
                            True)):
        shown = [c for c in checks if c.get("ceiling", False) == ceiling]
        if not shown:
            continue
        print()
        print(title)
        for c in shown:
            r = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
            runs = c.get("paired_ratios") or []
            spread = f" (repeats {min(runs):.2f}-{max(runs):.2f}x)" if len(runs) > 1 else ""
            unclear = ", within noise" if c.get("unclear") else ""
            print(f"  {c['verdict']:<7} {c['target']:<14} vs {c['versus']:<17} {c['setting']:<18} "
                  f"goal {c['goal']:<8} got {r}{spread}{unclear}")
    failures = [(s.key, n, cell["error"]) for s in settings
                for n, cell in results.get(s.key, {}).items() if cell.get("error")]
    notes = [(n, t.note) for n, t in targets.items() if t.note]
    if failures or notes:
        print()
        print("notes")
        for n, note in notes:
            print(f"  {n}: {note}")
        for key, n, err in failures:
            print(f"  n/a {n} @ {key}: {err}")


# ---------------------------------------------------------------- routing


def deltas(before, after) -> list[int | None] | None:
    if before is None or after is None:
        return None
    return [None if a is None or b is None else b - a for a, b in zip(before, after)]


def add_counts(runs: list[dict], field: str) -> list[int] | None:
    """Per-node counts summed over the runs that have them."""
    rows = [r[field] for r in runs if r.get(field) and None not in r[field]]
    return [sum(col) for col in zip(*rows)] if rows else None


def routing_settings(cfg: Settings) -> list[Setting]:
    settings = [Setting(p, c) for p in ("simple", "prepared") for c in cfg.routing_clients]
    settings += [Setting("simple", c, script=cfg.mix) for c in cfg.routing_clients]
    return settings


def measure_routing(cfg: Settings, lab: Lab, runner: Runner, active: list[Target],
                    nodes: list[dict]) -> tuple[list[Setting], dict]:
    """Every routing setting against every target, interleaved as in the
    proxy section. Per run: SHOW POOL_NODES' select_cnt through the proxy
    before and after (exact, at once), and each node's xact_commit after
    BENCH_STATS_SETTLE seconds (a server connection that stays open in a
    pool reports its last second of statistics only after ~10s idle)."""
    settings = routing_settings(cfg)
    if cfg.warmup:
        log(f"routing warm-up: {cfg.warmup}s per target at {max(cfg.routing_clients)} clients")
        for t in active:
            r = runner.run(t, Setting("simple", max(cfg.routing_clients)), cfg.warmup)
            if r["tps"] is None:
                log(f"warm-up {t.name}: {r['error']}")
    xacts = None
    if cfg.stats_settle:
        time.sleep(cfg.stats_settle)
        xacts = node_xact_commits(lab, nodes)
    results: dict = {}
    total = len(settings) * cfg.repeat * len(active)
    done = 0
    for s in settings:
        runs: dict[str, list] = {t.name: [] for t in active}
        for rep in range(cfg.repeat):
            shift = (len(results) + rep) % len(active)
            for t in active[shift:] + active[:shift]:
                done += 1
                counted = t.name in ROUTING_PROXIES
                before = select_counts(lab, t) if counted else None
                r = runner.run(t, s, cfg.seconds)
                if counted:
                    r["select_cnt"] = deltas(before, select_counts(lab, t))
                if xacts is not None:
                    time.sleep(cfg.stats_settle)
                    now = node_xact_commits(lab, nodes)
                    r["xact_commit"] = deltas(xacts, now)
                    xacts = now
                runs[t.name].append(r)
                shown = fmt_tps(r["tps"]) if r["tps"] is not None else "n/a: " + r["error"]
                spread = fmt_spread(r.get("xact_commit"))
                log(f"[{done}/{total}] {s.key:<18} {t.name:<20} {shown:>8}"
                    + (f"   xact_commit {spread}" if r.get("xact_commit") else "")
                    + (f"   select_cnt {fmt_spread(r['select_cnt'])}"
                       if r.get("select_cnt") else ""))
        row = {}
        for name, rs in runs.items():
            good = [r for r in rs if r["tps"] is not None]
            failed = [r["failed_transactions"] for r in good
                      if r.get("failed_transactions") is not None]
            lat = [r["latency_ms"] for r in good if r.get("latency_ms") is not None]
            row[name] = {
                "tps": statistics.median(r["tps"] for r in good) if good else None,
                "tps_runs": [r["tps"] for r in rs],
                "latency_ms": statistics.median(lat) if lat else None,
                "transactions": sum(r.get("transactions") or 0 for r in good),
                "failed_transactions": sum(failed) if failed else None,
                # Summed over the runs, per node (node0 first).
                "xact_commit": add_counts(rs, "xact_commit"),
                "select_cnt": add_counts(rs, "select_cnt"),
                "loadavg_before": [r.get("loadavg_before") for r in rs],
                "runs": [{k: r.get(k) for k in ("tps", "failed_transactions", "xact_commit",
                                                "select_cnt", "error") if k in r} for r in rs],
            }
            errors = [r["error"] for r in rs if r["tps"] is None]
            if errors:
                row[name]["error" if not good else "failed_runs"] = (
                    errors[0] if not good else errors)
        results[s.key] = row
    return settings, results


def fmt_spread(counts) -> str:
    """'34 / 33 / 33 %' of the total, node0 first."""
    if not counts or None in counts:
        return "-"
    total = sum(counts)
    if total <= 0:
        return "-"
    return " / ".join(f"{100 * c / total:3.0f}" for c in counts) + " %"


def fmt_count(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 10**6 else f"{n / 1e3:.0f}k" if n >= 10**4 else str(n)


def print_routing_report(settings: list[Setting], results: dict, targets: dict,
                         nodes: list[dict], cfg: Settings, meta: dict) -> None:
    names = [n for n in ROUTING_ORDER if n in targets]
    print()
    print(f"routing: {len(nodes)} nodes (node0 primary, "
          f"{', '.join(n['name'] for n in nodes[1:])} standbys), weight 1 each; pgbench "
          f"{meta['seconds']}s per run, median of {meta['repeat']}, -j 2, scale {meta['scale']}; "
          f"{meta['cpus']} CPUs, load average {meta['loadavg_at_routing']:.2f} at start")
    if meta.get("pinned"):
        print(f"pinned (BENCH_PIN=1): {meta['pinned']}")
    for n in names:
        t = targets[n]
        print(f"  {n:<22}{t.description if t.available else 'UNAVAILABLE: ' + t.note}")
    split = " / ".join(n["name"] for n in nodes)
    print(f"  spread = share of each node, {split}:")
    print("    xact_commit: pg_stat_database.xact_commit deltas read on each node (every target;"
          " n = their sum)")
    print("    select_cnt:  SHOW POOL_NODES select_cnt deltas through the proxy")
    groups = [("read-only: pgbench -S", [s for s in settings if not s.script]),
              (f"mixed read/write: pgbench {' '.join('-b ' + m for m in cfg.mix)}",
               [s for s in settings if s.script])]
    for title, group in groups:
        if not group:
            continue
        print()
        print(title)
        print("setting".ljust(20) + "target".ljust(22) + "tps".rjust(9) + "vs direct".rjust(11)
              + "failed".rjust(8) + "   " + "xact_commit spread".ljust(26)
              + "select_cnt spread")
        for s in group:
            row = results.get(s.key, {})
            direct = row.get("direct", {}).get("tps")
            for i, n in enumerate(names):
                c = row.get(n)
                if c is None:
                    continue
                failed = c.get("failed_transactions")
                xc = c.get("xact_commit")
                xcell = (f"{fmt_spread(xc)}  n={fmt_count(sum(xc))}" if xc and fmt_spread(xc) != "-"
                         else "-")
                print((s.key if i == 0 else "").ljust(20) + n.ljust(22)
                      + fmt_tps(c.get("tps")).rjust(9)
                      + fmt_ratio(ratio(c.get("tps"), direct)).rjust(11)
                      + ("-" if failed is None else str(failed)).rjust(8) + "   "
                      + xcell.ljust(26) + fmt_spread(c.get("select_cnt")))
    print()
    print("  Balancing per session (pgpool's default) draws one node per client for the whole\n"
          "  session: with few clients the split is as uneven as the dice (the -stmt target\n"
          "  draws per statement). The servers, the proxy and pgbench share this machine's\n"
          f"  {meta['cpus']} CPUs: spreading reads adds capacity only where nodes have CPUs "
          "of their own.")
    failures = [(s.key, n, c["error"]) for s in settings
                for n, c in results.get(s.key, {}).items() if c.get("error")]
    notes = [(n, targets[n].note) for n in names if targets[n].note]
    if failures or notes:
        print()
        print("routing notes")
        for n, note in notes:
            print(f"  {n}: {note}")
        for key, n, err in failures:
            print(f"  n/a {n} @ {key}: {err}")


# ---------------------------------------------------------------- main


def measure_proxy(cfg: Settings, session: Session, runner: Runner,
                  active: list[Target]) -> tuple[list[Setting], dict, dict, dict, float]:
    """The proxy section: pgbench -S against every target, all on node0."""
    if cfg.warmup:
        log(f"warm-up: {cfg.warmup}s per target at {max(cfg.clients)} clients")
        for t in active:
            r = runner.run(t, Setting("simple", max(cfg.clients)), cfg.warmup)
            if r["tps"] is None:
                log(f"warm-up {t.name}: {r['error']}")

    load_at_start = loadavg()
    if load_at_start > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load_at_start:.2f} on {os.cpu_count()} CPUs before the "
            "runs: other work shares this machine; figures will be noisy (BENCH_REPEAT helps)")
    settings = [Setting(p, c) for p in ("simple", "prepared") for c in cfg.clients]
    settings.append(Setting("simple", cfg.connect_clients, connect=True))
    results: dict = {}
    total = len(settings) * cfg.repeat * len(active)
    done = 0
    for s in settings:
        runs: dict[str, list] = {t.name: [] for t in active}
        for rep in range(cfg.repeat):
            # Rotate who goes first, so no target always runs in the same slot.
            shift = (len(results) + rep) % len(active)
            for t in active[shift:] + active[:shift]:
                done += 1
                r = runner.run(t, s, cfg.seconds)
                runs[t.name].append(r)
                shown = fmt_tps(r["tps"]) if r["tps"] is not None else "n/a: " + r["error"]
                log(f"[{done}/{total}] {s.key:<18} {t.name:<18} {shown}")
        row = {}
        for name, rs in runs.items():
            good = [r for r in rs if r["tps"] is not None]
            if good:
                cpu = [r["proxy_cpu_pct"] for r in good if r.get("proxy_cpu_pct") is not None]
                per = [r["proxy_cpu_us_per_txn"] for r in good
                       if r.get("proxy_cpu_us_per_txn") is not None]
                lat = [r["latency_ms"] for r in good if r.get("latency_ms") is not None]
                row[name] = {
                    "tps": statistics.median(r["tps"] for r in good),
                    "tps_runs": [r["tps"] for r in rs],
                    "tps_basis": good[0]["tps_basis"],
                    "latency_ms": statistics.median(lat) if lat else None,
                    "proxy_cpu_pct": statistics.median(cpu) if cpu else None,
                    "proxy_cpu_us_per_txn": statistics.median(per) if per else None,
                    "loadavg_before": [r.get("loadavg_before") for r in rs],
                }
                if len(good) < len(rs):
                    row[name]["failed_runs"] = [r["error"] for r in rs if r["tps"] is None]
            else:
                row[name] = {"tps": None, "tps_runs": [None] * len(rs), "error": rs[0]["error"]}
        results[s.key] = row

    diag: dict = {}
    profiles: dict = {}
    perf = perf_usable() if cfg.diag else None
    if cfg.diag and not perf:
        log("perf (software events + syscall tracepoints) is not usable here: no diagnostics")
    if perf:
        measured = [t for t in active if t.pgids]
        diag_settings = [Setting("simple", c)
                         for c in (sorted({8, 64} & set(cfg.clients)) or [max(cfg.clients)])]
        diag_settings.append(Setting("simple", cfg.connect_clients, connect=True))
        for s in diag_settings:
            for t in measured:
                log(f"diagnostics: {s.key} {t.name} under perf stat ({cfg.diag_seconds}s)")
                diag.setdefault(s.key, {})[t.name] = diagnose(
                    perf, runner, t, s, cfg.diag_seconds, session.work)
            for t in measured:
                if t.name.startswith("pghalo"):
                    log(f"diagnostics: {s.key} {t.name} under perf record ({cfg.diag_seconds}s)")
                    profiles.setdefault(s.key, {})[t.name] = profile_run(
                        perf, runner, t, s, cfg.diag_seconds, session.work)

    return settings, results, diag, profiles, load_at_start


def run(session: Session, cfg: Settings) -> int:
    pgbouncer = find_tool("pgbouncer", "/usr/sbin/pgbouncer")
    pgpool = find_tool("pgpool", "/usr/sbin/pgpool")

    proxy_section = "proxy" in cfg.sections
    routing_section = "routing" in cfg.sections
    # The proxy ports the lab reserves, one per target that listens.
    port_names = []
    if proxy_section:
        port_names += ["pghalo-session", "pghalo-txn", "pgbouncer-session", "pgbouncer-txn",
                       "pgpool", "bare-relay"]
    if routing_section:
        port_names += ROUTING_PROXIES
    backends = ROUTING_NODES if routing_section else 1

    log(f"work directory {session.work}")
    log(f"creating the lab ({backends} backend{'s' if backends > 1 else ''}, "
        f"{len(port_names)} reserved proxy ports)")
    lab = session.new_lab(backends=backends, proxies=len(port_names))
    lab.start()
    nodes = [{"name": n["name"], "port": n["port"]} for n in lab.manifest["nodes"]]
    # Every node alike (a standby also needs max_connections >= the
    # primary's); ALTER SYSTEM only writes the node's own auto.conf.
    for node in nodes:
        conn = lab.connect(node["port"])
        try:
            conn.query(f"ALTER SYSTEM SET max_connections = {cfg.max_connections}")
            conn.query("ALTER SYSTEM SET shared_buffers = '256MB'")
        finally:
            conn.close()
    lab.stop()
    lab.start()
    lab.release_proxy_ports()
    node0 = lab.node0_port
    port_of = dict(zip(port_names, lab.proxy_ports))
    pgbench = find_tool("pgbench", os.path.join(lab.pg_bin, "pgbench"))
    if not pgbench:
        raise RuntimeError("no pgbench (Debian: postgresql-15 / postgresql-contrib)")
    runner = Runner(pgbench, lab, pin=cfg.pin)

    log(f"pgbench -i -s {cfg.scale} on node0 ({HOST}:{node0})")
    init = subprocess.run([pgbench, "-i", "-q", "-s", str(cfg.scale), "-h", HOST, "-p", str(node0),
                           "-U", "postgres", "postgres"], capture_output=True, text=True,
                          env=runner.env, timeout=1800)
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr.strip()[-500:]}")
    if len(nodes) > 1:
        log("waiting for the standbys to replay pgbench -i")
        wait_replayed(lab, nodes)

    targets: dict[str, Target] = {}
    want = set(cfg.targets)
    if "direct" in want:
        targets["direct"] = Target("direct", node0, "PostgreSQL 15, node0, no proxy")

    def attempt(name, fn):
        if name not in want:
            return
        try:
            targets[name] = fn()
        except (RuntimeError, OSError) as e:
            t = Target(name, 0, "")
            t.available, t.note = False, f"could not start: {e}"
            targets[name] = t
            log(f"{name}: {t.note}")

    def pghalo_target(name, port, mode):
        config = write_pghalo_config(session.work / name, port=port, node_port=node0, mode=mode,
                                     pool_size=cfg.pool_size, lab=lab)
        ok, out = check_pghalo_config(session.pghalo, config)
        if not ok:
            raise RuntimeError(out)
        proc = start_pghalo(session, name, config, port)
        t = Target(name, port, f"pghalo (release), {mode} pooling, max_pool_size = {cfg.pool_size}")
        t.pgids = [proc.pid]
        return t

    def pghalo_balanced_target(name, port, statement_level):
        config = write_pghalo_balanced_config(session.work / name, port=port, nodes=nodes,
                                              pool_size=cfg.pool_size, lab=lab,
                                              statement_level=statement_level)
        ok, out = check_pghalo_config(session.pghalo, config)
        if not ok:
            raise RuntimeError(out)
        proc = start_pghalo(session, name, config, port)
        t = Target(name, port, f"pghalo (release), session pooling, max_pool_size = "
                               f"{cfg.pool_size} per node, monitor every {SR_CHECK_PERIOD}s, "
                               f"reads balanced per "
                               f"{'statement' if statement_level else 'session'}, weight 1 each")
        t.pgids = [proc.pid]
        wait_balancing(lab, t, nodes)
        return t

    if proxy_section:
        ports = port_of
        attempt("pghalo-session", lambda: pghalo_target("pghalo-session", ports["pghalo-session"],
                                                        "session"))
        if "pghalo-txn" in want:
            supported, why = probe_transaction_pooling(session, lab, ports["pghalo-txn"])
            log(f"pghalo transaction pooling: {'yes' if supported else 'no'} ({why})")
            if supported:
                attempt("pghalo-txn", lambda: pghalo_target("pghalo-txn", ports["pghalo-txn"],
                                                            "transaction"))
            else:
                t = Target("pghalo-txn", ports["pghalo-txn"], "pghalo, transaction pooling")
                t.available, t.note = False, f"skipped: {why}"
                targets["pghalo-txn"] = t
        for mode in ("session", "transaction"):
            name = "pgbouncer-session" if mode == "session" else "pgbouncer-txn"
            port = ports[name]
            if name in want and not pgbouncer:
                t = Target(name, port, "")
                t.available, t.note = False, "not installed"
                targets[name] = t
                continue
            attempt(name, lambda n=name, m=mode, p=port: setup_pgbouncer(
                session, lab, pgbouncer, n, p, m, cfg.pool_size))
        if "pgpool" in want and not pgpool:
            t = Target("pgpool", ports["pgpool"], "")
            t.available, t.note = False, "not installed"
            targets["pgpool"] = t
        else:
            children = max(64, max(cfg.clients), cfg.connect_clients) + 8
            attempt("pgpool", lambda: setup_pgpool(session, lab, pgpool, ports["pgpool"],
                                                   children))
        relay = os.environ.get("BARE_RELAY_BIN", "")
        if "bare-relay" in want and not os.access(relay, os.X_OK):
            t = Target("bare-relay", ports["bare-relay"], "")
            t.available, t.note = False, f"no binary at {relay!r} (BARE_RELAY_BIN)"
            targets["bare-relay"] = t
        else:
            attempt("bare-relay", lambda: start_bare_relay(session, relay, ports["bare-relay"],
                                                           node0))
    if routing_section:
        for name, stmt in (("pghalo-balanced", False), ("pghalo-balanced-stmt", True)):
            attempt(name, lambda n=name, st=stmt: pghalo_balanced_target(n, port_of[n], st))
        if "pgpool-balanced" in want and not pgpool:
            t = Target("pgpool-balanced", port_of["pgpool-balanced"], "")
            t.available, t.note = False, "not installed"
            targets["pgpool-balanced"] = t
        else:
            def pgpool_balanced():
                t = setup_pgpool_balanced(session, lab, pgpool, port_of["pgpool-balanced"],
                                          max(cfg.routing_clients) + 8, nodes)
                wait_balancing(lab, t, nodes)
                return t
            attempt("pgpool-balanced", pgpool_balanced)

    active = ([targets[n] for n in TARGET_ORDER if n in targets and targets[n].available]
              if proxy_section else [])
    routing_active = ([targets[n] for n in ROUTING_ORDER if n in targets and targets[n].available]
                      if routing_section else [])
    for t in targets.values():
        log(f"target {t.name:<20} {'port ' + str(t.port) if t.available else 'UNAVAILABLE'}  "
            f"{t.description or t.note}")

    pinned = None
    if cfg.pin:
        pinned = pin_processes(lab, [t for t in targets.values() if t.available])
        log(f"pinned: {pinned}")
    load_at_start = loadavg()
    settings: list[Setting] = []
    results: dict = {}
    diag: dict = {}
    profiles: dict = {}
    checks: list = []
    if proxy_section and not active:
        log("proxy section: none of BENCH_TARGETS belongs to it; skipped")
    if proxy_section and active:
        settings, results, diag, profiles, load_at_start = measure_proxy(
            cfg, session, runner, active)
        checks = evaluate(results, settings, targets)
    load_at_routing = loadavg()
    routing_settings_done: list[Setting] = []
    routing_results: dict = {}
    if routing_section and not routing_active:
        log("routing section: none of BENCH_TARGETS belongs to it; skipped")
    if routing_section and routing_active:
        if load_at_routing > 0.5 * (os.cpu_count() or 1):
            log(f"warning: load average {load_at_routing:.2f} on {os.cpu_count()} CPUs before "
                "the routing runs: figures will be noisy")
        routing_settings_done, routing_results = measure_routing(
            cfg, lab, runner, routing_active, nodes)

    meta = {
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": cfg.seconds, "repeat": cfg.repeat, "scale": cfg.scale,
        "pool_size": cfg.pool_size, "warmup_seconds": cfg.warmup,
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "pghalo_rev": git_describe(REPO),
        "postgresql": version_of([os.path.join(lab.pg_bin, "postgres"), "--version"]),
        "pgbench": version_of([pgbench, "--version"]),
        "pgbouncer": version_of([pgbouncer, "--version"]) if pgbouncer else None,
        "pgpool": version_of([pgpool, "--version"]) if pgpool else None,
        "loadavg_at_start": load_at_start,
        "loadavg_at_routing": load_at_routing,
        "loadavg_at_end": loadavg(),
        "sections": cfg.sections,
        "backends": len(nodes),
        "pinned": pinned,
    }
    if proxy_section and active:
        print_report(results, settings, targets, checks, meta)
        print_diagnostics(diag, profiles)
    if routing_section and routing_active:
        print_routing_report(routing_settings_done, routing_results, targets, nodes, cfg, meta)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps({
        "meta": meta,
        "targets": {n: {"port": t.port, "description": t.description, "available": t.available,
                        "note": t.note} for n, t in targets.items()},
        "settings": [{"key": s.key, "protocol": s.protocol, "clients": s.clients,
                      "connect_per_transaction": s.connect} for s in settings],
        "results": results,
        "ratios": {s.key: {
            "pghalo/direct": ratio(results[s.key].get("pghalo-session", {}).get("tps"),
                                   results[s.key].get("direct", {}).get("tps")),
            "pghalo/pgbouncer": ratio(results[s.key].get("pghalo-session", {}).get("tps"),
                                      results[s.key].get("pgbouncer-session", {}).get("tps")),
            "pghalo-txn/pgbouncer-txn": ratio(results[s.key].get("pghalo-txn", {}).get("tps"),
                                              results[s.key].get("pgbouncer-txn", {}).get("tps")),
            "bare-relay/direct": ratio(results[s.key].get("bare-relay", {}).get("tps"),
                                       results[s.key].get("direct", {}).get("tps")),
            "bare-relay/pgbouncer": ratio(results[s.key].get("bare-relay", {}).get("tps"),
                                          results[s.key].get("pgbouncer-session", {}).get("tps")),
        } for s in settings},
        "checks": checks,
        "diagnostics": diag,
        "profiles": profiles,
        "routing": {
            "nodes": nodes,
            "routing_clients": cfg.routing_clients,
            "mix": cfg.mix,
            "stats_settle_seconds": cfg.stats_settle,
            "settings": [{"key": s.key, "protocol": s.protocol, "clients": s.clients,
                          "workload": (" ".join(f"-b {m}" for m in s.script)
                                       if s.script else "-S")}
                         for s in routing_settings_done],
            # Per target: tps (median), failed transactions, and per node
            # (node0 first) xact_commit and select_cnt deltas summed over
            # the runs.
            "results": routing_results,
            "ratio_to_direct": {s.key: {
                n: ratio(c.get("tps"), routing_results[s.key].get("direct", {}).get("tps"))
                for n, c in routing_results[s.key].items() if n != "direct"}
                for s in routing_settings_done},
        } if routing_section else None,
    }, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return 0


def main() -> int:
    install_signal_handlers()
    cfg = Settings()
    pghalo = os.environ.get("PGHALO_BIN") or str(REPO / "target" / "release" / "pghalo")
    if not os.access(pghalo, os.X_OK):
        log(f"no pghalo binary at {pghalo}; run bench/run (it builds one)")
        return 1
    raise_nofile(65536)
    session = Session("pghalo-bench.", pghalo, keep=cfg.keep)
    try:
        return run(session, cfg)
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({str(e) or 'SIGINT'}); cleaning up")
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"error: {e}")
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short (the reaper would
        # still finish it, but this is quicker and reports problems).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        session.close()


if __name__ == "__main__":
    sys.exit(main())
