"""Policies by name: the built-in ones, and `register_policy` for more.

The interface (`policy.Policy`) knows no implementation; this module knows them all, so
choosing a policy by name imports no circle.
"""

from __future__ import annotations

from preble_tiered.scheduler.baselines import DynamoKV, LeastLoad, RoundRobin, SGLangCacheAware
from preble_tiered.scheduler.cluster import ClusterState
from preble_tiered.scheduler.e2 import E2Tiered, PrebleE2
from preble_tiered.scheduler.policy import Policy, PolicyConfig

_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Make `cls` choosable by its `name`.

    Raises:
        ValueError: the name is taken.
    """
    if cls.name in _REGISTRY:
        raise ValueError(f"policy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (RoundRobin, LeastLoad, SGLangCacheAware, DynamoKV, PrebleE2, E2Tiered):
    register_policy(_cls)


def policy_names() -> list[str]:
    return list(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(_REGISTRY)}") from None


def make_policy(name: str, cluster: ClusterState, config: PolicyConfig | None = None) -> Policy:
    return policy_class(name)(cluster, config or PolicyConfig())
