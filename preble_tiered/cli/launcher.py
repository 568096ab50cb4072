"""Start a router and N node agents as child processes on loopback (`preble serve`, tests,
benchmarks), wait until every node serves, and stop them all cleanly.

Children run `python -m preble_tiered.cli router|node ...`, each in its own process group
so a terminal's Ctrl-C reaches only `preble serve`, which then stops the nodes first and the
router last, escalating from SIGTERM to SIGKILL after a grace period. A child also gets
SIGTERM from the kernel when the launcher dies without stopping it (killed with SIGKILL,
crashed): `die_with_parent`, so no router or node lives on holding its port. Node i is pinned to
core i mod ncpu (vLLM's OMP threads); their logs go to files under `log_dir`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from preble_tiered.api.pb import inference_pb2

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "PREBLE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 2
    model: str | None = None
    """Model directory (None: the tiny model, built once under the cache dir)."""
    host: str = "127.0.0.1"
    port: int = 50051
    policy: str = "e2_tiered"
    block_size: int = 32
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 16
    max_model_len: int | None = None
    dram_bytes: int | None = None
    """Each node's DRAM KV tier in bytes (None: no tier below the engine's cache)."""
    disk_dir: str | None = None
    """Parent directory of the nodes' disk tiers (node i uses DIR/node{i}); None: no disk tier."""
    disk_bytes: int | None = None
    transfer: str = "mooncake"
    """Data path of KV pulls: "mooncake" (gRPC stream where it cannot load) or "grpc"."""
    transfer_protocol: str = "tcp"
    log_dir: str | None = None
    state_path: str | None = None
    """The router's state file (named prefixes, pins, node ids), kept across restarts; None:
    `router-<port>-state.json` under the cache dir, the router's own default. Give one under a
    scratch directory for throwaway clusters (tests, benchmarks) so they leave nothing behind."""
    node_env: dict[str, str] = field(default_factory=dict)
    router_args: tuple[str, ...] = ()
    inference_token: str | None = field(default=None, repr=False)
    """The router's Inference token, when it requires one (start-up checks call it)."""
    tls_ca: str | None = None
    """PEM to verify the router's TLS certificate with, when it serves TLS."""
    start_timeout_s: float = 300.0
    http_port: int = 0
    """The router's OpenAI HTTP port (0: HTTP off)."""
    profile: str | None = None
    """The router's `--profile` (a shipped name or a file; None: the router's guess)."""

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 64:
            raise ValueError(f"nodes must be in [1, 64], got {self.nodes}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.router: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []
        self.log_dir = Path(spec.log_dir or _default_log_dir())
        self.addr = f"{spec.host}:{spec.port}"
        scheme = "https" if spec.tls_ca else "http"
        self.http_url = f"{scheme}://{spec.host}:{spec.http_port}/v1" if spec.http_port else ""
        """Base URL of the router's OpenAI API ("" when HTTP is off)."""
        self.model = spec.model

    # ------------------------------------------------------------------ start
    def start(self, progress=print) -> "LocalCluster":
        """Start everything; returns when all nodes serve. Raises RuntimeError (and stops what
        started) when a process dies or the start times out."""
        try:
            self._start(progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, progress) -> None:
        from preble_tiered.engine.tiny_model import ensure_tiny_model

        s = self.spec
        if self.model is None:
            progress("building/using the tiny random-weight model ...")
            self.model = str(ensure_tiny_model())
        elif not Path(self.model).is_dir():
            raise RuntimeError(f"model directory {self.model} does not exist: give a local model directory "
                               "(nothing is downloaded), or leave --model out for the tiny model")
        for flag, port in (("--port", s.port), ("--http-port", s.http_port)):
            if port and not _port_free(s.host, port):
                raise RuntimeError(f"{s.host}:{port} is in use (another preble serve, or another server): "
                                   f"pick another {flag}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._router_args = ["router", "--host", s.host, "--port", str(s.port), "--policy", s.policy,
                             "--block-size", str(s.block_size), "--tokenizer", self.model,
                             "--http-port", str(s.http_port), *(("--profile", s.profile) if s.profile else ()),
                             *(("--state", s.state_path) if s.state_path else ()), *s.router_args]
        self.router = self._spawn("router", self._router_args, {})
        self._wait_router()
        ncpu = os.cpu_count() or 1
        for i in range(s.nodes):
            args = ["node", "--model", self.model, "--router", self.addr, "--host", s.host, "--port", "0",
                    "--name", f"node{i}", "--block-size", str(s.block_size), "--kv-cache-bytes",
                    str(s.kv_cache_bytes), "--max-num-seqs", str(s.max_num_seqs), "--cpu-core", str(i % ncpu),
                    "--transfer", s.transfer, "--transfer-protocol", s.transfer_protocol]
            if s.max_model_len:
                args += ["--max-model-len", str(s.max_model_len)]
            if s.dram_bytes:
                args += ["--dram-bytes", str(s.dram_bytes)]
            if s.disk_dir:
                args += ["--disk-path", str(Path(s.disk_dir) / f"node{i}")]
                if s.disk_bytes:
                    args += ["--disk-bytes", str(s.disk_bytes)]
            self.nodes.append(self._spawn(f"node{i}", args, s.node_env))
        progress(f"starting {s.nodes} node(s); logs in {self.log_dir}")
        self.wait_nodes(s.nodes, progress)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                    "VLLM_HOST_IP": "127.0.0.1", PARENT_PID_ENV: str(os.getpid()), **env}
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen([sys.executable, "-m", "preble_tiered.cli", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        finally:
            log.close()

    def restart_router(self, grace_s: float = 20.0) -> None:
        """Stop the router (SIGTERM) and start it again with the same arguments; the nodes
        re-register by themselves. Returns when it answers again."""
        assert self.router is not None, "start() first"
        _signal(self.router, signal.SIGTERM)
        try:
            self.router.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal(self.router, signal.SIGKILL)
            self.router.wait()
        self.router = self._spawn("router", self._router_args, {})
        self._wait_router()

    def _wait_router(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.model_info(timeout=1.0)
                return
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError(f"router did not start within 60 s; see {self.log_dir / 'router.log'}")

    def wait_nodes(self, n: int, progress=print) -> None:
        """Block until `n` nodes are alive at the router."""
        deadline = time.monotonic() + self.spec.start_timeout_s
        last = -1
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                alive = self.model_info(timeout=1.0).nodes_alive
            except grpc.RpcError:
                alive = 0
            if alive != last:
                progress(f"  {alive}/{n} nodes serving")
                last = alive
            if alive >= n:
                return
            time.sleep(0.3)
        raise RuntimeError(f"only {last}/{n} nodes came up within {self.spec.start_timeout_s:.0f} s; "
                           f"see the logs in {self.log_dir}")

    def _check_alive(self) -> None:
        for name, p in self.processes():
            if p.poll() is not None:
                log = self.log_dir / (name + ".log")
                raise RuntimeError(f"{name} exited with code {p.returncode} during start:\n{_log_tail(log)}\n"
                                   f"(its whole log: {log})")

    def model_info(self, timeout: float = 5.0) -> inference_pb2.ModelInfo:
        from preble_tiered.client import Client

        with Client(self.addr, token=self.spec.inference_token, tls_ca=self.spec.tls_ca) as c:
            return c.model_info(timeout)

    def processes(self) -> list[tuple[str, subprocess.Popen]]:
        out = [(f"node{i}", p) for i, p in enumerate(self.nodes)]
        if self.router is not None:
            out.append(("router", self.router))
        return out

    def pids(self) -> list[int]:
        return [p.pid for _, p in self.processes()]

    # ------------------------------------------------------------------ stop
    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the nodes, then the router; SIGKILL whatever outlives `grace_s`. Idempotent."""
        groups = [[p for _, p in self.processes() if p is not self.router]]
        if self.router is not None:
            groups.append([self.router])
        for procs in groups:
            for p in procs:
                _signal(p, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("pid %d ignored SIGTERM for %.0f s; killing it", p.pid, grace_s)
                    _signal(p, signal.SIGKILL)
                    p.wait(10)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def die_with_parent() -> None:
    """In a child the launcher started: ask the kernel for SIGTERM when the launcher dies
    (Linux `PR_SET_PDEATHSIG`), and exit now if it already has. Nothing elsewhere.

    The kernel sends it when the *thread* that spawned the child ends, so a `LocalCluster`
    must be started (and its router restarted) from a thread that outlives the cluster: the
    main thread, as `preble serve`, the tests and the benchmarks do."""
    pid = os.environ.pop(PARENT_PID_ENV, None)
    if not pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("cannot ask to die with the launcher (errno %d)", ctypes.get_errno())
        return
    if os.getppid() != int(pid):  # the launcher died before the request took effect
        print(f"preble: the launcher (pid {pid}) is gone; exiting", file=sys.stderr, flush=True)
        sys.exit(1)


def _signal(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)  # the child and anything it started
        except ProcessLookupError:
            pass


def cache_dir() -> Path:
    """`$PREBLE_CACHE_DIR`, else `~/.cache/preble_tiered`: the model, logs, state and disk tiers."""
    return Path(os.environ.get("PREBLE_CACHE_DIR") or Path.home() / ".cache" / "preble_tiered")


def _default_log_dir() -> Path:
    return cache_dir() / "logs" / time.strftime("%Y%m%d-%H%M%S")


def _port_free(host: str, port: int) -> bool:
    """Whether `host:port` can be listened on now (a server started there would get it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _log_tail(path: Path, lines: int = 6) -> str:
    """The last lines of a process's log that say something (what a failed start ended with)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    keep = [ln for ln in text if ln.strip() and not ln.startswith(("Error in sys.excepthook", "Original exception"))]
    return "\n".join("  " + ln[:300] for ln in keep[-lines:]) or "  (empty log)"
