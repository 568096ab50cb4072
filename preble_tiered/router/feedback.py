"""The load feed: each node's load report, polled every `load_interval_s`, into the
scheduler (running/waiting), the residency follower (is the stream behind?), the prefill
calibration (measured samples -> refitted prefill and decode models), the link prices (measured
bandwidths) and the profile samples (prefills and decode steps, for `preble admin profile`).
A node whose polls fail for `down_after_s` is marked down.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import replace

from preble_tiered.api.messages import NodeLoad
from preble_tiered.router.config import RouterConfig
from preble_tiered.router.node_client import NodeError
from preble_tiered.router.nodes import NodeLink, NodeSet
from preble_tiered.router.residency import check_behind
from preble_tiered.scheduler.calibration import CostLearner
from preble_tiered.scheduler.cost_model import Link
from preble_tiered.scheduler.profile_fit import ProfileSamples

logger = logging.getLogger(__name__)


class LoadFeed:
    def __init__(self, config: RouterConfig, nodes: NodeSet, samples: ProfileSamples | None = None) -> None:
        self.config = config
        self.samples = samples or ProfileSamples()
        self.nodes = nodes
        self.scheduler = nodes.scheduler
        self.metrics = nodes.metrics
        self.learner = CostLearner()
        self._polling: dict[int, asyncio.Lock] = {}  # per node: one Load in flight, reports taken in order

    async def poll(self, link: NodeLink, closing) -> None:
        """Poll `link`'s load until `closing()`."""
        interval = self.config.load_interval_s
        while not closing():
            try:
                async with self._lock(link):
                    rep = await link.client.load(timeout_s=max(interval, 0.5))
                    if not rep.ready:
                        raise _NotReady()
                    self._take(link, rep)
            except (NodeError, _NotReady) as e:
                if link.alive and time.monotonic() - link.last_load_ok >= self.config.down_after_s:
                    why = "engine not ready" if isinstance(e, _NotReady) else f"load polls failing ({e.code.name})"
                    self.nodes.mark_down(link, why)
            await asyncio.sleep(interval)

    async def refresh(self) -> list[str]:
        """Poll every live node once now, beside the periodic polls: what the nodes measured
        before this call is in `samples` when it returns (`preble calibrate` fits right after
        its sweep). Returns the names of the live nodes that did not answer (left to the
        periodic polls: what they measured arrives later)."""
        async def one(link: NodeLink) -> str | None:
            async with self._lock(link):  # after a poll in flight: its report is taken first
                try:
                    rep = await link.client.load(timeout_s=max(self.config.load_interval_s, 0.5))
                except NodeError:
                    return link.name
                if rep.ready:  # a node not ready reports no measurements: none can come late
                    self._take(link, rep, follow=False)
                return None
        missed = await asyncio.gather(*(one(lk) for lk in self.nodes.links.values() if lk.alive))
        return [name for name in missed if name is not None]

    def _lock(self, link: NodeLink) -> asyncio.Lock:
        return self._polling.setdefault(link.node_id, asyncio.Lock())

    def _take(self, link: NodeLink, rep: NodeLoad, follow: bool = True) -> None:
        """`follow`: judge the event stream by the report's sequence number (`check_behind`
        wants reports a poll interval apart; a refresh right after a poll is not)."""
        link.load = rep
        link.last_load_ok = time.monotonic()
        ns = self.scheduler.cluster.nodes[link.node_id]
        ns.reported_running, ns.reported_waiting = rep.running, rep.waiting
        self.metrics.queue_depth.labels(link.name).set(rep.waiting)
        self.metrics.inflight.labels(link.name).set(ns.n_inflight)
        if follow:
            check_behind(link, rep.event_seq)
        self._calibrate(rep)
        self._update_links(link, rep)

    def _update_links(self, link: NodeLink, rep: NodeLoad) -> None:
        """Feed the nodes' measured bandwidths into the cost model: per kind ("dram", "disk",
        "net"), the median over every node's (and, for net, every peer link's) EWMA. The
        scheduler prices one link per kind, so per-link rates only shape that median."""
        if not rep.link_rates:
            return
        link.rates = rep.link_rates
        by_kind: dict[str, list[float]] = {}
        for lk in self.nodes.links.values():
            for name, bps in lk.rates.items():
                by_kind.setdefault(name.split(":", 1)[0], []).append(bps)
        cost = self.scheduler.cluster.cost
        links = cost.links
        for kind, vals in by_kind.items():
            old = getattr(links, kind, None)
            if old is None:
                continue
            new = statistics.median(vals)
            if abs(new - old.bandwidth) > 0.1 * old.bandwidth:  # skip noise-level updates
                links = replace(links, **{kind: Link(new, old.latency_s)})
        if links != cost.links:
            self.scheduler.update_cost(cost.with_links(links))
            logger.info("link bandwidths now dram %.2f GB/s, disk %.2f GB/s, net %.2f GB/s",
                        links.dram.bandwidth / 1e9, links.disk.bandwidth / 1e9, links.net.bandwidth / 1e9)

    def _calibrate(self, rep: NodeLoad) -> None:
        learner = self.learner
        for new, ctx, seconds in rep.prefill_samples:
            learner.add_prefill(new, ctx, seconds)
            self.samples.add_prefill(new, ctx, seconds)
        for batch, ctx, seconds, steps in rep.decode_steps:
            self.samples.add_decode(batch, ctx, seconds, steps)
            learner.add_decode(batch, ctx, seconds, steps)
        old = self.scheduler.cluster.cost
        cost = learner.refit(old, self._step_budget())
        if cost is not None:
            self.scheduler.update_cost(cost)
            if cost.prefill is not old.prefill:
                logger.info("prefill model refitted from %d samples: %s", len(learner.prefill), cost.prefill)
            if cost.decode is not old.decode:
                logger.info("decode model refitted: %s", cost.decode)

    def _step_budget(self) -> int | None:
        """The live engines' token budget per step (the smallest; None until one reports it)."""
        budgets = [lk.info.max_batch_tokens for lk in self.nodes.links.values()
                   if lk.alive and lk.info.max_batch_tokens]
        return min(budgets) if budgets else None


class _NotReady(Exception):
    pass
