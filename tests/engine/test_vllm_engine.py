"""VLLMEngine against real vLLM (CPU) with the tiny byte-level Llama: generation, prefix-cache
hits, KV events re-hashed into the router's hashes, eviction, fair admission (the node's
queue in front of the engine), abort, shutdown and crash handling. One engine serves the
whole module (startup is seconds)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from preble_tiered.engine.tiny_model import (
    TINY_MAX_MODEL_LEN,
    TINY_VOCAB_SIZE,
    build_tiny_model,
    default_model_dir,
    ensure_tiny_model,
)
from preble_tiered.engine.vllm_engine import (
    EngineConfig,
    EngineOutput,
    EngineRequest,
    GenParams,
    KVEventTranslator,
    VLLMEngine,
)
from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.hashing import BlockHasher
from preble_tiered.node.admission import FairAdmissionQueue
from preble_tiered.types import Tier

BS = 32
KV_BYTES_PER_TOKEN = 4 * 2 * 4 * 64 * 4  # layers * (k, v) * kv heads * head_dim * fp32
KV_BLOCKS = 65  # usable blocks; vLLM adds one null block
MAX_LEN = 2048  # vLLM wants one max-length sequence to fit in the KV cache
HASH = BlockHasher(BS)
ENGINE_THREADS = {"vllm-step", "vllm-kv-events", "zmq-publisher"}


def prompt_of(n: int, salt: int) -> list[int]:
    """`n` deterministic byte tokens (ids 4..259), different for every salt."""
    return np.random.RandomState(salt).randint(4, TINY_VOCAB_SIZE, n).tolist()


class Recorder:
    """Collects the engine's callbacks and the threads they ran on."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.outputs: list[EngineOutput] = []
        self.batches: list[tuple[int, list]] = []
        self.calls: list[list[str]] = []  # request ids of each on_outputs call
        self.threads: dict[str, set[str]] = {"output": set(), "events": set()}

    def on_output(self, outs: list[EngineOutput]) -> None:
        with self.cv:
            self.outputs.extend(outs)
            self.calls.append([o.request_id for o in outs])
            self.threads["output"].add(threading.current_thread().name)
            self.cv.notify_all()

    def on_events(self, seq: int, events: list) -> None:
        with self.cv:
            self.batches.append((seq, events))
            self.threads["events"].add(threading.current_thread().name)

    def of(self, rid: str) -> list[EngineOutput]:
        with self.cv:
            return [o for o in self.outputs if o.request_id == rid]

    def wait_finished(self, rid: str, timeout: float = 30.0) -> EngineOutput:
        with self.cv:
            ok = self.cv.wait_for(lambda: any(o.finished for o in self.of(rid)), timeout)
        assert ok, f"request {rid} did not finish in {timeout} s"
        return self.of(rid)[-1]

    def wait_output(self, rid: str, timeout: float = 30.0) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: self.of(rid), timeout), f"no output for {rid}"

    def events_since(self, mark: int) -> list:
        with self.cv:
            return [e for _, evs in self.batches[mark:] for e in evs]

    def held(self) -> set[int]:
        """Replay every event: what the router believes the node holds."""
        held: set[int] = set()
        for e in self.events_since(0):
            if isinstance(e, BlockStored):
                held.update(e.hashes)
            elif isinstance(e, BlockRemoved):
                held.difference_update(e.hashes)
            else:
                held.clear()
        return held


def run(engine: VLLMEngine, rec: Recorder, rid: str, prompt: list[int], **params) -> list[EngineOutput]:
    """Generate greedily (unless told otherwise) and wait for the request and its events."""
    params.setdefault("temperature", 0.0)
    engine.add(EngineRequest(rid, prompt, GenParams(**params)))
    rec.wait_finished(rid)
    assert engine.sync_events()
    return rec.of(rid)


def wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def engine_and_rec(model_dir):
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), block_size=BS,
                       kv_cache_bytes=(KV_BLOCKS + 1) * BS * KV_BYTES_PER_TOKEN, max_model_len=MAX_LEN)
    engine = VLLMEngine(cfg, rec.on_output, rec.on_events, queue=FairAdmissionQueue())  # as a node runs it
    engine.start()
    yield engine, rec
    engine.shutdown()


