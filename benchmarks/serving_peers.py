"""What the serving benchmarks share: the systems under test (bare vLLM OpenAI servers, SGLang's
model gateway `smg` over them, a `preble serve` cluster), one streaming client that drives any
of them, and CPU accounting per process tree.

Every system is a context manager that starts its processes on loopback, waits until they
serve, and stops them (SIGTERM, then SIGKILL). vLLM servers run as vLLM runs them: the API
server process plus its engine-core process (vLLM's AsyncLLM always splits them). Each node's
compute is pinned to core i mod ncpu with `VLLM_CPU_OMP_THREADS_BIND`, as `preble serve` pins
its nodes, so the engines are placed alike. Peers are installed into scratch venvs under
`--peer-dir` on first use (PyPI), never into the project's environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import psutil
import xxhash

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preble_tiered.api import convert  # noqa: E402
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS  # noqa: E402
from preble_tiered.api.pb import inference_pb2, inference_pb2_grpc  # noqa: E402
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster  # noqa: E402
from preble_tiered.types import GenParams  # noqa: E402

SMG_VERSION = "1.13.0"
MODEL_NAME = "tiny"
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz    ", dtype=np.uint8)


def text(seg: str, n: int) -> str:
    """n printable characters (= n tokens of the byte-level tiny model), the same everywhere."""
    rng = np.random.default_rng(xxhash.xxh3_64_intdigest(seg.encode()))
    return ALPHABET[rng.integers(0, len(ALPHABET), size=n)].tobytes().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class NodeShape:
    """What every node of every system is given (so the engines are configured alike)."""

    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    block_size: int = 32
    max_model_len: int = 8192


# ---------------------------------------------------------------------------- CPU accounting
def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (0 if gone)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 if gone)."""
    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


@dataclass
class CpuMeter:
    """CPU seconds used by named process trees between start() and stop()."""

    pids: dict[str, int]
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._t0 = {k: tree_cpu_s(p) for k, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {k: tree_cpu_s(p) - self._t0[k] for k, p in self.pids.items()}
        return self.used


# ---------------------------------------------------------------------------- processes
def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _wait_http(url: str, procs: list[subprocess.Popen], timeout_s: float, what: str, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; see {log}")


class VllmServers:
    """n vLLM OpenAI servers (`python -m vllm.entrypoints.openai.api_server`), node i's
    compute on core i mod ncpu."""

    def __init__(self, n: int, model: str, shape: NodeShape, log_dir: Path, peer_mode: bool = False) -> None:
        """`peer_mode`: as the peer-router comparison runs them: the render endpoint vllm-router's
        cache_aware needs (`--enable-scale-out`), cached tokens in usage, and the dev-mode
        `/reset_prefix_cache` so one pair of servers starts every router's run cold."""
        self.n, self.model, self.shape, self.log_dir, self.peer_mode = n, model, shape, log_dir, peer_mode
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def __enter__(self) -> "VllmServers":
        s, ncpu = self.shape, os.cpu_count() or 1
        try:
            for i in range(self.n):
                port = free_port()
                args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                        "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                        "--enforce-eager", "--dtype", "float32", "--block-size", str(s.block_size),
                        "--max-model-len", str(s.max_model_len), "--max-num-seqs", str(s.max_num_seqs),
                        "--max-num-batched-tokens", str(s.max_num_batched_tokens),
                        "--kv-cache-memory-bytes", str(s.kv_cache_bytes), "--enable-prefix-caching",
                        "--disable-log-stats", "--uvicorn-log-level", "warning"]
                env = {"VLLM_CPU_OMP_THREADS_BIND": str(i % ncpu), "VLLM_HOST_IP": "127.0.0.1"}
                if self.peer_mode:
                    args += ["--enable-scale-out", "--enable-prompt-tokens-details"]
                    env["VLLM_SERVER_DEV_MODE"] = "1"
                self.procs.append(_spawn(args, env, self.log_dir / f"vllm{i}.log"))
                self.urls.append(f"http://127.0.0.1:{port}")
            for i, url in enumerate(self.urls):
                _wait_http(url + "/health", self.procs, 300, f"vLLM server {i}", self.log_dir / f"vllm{i}.log")
        except BaseException:
            _stop(self.procs)
            raise
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.procs)

    def pids(self) -> dict[str, int]:
        return {f"vllm{i}": p.pid for i, p in enumerate(self.procs)}

    def reset_prefix_cache(self) -> None:
        """Empty every server's prefix cache (peer_mode only): the next run starts cold."""
        import urllib.request

        for url in self.urls:
            req = urllib.request.Request(url + "/reset_prefix_cache", method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                if r.status != 200:
                    raise RuntimeError(f"{url}/reset_prefix_cache answered {r.status}")


def _ensure_peer(peer_dir: Path, package: str, version: str) -> Path:
    """The `package` command from a scratch venv under `peer_dir` (created and installed from
    PyPI on first use)."""
    venv = peer_dir / package
    exe = venv / "bin" / package
    if not exe.exists():
        print(f"installing {package} {version} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{package}=={version}"], check=True)
    return exe


