"""The router's collector settings (gc_tuning.py): applied by `preble router`, and what they set."""

import subprocess
import sys

import pytest

from preble_tiered import gc_tuning


def test_tuning_freezes_start_up_state_and_raises_thresholds():
    # in a child: freezing and thresholds are process-wide, and this process runs other tests
    code = ("import gc; from preble_tiered.gc_tuning import tune_gc_for_serving, SERVING_THRESHOLDS; "
            "before = gc.get_freeze_count(); tune_gc_for_serving(); "
            "print(before, gc.get_freeze_count() > before, gc.get_threshold() == SERVING_THRESHOLDS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "True", "True"]


@pytest.mark.parametrize("bad", [(0, 10, 10), (700, 10), (700, -1, 10)])
def test_bad_thresholds_are_refused_before_anything_changes(bad):
    import gc

    before = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(ValueError, match="three positive ints"):
        gc_tuning.tune_gc_for_serving(bad)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_preble_router_tunes_the_collector_before_serving(monkeypatch):
    from preble_tiered.cli import main as cli
    from preble_tiered.router import service as router_service

    calls = []
    monkeypatch.setattr(gc_tuning, "tune_gc_for_serving", lambda: calls.append("tune"))

    async def fake_serve(cfg, ready=None):
        calls.append("serve")

    monkeypatch.setattr(router_service, "serve_router", fake_serve)
    assert cli.main(["router", "--port", "0", "--metrics-port", "0"]) == 0
    assert calls == ["tune", "serve"]
