"""A real SLURM cluster on this machine, for testing slurm/: own munged, one slurmctld, two slurmd.

Debian's `slurmctld slurmd slurm-client munge` (22.05) are built with MULTIPLE_SLURMD, so
`slurmd -N gnode1` and `slurmd -N gnode2` on one host act as two nodes with one CPU each. Two
partitions share them: `low` (default, PriorityTier 1, jobs requeued when preempted) and `high`
(PriorityTier 10): a `high` job preempts a `low` one (PreemptType=preempt/partition_prio).
Everything lives in a temporary folder; nothing in /etc/slurm or /etc/munge is read or written.
The node names are added to /etc/hosts when they do not resolve (and left there: the line is
harmless, and removing it could break a cluster started by a concurrent test session).

    with LocalSlurm(tmp_dir) as cluster:          # start: ~10 s; stop: every daemon and job it started
        job = cluster.sbatch("--nodes=2", "slurm/train_multinode.sbatch", env={...})
        cluster.wait_for(job, {"COMPLETED"}, timeout=300)

`python -m tests.slurm.cluster [DIR]` starts one for trying the scripts by hand (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("gnode1", "gnode2")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this harness needs that are not on PATH (apt: slurmctld slurmd slurm-client munge)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def _which(name: str) -> str:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
        return True
    except OSError:
        return False


def ensure_node_names_resolve(names: tuple[str, ...] = NODES, hosts: Path = Path("/etc/hosts")) -> None:
    """Scripts find the head node by name, as on a real cluster: make the emulated node names resolve."""
    missing = [n for n in names if not _resolves(n)]
    if not missing:
        return
    try:
        with hosts.open("a") as f:
            f.write(f"127.0.0.1 {' '.join(missing)}  # gandist tests/slurm/cluster.py\n")
    except OSError as e:
        raise RuntimeError(
            f"the test cluster's node names {missing} do not resolve and {hosts} cannot be extended ({e}): "
            f"add '127.0.0.1 {' '.join(missing)}' to {hosts} or run as root"
        ) from e


class LocalSlurm:
    """Start/stop a two-node SLURM cluster in `workdir`; submit and watch jobs on it."""

    def __init__(self, workdir: Path, nodes: tuple[str, ...] = NODES, grace_time_s: int = 60):
        self.dir = Path(workdir).resolve()
        self.nodes = nodes
        self.grace_time_s = grace_time_s
        self.conf = self.dir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- start / stop -------------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        """Write the configs, start munged, slurmctld and one slurmd per node; wait until all nodes are idle."""
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"missing {missing}: apt-get install -y slurmctld slurmd slurm-client munge")
        ensure_node_names_resolve(self.nodes)
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in self.nodes)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)  # slurmd does not create its spool folder
        munge = self.dir / "munge"
        munge.chmod(0o711)  # munged refuses a socket folder others can write to
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = munge / "munge.socket.2"
        self._spawn(
            "munged",
            [
                _which("munged"),
                "-F",
                "--force",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
                f"--log-file={self.dir / 'log/munged.log'}",
            ],
        )
        self._wait(lambda: socket_path.exists(), 20, "munged's socket")
        self._write_conf(socket_path)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, f"nodes {self.nodes} to be idle (logs in {self.dir / 'log'})")

    def _write_conf(self, munge_socket: Path) -> None:
        host = socket.gethostname()
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={_free_port()} CPUs=1 RealMemory=1000 "
            "Gres=gpu:1 State=UNKNOWN"
            for n in self.nodes
        )
        nodes = ",".join(self.nodes)
        d = self.dir
        # one GPU per node as a count only (no device file): the scripts' --gpus-per-node works unchanged
        (d / "gres.conf").write_text("".join(f"NodeName={n} Name=gpu File=/dev/null\n" for n in self.nodes))
        self.conf.write_text(f"""\
ClusterName=gandisttest
GresTypes=gpu
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (default 120 s) before it may start again
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}/%n
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "spool"}/slurmd-%n.pid
SlurmctldLogFile={d / "log/slurmctld.log"}
SlurmdLogFile={d / "log"}/slurmd-%n.log
SlurmdDebug=info
SlurmctldDebug=info
# no cgroups in a container: track processes by parent id, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=30
# at preemption, send the job's --signal (the batch shell traps it) instead of SIGTERM to its tasks
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{node_lines}
PartitionName=low Nodes={nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE \
GraceTime={self.grace_time_s}
PartitionName=high Nodes={nodes} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "w")
        # a new session: a Ctrl-C in the test's terminal does not reach the daemons; stop() ends them
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

        log.close()

    def _all_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.dir / 'log'}")
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in self.nodes)

    def stop(self) -> None:
        """Cancel every job, stop every daemon started here, then kill what the jobs left behind."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", "--user", str(os.getuid())], check=False)
            self._wait(
                lambda: not self._run(["squeue", "-h"], check=False).stdout.strip(),
                45,
                "jobs to end",
                raise_on_timeout=False,
            )
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self.procs.clear()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """slurmstepd and job processes outlive slurmd: end those that belong to this cluster (by SLURM_CONF)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in environ:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # --- jobs -------------------------------------------------------------------------------------

    def _run(
        self, cmd: list[str], check: bool = True, env: dict | None = None, cwd: Path | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [_which(cmd[0]), *cmd[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=cwd,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> str:
        """Submit a batch job (sbatch flags, then the script and its arguments); return its job id."""
        return self._run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.strip().split(";")[0]

    def scontrol(self, *args: str, check: bool = True) -> str:
        """Run `scontrol ARGS` on this cluster and return its output."""
        return self._run(["scontrol", *args], check=check).stdout

    def scancel(self, *args: str) -> None:
        """Run `scancel ARGS` on this cluster."""
        self._run(["scancel", *args])

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, NodeList, ExitCode, Partition, ...)."""
        fields: dict[str, str] = {}
        for token in self.scontrol("show", "job", "-o", job_id).split():
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait_for(self, job_id: str, states: set[str], timeout: float, poll_s: float = 1.0) -> dict[str, str]:
        """Wait until the job is in one of `states`; fail early (with its state) if it ended in another one."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in states:
                return info
            if state in ENDED:
                raise AssertionError(f"job {job_id} ended {state} (waiting for {states}): {info}")
            time.sleep(poll_s)
        raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s (waiting for {states})")

    @staticmethod
    def _wait(predicate, timeout: float, what: str, raise_on_timeout: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        if raise_on_timeout:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


if __name__ == "__main__":
    import sys
    import tempfile

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gandist-slurm-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` or `timeout` also stops the daemons
    with LocalSlurm(folder) as cluster:
        print(f"export SLURM_CONF={cluster.conf}   # then sbatch/squeue/scontrol as usual; Ctrl-C stops the cluster")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