def ensure_smg(peer_dir: Path) -> Path:
    return _ensure_peer(peer_dir, "smg", SMG_VERSION)


VLLM_ROUTER_VERSION = "0.1.17"


def ensure_vllm_router(peer_dir: Path) -> Path:
    return _ensure_peer(peer_dir, "vllm-router", VLLM_ROUTER_VERSION)


class _PeerRouter:
    """A peer router process over worker URLs: started on a free port, ready when it answers
    /v1/models, stopped on exit."""

    name = ""

    def __init__(self, exe: Path, worker_urls: list[str], log_dir: Path, policy: str = "cache_aware") -> None:
        self.exe, self.worker_urls, self.log_dir, self.policy = exe, worker_urls, log_dir, policy
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def args(self, port: int, prom: int) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        port, prom = free_port(), free_port()
        log = self.log_dir / f"{self.name}-{self.policy}.log"
        self.proc = _spawn(self.args(port, prom), {}, log)
        self.url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(self.url + "/v1/models", [self.proc], 60, self.name, log)
        except BaseException:
            _stop([self.proc])
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop([self.proc])

    def pids(self) -> dict[str, int]:
        return {self.name: self.proc.pid} if self.proc else {}


class Smg(_PeerRouter):
    """SGLang's model gateway over worker URLs (cache_aware with its default thresholds, or
    round_robin) and the like-for-like flags of ../shared/peer-routers.md (no overload
    shedding, warm-up or retries)."""

    name = "smg"

    def args(self, port: int, prom: int) -> list[str]:
        return [str(self.exe), "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                *self.worker_urls, "--policy", self.policy, "--prometheus-port", str(prom),
                "--prometheus-host", "127.0.0.1", "--shutdown-grace-period-secs", "2",
                "--disable-worker-overload-protection", "--worker-warmup-secs", "0", "--disable-retries"]


class VllmRouter(_PeerRouter):
    """vLLM's router over worker URLs, cache_aware (default thresholds) or round_robin. Its
    cache_aware renders each prompt on the workers (`/v1/completions/render`): the workers must
    run with `--enable-scale-out`, or it silently routes by load alone."""

    name = "vllm-router"

    def args(self, port: int, prom: int) -> list[str]:
        return [str(self.exe), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *self.worker_urls,
                "--policy", self.policy, "--prometheus-port", str(prom), "--prometheus-host", "127.0.0.1"]


class PrebleServe:
    """A `preble serve` cluster (router + n node agents) on loopback."""

    def __init__(self, n: int, model: str, shape: NodeShape, log_dir: Path, policy: str = "e2_tiered",
                 tiers: bool = True, http: bool = False) -> None:
        """`tiers`: each node's DRAM and disk tiers as `preble serve` sizes them by default (the
        disk tier in a fresh directory under `log_dir`); False: the engine's cache alone.
        `http`: serve the OpenAI API too (at `url`, the model named MODEL_NAME)."""
        from preble_tiered.cli.serving import TINY_PROFILE
        from preble_tiered.cli.tier_defaults import plan_tiers
        from preble_tiered.engine.tiny_model import ensure_tiny_model

        name = f"preble-{n}nodes-{policy}" + ("" if tiers else "-notiers")
        # the router's starting costs as `preble serve` gives them: the shipped profile for the tiny model
        profile = TINY_PROFILE if Path(model).resolve() == ensure_tiny_model().resolve() else None
        plan = plan_tiers(n, None if tiers else 0, None if tiers else 0, log_dir / name / "kv")
        self.spec = ClusterSpec(nodes=n, model=model, port=free_port(), policy=policy, block_size=shape.block_size,
                                kv_cache_bytes=shape.kv_cache_bytes, max_num_seqs=shape.max_num_seqs,
                                max_model_len=shape.max_model_len, log_dir=str(log_dir / name),
                                state_path=str(log_dir / name / "router-state.json"),
                                dram_bytes=plan.dram_bytes or None, disk_bytes=plan.disk_bytes or None,
                                disk_dir=str(plan.disk_dir) if plan.disk_dir else None,
                                http_port=free_port() if http else 0, profile=profile,
                                router_args=("--served-model-name", MODEL_NAME) if http else ())
        self.cluster: LocalCluster | None = None

    def __enter__(self) -> "PrebleServe":
        self.cluster = LocalCluster(self.spec).start(progress=lambda *_: None)
        return self

    def __exit__(self, *exc) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    @property
    def addr(self) -> str:
        return self.cluster.addr

    @property
    def url(self) -> str:
        """The OpenAI API's base URL without /v1 (as the peers' `url`)."""
        return self.cluster.http_url.removesuffix("/v1")

    def pids(self) -> dict[str, int]:
        c = self.cluster
        return {"router": c.router.pid, **{f"node{i}": p.pid for i, p in enumerate(c.nodes)}}

    def node_addresses(self) -> list[str]:
        """host:port of each node's Node service, read from its log."""
        out = []
        for i in range(len(self.cluster.nodes)):
            log = Path(self.spec.log_dir) / f"node{i}.log"
            lines = [ln for ln in log.read_text().splitlines() if " listening on " in ln]
            out.append(lines[-1].split(" listening on ")[1].split(";")[0].strip())  # this start's
        return out