@pytest.fixture
def engine(engine_and_rec):
    eng = engine_and_rec[0]
    assert eng.ready, "an earlier test killed the module engine"
    assert eng.reset_prefix_cache()
    assert eng.sync_events()
    return eng


@pytest.fixture
def rec(engine_and_rec):
    return engine_and_rec[1]


# --------------------------------------------------------------------------- tiny model


def test_tokenizer_round_trips_unicode_and_matches_the_model(model_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "héllo wörld — 日本語 🎉\n\t  \x00end"
    ids = tok.encode(text)
    assert ids == [b + 4 for b in text.encode("utf-8")]  # no BOS, one token per byte
    assert tok.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (0, 1, 3, 260)
    cfg = AutoConfig.from_pretrained(model_dir)
    assert cfg.vocab_size == TINY_VOCAB_SIZE == 260
    assert cfg.max_position_embeddings == TINY_MAX_MODEL_LEN
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings) == (4, 256, 64, False)


def test_ensure_builds_once_under_a_race_and_is_deterministic(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PREBLE_CACHE_DIR", str(tmp_path))
    target = default_model_dir()
    assert target == tmp_path / "tiny-llama-v2"
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(ensure_tiny_model())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [target, target]
    weights = (target / "model.safetensors").read_bytes()
    assert weights == (model_dir / "model.safetensors").read_bytes()  # same seed, same weights
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model() == target
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny-llama-v2.build")] == []


# --------------------------------------------------------------------------- config


def test_engine_config_rejects_cpu_unfriendly_block_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        EngineConfig(model="m", block_size=16)
    with pytest.raises(ValueError, match="kv_cache_bytes must be positive"):
        EngineConfig(model="m", kv_cache_bytes=0)


# --------------------------------------------------------------------------- translator


def stored(hashes, parent, tokens, medium="GPU", block_size=BS):
    from vllm.distributed.kv_events import BlockStored as VStored

    return VStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=block_size,
                   lora_id=None, medium=medium, lora_name=None)


def removed(hashes, medium="GPU"):
    from vllm.distributed.kv_events import BlockRemoved as VRemoved

    return VRemoved(block_hashes=hashes, medium=medium)


def test_translator_rehashes_splits_duplicates_and_tolerates_unknowns():
    tr = KVEventTranslator(BlockHasher(BS, namespace="ns"))
    toks = prompt_of(5 * BS, salt=1)
    w = BlockHasher(BS, namespace="ns")(toks)
    assert tr.translate([stored([b"a", b"b", b"c"], None, toks[: 3 * BS])]) == [
        BlockStored(0, Tier.HBM, (w[0], w[1], w[2]), None)]
    assert tr.translate([removed([b"b", b"never"])]) == [BlockRemoved(0, Tier.HBM, (w[1],))]
    # b returns (its parent a is held), c is a duplicate, d is new: two runs, right parents
    assert tr.translate([stored([b"b", b"c", b"d"], b"a", toks[BS : 4 * BS])]) == [
        BlockStored(0, Tier.HBM, (w[1],), w[0]), BlockStored(0, Tier.HBM, (w[3],), w[2])]
    assert tr.snapshot() == [(w[0], None), (w[1], w[0]), (w[2], w[1]), (w[3], w[2])]
    assert tr.translate([stored([99], b"unknown", toks[:BS])]) == []  # unknown parent: skipped
    assert tr.translate([stored([7], None, toks[:BS], medium="CPU")]) == []  # other tiers: ignored
    assert tr.translate([stored([8], None, toks[:16], block_size=16)]) == []  # partial block
    assert len(tr.snapshot()) == 4
    # a removed parent is remembered, so a chain continuing it still hashes right
    assert tr.translate([removed([b"d"])]) == [BlockRemoved(0, Tier.HBM, (w[3],))]
    assert tr.translate([stored([b"e"], b"d", toks[4 * BS :])]) == [BlockStored(0, Tier.HBM, (w[4],), w[3])]


def test_translator_snapshot_orders_parents_first_after_a_parent_returns():
    tr = KVEventTranslator(HASH)
    toks = prompt_of(2 * BS, salt=2)
    want = HASH(toks)
    tr.translate([stored([1, 2], None, toks)])
    tr.translate([removed([1])])
    tr.translate([stored([1], None, toks[:BS])])  # the parent comes back after its child
    assert tr.snapshot() == [(want[0], None), (want[1], want[0])]


