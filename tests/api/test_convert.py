import subprocess
import sys
from pathlib import Path

import pytest

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.api import convert
from preble_tiered.api.pb import common_pb2
from preble_tiered.types import GenParams, Tier

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_unset_sampling_fields_take_vllm_defaults_and_set_ones_survive():
    assert convert.params_from_pb(common_pb2.SamplingParams()) == GenParams()
    p = GenParams(max_tokens=7, temperature=0.0, top_p=0.5, stop=("\n",), seed=3, ignore_eos=True)
    assert convert.params_from_pb(convert.params_to_pb(p)) == p


def test_events_round_trip_with_node_and_tier():
    evs = [BlockStored(0, Tier.DRAM, (1, 2, 2**64 - 1), 9), BlockStored(0, Tier.HBM, (5,), None),
           BlockRemoved(0, Tier.DISK, (3,)), AllBlocksCleared(0, None), AllBlocksCleared(0, Tier.HBM)]
    batch = convert.batch_to_pb(4, evs)
    back = [convert.event_from_pb(e, node=3) for e in batch.events]
    assert batch.seq == 4
    assert back == [BlockStored(3, Tier.DRAM, (1, 2, 2**64 - 1), 9), BlockStored(3, Tier.HBM, (5,), None),
                    BlockRemoved(3, Tier.DISK, (3,)), AllBlocksCleared(3, None), AllBlocksCleared(3, Tier.HBM)]


def test_snapshot_rebuilds_from_empty_in_order():
    snap = convert.snapshot_to_pb(7, [(Tier.HBM, 10, None), (Tier.HBM, 11, 10)])
    evs = convert.snapshot_events(snap, node=1)
    assert snap.seq == 7
    assert evs == [AllBlocksCleared(1, None), BlockStored(1, Tier.HBM, (10,), None), BlockStored(1, Tier.HBM, (11,), 10)]


def test_malformed_events_are_rejected():
    from preble_tiered.api.pb import node_pb2

    with pytest.raises(ValueError):
        convert.event_from_pb(node_pb2.ResidencyEvent(), 0)
    with pytest.raises(ValueError):
        convert.event_from_pb(node_pb2.ResidencyEvent(stored=node_pb2.BlockChain(hashes=[1])), 0)  # no tier
    with pytest.raises(ValueError):
        convert.tier_from_pb(17)


def test_cached_tokens_by_source():
    c = convert.cached_to_pb({"hbm": 5, "remote": 2})
    assert convert.cached_from_pb(c) == {"hbm": 5, "dram": 0, "disk": 0, "remote": 2}


def test_router_node_messages_round_trip_through_protobuf():
    from preble_tiered.api.messages import DispatchOrder, NodeInfo, PullSource
    from preble_tiered.api.pb import node_pb2

    info = NodeInfo("n0", "/m", 260, 4096, 32, 8192, 512, "ns", max_num_seqs=16, max_batch_tokens=2048)
    assert convert.node_info_from_pb(convert.node_info_to_pb(info)) == info

    order = DispatchOrder("r1", [1, 2, 3], GenParams(max_tokens=4, temperature=0.0, seed=7), 6,
                          {"hbm": 32, "dram": 0, "disk": 0, "remote": 64}, PullSource("10.0.0.2:7", "n1", [11, 12]))
    sub = convert.order_to_pb(order)
    assert (sub.request_id, list(sub.prompt_token_ids), sub.priority_group) == ("r1", [1, 2, 3], 6)
    assert convert.params_from_pb(sub.sampling) == order.params
    assert convert.cached_from_pb(sub.expected_cached_tokens) == order.expected_cached
    assert (sub.pull.source_address, sub.pull.source_name, list(sub.pull.hashes)) == ("10.0.0.2:7", "n1", [11, 12])
    bare = convert.order_to_pb(DispatchOrder("r2", [5], GenParams()))
    assert not bare.HasField("pull") and not bare.HasField("expected_cached_tokens")

    rep = node_pb2.LoadReport(ready=True, running=2, waiting=3, kv_usage=0.5, kv_used_tokens=64, tpot_ms=4.0,
                              event_seq=9)
    rep.prefill_samples.add(new_tokens=100, context_tokens=200, seconds=0.25)
    rep.decode_steps.add(batch=4, context_tokens=900.5, seconds=0.006, steps=12)
    rep.decode_steps.add(batch=2, context_tokens=100, seconds=0.004, steps=0)  # empty bucket: dropped
    rep.link_rates.add(link="dram", bytes_per_s=2e9, samples=3)
    rep.link_rates.add(link="net:x", bytes_per_s=0.0, samples=0)  # not measured: left out
    rep.tiers.add(tier=convert.tier_to_pb(Tier.DISK), used_bytes=10, capacity_bytes=100, blocks=2, pinned_blocks=1)
    load = convert.load_from_pb(rep)
    assert (load.ready, load.running, load.waiting, load.event_seq) == (True, 2, 3, 9)
    assert load.prefill_samples == [(100, 200, 0.25)] and load.link_rates == {"dram": 2e9}
    assert load.decode_steps == [(4, 900.5, 0.006, 12)]
    assert [convert.tier_usage_to_pb(u) for u in load.tiers] == list(rep.tiers)

    done = node_pb2.SubmitDone(finish_reason="length", cached_tokens=convert.cached_to_pb({"disk": 32}), ttft_ms=12.5,
                               engine_ttft_ms=9.5)
    got = convert.done_from_pb(done)
    assert got.finish_reason == "length" and got.cached == {"hbm": 0, "dram": 0, "disk": 32, "remote": 0}
    assert got.ttft_s == pytest.approx(0.0125) and got.engine_ttft_s == pytest.approx(0.0095)
