"""Print the README's benchmark summary from benchmarks/results/*.json (markdown)."""

from __future__ import annotations

import json
from pathlib import Path

RES = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def ratio(runs: dict, base: str, key: str) -> float:
    return runs[base]["latency"][key] / runs["e2_tiered"]["latency"][key]


def bound_ratio(block: dict) -> str:
    """round_robin over the warm-cluster bound (mean / p99): the most any router could
    show against round_robin at that load (see benchmarks/sim_policies.py)."""
    wb = block.get("warm_bound")
    if wb is None:
        return "-"
    rr, lat = block["runs"]["round_robin"]["latency"], wb["latency"]
    return f"{rr['mean'] / lat['mean']:.2f}x / {rr['p99'] / lat['p99']:.2f}x"


def bound_cells(block: dict) -> str:
    """The warm-cluster bound's mean / p99, then `bound_ratio`."""
    wb = block.get("warm_bound")
    if wb is None:
        return "- | -"
    return f"{wb['latency']['mean']:.2f} / {wb['latency']['p99']:.2f} | {bound_ratio(block)}"


def sim_table() -> list[str]:
    doc = json.loads((RES / "sim_policies.json").read_text())
    out = [f"`{doc['command']}` (8 nodes, Mistral-7B/A6000 preset; full tables in "
           "`benchmarks/results/sim_policies.md`, plot `sim_policies.png`).", "",
           "e2_tiered latency (s, mean / p99) and how many times lower it is than each baseline's "
           "(mean / p99; >1 is better for us). Targets not met are in bold.", "",
           "| workload | load (req/s) | e2_tiered | vs round_robin | vs preble_e2 | vs sglang_cache_aware | vs dynamo_kv | ideal mean | warm-cluster bound | round_robin / bound |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for b in doc["grid"]:
        r = b["runs"]
        missed = {t["target"] for t in b["targets"] if not t["ok"]}

        def cell(base: str, name: str) -> str:
            parts = []
            for k in ("mean", "p99"):
                v = f"{ratio(r, base, k):.2f}x"
                parts.append(f"**{v}**" if f"{name} {k}" in missed else v)
            return " / ".join(parts)

        o = r["e2_tiered"]["latency"]
        out.append(f"| {b['workload']} | {b['load']} ({b['rps']:g}) | {o['mean']:.2f} / {o['p99']:.2f} | "
                   f"{cell('round_robin', 'vs round_robin')} | {cell('preble_e2', 'vs preble_e2')} | "
                   f"{cell('sglang_cache_aware', 'vs sglang_cache_aware')} | {cell('dynamo_kv', 'vs dynamo_kv')} | "
                   f"{r['e2_tiered']['ideal']['latency']['mean']:.2f} | {bound_cells(b)} |")
    n_t = sum(len(b["targets"]) for b in doc["grid"])
    n_miss = sum(not t["ok"] for b in doc["grid"] for t in b["targets"])
    out += ["", f"{n_t - n_miss} of {n_t} target checks met."]
    return out


def scale_table() -> list[str]:
    path = RES / "sim_scale.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    out = ["", f"Scale sweep: `{doc['command']}` (mid load per node; 300 toolbench / 60 loogle requests per node).", "",
           "| workload | nodes | requests | e2_tiered mean / p99 (s) | vs round_robin | vs preble_e2 | round_robin / warm-cluster bound |",
           "|---|---|---|---|---|---|---|"]
    for b in doc["scale"]:
        r = b["runs"]
        o = r["e2_tiered"]["latency"]
        out.append(f"| {b['workload']} | {b['nodes']} | {r['e2_tiered']['requests']} | {o['mean']:.2f} / {o['p99']:.2f} | "
                   f"{ratio(r, 'round_robin', 'mean'):.2f}x / {ratio(r, 'round_robin', 'p99'):.2f}x | "
                   f"{ratio(r, 'preble_e2', 'mean'):.2f}x / {ratio(r, 'preble_e2', 'p99'):.2f}x | "
                   f"{bound_ratio(b)} |")
    return out


def router_table() -> list[str]:
    out = ["", "| run | nodes | decisions/s (with hashing) | schedule() alone | mean / p99 us | quarters (us) | last/first | drift-corrected | medians last/first | without collections | collector ms by quarter | holders by quarter | index entries at end | peak RSS |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("router_throughput", "router_throughput_explain", "router_throughput_steady"):
        path = RES / f"{name}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for r in doc["runs"]:
            q = " / ".join(f"{x:.0f}" for x in r["quarter_mean_us"])
            r.setdefault("last_over_first_drift_corrected", float("nan"))  # runs before the drift probe
            hq = " / ".join(f"{x:.0f}" for x in r["holders_by_quarter"]) if "holders_by_quarter" in r else "-"
            quiet = f"{r['last_over_first_without_collections']:.2f}" if "collector" in r else "-"
            med = f"{r['median_last_over_first']:.2f}" if "median_last_over_first" in r else "-"
            gcq = " / ".join(f"{x:.0f}" for x in r["collector"]["ms_by_quarter"]) if "collector" in r else "-"
            out.append(f"| `{doc['command']}` | {r['nodes']} | {r['decisions_per_s']:.0f} | "
                       f"{r['decisions_per_s_excluding_hashing']:.0f} | {r['decision_us']['mean']:.0f} / "
                       f"{r['decision_us']['p99']:.0f} | {q} | {r['last_over_first']:.2f} | "
                       f"{r['last_over_first_drift_corrected']:.2f} | {med} | {quiet} | {gcq} | {hq} | {r['index_entries']:,} | "
                       f"{r['peak_rss_mb']:.0f} MB |")
    return out


if __name__ == "__main__":
    print("\n".join(sim_table() + scale_table() + router_table()))
