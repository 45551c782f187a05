"""A real single-node Slurm on this machine (loopback only), for tests.

    python tests/slurm/cluster.py start [--dir DIR]   # install if missing, start, wait until idle
    python tests/slurm/cluster.py stop  [--dir DIR]   # stop the daemons this harness started

From pytest use the `slurm_cluster` fixture: it yields a `SlurmCluster` and stops every daemon it
started (by pid) when the session ends, also after a failure. Needs root (apt-get, munged, slurmd).
Slurm's client tools find this cluster through `SLURM_CONF`, which `start()` sets in `os.environ`
(and `cluster.env()` returns for subprocesses). While it runs, /etc/slurm/slurm.conf links to its
configuration too, for the `srun` inside each job (the executor's job step drops SLURM_CONF); the
link must not exist beforehand and is removed on stop.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DEFAULT_DIR = Path("/tmp/lalm-slu-slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PID = MUNGE_RUN_DIR / "munged.pid"
# The executor's job step strips SLURM_CONF before its nested `srun`, which then reads the default path.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "debug"


class SlurmSetupError(RuntimeError):
    """The test cluster could not be installed or started; the message says which step failed."""


class ClusterAlreadyRunning(SlurmSetupError):
    """Daemons recorded in this scratch directory still run; `stop` them first."""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SlurmSetupError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def install_packages() -> None:
    """apt-get install Slurm and munge unless every binary is already there (idempotent)."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sinfo", "sbatch", "munged")):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Package scripts must not start daemons (with /etc/slurm) that this harness would not own.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env)
    finally:
        if added_policy:
            policy.unlink()


def ensure_munge_key() -> None:
    """munged refuses to start without a key: 1024 random bytes, owned by munge, mode 400."""
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    munge_user = pwd.getpwnam("munge")
    os.chown(MUNGE_KEY, munge_user.pw_uid, munge_user.pw_gid)
    MUNGE_KEY.chmod(0o400)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _node_line() -> str:
    """The NodeName line for this host as slurmd measures it (CPUs, sockets, RealMemory, ...)."""
    out = _run(["slurmd", "-C"]).stdout
    for line in out.splitlines():
        if line.startswith("NodeName="):
            return line.strip()
    raise SlurmSetupError(f"slurmd -C printed no NodeName line:\n{out}")


