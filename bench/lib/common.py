"""What bench/run and bench/idle_clients share: a work directory under /tmp,
the lab, pghalo instances, and process bookkeeping that cleans up whatever
happens.

Cleanup has two layers:
  * in-process: `Session.close()` runs from `finally` (normal end, error,
    Ctrl-C, SIGTERM/SIGHUP, which are turned into exceptions);
  * a reaper: a small python process in its own session, reading a pipe
    that only we hold. When we end in any way, even SIGKILL, the pipe
    reaches end-of-file and the reaper stops every process group we
    recorded (after checking each pid is still the process we started) and
    destroys the lab. After a normal close it finds nothing left to do.

Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pgwire  # noqa: E402

HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C so `finally` blocks run."""


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def raise_nofile(wanted: int) -> int:
    """Raises RLIMIT_NOFILE as far as allowed (children inherit it); returns
    the soft limit obtained."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # not allowed here (no CAP_SYS_RESOURCE): take the hard limit
        target = hard
    else:
        target = wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a pid apart from a later reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- processes


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, stop_signal: int, log_path: Path):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.stop_signal = stop_signal
        self.log_path = log_path
        self.starttime = proc_starttime(self.pid)

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class Session:
    """The work directory, the reaper, the processes and the lab of one run."""

    def __init__(self, prefix: str, pghalo_bin: str, keep: bool = False):
        self.pghalo = pghalo_bin
        self.keep = keep
        self.procs: list[Proc] = []
        self.work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        # The PostgreSQL servers (and PgBouncer) may run as another user.
        os.chmod(self.work, 0o755)
        self.state = self.work / "pids"
        self.state.write_text("")
        self.lab_dir = self.work / "lab"
        self.lab: Lab | None = None
        self.reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reap", str(self.state),
             str(self.lab_dir), self.pghalo, str(self.work), "1" if keep else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _record(self) -> None:
        lines = [f"{p.pid} {p.starttime} {int(p.stop_signal)}\n" for p in self.procs if p.starttime]
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(self.state)

    def start(self, name: str, argv: list[str], *, stop_signal=signal.SIGTERM,
              user: str | None = None, cwd: Path | None = None,
              env: dict | None = None) -> Proc:
        """Starts a server in its own process group (so its children, e.g.
        pgpool's, are stopped with it), logging to WORK/logs/NAME.log."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        os.chmod(logs, 0o755)
        log_path = logs / f"{name}.log"
        fh = open(log_path, "ab")
        kwargs = {}
        if user:
            entry = pwd.getpwnam(user)
            kwargs = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                     cwd=cwd, env=env, start_new_session=True, **kwargs)
        finally:
            fh.close()
        proc = Proc(name, popen, stop_signal, log_path)
        self.procs.append(proc)
        self._record()
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc.running():
            try:
                os.killpg(proc.pid, proc.stop_signal)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Leftover children (pgpool's) or a server that ignored the signal.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)
            self._record()

    def wait_port(self, proc: Proc, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.running():
                raise RuntimeError(f"{proc.name} exited at start: {proc.log_tail()}")
            if port_accepts(port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} does not accept connections on {HOST}:{port} "
                           f"after {timeout:.0f}s: {proc.log_tail()}")

    def new_lab(self, backends: int, proxies: int) -> "Lab":
        self.lab = Lab(self.pghalo, self.lab_dir)
        self.lab.init(backends, proxies)
        return self.lab

    def close(self) -> None:
        """Stops everything; safe to call twice."""
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep going: the rest must stop too
                log(f"stopping {proc.name}: {e}")
        if self.lab is not None and (self.lab_dir / "lab.json").exists():
            try:
                self.lab.destroy()
            except Exception as e:
                log(f"lab destroy: {e}")
        self.lab = None
        if self.keep:
            log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        if self.reaper.stdin and not self.reaper.stdin.closed:
            self.reaper.stdin.close()  # the reaper finds nothing left and exits
        try:
            self.reaper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass


def reap(state: str, lab_dir: str, pghalo: str, work: str, keep: str) -> None:
    """The reaper: waits for end-of-file on stdin, then cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    targets = []
    try:
        for line in Path(state).read_text().splitlines():
            pid, start, sig = line.split()
            if proc_starttime(int(pid)) == start:
                targets.append(int(pid))
                try:
                    os.killpg(int(pid), int(sig))
                except OSError:
                    pass
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while targets and time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.2)
    for pid in targets:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    if Path(lab_dir, "lab.json").exists():
        subprocess.run([pghalo, "lab", "destroy", "--dir", lab_dir], timeout=180,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if keep != "1":
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- the lab


class Lab:
    def __init__(self, pghalo: str, directory: Path):
        self.pghalo = pghalo
        self.dir = directory

    def _lab(self, *args: str, timeout: float = 300) -> str:
        cmd = [self.pghalo, "lab", *args, "--dir", str(self.dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PGHALO_BIN": self.pghalo})
        if done.returncode != 0:
            raise RuntimeError(f"pghalo lab {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def init(self, backends: int, proxies: int) -> None:
        self._lab("init", "--backends", str(backends), "--proxies", str(proxies))

    def start(self) -> None:
        self._lab("start")

    def stop(self) -> None:
        self._lab("stop")

    def destroy(self) -> None:
        self._lab("destroy", timeout=180)

    def status(self) -> dict:
        return json.loads(self._lab("status", "--json", timeout=60))

    @property
    def manifest(self) -> dict:
        return json.loads((self.dir / "lab.json").read_text())

    @property
    def node0_port(self) -> int:
        return self.manifest["nodes"][0]["port"]

    @property
    def proxy_ports(self) -> list[int]:
        """The ports the lab reserved for its proxies (in the port registry
        shared with parallel labs): the benchmark's own servers use them."""
        return [p["port"] for p in self.manifest["proxies"]]

    @property
    def server_user(self) -> str:
        return self.manifest.get("server_user", "")

    @property
    def pg_bin(self) -> str:
        return self.manifest["pg_bin"]

    def password(self, user: str = "postgres") -> str:
        return json.loads((self.dir / "secrets.json").read_text())[user]

    def pool_files(self) -> tuple[Path, Path]:
        """pool_hba.conf and pool_passwd (SCRAM verifiers) the lab wrote."""
        d = self.dir / "pghalo0"
        return d / "pool_hba.conf", d / "pool_passwd"

    def scram_verifier(self, user: str = "postgres") -> str:
        for line in self.pool_files()[1].read_text().splitlines():
            name, _, secret = line.partition(":")
            if name == user:
                return secret
        raise RuntimeError(f"no pool_passwd entry for {user}")

    def connect(self, port: int | None = None, timeout: float = 10.0) -> pgwire.Conn:
        return pgwire.Conn(HOST, port or self.node0_port, "postgres", self.password(),
                           timeout=timeout)

    def release_proxy_ports(self, timeout: float = 20.0) -> None:
        """Stops the pghalo proxies `lab start` ran, keeping their port
        reservations for our own servers."""
        for proxy in self.manifest["proxies"]:
            pid_file = self.dir / proxy["name"] / "pghalo.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + timeout
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            # No stale pid for `lab stop` to signal later.
            pid_file.unlink(missing_ok=True)
        for port in self.proxy_ports:
            deadline = time.monotonic() + timeout
            while not port_bindable(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not port_bindable(port):
                raise RuntimeError(f"port {port}, reserved by the lab for a proxy, is still in "
                                   f"use after stopping the lab's proxies")


# ---------------------------------------------------------------- pghalo


def write_pghalo_config(directory: Path, *, port: int, node_port: int, mode: str,
                        pool_size: int, lab: Lab, checkout_timeout: str = "30s",
                        max_clients: int = 20000, log_level: str = "info") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    hba, passwd = lab.pool_files()
    shutil.copyfile(hba, directory / "pool_hba.conf")
    shutil.copyfile(passwd, directory / "pool_passwd")
    os.chmod(directory / "pool_passwd", 0o600)
    config = directory / "pghalo.toml"
    config.write_text(
        "# written by pghalo bench\n"
        "[listen]\n"
        f'listen_addresses = ["{HOST}"]\n'
        f"port = {port}\n"
        f"max_client_connections = {max_clients}\n"
        "authentication_timeout = \"60s\"\n\n"
        "[pool]\n"
        f'mode = "{mode}"\n'
        f"max_pool_size = {pool_size}\n"
        f'checkout_timeout = "{checkout_timeout}"\n\n'
        "[auth]\n"
        'pool_hba = "pool_hba.conf"\n'
        'pool_passwd = "pool_passwd"\n\n'
        "[log]\n"
        f'level = "{log_level}"\n\n'
        "[[backend]]\n"
        'name = "node0"\n'
        f'host = "{HOST}"\n'
        f"port = {node_port}\n"
    )
    return config


def check_pghalo_config(pghalo: str, config: Path) -> tuple[bool, str]:
    done = subprocess.run([pghalo, "check-config", "-c", str(config)], capture_output=True,
                          text=True, timeout=30)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def start_pghalo(session: Session, name: str, config: Path, port: int) -> Proc:
    # Logging as shipped (PGHALO_LOG, default info), like the others' defaults.
    proc = session.start(name, [session.pghalo, "run", "-c", str(config)])
    session.wait_port(proc, port)
    return proc


def probe_transaction_pooling(session: Session, lab: Lab, port: int) -> tuple[bool, str]:
    """Does pghalo really pool per transaction? A config that merely parses
    is not enough: with max_pool_size = 1, a second client must get
    ReadyForQuery while the first one sits idle, and both must be served by
    the same server process."""
    directory = session.work / "pghalo-probe"
    config = write_pghalo_config(directory, port=port, node_port=lab.node0_port,
                                 mode="transaction", pool_size=1, lab=lab,
                                 checkout_timeout="3s")
    ok, out = check_pghalo_config(session.pghalo, config)
    if not ok:
        return False, f"check-config refuses mode = \"transaction\": {out.splitlines()[-1] if out else ''}"
    try:
        proc = start_pghalo(session, "pghalo-probe", config, port)
    except RuntimeError as e:
        return False, f"pghalo does not start with mode = \"transaction\": {e}"
    first = second = None
    try:
        try:
            first = lab.connect(port, timeout=10)
            pid1 = first.query("SELECT pg_backend_pid()")[0][0]
        except (OSError, pgwire.PgError) as e:
            return False, f"first client failed with mode = \"transaction\": {e}"
        try:
            second = lab.connect(port, timeout=6)
            pid2 = second.query("SELECT pg_backend_pid()")[0][0]
            pid1b = first.query("SELECT pg_backend_pid()")[0][0]
        except (OSError, TimeoutError, pgwire.PgError) as e:
            return False, ("check-config accepts mode = \"transaction\" but pghalo still pools "
                           "per session: with max_pool_size = 1 a second client could not get "
                           f"in while the first sat idle ({e})")
        if pid1 == pid2 == pid1b:
            return True, "two clients shared one server connection (max_pool_size = 1)"
        return False, f"clients got different server processes ({pid1}, {pid2}) with max_pool_size = 1"
    finally:
        for c in (first, second):
            if c:
                try:
                    c.close()
                except OSError:
                    pass
        session.stop(proc)


def git_describe(repo: Path) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        rev = done.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "crates"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--reap":
    reap(*sys.argv[2:])
