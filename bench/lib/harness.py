"""The data-path benchmark behind bench/run.

One lab (node0, no standby), and in front of it, all on 127.0.0.1:
  direct             PostgreSQL itself
  pghalo-session     pghalo, release build, session pooling
  pghalo-txn         pghalo, transaction pooling (only if it really pools
                     per transaction: probed, not just parsed)
  pgbouncer-session  PgBouncer, pool_mode = session
  pgbouncer-txn      PgBouncer, pool_mode = transaction
  pgpool             pgpool-II, streaming-replication mode, one backend

pgbench -S runs at each setting against every target in turn (interleaved,
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
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HOST, Interrupted, Lab, Session, check_pghalo_config, git_describe,
    install_signal_handlers, log, probe_transaction_pooling, raise_nofile, start_pghalo,
    write_pghalo_config,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results")

TARGET_ORDER = ["direct", "pghalo-session", "pghalo-txn", "pgbouncer-session",
                "pgbouncer-txn", "pgpool"]


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
        self.diag_seconds = env_int("BENCH_DIAG_SECONDS", 5, 1, 600)
        wanted = os.environ.get("BENCH_TARGETS", "").split()
        unknown = [t for t in wanted if t not in TARGET_ORDER]
        if unknown:
            raise SystemExit(f"bench: unknown BENCH_TARGETS {unknown}; known: {TARGET_ORDER}")
        self.targets = wanted or list(TARGET_ORDER)
        # Enough server connections for every pool at once (they all stay
        # warm between runs), plus the direct runs and some slack.
        self.max_connections = 6 * self.pool_size + max(self.clients) + 100


class Target:
    def __init__(self, name: str, port: int, description: str):
        self.name = name
        self.port = port
        self.description = description
        self.available = True
        self.note = ""
        self.pgids: list[int] = []  # whose CPU time we measure (empty: direct)


class Setting:
    def __init__(self, protocol: str, clients: int, connect: bool = False):
        self.protocol = protocol
        self.clients = clients
        self.connect = connect

    @property
    def key(self) -> str:
        return f"{self.protocol} c={self.clients}" + (" -C" if self.connect else "")


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


def group_pids(pgids: list[int]) -> list[int]:
    """Every process in these process groups (pgpool's children too)."""
    wanted, pids = set(pgids), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in wanted:
            pids.append(int(entry.name))
    return pids


def group_cpu_ticks(pgids: list[int]) -> int:
    """utime + stime of every process in these process groups."""
    if not pgids:
        return 0
    total = 0
    wanted = set(pgids)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in wanted:
            total += int(fields[11]) + int(fields[12])
    return total


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


def setup_pgpool(session: Session, lab: Lab, binary: str, port: int, children: int) -> Target:
    name = "pgpool"
    target = Target(name, port, f"pgpool-II, streaming_replication, 1 backend, "
                                f"num_init_children = {children}, max_pool = 1")
    d = session.work / name
    for sub in ("sock", "pcp", "oiddir"):
        (d / sub).mkdir(parents=True)
    (d / "pool_hba.conf").write_text(
        "# written by pghalo bench\n"
        "local all all scram-sha-256\n"
        f"host all all {HOST}/32 scram-sha-256\n"
    )
    # pgpool logs in to PostgreSQL with SCRAM itself, so it needs the plain
    # password ("TEXT" prefix); the file is 0600 and removed with the run.
    (d / "pool_passwd").write_text(f"postgres:TEXT{lab.password()}\n")
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
        f"backend_hostname0 = '{HOST}'\n"
        f"backend_port0 = {lab.node0_port}\n"
        "backend_weight0 = 1\n"
        "backend_flag0 = 'ALWAYS_PRIMARY'\n"
        "backend_application_name0 = 'node0'\n"
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
        "load_balance_mode = off\n"
        "sr_check_period = 0\n"
        "sr_check_user = 'postgres'\n"
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
    proc = session.start(name, [binary, "-n", "-D", "-f", str(d / "pgpool.conf"),
                                "-F", str(d / "pcp.conf"), "-a", str(d / "pool_hba.conf")],
                         stop_signal=signal.SIGINT, cwd=d)
    session.wait_port(proc, port, timeout=60)
    target.pgids = [proc.pid]
    return target


# ---------------------------------------------------------------- pgbench

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(([^)]*)\)", re.M)
TXN_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