def write_slurm_conf(directory: Path, hostname: str) -> Path:
    """A loopback-only, accounting-free slurm.conf with every path inside `directory`."""
    for sub in ("state", "spool", "log", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    node = _node_line().replace(f"NodeName={hostname}", f"NodeName={hostname} NodeAddr=127.0.0.1", 1)
    conf = f"""\
ClusterName=lalmslu
SlurmctldHost={hostname}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/run/slurmctld.pid
SlurmdPidFile={directory}/run/slurmd.pid
SlurmctldLogFile={directory}/log/slurmctld.log
SlurmdLogFile={directory}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# Finished jobs stay visible to squeue and scontrol this long: the executor's squeue status check
# relies on it, and the tests inspect every job of a run that can take many minutes.
MinJobAge=3600
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
# Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
KillWait=5
{node}
PartitionName={PARTITION} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
"""
    path = directory / "slurm.conf"
    path.write_text(conf)
    return path


@dataclass
class SlurmCluster:
    directory: Path = DEFAULT_DIR
    hostname: str = field(
        default_factory=lambda: subprocess.run(
            ["hostname", "-s"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def started_file(self) -> Path:
        # what this harness started, so that `stop` (maybe from another process) ends only that
        return self.directory / "started.json"

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def slurm(self, *cmd: str) -> str:
        """Run a Slurm client tool against this cluster and return its stdout."""
        return _run(list(cmd), env=self.env()).stdout

    def _record(self, name: str, value: int | str) -> None:
        started = self._started()
        started[name] = value
        self.started_file.write_text(json.dumps(started))

    def _started(self) -> dict[str, int | str]:
        """{"munged"|"slurmctld"|"slurmd": pid, "conf_link": path} for what this harness started or created."""
        try:
            return json.loads(self.started_file.read_text())
        except FileNotFoundError:
            return {}

    def start(self, timeout: float = 60) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise SlurmSetupError("the test Slurm cluster needs root (apt-get, munged, slurmd)")
        running = {name: pid for name, pid in self._started().items() if name != "conf_link" and _pid_alive(pid)}
        if running:
            raise ClusterAlreadyRunning(f"a test cluster from {self.directory} still runs ({running}); stop it first")
        install_packages()
        ensure_munge_key()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._start_munged()
        write_slurm_conf(self.directory, self.hostname)
        self._link_system_conf()
        os.environ["SLURM_CONF"] = str(self.conf)
        self._start_daemon("slurmctld", self.directory / "run/slurmctld.pid")
        self._start_daemon("slurmd", self.directory / "run/slurmd.pid")
        self.wait_until_idle(timeout)
        return self

    def _link_system_conf(self) -> None:
        if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
            SYSTEM_CONF.unlink()  # dangling link left by an earlier, killed test session
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            if SYSTEM_CONF.resolve() == self.conf.resolve():
                return
            raise SlurmSetupError(
                f"{SYSTEM_CONF} already exists; the test cluster needs that path for the srun that runs inside "
                "each job (the executor removes SLURM_CONF there). Move it aside to run these tests."
            )
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        self._record("conf_link", str(SYSTEM_CONF))

    def _start_munged(self) -> None:
        pid = _read_pid(MUNGE_PID)
        if pid and _pid_alive(pid):
            return  # someone else's munged: use it, leave it running
        munge_user = pwd.getpwnam("munge")
        for path in (MUNGE_RUN_DIR, Path("/var/log/munge"), Path("/var/lib/munge")):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
        _run(["runuser", "-u", "munge", "--", "munged", "--force"])
        pid = self._wait_for_pid(MUNGE_PID, "munged")
        self._record("munged", pid)
        encoded = _run(["munge", "-n"]).stdout
        _run(["unmunge"], input=encoded)

    def _start_daemon(self, name: str, pid_file: Path) -> None:
        old = _read_pid(pid_file)
        if old and _pid_alive(old):
            raise SlurmSetupError(f"{name} already runs with this configuration (pid {old}); run `stop` first")
        pid_file.unlink(missing_ok=True)
        # -c: a test cluster starts without jobs left from an earlier session
        extra = ["-c"] if name == "slurmctld" else []
        _run([name, "-f", str(self.conf), *extra], env=self.env())
        self._record(name, self._wait_for_pid(pid_file, name))

    def _wait_for_pid(self, pid_file: Path, name: str, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = _read_pid(pid_file)
            if pid and _pid_alive(pid):
                return pid
            time.sleep(0.2)
        raise SlurmSetupError(f"{name} wrote no live pid to {pid_file} within {timeout:.0f} s{self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        log = self.directory / "log" / f"{name}.log"
        if not log.exists():
            return ""
        return f"\n--- last lines of {log} ---\n" + "\n".join(log.read_text().splitlines()[-20:])

    def wait_until_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env())
            state = (result.stdout or result.stderr).strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise SlurmSetupError(
            f"node not idle after {timeout:.0f} s (sinfo: {state!r})"
            f"{self._log_tail('slurmctld')}{self._log_tail('slurmd')}"
        )

    def _cancel_all_jobs(self, timeout: float = 15) -> None:
        """Cancel this cluster's unfinished jobs so no job step outlives slurmd (e.g. after a failed test)."""
        squeue = ["squeue", "-h", "-o", "%i", "-t", "PENDING,RUNNING,SUSPENDED,COMPLETING"]
        listing = subprocess.run(squeue, capture_output=True, text=True, env=self.env())
        job_ids = listing.stdout.split()
        if not job_ids:
            return
        subprocess.run(["scancel", *job_ids], capture_output=True, env=self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not subprocess.run(squeue, capture_output=True, text=True, env=self.env()).stdout.split():
                return
            time.sleep(0.5)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM each daemon this harness started (slurmd first, munged last), then wait for it to exit."""
        started = self._started()
        if started.get("slurmctld") and _pid_alive(started["slurmctld"]):
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = started.get(name)  # only daemons this harness started are listed
            if pid is None or not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if "conf_link" in started and SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf.resolve():
            SYSTEM_CONF.unlink()
        self.started_file.unlink(missing_ok=True)
        if os.environ.get("SLURM_CONF") == str(self.conf):
            del os.environ["SLURM_CONF"]


def _pytest_fixture():
    import pytest

    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """A started single-node cluster for the session; stopped (by pid) however the tests end."""
        if os.geteuid() != 0:
            pytest.skip("the real-Slurm tests install and start Slurm daemons, which needs root")
        cluster = SlurmCluster(directory=tmp_path_factory.mktemp("slurm"))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()  # also after a failed start or a failed test

    return slurm_cluster


try:
    slurm_cluster = _pytest_fixture()
except ImportError:  # used as a plain script without pytest installed
    slurm_cluster = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"scratch directory (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(directory=args.dir.resolve())
    if args.action == "start":
        try:
            cluster.start()
        except ClusterAlreadyRunning as error:
            print(error, file=sys.stderr)
            return 1
        except BaseException:
            cluster.stop()  # whatever this call had started
            raise
        print(f"Slurm is up. Use it with:  export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
        print("stopped the daemons this harness had started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