# ---------------------------------------------------------------------------- the client
@dataclass(frozen=True, slots=True)
class Req:
    t: float
    """Arrival time (s after the start); ignored by closed-loop drivers."""
    prompt: str
    max_tokens: int


@dataclass(slots=True)
class Rec:
    """One request as the client saw it (times in seconds from its send)."""

    ttft: float = float("nan")
    latency: float = float("nan")
    tokens: int = 0
    tpot: float = float("nan")
    """(last chunk - first chunk) / (tokens - 1): the time per output token after the first."""
    error: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = -1
    """Prompt tokens the system reports as cached (-1: it does not report them)."""
    server: dict = field(default_factory=dict)
    """Our router's own account of the request (`usage.preble`: its TTFT, the node, cached
    tokens by tier), where the system is ours."""


def _finish(rec: Rec, t0: float, first: float | None, last: float, tokens: int) -> Rec:
    rec.tokens = tokens
    if first is not None:
        rec.ttft = first - t0
        if tokens > 1:
            rec.tpot = (last - first) / (tokens - 1)
    rec.latency = last - t0
    return rec


class OpenAIClient:
    """Streams /v1/completions (vLLM servers, smg): greedy, ignore_eos, usage in the last chunk."""

    def __init__(self, url: str) -> None:
        self.url = url + "/v1/completions"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "OpenAIClient":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                              connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def send(self, r: Req) -> Rec:
        body = {"model": MODEL_NAME, "prompt": r.prompt, "max_tokens": r.max_tokens, "temperature": 0.0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        rec, first, tokens = Rec(), None, 0
        t0 = last = time.perf_counter()
        try:
            async with self._session.post(self.url, json=body) as resp:
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return rec
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("choices"):  # a token (its text may be empty: bytes of an unfinished character)
                        last = time.perf_counter()
                        first = first or last
                    if msg.get("usage"):
                        u = msg["usage"]
                        tokens, rec.prompt_tokens = u["completion_tokens"], u.get("prompt_tokens", 0)
                        details = u.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            rec.cached_tokens = details["cached_tokens"]
                        rec.server = u.get("preble") or {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            rec.error = repr(e)
            return rec
        return _finish(rec, t0, first, last, tokens)


class PrebleClient:
    """Streams the router's Inference.Generate (text prompts: the router tokenizes)."""

    def __init__(self, addr: str, token_ids=None) -> None:
        self.addr = addr
        self.token_ids = token_ids
        """Optional callable prompt -> token ids: send ids instead of text (no tokenization)."""

    async def __aenter__(self) -> "PrebleClient":
        self._ch = grpc.aio.insecure_channel(self.addr, options=CHANNEL_OPTIONS)
        self._stub = inference_pb2_grpc.InferenceStub(self._ch)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._ch.close()

    async def send(self, r: Req) -> Rec:
        from preble_tiered.api.pb import common_pb2

        req = inference_pb2.GenerateRequest(sampling=convert.params_to_pb(
            GenParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True)))
        if self.token_ids is not None:
            req.token_ids.CopyFrom(common_pb2.TokenIds(ids=self.token_ids(r.prompt)))
        else:
            req.text = r.prompt
        rec, first, tokens = Rec(), None, 0
        t0 = last = time.perf_counter()
        try:
            async for msg in self._stub.Generate(req, timeout=600):
                if msg.WhichOneof("kind") == "chunk":
                    last = time.perf_counter()
                    first = first or last
                else:
                    u = msg.complete.usage
                    tokens, rec.prompt_tokens = u.completion_tokens, u.prompt_tokens
                    rec.server = {"node": u.node, "branch": u.branch, "ttft_ms": u.ttft_ms}
        except grpc.aio.AioRpcError as e:
            rec.error = f"{e.code().name}: {e.details()}"
            return rec
        return _finish(rec, t0, first, last, tokens)


async def open_loop(client, reqs: list[Req]) -> tuple[list[Rec], float]:
    """Send each request at its arrival time; (records in request order, wall seconds)."""
    t0 = time.perf_counter()

    async def one(r: Req) -> Rec:
        delay = r.t - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        return await client.send(r)

    recs = await asyncio.gather(*(one(r) for r in reqs))
    return list(recs), time.perf_counter() - t0


async def closed_loop(client, reqs: list[Req], concurrency: int) -> tuple[list[Rec], float]:
    """`concurrency` workers, each sending its share of `reqs` back to back."""
    recs: list[Rec | None] = [None] * len(reqs)
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        for i in range(w, len(reqs), concurrency):
            recs[i] = await client.send(reqs[i])

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return recs, time.perf_counter() - t0
