"""The router's persisted admin state: named prefixes, pins and node ids by name, in one JSON file.

Writes are atomic (temporary file, fsync, rename), so a crash leaves the old or the new
state, never a torn one. The router refuses to start on a path that is not such a file (a
directory, another file, a newer format), saying what to do, and never moves or overwrites
it: what is there may be the user's, and pins are not silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from preble_tiered.scheduler.pins import NamedPrefix, PinSpec
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
MAX_PREFIXES = 4096
MAX_PREFIX_TOKENS = 1 << 20
MAX_REPLICAS = 64
MAX_TTL_S = 365 * 86400.0


def check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"bad prefix name {name!r}: use 1-64 characters of letters, digits and ._:/- "
                         "starting with a letter or digit")


class AdminState:
    """Named prefixes, pins and the node id each node name was given; `path` None keeps them in
    memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.prefixes: dict[str, NamedPrefix] = {}
        self.pins: dict[str, PinSpec] = {}
        self.node_ids: dict[str, int] = {}
        """Node name -> the id it had: a node that registers again (a router restart, nodes
        registering in another order) gets its id back, so admin commands by id keep meaning it."""
        if path is not None and (path.exists() or path.is_symlink()):
            self._load(path)

    def _load(self, path: Path) -> None:
        """Raises ValueError (naming the path and the fix) for anything but a state file."""
        if not path.is_file():
            raise ValueError(f"admin state {path} is not a regular file: pass the path of a JSON file to keep "
                             "names and pins in (it is created if missing)")
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {doc.get('version')!r}, expected {FORMAT_VERSION}")
            for p in doc["prefixes"]:
                self.prefixes[p["name"]] = NamedPrefix(p["name"], tuple(p["token_ids"]),
                                                       tuple(int(h, 16) for h in p["hashes"]), p["created"])
            for p in doc["pins"]:
                self.pins[p["name"]] = PinSpec(p["name"], Tier[p["tier"]], p["replicas"], p["created"],
                                               p.get("expires"))
            for name, node in doc.get("nodes", {}).items():
                if not isinstance(node, int) or isinstance(node, bool) or node < 0:
                    raise ValueError(f"node {name!r} has id {node!r}")
                self.node_ids[str(name)] = node
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"admin state {path} is not a preble admin state file ({type(e).__name__}: {e}); "
                             "pass another --state path, or move this file aside to start with no names "
                             "or pins") from None
        logger.info("admin state: %d named prefixes, %d pins from %s", len(self.prefixes), len(self.pins), path)

    def save(self) -> None:
        if self.path is None:
            return
        doc = {
            "version": FORMAT_VERSION,
            "prefixes": [{"name": p.name, "token_ids": list(p.token_ids), "hashes": [f"{h:016x}" for h in p.hashes],
                          "created": p.created} for p in self.prefixes.values()],
            "pins": [{"name": s.name, "tier": s.tier.name, "replicas": s.replicas, "created": s.created,
                      "expires": s.expires} for s in self.pins.values()],
            "nodes": dict(self.node_ids),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- node ids (NodeSet's `NodeIds`)
    def preferred(self, name: str) -> int | None:
        return self.node_ids.get(name)

    def reserved(self) -> set[int]:
        return set(self.node_ids.values())

    def remember(self, name: str, node: int) -> None:
        if name and self.node_ids.get(name) != node:
            for other in [n for n, i in self.node_ids.items() if i == node]:
                del self.node_ids[other]  # the id now belongs to `name`
            self.node_ids[name] = node
            self.save()