class Runner:
    def __init__(self, pgbench: str, lab: Lab):
        self.pgbench = pgbench
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
        argv = [self.pgbench, "-h", HOST, "-p", str(target.port), "-U", "postgres",
                "-n", "-S", "-M", setting.protocol, "-T", str(seconds),
                "-c", str(setting.clients), "-j", str(min(2, setting.clients))]
        if setting.connect:
            argv.append("-C")
        argv.append("postgres")
        load = loadavg()
        cpu0 = group_cpu_ticks(target.pgids)
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                                  timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            return {"tps": None, "error": f"pgbench did not finish within {seconds + 60}s"}
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

    pairs = [("pghalo-session", "pgbouncer-session", "direct")]
    if "pghalo-txn" in targets and targets["pghalo-txn"].available:
        pairs.append(("pghalo-txn", "pgbouncer-txn", "direct"))
    for setting in settings:
        for mine, bouncer, direct in pairs:
            if mine not in targets:
                continue
            if setting.connect:
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
                checks.append({"setting": setting.key, "target": mine, "versus": other,
                               "goal": f">= {factor:g}x", "ratio": r, "verdict": verdict})
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
    print("setting".ljust(22) + "".join(n.rjust(width) for n in names))
    for s in settings:
        row = results.get(s.key, {})
        print(s.key.ljust(22) + "".join(fmt_tps(row.get(n, {}).get("tps")).rjust(width)
                                        for n in names))
    print()
    print("ratios".ljust(22) + "".join(h.rjust(24) for h in
                                       ("pghalo/direct", "pghalo/pgbouncer", "pghalo-txn/pgb-txn")))
    for s in settings:
        row = results.get(s.key, {})
        get = lambda n: row.get(n, {}).get("tps")  # noqa: E731
        vals = [ratio(get("pghalo-session"), get("direct")),
                ratio(get("pghalo-session"), get("pgbouncer-session")),
                ratio(get("pghalo-txn"), get("pgbouncer-txn"))]
        print(s.key.ljust(22) + "".join(fmt_ratio(v).rjust(24) for v in vals))
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
    print()
    print("targets")
    for c in checks:
        r = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        print(f"  {c['verdict']:<7} {c['target']:<14} vs {c['versus']:<17} {c['setting']:<18} "
              f"goal {c['goal']:<8} got {r}")
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


# ---------------------------------------------------------------- main


def run(session: Session, cfg: Settings) -> int:
    pgbouncer = find_tool("pgbouncer", "/usr/sbin/pgbouncer")
    pgpool = find_tool("pgpool", "/usr/sbin/pgpool")

    log(f"work directory {session.work}")
    log("creating the lab (1 backend, 5 reserved proxy ports)")
    lab = session.new_lab(backends=1, proxies=5)
    lab.start()
    conn = lab.connect()
    try:
        conn.query(f"ALTER SYSTEM SET max_connections = {cfg.max_connections}")
        conn.query("ALTER SYSTEM SET shared_buffers = '256MB'")
    finally:
        conn.close()
    lab.stop()
    lab.start()
    lab.release_proxy_ports()
    node0 = lab.node0_port
    ports = lab.proxy_ports
    pgbench = find_tool("pgbench", os.path.join(lab.pg_bin, "pgbench"))
    if not pgbench:
        raise RuntimeError("no pgbench (Debian: postgresql-15 / postgresql-contrib)")
    runner = Runner(pgbench, lab)

    log(f"pgbench -i -s {cfg.scale} on node0 ({HOST}:{node0})")
    init = subprocess.run([pgbench, "-i", "-q", "-s", str(cfg.scale), "-h", HOST, "-p", str(node0),
                           "-U", "postgres", "postgres"], capture_output=True, text=True,
                          env=runner.env, timeout=1800)
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr.strip()[-500:]}")

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

    attempt("pghalo-session", lambda: pghalo_target("pghalo-session", ports[0], "session"))
    if "pghalo-txn" in want:
        supported, why = probe_transaction_pooling(session, lab, ports[1])
        log(f"pghalo transaction pooling: {'yes' if supported else 'no'} ({why})")
        if supported:
            attempt("pghalo-txn", lambda: pghalo_target("pghalo-txn", ports[1], "transaction"))
        else:
            t = Target("pghalo-txn", ports[1], "pghalo, transaction pooling")
            t.available, t.note = False, f"skipped: {why}"
            targets["pghalo-txn"] = t
    for mode, port in (("session", ports[2]), ("transaction", ports[3])):
        name = "pgbouncer-session" if mode == "session" else "pgbouncer-txn"
        if name in want and not pgbouncer:
            t = Target(name, port, "")
            t.available, t.note = False, "not installed"
            targets[name] = t
            continue
        attempt(name, lambda n=name, m=mode, p=port: setup_pgbouncer(
            session, lab, pgbouncer, n, p, m, cfg.pool_size))
    if "pgpool" in want and not pgpool:
        t = Target("pgpool", ports[4], "")
        t.available, t.note = False, "not installed"
        targets["pgpool"] = t
    else:
        children = max(64, max(cfg.clients), cfg.connect_clients) + 8
        attempt("pgpool", lambda: setup_pgpool(session, lab, pgpool, ports[4], children))

    active = [targets[n] for n in TARGET_ORDER if n in targets and targets[n].available]
    for t in targets.values():
        log(f"target {t.name:<18} {'port ' + str(t.port) if t.available else 'UNAVAILABLE'}  "
            f"{t.description or t.note}")

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

    checks = evaluate(results, settings, targets)
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
        "loadavg_at_end": loadavg(),
    }
    print_report(results, settings, targets, checks, meta)
    print_diagnostics(diag, profiles)

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
        } for s in settings},
        "checks": checks,
        "diagnostics": diag,
        "profiles": profiles,
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
