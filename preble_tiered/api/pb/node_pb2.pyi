from preble_tiered.api.pb import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "priority_group", "expected_cached_tokens", "pull")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    priority_group: int
    expected_cached_tokens: _common_pb2.CachedTokens
    pull: PullPlan
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., priority_group: _Optional[int] = ..., expected_cached_tokens: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., pull: _Optional[_Union[PullPlan, _Mapping]] = ...) -> None: ...

class PullPlan(_message.Message):
    __slots__ = ("source_address", "source_name", "hashes")
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    source_address: str
    source_name: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, source_address: _Optional[str] = ..., source_name: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class SubmitDone(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "queue_ms", "ttft_ms", "engine_ttft_ms")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: _common_pb2.CachedTokens
    queue_ms: float
    ttft_ms: float
    engine_ttft_ms: float
    def __init__(self, finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., queue_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., engine_ttft_ms: _Optional[float] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("chunk", "done")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    chunk: TokenChunk
    done: SubmitDone
    def __init__(self, chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., done: _Optional[_Union[SubmitDone, _Mapping]] = ...) -> None: ...

class ServeRequest(_message.Message):
    __slots__ = ("submit", "cancel")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitRequest
    cancel: str
    def __init__(self, submit: _Optional[_Union[SubmitRequest, _Mapping]] = ..., cancel: _Optional[str] = ...) -> None: ...

class ServeError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ServeItem(_message.Message):
    __slots__ = ("request_id", "chunk", "done", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    chunk: TokenChunk
    done: SubmitDone
    error: ServeError
    def __init__(self, request_id: _Optional[str] = ..., chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., done: _Optional[_Union[SubmitDone, _Mapping]] = ..., error: _Optional[_Union[ServeError, _Mapping]] = ...) -> None: ...

class ServeBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ServeItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ServeItem, _Mapping]]] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class BlockChain(_message.Message):
    __slots__ = ("tier", "hashes", "parent")
    TIER_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    hashes: _containers.RepeatedScalarFieldContainer[int]
    parent: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., hashes: _Optional[_Iterable[int]] = ..., parent: _Optional[int] = ...) -> None: ...

class ResidencyEvent(_message.Message):
    __slots__ = ("stored", "removed", "cleared")
    STORED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    stored: BlockChain
    removed: BlockChain
    cleared: _common_pb2.Tier
    def __init__(self, stored: _Optional[_Union[BlockChain, _Mapping]] = ..., removed: _Optional[_Union[BlockChain, _Mapping]] = ..., cleared: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("seq", "events")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    events: _containers.RepeatedCompositeFieldContainer[ResidencyEvent]
    def __init__(self, seq: _Optional[int] = ..., events: _Optional[_Iterable[_Union[ResidencyEvent, _Mapping]]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotBlock(_message.Message):
    __slots__ = ("tier", "hash", "parent")
    TIER_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    hash: int
    parent: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., hash: _Optional[int] = ..., parent: _Optional[int] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("seq", "blocks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    blocks: _containers.RepeatedCompositeFieldContainer[SnapshotBlock]
    def __init__(self, seq: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[SnapshotBlock, _Mapping]]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrefillSample(_message.Message):
    __slots__ = ("new_tokens", "context_tokens", "seconds")
    NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    new_tokens: int
    context_tokens: int
    seconds: float
    def __init__(self, new_tokens: _Optional[int] = ..., context_tokens: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class DecodeSteps(_message.Message):
    __slots__ = ("batch", "context_tokens", "seconds", "steps")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    context_tokens: float
    seconds: float
    steps: int
    def __init__(self, batch: _Optional[int] = ..., context_tokens: _Optional[float] = ..., seconds: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("ready", "running", "waiting", "kv_usage", "kv_used_tokens", "tpot_ms", "prefill_samples", "event_seq", "link_rates", "tiers", "decode_steps")
    READY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    KV_USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LINK_RATES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    running: int
    waiting: int
    kv_usage: float
    kv_used_tokens: int
    tpot_ms: float
    prefill_samples: _containers.RepeatedCompositeFieldContainer[PrefillSample]
    event_seq: int
    link_rates: _containers.RepeatedCompositeFieldContainer[LinkRate]
    tiers: _containers.RepeatedCompositeFieldContainer[TierUsage]
    decode_steps: _containers.RepeatedCompositeFieldContainer[DecodeSteps]
    def __init__(self, ready: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_usage: _Optional[float] = ..., kv_used_tokens: _Optional[int] = ..., tpot_ms: _Optional[float] = ..., prefill_samples: _Optional[_Iterable[_Union[PrefillSample, _Mapping]]] = ..., event_seq: _Optional[int] = ..., link_rates: _Optional[_Iterable[_Union[LinkRate, _Mapping]]] = ..., tiers: _Optional[_Iterable[_Union[TierUsage, _Mapping]]] = ..., decode_steps: _Optional[_Iterable[_Union[DecodeSteps, _Mapping]]] = ...) -> None: ...

class TierUsage(_message.Message):
    __slots__ = ("tier", "used_bytes", "capacity_bytes", "blocks", "pinned_blocks")
    TIER_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    used_bytes: int
    capacity_bytes: int
    blocks: int
    pinned_blocks: int
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., blocks: _Optional[int] = ..., pinned_blocks: _Optional[int] = ...) -> None: ...

class LinkRate(_message.Message):
    __slots__ = ("link", "bytes_per_s", "samples")
    LINK_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    link: str
    bytes_per_s: float
    samples: int
    def __init__(self, link: _Optional[str] = ..., bytes_per_s: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class NodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "model", "vocab_size", "max_model_len", "block_size", "kv_capacity_tokens", "kv_bytes_per_token", "hash_namespace", "max_num_seqs", "max_batch_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HASH_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    vocab_size: int
    max_model_len: int
    block_size: int
    kv_capacity_tokens: int
    kv_bytes_per_token: int
    hash_namespace: str
    max_num_seqs: int
    max_batch_tokens: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., block_size: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., hash_namespace: _Optional[str] = ..., max_num_seqs: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("address", "info")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    address: str
    info: NodeInfo
    def __init__(self, address: _Optional[str] = ..., info: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class PinBlocksRequest(_message.Message):
    __slots__ = ("owner", "hashes", "tier")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    tier: _common_pb2.Tier
    def __init__(self, owner: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class PinBlocksResponse(_message.Message):
    __slots__ = ("pinned", "missing")
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    pinned: int
    missing: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pinned: _Optional[int] = ..., missing: _Optional[_Iterable[int]] = ...) -> None: ...

class EvictBlocksRequest(_message.Message):
    __slots__ = ("hashes", "tier")
    HASHES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedScalarFieldContainer[int]
    tier: _common_pb2.Tier
    def __init__(self, hashes: _Optional[_Iterable[int]] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class EvictBlocksResponse(_message.Message):
    __slots__ = ("evicted", "pinned_kept")
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    PINNED_KEPT_FIELD_NUMBER: _ClassVar[int]
    evicted: int
    pinned_kept: int
    def __init__(self, evicted: _Optional[int] = ..., pinned_kept: _Optional[int] = ...) -> None: ...
