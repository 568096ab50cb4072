from preble_tiered.api.pb import common_pb2 as _common_pb2
from preble_tiered.api.pb import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProfileRequest(_message.Message):
    __slots__ = ("name", "reset", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    reset: bool
    source: str
    def __init__(self, name: _Optional[str] = ..., reset: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class ProfileResponse(_message.Message):
    __slots__ = ("profile_json", "prefill_samples", "decode_steps")
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    profile_json: str
    prefill_samples: int
    decode_steps: int
    def __init__(self, profile_json: _Optional[str] = ..., prefill_samples: _Optional[int] = ..., decode_steps: _Optional[int] = ...) -> None: ...

class PrefixRef(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ListPrefixesRequest(_message.Message):
    __slots__ = ("node_id", "tier", "min_tokens", "limit", "named_only")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NAMED_ONLY_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    tier: _common_pb2.Tier
    min_tokens: int
    limit: int
    named_only: bool
    def __init__(self, node_id: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., min_tokens: _Optional[int] = ..., limit: _Optional[int] = ..., named_only: _Optional[bool] = ...) -> None: ...

class PrefixPlacement(_message.Message):
    __slots__ = ("node_id", "node", "tier", "blocks", "bytes", "last_use_unix", "hits")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_UNIX_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    node: str
    tier: _common_pb2.Tier
    blocks: int
    bytes: int
    last_use_unix: float
    hits: int
    def __init__(self, node_id: _Optional[int] = ..., node: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., blocks: _Optional[int] = ..., bytes: _Optional[int] = ..., last_use_unix: _Optional[float] = ..., hits: _Optional[int] = ...) -> None: ...

class PrefixInfo(_message.Message):
    __slots__ = ("name", "hash", "tokens", "blocks", "where", "demand", "pinned", "last_use_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: int
    tokens: int
    blocks: int
    where: _containers.RepeatedCompositeFieldContainer[PrefixPlacement]
    demand: float
    pinned: bool
    last_use_unix: float
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[int] = ..., tokens: _Optional[int] = ..., blocks: _Optional[int] = ..., where: _Optional[_Iterable[_Union[PrefixPlacement, _Mapping]]] = ..., demand: _Optional[float] = ..., pinned: _Optional[bool] = ..., last_use_unix: _Optional[float] = ...) -> None: ...

class ListPrefixesResponse(_message.Message):
    __slots__ = ("prefixes", "total")
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    prefixes: _containers.RepeatedCompositeFieldContainer[PrefixInfo]
    total: int
    def __init__(self, prefixes: _Optional[_Iterable[_Union[PrefixInfo, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class NamePrefixRequest(_message.Message):
    __slots__ = ("name", "text", "token_ids", "request_id", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    token_ids: _common_pb2.TokenIds
    request_id: str
    replace: bool
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[_common_pb2.TokenIds, _Mapping]] = ..., request_id: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class PrefixDetail(_message.Message):
    __slots__ = ("prefix", "pin")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    prefix: PrefixInfo
    pin: PinInfo
    def __init__(self, prefix: _Optional[_Union[PrefixInfo, _Mapping]] = ..., pin: _Optional[_Union[PinInfo, _Mapping]] = ...) -> None: ...

class PinPrefixRequest(_message.Message):
    __slots__ = ("name", "replicas", "tier", "ttl_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    tier: _common_pb2.Tier
    ttl_s: float
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class PinReplica(_message.Message):
    __slots__ = ("node_id", "node", "state", "blocks_held")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_HELD_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    node: str
    state: str
    blocks_held: int
    def __init__(self, node_id: _Optional[int] = ..., node: _Optional[str] = ..., state: _Optional[str] = ..., blocks_held: _Optional[int] = ...) -> None: ...

class PinInfo(_message.Message):
    __slots__ = ("name", "tier", "replicas", "created_unix", "expires_unix", "nodes", "released")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    name: str
    tier: _common_pb2.Tier
    replicas: int
    created_unix: float
    expires_unix: float
    nodes: _containers.RepeatedCompositeFieldContainer[PinReplica]
    released: bool
    def __init__(self, name: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., replicas: _Optional[int] = ..., created_unix: _Optional[float] = ..., expires_unix: _Optional[float] = ..., nodes: _Optional[_Iterable[_Union[PinReplica, _Mapping]]] = ..., released: _Optional[bool] = ...) -> None: ...

class EvictPrefixRequest(_message.Message):
    __slots__ = ("key", "node_id", "tier")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    key: str
    node_id: int
    tier: _common_pb2.Tier
    def __init__(self, key: _Optional[str] = ..., node_id: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class EvictPrefixResponse(_message.Message):
    __slots__ = ("evicted", "pinned_kept", "nodes")
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    PINNED_KEPT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    evicted: int
    pinned_kept: int
    nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, evicted: _Optional[int] = ..., pinned_kept: _Optional[int] = ..., nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class WarmPrefixRequest(_message.Message):
    __slots__ = ("key", "node_ids")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class WarmResult(_message.Message):
    __slots__ = ("node_id", "node", "cached_tokens", "recomputed_tokens", "ms", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    node: str
    cached_tokens: _common_pb2.CachedTokens
    recomputed_tokens: int
    ms: float
    error: str
    def __init__(self, node_id: _Optional[int] = ..., node: _Optional[str] = ..., cached_tokens: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., recomputed_tokens: _Optional[int] = ..., ms: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class WarmPrefixResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[WarmResult]
    def __init__(self, results: _Optional[_Iterable[_Union[WarmResult, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CandidateCost(_message.Message):
    __slots__ = ("node_id", "node", "load_s", "evict_s", "plan_s", "total_s", "decode_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    EVICT_S_FIELD_NUMBER: _ClassVar[int]
    PLAN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    node: str
    load_s: float
    evict_s: float
    plan_s: float
    total_s: float
    decode_s: float
    def __init__(self, node_id: _Optional[int] = ..., node: _Optional[str] = ..., load_s: _Optional[float] = ..., evict_s: _Optional[float] = ..., plan_s: _Optional[float] = ..., total_s: _Optional[float] = ..., decode_s: _Optional[float] = ...) -> None: ...

class PlanSegment(_message.Message):
    __slots__ = ("action", "blocks", "tokens", "tier", "source_node_id")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    action: str
    blocks: int
    tokens: int
    tier: _common_pb2.Tier
    source_node_id: int
    def __init__(self, action: _Optional[str] = ..., blocks: _Optional[int] = ..., tokens: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., source_node_id: _Optional[int] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("request_id", "at_unix", "branch", "node_id", "node", "prompt_tokens", "candidates", "plan", "est_ttft_ms", "predicted_cached_tokens", "actual_cached_tokens", "ttft_ms", "state", "attempt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    EST_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    at_unix: float
    branch: str
    node_id: int
    node: str
    prompt_tokens: int
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateCost]
    plan: _containers.RepeatedCompositeFieldContainer[PlanSegment]
    est_ttft_ms: float
    predicted_cached_tokens: _common_pb2.CachedTokens
    actual_cached_tokens: _common_pb2.CachedTokens
    ttft_ms: float
    state: str
    attempt: int
    def __init__(self, request_id: _Optional[str] = ..., at_unix: _Optional[float] = ..., branch: _Optional[str] = ..., node_id: _Optional[int] = ..., node: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[CandidateCost, _Mapping]]] = ..., plan: _Optional[_Iterable[_Union[PlanSegment, _Mapping]]] = ..., est_ttft_ms: _Optional[float] = ..., predicted_cached_tokens: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., actual_cached_tokens: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., ttft_ms: _Optional[float] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class NodeResidencyRequest(_message.Message):
    __slots__ = ("node_id", "tier")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    tier: _common_pb2.Tier
    def __init__(self, node_id: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class NodeResidency(_message.Message):
    __slots__ = ("node_id", "tier", "hashes", "event_seq")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    tier: _common_pb2.Tier
    hashes: _containers.RepeatedScalarFieldContainer[int]
    event_seq: int
    def __init__(self, node_id: _Optional[int] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., hashes: _Optional[_Iterable[int]] = ..., event_seq: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "name", "address", "alive", "running", "waiting", "inflight", "kv_usage", "kv_capacity_tokens", "hbm_blocks", "tpot_ms", "requests_total", "event_seq", "resyncs", "dram_blocks", "disk_blocks", "tiers", "pinned_prefixes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HBM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    DRAM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DISK_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PINNED_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    name: str
    address: str
    alive: bool
    running: int
    waiting: int
    inflight: int
    kv_usage: float
    kv_capacity_tokens: int
    hbm_blocks: int
    tpot_ms: float
    requests_total: int
    event_seq: int
    resyncs: int
    dram_blocks: int
    disk_blocks: int
    tiers: _containers.RepeatedCompositeFieldContainer[_node_pb2.TierUsage]
    pinned_prefixes: int
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., inflight: _Optional[int] = ..., kv_usage: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ..., hbm_blocks: _Optional[int] = ..., tpot_ms: _Optional[float] = ..., requests_total: _Optional[int] = ..., event_seq: _Optional[int] = ..., resyncs: _Optional[int] = ..., dram_blocks: _Optional[int] = ..., disk_blocks: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[_node_pb2.TierUsage, _Mapping]]] = ..., pinned_prefixes: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class ClusterStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatsResponse(_message.Message):
    __slots__ = ("policy", "model", "nodes_alive", "nodes_total", "requests_total", "requests_failed", "requests_rerouted", "branch_counts", "prompt_tokens_total", "cached_tokens_total", "recomputed_tokens_total", "index_entries", "cost_model")
    class BranchCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_ALIVE_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_REROUTED_FIELD_NUMBER: _ClassVar[int]
    BRANCH_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COST_MODEL_FIELD_NUMBER: _ClassVar[int]
    policy: str
    model: str
    nodes_alive: int
    nodes_total: int
    requests_total: int
    requests_failed: int
    requests_rerouted: int
    branch_counts: _containers.ScalarMap[str, int]
    prompt_tokens_total: int
    cached_tokens_total: _common_pb2.CachedTokens
    recomputed_tokens_total: int
    index_entries: int
    cost_model: str
    def __init__(self, policy: _Optional[str] = ..., model: _Optional[str] = ..., nodes_alive: _Optional[int] = ..., nodes_total: _Optional[int] = ..., requests_total: _Optional[int] = ..., requests_failed: _Optional[int] = ..., requests_rerouted: _Optional[int] = ..., branch_counts: _Optional[_Mapping[str, int]] = ..., prompt_tokens_total: _Optional[int] = ..., cached_tokens_total: _Optional[_Union[_common_pb2.CachedTokens, _Mapping]] = ..., recomputed_tokens_total: _Optional[int] = ..., index_entries: _Optional[int] = ..., cost_model: _Optional[str] = ...) -> None: ...
