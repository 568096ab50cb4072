"""Multi-turn embodied-agent episodes: every turn re-sends the whole history.

    turn 1:  [task p] [t0]
    turn 2:  [task p] [t0] [t1]
    turn 3:  [task p] [t0] [t1] [t2]        t_j = previous action + new observation

Turn k's segments start with turn k-1's segments, so a turn shares its predecessor's whole
prompt, and every episode of task p shares the task prompt (instructions and few-shot
examples). A small share of episodes (the fitted `none_prob`) are single-turn requests on a
one-off task and share nothing. Episodes run concurrently: each arrival slot goes to a random
one of about `rps * TURN_GAP_S` open episodes, so an episode's turns keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preble_tiered.types import Segment
from preble_tiered.workloads.prefixed import MIN_PREFIX, solo_lengths
from preble_tiered.workloads.sampling import popularity, stratified_lengths
from preble_tiered.workloads.spec import Draft, StreamPlan, WorkloadSpec

TURNS = (2, 12)
"""Turns per episode, uniform in this inclusive range."""
STEP_TOKENS = (40, 120)
"""Tokens added per turn (the previous action plus the new observation), uniform inclusive."""
TURN_GAP_S = 2.0
"""Typical seconds between two turns of one episode (sets how many episodes are open)."""


@dataclass(frozen=True, eq=False)
class Episodes:
    """Episode structure, drawn before the task prompts are sized.

    Attributes:
        task: task index per episode, -1 for a one-off single-turn request.
        start: index into `steps` of each episode's first step; episode e owns
            `steps[start[e]:start[e+1]]` (one step per turn).
        steps: token counts of all steps, episode after episode.
    """

    task: np.ndarray
    start: np.ndarray
    steps: np.ndarray

    def history(self) -> np.ndarray:
        """Per turn of the multi-turn episodes: tokens after the task prompt."""
        csum = np.cumsum(self.steps)
        first = np.repeat(self.start[:-1], np.diff(self.start))
        before = np.where(first > 0, csum[first - 1], 0)
        multi = np.repeat(self.task >= 0, np.diff(self.start))
        return (csum - before)[multi]


def _one_off_episode_prob(request_share: float) -> float:
    """Share of episodes that are one-off so that `request_share` of *requests* are.

    A multi-turn episode contributes mean(TURNS) requests and a one-off episode one.
    """
    turns = (TURNS[0] + TURNS[1]) / 2
    q = request_share
    return q * turns / (1 - q + q * turns)


def _draw_episodes(spec: WorkloadSpec, plan: StreamPlan, probs: np.ndarray) -> Episodes:
    """Enough episodes to cover `plan.n_requests` turns."""
    rng, n = plan.rng, plan.n_requests
    turns = rng.integers(TURNS[0], TURNS[1] + 1, size=n)
    one_off = rng.random(n) < _one_off_episode_prob(spec.fractions.none_prob)
    turns[one_off] = 1
    n_episodes = int(np.searchsorted(np.cumsum(turns), n) + 1)
    turns, one_off = turns[:n_episodes], one_off[:n_episodes]
    task = np.where(one_off, -1, rng.choice(len(probs), size=n_episodes, p=probs))
    start = np.concatenate(([0], np.cumsum(turns)))
    steps = rng.integers(STEP_TOKENS[0], STEP_TOKENS[1] + 1, size=int(start[-1]))
    solo_at = start[:-1][one_off]
    steps[solo_at] = solo_lengths(spec, rng, len(solo_at))
    return Episodes(task=task, start=start, steps=steps)


def agent_drafts(spec: WorkloadSpec, plan: StreamPlan) -> list[Draft]:
    """`plan.n_requests` agent turns, in arrival order."""
    rng = plan.rng
    probs = popularity(plan.n_prefixes, plan.zipf, rng)
    episodes = _draw_episodes(spec, plan, probs)
    history = episodes.history()
    # Task prompt + history must have the published mean/std; history is independent of p.
    mean = max(spec.prompt_mean - float(history.mean()), float(MIN_PREFIX))
    var = max(spec.prompt_std**2 - float(history.var()), (0.05 * mean) ** 2)
    task_len = np.maximum(np.rint(stratified_lengths(probs, mean, var**0.5, rng)), MIN_PREFIX)
    segments = _episode_segments(plan, episodes, task_len.astype(np.int64))
    concurrency = max(1, round(plan.rps * TURN_GAP_S))
    turns = np.diff(episodes.start).tolist()
    order = _interleave(turns, concurrency, rng, plan.n_requests)
    outputs = spec.output.draw(rng, plan.n_requests).tolist()
    has_task = (episodes.task >= 0).tolist()
    return [Draft(segments[e][: k + 1 + has_task[e]], o) for (e, k), o in zip(order, outputs, strict=True)]


def _episode_segments(plan: StreamPlan, episodes: Episodes, task_len: np.ndarray) -> list[tuple[Segment, ...]]:
    """Each episode's full segment list: task prompt (if any) then one segment per step."""
    root = plan.id_root
    tasks: dict[int, Segment] = {}
    steps = episodes.steps.tolist()
    bounds = episodes.start.tolist()
    out = []
    for e, p in enumerate(episodes.task.tolist()):
        segs = [Segment(f"{root}/ep{e}/t{j}", steps[bounds[e] + j]) for j in range(bounds[e + 1] - bounds[e])]
        if p >= 0:
            task = tasks.get(p)
            if task is None:
                task = tasks[p] = Segment(f"{root}/task{p}", int(task_len[p]))
            segs.insert(0, task)
        out.append(tuple(segs))
    return out


def _interleave(turns: list[int], concurrency: int, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """(episode, turn index) for `n` arrival slots, with up to `concurrency` episodes open.

    Episodes open in index order; each slot goes to a uniformly random open episode, whose
    next turn it carries. `sum(turns) >= n` guarantees an open episode for every slot.
    """
    open_eps = list(range(min(concurrency, len(turns))))
    next_turn = [0] * len(turns)
    upcoming = len(open_eps)
    order = []
    for pick in rng.random(n).tolist():
        j = int(pick * len(open_eps))
        e = open_eps[j]
        order.append((e, next_turn[e]))
        next_turn[e] += 1
        if next_turn[e] == turns[e]:
            if upcoming < len(turns):
                open_eps[j] = upcoming
                upcoming += 1
            else:
                open_eps[j] = open_eps[-1]
                open_eps.pop()
    return order
