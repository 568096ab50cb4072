"""The package's layering (docs/architecture.md), held against its imports: no circle, no
import up a floor or between packages kept apart, the wire below the processes, pure
scheduling code, and modules of a readable size. `python scripts/layout_report.py` prints
the same figures."""

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("layout_report", ROOT / "scripts" / "layout_report.py")
layout = importlib.util.module_from_spec(spec)
sys.modules["layout_report"] = layout
spec.loader.exec_module(layout)

MODS, TREES = layout.load_modules()


def test_there_is_no_import_circle():
    assert layout.circles(MODS) == []


def test_no_import_runs_up_a_floor_or_between_packages_kept_apart():
    up, apart = layout.arrows(MODS)
    assert up == [] and apart == []


@pytest.mark.parametrize("low,high", [("api", "router"), ("api", "node"), ("api", "transfer"), ("api", "cli"),
                                      ("api", "engine"), ("router", "node"), ("node", "router"),
                                      ("engine", "node"), ("kvstore", "engine"), ("scheduler", "api")])
def test_a_package_never_imports_the_ones_above_or_beside_it(low, high):
    bad = [(m.name, d) for m in MODS.values() if layout.top(m.name) == low
           for d in m.imports if layout.top(d) == high]
    assert bad == []


def test_scheduling_code_is_pure():
    """No I/O, no wall clock, no RPC or engine: the simulator, the router and the tests run it."""
    banned = {"grpc", "vllm", "torch", "asyncio", "socket", "time", "threading", "subprocess"}
    for name, tree in TREES.items():
        if not name.startswith("preble_tiered.scheduler.") or name.endswith(".clock"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{name} imports {roots & banned}"
        scheduler_deps = {layout.top(d) for d in MODS[name].imports}
        assert scheduler_deps <= {"scheduler", "types", "hashing", "events"}, (name, scheduler_deps)


def test_no_hand_written_module_is_over_500_lines():
    assert [(m.path, m.lines) for m in MODS.values() if m.lines > 500] == []


def test_no_router_class_is_over_250_lines():
    classes, _ = layout.sizes(TREES)
    assert [c for c in classes if c[0].startswith("preble_tiered.router.") and c[1] > 250] == []


def test_the_report_finds_a_circle_and_an_upward_import():
    """The checks above can fail: a made-up pair of modules shows both faults."""
    mods = {
        "preble_tiered.scheduler.a": layout.Module("preble_tiered.scheduler.a", "a", 1, {"preble_tiered.router.b"}),
        "preble_tiered.router.b": layout.Module("preble_tiered.router.b", "b", 1, {"preble_tiered.scheduler.a"}),
    }
    assert layout.circles(mods) == [["preble_tiered.router.b", "preble_tiered.scheduler.a"]]
    up, _ = layout.arrows(mods)
    assert up == [("preble_tiered.scheduler.a", "preble_tiered.router.b")]
