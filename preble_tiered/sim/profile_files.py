"""Cluster profiles on disk: read, write, the shipped ones, and the simulator config a profile
gives (`scheduler/profile.py` holds the profile itself)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from preble_tiered.scheduler.profile import ClusterProfile, ProfileError
from preble_tiered.sim.simulator import SimConfig

SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"


def shipped() -> list[str]:
    """Names of the profiles that ship with the package (`preble sim --profile NAME`)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def resolve(name_or_path: str) -> Path:
    """A shipped profile's file by name, else the path itself.

    Raises:
        ProfileError: when it is neither (the message lists the shipped names).
    """
    p = SHIPPED_DIR / f"{name_or_path}.json"
    if os.sep not in name_or_path and p.is_file():
        return p
    q = Path(name_or_path)
    if q.is_file():
        return q
    raise ProfileError(f"no profile {name_or_path!r}: not a file and not a shipped profile "
                       f"({', '.join(shipped()) or 'none'}); `preble calibrate` or `preble admin profile` writes one")


def load(name_or_path: str) -> ClusterProfile:
    """Read a profile (shipped name or JSON file). Raises ProfileError naming what is wrong."""
    path = resolve(name_or_path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not JSON ({e})") from None
    try:
        return ClusterProfile.from_dict(doc)
    except ProfileError as e:
        raise ProfileError(f"{path}: {e}") from None


def save(profile: ClusterProfile, path: str | Path) -> None:
    """Write `profile` as JSON (atomically: a crash leaves the old file or the new one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def sim_config(profile: ClusterProfile, policy: str, nodes: int | None = None, **overrides) -> SimConfig:
    """The simulated cluster a profile describes: its engines' limits, KV per tier and request
    overhead, `nodes` of them (None: as many as the profile measured; `preble sim` passes its
    --nodes), routed by a router that knows their prices from the start (`learn_costs` False);
    `overrides` replace SimConfig fields."""
    e = profile.engine
    cfg = SimConfig(nodes=nodes or profile.nodes, policy=policy, hbm_tokens=e.hbm_tokens,
                    dram_tokens=e.dram_tokens, disk_tokens=e.disk_tokens, block_size=e.block_size,
                    max_batch_tokens=e.max_batch_tokens, max_running=e.max_num_seqs,
                    request_overhead_s=profile.request_overhead_s, host_nodes=profile.host_nodes,
                    host_prefill_slowdown=profile.host_prefill_slowdown)
    return replace(cfg, **overrides) if overrides else cfg
