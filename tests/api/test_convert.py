import subprocess
import sys
from pathlib import Path

import pytest

from preble_tiered.types import GenParams
from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.api import convert
from preble_tiered.api.pb import common_pb2
from preble_tiered.types import Tier

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
