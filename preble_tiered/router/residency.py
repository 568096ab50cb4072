"""Following one node's residency: Snapshot, then the event stream after it; a gap, a
stream the node reports to be ahead of us, or a malformed event means a new snapshot.

    node --Snapshot(seq, blocks)--> mark_up --Events(after_seq)--> scheduler.apply, batch by batch
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from preble_tiered.router.metrics import RouterMetrics
from preble_tiered.router.node_client import NodeError
from preble_tiered.router.nodes import NodeLink, NodeSet

logger = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 10.0


class EventGap(Exception):
    pass


class ResidencyFollower:
    """Sequence bookkeeping of one node's event stream (pure; the follow loop feeds it)."""

    def __init__(self) -> None:
        self.seq = 0

    def reset(self, snapshot_seq: int) -> None:
        self.seq = snapshot_seq

    def accept(self, seq: int) -> None:
        """Raises EventGap unless `seq` directly follows the last one."""
        if seq != self.seq + 1:
            raise EventGap(f"expected event batch {self.seq + 1}, got {seq}")
        self.seq = seq


class _StreamEnded(Exception):
    pass


async def follow(link: NodeLink, nodes: NodeSet, closing) -> None:
    """Keep the scheduler's view of `link`'s residency exact until `closing()`; mark the
    node down when its stream fails, and up again when a snapshot succeeds."""
    follower = ResidencyFollower()
    metrics = nodes.metrics
    apply = nodes.scheduler.apply
    backoff = 0.2
    while not closing():
        stream = None
        try:
            seq, events = await link.client.snapshot(SNAPSHOT_TIMEOUT_S)
            nodes.mark_up(link, seq, events)
            follower.reset(seq)
            backoff = 0.2
            stream = link.events = link.client.events(seq)
            async for seq, events in stream:
                if not link.alive:  # marked down by a failed submit or poll: batches still
                    raise _StreamEnded()  # buffered must not resurrect its residency
                follower.accept(seq)
                for ev in events:
                    apply(ev)
                link.event_seq = seq
            raise _StreamEnded()
        except EventGap as e:
            _count_resync(link, metrics, str(e))
        except NodeError as e:
            if e.code == grpc.StatusCode.OUT_OF_RANGE or link.resync_requested:
                link.resync_requested = False
                _count_resync(link, metrics, e.details)
                continue
            nodes.mark_down(link, f"event stream: {e.code.name} {e.details}")
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)
        except _StreamEnded:
            nodes.mark_down(link, "event stream ended")
            await asyncio.sleep(backoff)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if link.resync_requested and task is not None and not task.cancelling():
                link.resync_requested = False  # we cancelled the stream ourselves (check_behind)
                _count_resync(link, metrics, "the load report is ahead of the stream")
                continue
            raise
        except Exception:  # a malformed event: resync rather than die
            logger.exception("node %s: bad residency event; resynchronising", link.name)
            _count_resync(link, metrics, "bad event")
            await asyncio.sleep(backoff)
        finally:
            if stream is not None:
                stream.cancel()


def check_behind(link: NodeLink, node_seq: int) -> None:
    """A batch lost at the tail of the stream shows no gap until the next one: catch it by
    the load report's sequence number, when two polls in a row say we are behind it."""
    if node_seq <= link.event_seq:
        link.behind_seq = 0
    elif link.behind_seq and link.behind_seq <= node_seq and link.event_seq < link.behind_seq:
        link.behind_seq = 0
        if link.events is not None and not link.resync_requested:
            link.resync_requested = True
            link.events.cancel()
    else:
        link.behind_seq = node_seq


def _count_resync(link: NodeLink, metrics: RouterMetrics, why: str) -> None:
    link.resyncs += 1
    metrics.resyncs.labels(link.name).inc()
    logger.warning("node %s: residency stream gap (%s); resynchronising by snapshot", link.name, why)
