"""The vLLM KV connector (KV Connector V1) between the engine's cache and the node's store.

    scheduler role (per request, once):  get_num_new_matched_tokens -> blocks beyond vLLM's own
        prefix hit that DRAM/disk hold, when loading beats recomputing (pinned until the request ends)
    scheduler role (per step):           build_connector_meta -> loads: (engine block, hash);
        saves: prompt blocks that become fully computed in this step and the store lacks
    worker role (around the forward):    start_load_kv copies loads into every layer's cache;
        wait_for_save copies saves out of it into the store (write-through at prefill time:
        vLLM V1 has no hook before it evicts a block, so saving at eviction is impossible)

A block's bytes are every attention layer's slab for that block, concatenated in layer-name
order. A load whose block vanished from the store is reported through
`get_block_ids_with_load_errors`, so vLLM recomputes instead of reading garbage.

vLLM builds the connector itself (both roles, from a class path), so it cannot be handed the
node's KV runtime; it finds it in this module's registry by the id the engine puts in
`kv_connector_extra_config` (`register` / `lookup` / `unregister`). The engine runs in-process,
so both roles and the node agent share the runtime, and reach its tiers only through the
`KVRuntime` port.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                               KVConnectorRole)

from preble_tiered.engine.api import KVRuntime
from preble_tiered.kvstore.block_copy import BlockLayout
from preble_tiered.kvstore.block_copy_torch import TorchBlockLayout, block_mover

logger = logging.getLogger(__name__)

_RUNTIMES: dict[str, KVRuntime] = {}
_REG_LOCK = threading.Lock()


def register(rt: KVRuntime) -> str:
    """Make `rt` findable by the connector vLLM builds; returns its id for `kv_connector_extra_config`."""
    store_id = uuid.uuid4().hex
    with _REG_LOCK:
        _RUNTIMES[store_id] = rt
    return store_id


def lookup(store_id: str) -> KVRuntime:
    with _REG_LOCK:
        try:
            return _RUNTIMES[store_id]
        except KeyError:
            raise RuntimeError(f"no KV store registered as {store_id!r} in this process; the connector "
                               "only works with an in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0)") from None


def unregister(store_id: str) -> None:
    with _REG_LOCK:
        _RUNTIMES.pop(store_id, None)


@dataclass
class PrebleConnectorMetadata(KVConnectorMetadata):
    loads: list[tuple[int, int, str, str]] = field(default_factory=list)
    """(engine block id, router hash, external request id, tier name), in prompt order per request."""
    saves: list[tuple[int, int, int | None]] = field(default_factory=list)  # (block id, hash, parent)


@dataclass
class _ReqState:
    hashes: list[int]  # router hashes of the prompt's full blocks
    block_ids: list[int] = field(default_factory=list)
    saved_upto: int = 0  # blocks [0, saved_upto) are stored or were checked
    loads: list[tuple[int, int, str]] = field(default_factory=list)  # (block index, hash, tier) to load
    pinned: list[int] = field(default_factory=list)  # router hashes pinned until the request ends


def external_id(internal_id: str) -> str:
    """The caller's request id: vLLM appends "-" and 8 random characters to make its own."""
    head, sep, tail = internal_id.rpartition("-")
    return head if sep and len(tail) == 8 else internal_id


class PrebleTieredConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config
        self.rt: KVRuntime = lookup(extra["store_id"])
        self.block_size = vllm_config.cache_config.block_size
        self._reqs: dict[str, _ReqState] = {}
        self._caches: list[tuple[str, torch.Tensor, int]] = []  # (layer, cache, block dim)
        self._layout: BlockLayout | TorchBlockLayout | None = None
        self._load_errors: set[int] = set()

    # ------------------------------------------------------------------ scheduler role
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        st = self._state(request)
        if st.loads:  # asked again (the last plan was never allocated): drop its pins and counts
            self._release(request.request_id, st)
        bs = self.block_size
        usable = (len(request.prompt_token_ids or ()) - 1) // bs  # vLLM computes at least one token
        start = num_computed_tokens // bs
        if usable <= start:
            return 0, False
        plan = self.rt.plan_load(external_id(request.request_id), st.hashes[:usable], start, num_computed_tokens)
        if plan is None:
            return 0, False
        st.loads = plan.loads
        st.pinned += plan.pinned
        return len(plan.loads) * bs, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is not None and num_external_tokens == 0 and st.loads:
            self._release(request.request_id, st)  # allocation failed: nothing will be loaded

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        meta = PrebleConnectorMetadata()
        for new in scheduler_output.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            ext = external_id(new.req_id)
            meta.loads += [(st.block_ids[i], h, ext, tier) for i, h, tier in st.loads]
            st.loads = []
            self._plan_saves(meta, st, new.num_computed_tokens + scheduler_output.num_scheduled_tokens[new.req_id])
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            st = self._reqs.get(rid)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if new_ids is not None:
                if rid in cached.resumed_req_ids:
                    st.block_ids = list(new_ids[0])
                else:
                    st.block_ids += list(new_ids[0])
            self._plan_saves(meta, st, cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens[rid])
        return meta

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        st = self._reqs.pop(request.request_id, None)
        if st is not None:
            self._release(request.request_id, st, drop_loaded=False)
        return False, None

    def _state(self, request: Any) -> _ReqState:
        st = self._reqs.get(request.request_id)
        if st is None:
            ids = list(request.prompt_token_ids or ())
            st = self._reqs[request.request_id] = _ReqState(self.rt.block_hashes(ids))
        return st

    def _plan_saves(self, meta: PrebleConnectorMetadata, st: _ReqState, computed_after: int) -> None:
        done = min(computed_after // self.block_size, len(st.hashes), len(st.block_ids))
        if done <= st.saved_upto:
            return
        absent = set(self.rt.missing(st.hashes[st.saved_upto:done]))
        for i in range(st.saved_upto, done):
            h = st.hashes[i]
            if h in absent:
                meta.saves.append((st.block_ids[i], h, st.hashes[i - 1] if i else None))
        st.saved_upto = done

    def _release(self, rid: str, st: _ReqState, drop_loaded: bool = True) -> None:
        self.rt.release_load(external_id(rid), st.pinned, forget_counts=drop_loaded)
        st.pinned = []
        st.loads = []

    # ------------------------------------------------------------------ worker role
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        n_blocks = self._kv_cache_config.num_blocks if self._kv_cache_config is not None else None
        for name in sorted(kv_caches):
            cache = kv_caches[name]
            dims = [d for d, s in enumerate(cache.shape) if s == n_blocks] if n_blocks else [0]
            if not dims:
                raise RuntimeError(f"cannot find the block dimension of {name}: shape {tuple(cache.shape)}, "
                                   f"{n_blocks} blocks")
            self._caches.append((name, cache, dims[0]))
        self._layout = block_mover(self._caches)  # host copies, or torch copies for a CUDA cache
        # Saves copy into reused slots of one arena instead of a new buffer per block; the
        # store copies blocks arriving from elsewhere into the same slots.
        if self._layout.block_bytes:
            self.rt.attach_pool(self._layout.block_bytes)
        logger.info("KV connector: %d layers, block dim %d, cache shape %s", len(self._caches),
                    self._caches[0][2] if self._caches else -1,
                    tuple(self._caches[0][1].shape) if self._caches else ())

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, PrebleConnectorMetadata) or not meta.loads:
            return
        read = self.rt.read_for_load([(h, rid, tier) for _, h, rid, tier in meta.loads])
        ids: list[int] = []
        datas: list[bytes | memoryview] = []
        for (block_id, _, _, _), data in zip(meta.loads, read.datas):
            if data is None:  # vLLM recomputes this block and the rest of its request
                self._load_errors.add(block_id)
            else:
                ids.append(block_id)
                datas.append(data)
        t0 = time.perf_counter()
        self._layout.write(ids, datas)
        self.rt.observe_load(read, time.perf_counter() - t0)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # saved in wait_for_save, once every layer has written its KV

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, PrebleConnectorMetadata) or not meta.saves:
            return
        datas = self._layout.read([block_id for block_id, _, _ in meta.saves], self.rt.save_slots())
        self.rt.save([(h, parent, data) for (_, h, parent), data in zip(meta.saves, datas)])

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._load_errors = self._load_errors, set()
        return out