# --------------------------------------------------------------------------- real engine


@pytest.mark.slow
def test_engine_reports_model_and_kv_geometry(engine):
    info = engine.info
    assert (info.vocab_size, info.max_model_len, info.block_size, info.eos_token_id) == (260, MAX_LEN, BS, 1)
    assert info.kv_capacity_tokens == KV_BLOCKS * BS
    assert info.kv_bytes_per_token == KV_BYTES_PER_TOKEN


@pytest.mark.slow
def test_greedy_generation_is_deterministic_and_streams_deltas(engine, rec):
    prompt = prompt_of(50, salt=10)
    first = run(engine, rec, "greedy-a", prompt, max_tokens=8, ignore_eos=True)
    second = run(engine, rec, "greedy-b", prompt, max_tokens=8, ignore_eos=True)
    tokens = [t for o in first for t in o.new_token_ids]
    assert len(tokens) == 8 and all(0 <= t < 260 for t in tokens)
    assert [t for o in second for t in o.new_token_ids] == tokens
    assert len(first) == 8  # DELTA: one output per decode step, the last one final
    assert [o.finished for o in first] == [False] * 7 + [True]
    assert first[-1].finish_reason == "length" and first[-1].error is None
    assert rec.threads["output"] == {"vllm-step"}


@pytest.mark.slow
@pytest.mark.parametrize("n, cached", [(300, 288), (320, 288), (33, 32), (32, 0)])
def test_repeat_prompt_hits_whole_blocks_but_never_the_last_token(engine, rec, n, cached):
    """vLLM caches full blocks only and recomputes at least the last prompt token, so a
    block-aligned prompt recomputes its whole last block: hit = ((n - 1) // 32) * 32."""
    prompt = prompt_of(n, salt=n)
    assert run(engine, rec, f"cold-{n}", prompt, max_tokens=2)[-1].num_cached_tokens == 0
    warm = run(engine, rec, f"warm-{n}", prompt, max_tokens=2)
    assert {o.num_cached_tokens for o in warm} == {cached}
    assert warm[-1].prompt_tokens == n


@pytest.mark.slow
def test_outputs_of_one_step_come_in_one_call(engine, rec):
    """Requests decoding together reach the callback together: one hand-off per engine step."""
    mark = len(rec.calls)
    for i in range(3):
        engine.add(EngineRequest(f"batch{i}", prompt_of(40, salt=90 + i), GenParams(max_tokens=24, ignore_eos=True)))
    for i in range(3):
        rec.wait_finished(f"batch{i}")
    calls = rec.calls[mark:]
    assert max(len(c) for c in calls) == 3
    assert all(len(set(c)) == len(c) for c in calls)  # at most one output per request per call
    assert sum(len(c) for c in calls) == sum(len(rec.of(f"batch{i}")) for i in range(3))


def test_kv_events_carry_the_routers_hashes_including_generated_blocks(engine, rec):
    prompt = prompt_of(300, salt=20)
    mark = len(rec.batches)
    outs = run(engine, rec, "hashes", prompt, max_tokens=30, ignore_eos=True)
    generated = [t for o in outs for t in o.new_token_ids]
    # KV exists for prompt + all generated tokens but the last: 329 tokens -> 10 full blocks
    want = HASH(prompt + generated)[:10]
    assert want[:9] == HASH(prompt)[:9]
    new = rec.events_since(mark)
    assert all(isinstance(e, BlockStored) and e.tier == Tier.HBM and e.node == 0 for e in new)
    assert [h for e in new for h in e.hashes] == want
    assert new[0].parent is None
    for prev, nxt in zip(new, new[1:]):
        assert nxt.parent == prev.hashes[-1]
    seq, snap = engine.snapshot()
    assert snap == [(h, p) for h, p in zip(want, [None, *want[:-1]])]
    assert seq == rec.batches[-1][0]
    assert rec.threads["events"] == {"vllm-kv-events"}


@pytest.mark.slow
def test_reset_prefix_cache_clears_the_snapshot(engine, rec):
    run(engine, rec, "before-reset", prompt_of(100, salt=30), max_tokens=1)
    assert len(engine.snapshot()[1]) == 3
    mark = len(rec.batches)
    assert engine.reset_prefix_cache()
    assert engine.sync_events()
    assert rec.events_since(mark) == [AllBlocksCleared(node=0, tier=Tier.HBM)]
    assert engine.snapshot() == (rec.batches[-1][0], [])
    assert rec.held() == set()


