from preble_tiered.server.pb import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("node_id", "name", "address", "alive", "running", "waiting", "inflight", "kv_usage", "kv_capacity_tokens", "hbm_blocks", "tpot_ms", "requests_total", "event_seq", "resyncs")
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
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., inflight: _Optional[int] = ..., kv_usage: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ..., hbm_blocks: _Optional[int] = ..., tpot_ms: _Optional[float] = ..., requests_total: _Optional[int] = ..., event_seq: _Optional[int] = ..., resyncs: _Optional[int] = ...) -> None: ...

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
