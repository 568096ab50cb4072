"""How the router runs (one typed config; `preble router` flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.profile import ClusterProfile

MAX_REQUEST_ID_CHARS = 128
MAX_TEXT_CHARS = 4 << 20


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    policy: str = "e2_tiered"
    block_size: int = 32
    """Tokens per KV block; nodes with another block size are refused."""
    max_nodes: int = 64
    max_outstanding: int = 1024
    """Requests accepted and unfinished; beyond it Generate answers RESOURCE_EXHAUSTED."""
    tokenizer: str | None = None
    """Tokenizer directory (None: the first node's model directory)."""
    load_interval_s: float = 0.5
    down_after_s: float = 1.0
    """A node whose load polls fail this long is marked down."""
    max_reroutes: int = 3
    metrics_port: int = 0
    policy_config: PolicyConfig = field(default_factory=lambda: PolicyConfig(explain=True))
    state_path: str | None = None
    """JSON file of named prefixes and pins (None: kept in memory, lost at exit)."""
    pin_interval_s: float = 1.0
    """Seconds between pin reconcile rounds."""
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token the Admin service requires (None: Admin is open; say so in the log)."""
    inference_token: str | None = field(default=None, repr=False)
    """Bearer token the Inference service requires (None: open)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    http_port: int | None = None
    """Port of the OpenAI HTTP API on `host` (None: no HTTP; 0: any free port). TLS and the
    inference token apply to it as to gRPC."""
    served_model_name: str | None = None
    """The model's name in the OpenAI API (None: the model directory's name)."""
    profile: ClusterProfile | None = field(default=None, repr=False)
    """The cluster's measured costs to route on from the first request (`preble calibrate`
    or `preble admin profile` writes one); the router still refits them from what its nodes
    measure. None: a guess (`engine_cost_model`) until the first refit."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_nodes <= 4096:
            raise ValueError(f"max_nodes must be in [1, 4096], got {self.max_nodes}")
        if self.max_outstanding <= 0:
            raise ValueError(f"max_outstanding must be positive, got {self.max_outstanding}")
        if self.load_interval_s <= 0 or self.down_after_s <= 0:
            raise ValueError("load_interval_s and down_after_s must be positive")
        if self.pin_interval_s <= 0:
            raise ValueError(f"pin_interval_s must be positive, got {self.pin_interval_s}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