@pytest.mark.slow
def test_eviction_emits_removals_and_snapshot_matches_the_event_stream(engine, rec):
    mark = len(rec.batches)
    prompts = [prompt_of(640, salt=100 + i) for i in range(5)]  # 5 x 20 blocks > 65
    for i, p in enumerate(prompts):
        run(engine, rec, f"evict-{i}", p, max_tokens=1)
    new = rec.events_since(mark)
    assert any(isinstance(e, BlockRemoved) for e in new)
    seq, snap = engine.snapshot()
    held = [h for h, _ in snap]
    assert set(held) == rec.held() and len(held) == len(set(held)) <= KV_BLOCKS
    assert set(HASH(prompts[-1])) <= set(held)  # the newest prompt is all still there
    seen: set[int] = set()
    for h, parent in snap:  # parents before children
        assert parent is None or parent in seen or parent not in set(held)
        seen.add(h)
    assert [s for s, _ in rec.batches] == list(range(1, seq + 1))  # no gaps, from 1


@pytest.mark.slow
def test_prefill_samples_come_from_prefills_that_ran_alone(engine, rec):
    engine.take_prefill_samples()
    prompt = prompt_of(300, salt=40)
    cold = run(engine, rec, "sample-cold", prompt, max_tokens=2)
    warm = run(engine, rec, "sample-warm", prompt, max_tokens=2)
    samples = engine.take_prefill_samples()
    assert [(new, ctx) for new, ctx, _ in samples] == [(300, 300), (12, 300)]
    # the output with each first token carries the same time (the node reports it as the engine's TTFT)
    firsts = [next(o for o in outs if o.new_token_ids) for outs in (cold, warm)]
    assert [o.alone_prefill_s for o in firsts] == [s for _, _, s in samples]
    assert all(o.alone_prefill_s is None for outs in (cold, warm) for o in outs if o not in firsts)
    assert all(0 < s < 10 for _, _, s in samples)
    assert engine.take_prefill_samples() == []
    stats = engine.stats()
    assert stats.tpot_s is not None and stats.tpot_s > 0 and stats.steps > 0
    assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)


@pytest.mark.slow
def test_decode_only_steps_are_measured_by_batch_size_and_context(engine, rec):
    engine.take_decode_steps()
    reqs = [EngineRequest(f"steps-{i}", prompt_of(100, salt=60 + i), GenParams(max_tokens=24, ignore_eos=True))
            for i in range(3)]
    for r in reqs:
        engine.add(r)
    for r in reqs:
        rec.wait_finished(r.request_id)
    steps = engine.take_decode_steps()
    assert steps and engine.take_decode_steps() == []
    assert {b for b, *_ in steps} <= {1, 2, 3} and 3 in {b for b, *_ in steps}
    for batch, ctx, seconds, n in steps:
        assert n > 0 and 0 < seconds < 5
        assert batch * 101 <= ctx <= batch * (100 + 24)  # every sequence: its prompt plus what it generated
    assert sum(n for *_, n in steps) <= engine.stats().steps


@pytest.mark.slow
def test_abort_running_request_and_duplicate_ids(engine, rec):
    req = EngineRequest("long", prompt_of(100, salt=50), GenParams(max_tokens=1500, ignore_eos=True))
    engine.add(req)
    with pytest.raises(ValueError, match="already in use"):
        engine.add(req)
    rec.wait_output("long")
    wait_until(lambda: engine.stats().kv_used_tokens >= 128)
    assert engine.stats().running == 1
    engine.abort("long")
    final = rec.wait_finished("long")
    assert (final.finish_reason, final.error, final.new_token_ids) == ("abort", None, [])
    engine.abort("long")  # finished: ignored
    engine.abort("no-such-request")
    engine.add(req)  # the id is free again
    rec.wait_output("long")
    engine.abort("long")
    time.sleep(0.05)
    assert sum(o.finished for o in rec.of("long")) == 2
    wait_until(lambda: engine.stats().running == 0)


