"""The router: the scheduler on a real clock, in front of the node agents.

    client --Generate--> Dispatcher: admit -> hash -> Scheduler.schedule -> NodeClient.submit
                         ^ residency: per node, Snapshot then Events(after_seq)   (residency.follow)
                         ^ load: per node, Load every `load_interval_s`            (feedback.LoadFeed)
    operator --Admin--> PrefixAdmin (names, pins, warm-ups, eviction) through a RouterView

The scheduler is the same object the simulator drives (`preble_tiered.scheduler.core`); only
the router's jobs feed it wall-clock time, events and completions. This class wires the jobs
together and owns their lifetimes. All state is touched from the asyncio loop only.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from preble_tiered.hashing import BlockHasher
from preble_tiered.router.admin_state import AdminState
from preble_tiered.router.config import RouterConfig
from preble_tiered.router.decisions import DecisionRing
from preble_tiered.router.dispatch import Dispatcher
from preble_tiered.router.feedback import LoadFeed
from preble_tiered.router.metrics import RouterMetrics
from preble_tiered.router.nodes import NodeLink, NodeSet
from preble_tiered.router.prefix_admin import PrefixAdmin
from preble_tiered.router.residency import follow
from preble_tiered.router.view import RouterView
from preble_tiered.scheduler.clock import Clock, MonotonicClock
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.cost_model import engine_cost_model
from preble_tiered.scheduler.profile_fit import ProfileSamples

logger = logging.getLogger(__name__)

HOUSEKEEPING_S = 1.0


class Router:
    def __init__(self, config: RouterConfig, clock: Clock | None = None, metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.metrics = metrics or RouterMetrics()
        self.hasher = BlockHasher(config.block_size)
        sc = SchedulerConfig(policy=config.policy, n_nodes=config.max_nodes, block_size=config.block_size,
                             policy_config=config.policy_config)
        cost = config.profile.cost_model() if config.profile else engine_cost_model("engine", 8192, 1 << 16)
        self.scheduler = Scheduler(sc, cost, self.clock)
        for n in range(config.max_nodes):
            self.scheduler.mark_down(n)  # slots come alive as nodes register and resync
        state = AdminState(Path(config.state_path) if config.state_path else None)
        self.nodes = NodeSet(config, self.scheduler, self.metrics, ids=state)
        self.samples = ProfileSamples()
        """What the nodes measured, kept for `preble admin profile`."""
        self.feed = LoadFeed(config, self.nodes, self.samples)
        self.decisions = DecisionRing()
        self.dispatch = Dispatcher(config, self.nodes, self.hasher, self.decisions, self.samples)
        self.view = RouterView(self.nodes, self.dispatch, self.clock, self.hasher)
        self.admin = PrefixAdmin(self.view, state, interval_s=config.pin_interval_s)
        self.nodes.on_register.append(self._start_link)
        self.nodes.on_down.append(self.admin.on_node_down)
        self.dispatch.on_complete.append(self.admin.on_complete)
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    @property
    def links(self) -> dict[int, NodeLink]:
        return self.nodes.links

    def start(self) -> None:
        """Start the background work that is not per node (pins, housekeeping)."""
        kernel = self.scheduler.index.kernel
        logger.info("prefix index: %s kernel, %d node slots, policy %s%s", kernel, self.config.max_nodes,
                    self.config.policy, "" if kernel == "native" else
                    " (the C kernel is not in use: not built here, > 256 slots, or PREBLE_INDEX_KERNEL; "
                    "same decisions, ~2x slower)")
        self.admin.start()
        self._tasks.append(asyncio.create_task(self._housekeeping()))

    def _start_link(self, link: NodeLink) -> None:
        closing = self._is_closing
        link.tasks = [asyncio.create_task(follow(link, self.nodes, closing)),
                      asyncio.create_task(self.feed.poll(link, closing))]

    def _is_closing(self) -> bool:
        return self._closing

    async def _housekeeping(self) -> None:
        while True:
            self.decisions.trim()  # the decision ring drops what is over its bounds off the request path
            await asyncio.sleep(HOUSEKEEPING_S)

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await self.admin.close()
        await self.nodes.close()