@pytest.mark.slow
def test_fair_queue_admits_high_hit_groups_first(engine, rec, monkeypatch):
    admitted: list[str] = []
    add_request = engine._llm.add_request

    def spy(request_id, *args, **kwargs):
        admitted.append(request_id)
        return add_request(request_id, *args, **kwargs)

    monkeypatch.setattr(engine._llm, "add_request", spy)
    # Blockers fill every vLLM slot. They are group 9, so the fair queue's current round
    # is group 9's (quota 100) whatever the interleaving of adds and admissions was.
    blockers = [f"blk-{i}" for i in range(engine.config.max_num_seqs)]
    for i, rid in enumerate(blockers):
        engine.add(EngineRequest(rid, prompt_of(32, salt=200 + i), GenParams(max_tokens=150, ignore_eos=True),
                                 priority_group=9))
    wait_until(lambda: engine.stats().running == len(blockers))
    queued = [f"low-{i}" for i in range(4)] + ["high"]
    for i, rid in enumerate(queued):
        group = 9 if rid == "high" else 0
        engine.add(EngineRequest(rid, prompt_of(40, salt=300 + i), GenParams(max_tokens=2), priority_group=group))
    engine.abort("low-3")
    assert engine.stats().waiting in (4, 5)  # the abort may not have run yet
    for rid in blockers + queued:
        rec.wait_finished(rid)
    assert admitted == blockers + ["high", "low-0", "low-1", "low-2"]
    assert rec.of("low-3")[-1].finish_reason == "abort"
    assert engine.stats().waiting == 0


@pytest.mark.slow
def test_shutdown_aborts_in_flight_requests_and_stops_threads(engine_and_rec):
    engine, rec = engine_and_rec
    engine.add(EngineRequest("at-shutdown", prompt_of(64, salt=60), GenParams(max_tokens=1500, ignore_eos=True)))
    rec.wait_output("at-shutdown")
    engine.shutdown()
    final = rec.of("at-shutdown")[-1]
    assert (final.finished, final.finish_reason, final.error) == (True, "abort", "engine shut down")
    assert not engine.ready
    assert ENGINE_THREADS.isdisjoint(t.name for t in threading.enumerate())
    engine.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        engine.add(EngineRequest("late", [5], GenParams()))


@pytest.mark.slow
def test_step_thread_crash_fails_requests_and_marks_not_ready(model_dir, engine_and_rec):
    assert not engine_and_rec[0].ready  # runs after the module engine is gone
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), kv_cache_bytes=(KV_BLOCKS + 1) * BS * KV_BYTES_PER_TOKEN,
                       max_model_len=MAX_LEN)
    engine = VLLMEngine(cfg, rec.on_output, rec.on_events)
    engine.start()
    try:
        engine.add(EngineRequest("doomed", prompt_of(64, salt=70), GenParams(max_tokens=1500, ignore_eos=True)))
        rec.wait_output("doomed")

        def boom():
            raise RuntimeError("boom")

        engine._llm.step = boom
        final = rec.wait_finished("doomed")
        assert final.finish_reason is None and "boom" in final.error
        wait_until(lambda: not engine._step_thread.is_alive())
        assert not engine.ready
        with pytest.raises(RuntimeError):
            engine.reset_prefix_cache()
    finally:
        engine.shutdown()
    assert ENGINE_THREADS.isdisjoint(t.name for t in threading.enumerate())


@pytest.mark.slow
def test_shutdown_from_the_event_callback_does_not_deadlock(model_dir, engine_and_rec):
    assert not engine_and_rec[0].ready  # runs after the module engine is gone
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), kv_cache_bytes=(KV_BLOCKS + 1) * BS * KV_BYTES_PER_TOKEN,
                       max_model_len=MAX_LEN)
    holder: list[VLLMEngine] = []

    def on_events(seq, events):
        rec.on_events(seq, events)
        holder[0].shutdown()

    engine = VLLMEngine(cfg, rec.on_output, on_events)
    holder.append(engine)
    engine.start()
    engine.add(EngineRequest("r", prompt_of(100, salt=80), GenParams(max_tokens=1500, ignore_eos=True)))
    assert rec.wait_finished("r").finish_reason == "abort"
    wait_until(lambda: ENGINE_THREADS.isdisjoint(t.name for t in threading.enumerate()))
    engine.shutdown()
