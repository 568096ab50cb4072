"""The fidelity report: a run's predicted figures against its measured ones (errors, targets
met, rankings of the policies), the real cluster against an earlier run of itself, and the
markdown table and PNG that `sim_fidelity.py` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

POLICIES = ("e2_tiered", "preble_e2", "round_robin", "least_load")
TARGETS = {"mean": 0.15, "p99": 0.30, "share_points": 0.05}
NEW_TOKEN_BANDS = (0, 128, 512, 2048)  # lower ends: 0-127, 128-511, 512-2047, 2048 and more


def errors(m: dict, p: dict) -> dict:
    rel = lambda a, b: (b - a) / a if a else float("nan")  # noqa: E731
    return {"ttft_mean": rel(m["ttft"]["mean"], p["ttft"]["mean"]), "ttft_p99": rel(m["ttft"]["p99"], p["ttft"]["p99"]),
            "latency_mean": rel(m["latency"]["mean"], p["latency"]["mean"]),
            "latency_p99": rel(m["latency"]["p99"], p["latency"]["p99"]),
            "share_points": p["cached_token_share"] - m["cached_token_share"],
            **({"tpot_mean": rel(m["tpot"]["mean"], p["tpot"]["mean"])} if "tpot" in m and "tpot" in p else {})}


def within(e: dict) -> dict:
    return {"ttft_mean": abs(e["ttft_mean"]) <= TARGETS["mean"], "latency_mean": abs(e["latency_mean"]) <= TARGETS["mean"],
            "ttft_p99": abs(e["ttft_p99"]) <= TARGETS["p99"], "latency_p99": abs(e["latency_p99"]) <= TARGETS["p99"],
            "share": abs(e["share_points"]) <= TARGETS["share_points"]}


def rankings(runs: list[dict]) -> list[dict]:
    out = []
    for wl in dict.fromkeys(r["workload"] for r in runs):
        for load in dict.fromkeys(r["load"] for r in runs if r["workload"] == wl):
            rs = [r for r in runs if r["workload"] == wl and r["load"] == load]
            m = [r["policy"] for r in sorted(rs, key=lambda r: r["measured"]["latency"]["mean"])]
            p = [r["policy"] for r in sorted(rs, key=lambda r: r["predicted"]["latency"]["mean"])]
            out.append({"workload": wl, "load": load, "measured": m, "predicted": p, "same": m == p})
    return out


def stable_pairs(doc: dict, other: dict) -> tuple[list[dict], int]:
    """Each (workload, load)'s policy pairs whose order by measured mean latency was the same in
    both real runs (the part of the ranking the cluster itself repeats), whether the prediction
    orders each such pair the same way, and how many pairs both runs measured."""
    lat = lambda r, side: r[side]["latency"]["mean"]  # noqa: E731
    prev = {(r["workload"], r["load"], r["policy"]): r for r in other["runs"]}
    out, n = [], 0
    for wl in dict.fromkeys(r["workload"] for r in doc["runs"]):
        for load in dict.fromkeys(r["load"] for r in doc["runs"] if r["workload"] == wl):
            rs = [r for r in doc["runs"] if (r["workload"], r["load"]) == (wl, load)
                  and (wl, load, r["policy"]) in prev]
            n += len(rs) * (len(rs) - 1) // 2
            for i, a in enumerate(rs):
                for b in rs[i + 1:]:
                    pa, pb = prev[(wl, load, a["policy"])], prev[(wl, load, b["policy"])]
                    now, before = lat(a, "measured") < lat(b, "measured"), lat(pa, "measured") < lat(pb, "measured")
                    if now == before:
                        out.append({"workload": wl, "load": load,
                                    "faster": a["policy"] if now else b["policy"],
                                    "slower": b["policy"] if now else a["policy"],
                                    "predicted_same": (lat(a, "predicted") < lat(b, "predicted")) == now})
    return out, n


def repeatability(doc: dict, other: dict) -> dict:
    """The real cluster against itself: the measured side of two runs of the same traces. A
    prediction cannot be held to a closer match than the cluster's own run-to-run spread."""
    prev = {(r["workload"], r["load"], r["policy"]): r["measured"] for r in other["runs"]}
    rows = []
    for r in doc["runs"]:
        o = prev.get((r["workload"], r["load"], r["policy"]))
        if o is not None:
            rows.append({"workload": r["workload"], "load": r["load"], "policy": r["policy"],
                         **{f"{k}_{s_}": (r["measured"][k][s_] - o[k][s_]) / o[k][s_]
                            for k in ("ttft", "latency") for s_ in ("mean", "p99")}})
    same = []
    for k in rankings(doc["runs"]):
        o = [x for x in rankings(other["runs"]) if (x["workload"], x["load"]) == (k["workload"], k["load"])]
        if o:
            same.append({"workload": k["workload"], "load": k["load"], "same": o[0]["measured"] == k["measured"]})
    keys = ("ttft_mean", "ttft_p99", "latency_mean", "latency_p99")
    pairs, n_pairs = stable_pairs(doc, other)
    return {"rows": rows, "rankings": same, "pairs": pairs, "pairs_measured": n_pairs,
            "median_abs": {k: float(np.median([abs(x[k]) for x in rows])) for k in keys} if rows else {},
            "max_abs": {k: float(max(abs(x[k]) for x in rows)) for k in keys} if rows else {}}


def markdown(doc: dict) -> str:
    lines = ["| workload | load | policy | TTFT mean ms (meas / pred, err) | TTFT p99 ms | latency mean ms | "
             "latency p99 ms | TPOT mean ms | cached share (meas / pred) | router's TTFT mean / p99 ms | "
             "node's TTFT mean / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        m, p, e = r["measured"], r["predicted"], r["error"]

        def cell(kind: str, stat: str) -> str:
            return f"{m[kind][stat] * 1e3:.0f} / {p[kind][stat] * 1e3:.0f} ({e[f'{kind}_{stat}'] * 100:+.0f}%)"
        lines.append(f"| {r['workload']} | {r['load']} | {r['policy']} | {cell('ttft', 'mean')} | {cell('ttft', 'p99')} | "
                     f"{cell('latency', 'mean')} | {cell('latency', 'p99')} | "
                     f"{cell('tpot', 'mean') if 'tpot_mean' in e else '-'} | "
                     f"{m['cached_token_share']:.2f} / {p['cached_token_share']:.2f} |"
                     + "".join(f" {m[k]['mean'] * 1e3:.0f} / {m[k]['p99'] * 1e3:.0f} |" if k in m else " - |"
                               for k in ("server_ttft", "node_ttft")))
    lines += ["", "| workload | load | ranking by mean latency, measured | predicted | same |", "|---|---|---|---|---|"]
    for k in doc["rankings"]:
        lines.append(f"| {k['workload']} | {k['load']} | {' < '.join(k['measured'])} | {' < '.join(k['predicted'])} | "
                     f"{'yes' if k['same'] else 'no'} |")
    s = doc["summary"]
    lines += ["", f"Within target: mean TTFT {s['ttft_mean']}, mean latency {s['latency_mean']}, p99 TTFT "
                  f"{s['ttft_p99']}, p99 latency {s['latency_p99']}, cached share {s['share']} (of {len(doc['runs'])} "
                  f"runs); same ranking in {s['rankings_same']} of {len(doc['rankings'])}."
                  + (f" The twin's decisions, counted by branch, are the real router's in {s['decisions_same']} runs."
                     if "decisions_same" in s else "")
                  + (" Request by request, the twin took the real router's branch and computed the same new tokens "
                     "(within a block) for {} of {}.".format(*alike)
                     if (alike := requests_decided_alike(doc["runs"], _block_size(doc)))
                     else "") + _beside(doc)]
    if doc.get("ttft_by_request"):
        lines += ["", "Mean TTFT by request, each workload's runs pooled (`ttft_by_request`: by the new tokens the "
                      "real cluster computed, and by whether other requests were in flight in the cluster when it "
                      "was sent):",
                  "", "| workload | requests | n | measured ms | predicted ms | error | of those that met nothing else in "
                      "the engine: n, TTFT ms, the engine's part ms |", "|---|---|---|---|---|---|---|"]
        for g in doc["ttft_by_request"]:
            a = g.get("engine_alone")
            lines.append(f"| {g['workload']} | {g['requests']} | {g['n']} | {g['measured_ms']:.0f} | "
                         f"{g['predicted_ms']:.0f} | {g['error']:+.0%} | "
                         + (f"{a['n']}, {a['measured_ms']:.0f}, {a['engine_ms']:.0f} |" if a else "- |"))
    cal = doc.get("calibrations")
    if cal:
        on = ("the mean of the calibrations just before and just after it (the table above)"
              if doc.get("predicted_on", "bracket") == "bracket" else
              f"the profile of `{doc.get('repredicted', '--profile')}` (the table above; the calibrations below are "
              "the run's own, fitted by the code of that run)")
        lines += ["", f"Calibrated {len(cal)} times (`--recalibrate`): once before the first runs and once after each "
                      f"(workload, load)'s runs. Each run is predicted on {on}, on the first calibration alone, on "
                      "the one just before it"
                      + (", and on the table's profile by a router started without a profile that learns its "
                         "costs from its nodes."
                         if "learns" in doc.get("summary_by_calibration", {}) else "."),
                  "", "| calibration | ended (UTC) | 3k-token prefill ms | decode step ms, 4 sequences on 4k tokens | "
                      "8 on 8k |", "|---|---|---|---|---|"]
        for k, c in enumerate(cal):
            a = c["at"]
            lines.append(f"| {k} | {c['utc']} | {a['prefill_ms_3000_new']:.0f} | {a['decode_step_ms_batch4_ctx4000']:.1f} | "
                         f"{a['decode_step_ms_batch8_ctx8000']:.1f} |")
        lines += ["", "| predicted on | mean TTFT | mean latency | p99 TTFT | p99 latency | cached share | same ranking | "
                      "decisions the real router's | median error of mean TTFT / mean latency |",
                  "|---|---|---|---|---|---|---|---|---|"]
        names = {"first": "the first calibration alone", "before": "the calibration just before the runs",
                 "learns": "the table's profile, its router started without a profile and learning its costs "
                           "(`--router-learns-costs`)",
                 "bracket": "the mean of the calibrations before and after",
                 "profile": f"`{doc.get('repredicted', '--profile')}`"}
        for name, sb in doc["summary_by_calibration"].items():
            med = sb.get("median_error", {})
            lines.append(f"| {names[name]} | {sb['ttft_mean']} | {sb['latency_mean']} | {sb['ttft_p99']} | "
                         f"{sb['latency_p99']} | {sb['share']} | {sb['rankings_same']} of {len(doc['rankings'])} | "
                         f"{sb.get('decisions_same', '-')} | {med.get('ttft_mean', float('nan')):+.0%} / {med.get('latency_mean', float('nan')):+.0%} |")
    rate_scale = doc.get("setup", {}).get("rate_scale", 1.0)
    if doc.get("setup", {}).get("spacing"):
        lines += ["", f"Requests sent {doc['setup']['spacing']:g} s apart, each alone (`--spacing`)."]
    elif rate_scale != 1.0:
        lines += ["", f"Arrival rates {rate_scale:g}x the benchmark's loads (`--rate-scale`)."]
    rp = doc.get("repeatability")
    if rp and rp["rows"]:
        med, mx = rp["median_abs"], rp["max_abs"]
        lines += ["", f"The real cluster against itself ({len(rp['rows'])} runs measured twice, `--compare`): median / "
                      f"largest difference of mean TTFT {med['ttft_mean']:.0%} / {mx['ttft_mean']:.0%}, p99 TTFT "
                      f"{med['ttft_p99']:.0%} / {mx['ttft_p99']:.0%}, mean latency {med['latency_mean']:.0%} / "
                      f"{mx['latency_mean']:.0%}, p99 latency {med['latency_p99']:.0%} / {mx['latency_p99']:.0%}; "
                      f"the measured ranking was the same in {sum(x['same'] for x in rp['rankings'])} of "
                      f"{len(rp['rankings'])} (workload, load) pairs."]
        pairs = rp.get("pairs")
        if pairs is not None:
            lines[-1] += (f" Of the pairs of policies in one (workload, load), {len(pairs)} of {rp['pairs_measured']} "
                          f"measured in the same "
                          f"order both times; the prediction orders {sum(p['predicted_same'] for p in pairs)} of "
                          f"those {len(pairs)} the same way"
                          + ("" if all(p["predicted_same"] for p in pairs) else " (not: " + ", ".join(
                              f"{p['workload']} {p['load']} {p['faster']} < {p['slower']}"
                              for p in pairs if not p["predicted_same"]) + ")") + ".")
    return "\n".join(lines) + "\n"


def ttft_by_request(runs: list[dict]) -> list[dict]:
    """Mean TTFT measured and predicted, each workload's runs pooled, by the new tokens the real
    cluster computed for the request and by whether other requests were in flight in the
    cluster (on either node) when it was sent: which requests the twin misses."""
    keys = ("new_tokens", "others_in_flight", "measured_ttft_ms", "predicted_ttft_ms")
    out = []
    for wl in dict.fromkeys(r["workload"] for r in runs):
        reqs = [x for r in runs if r["workload"] == wl and "predicted_ttft_ms" in r.get("requests", {})
                for x in zip(*(r["requests"][k] for k in keys),
                             r["requests"].get("engine_ttft_ms") or [None] * len(r["requests"]["id"]))]
        ends = NEW_TOKEN_BANDS[1:] + (None,)
        groups = [(f"{lo}-{hi - 1} new tokens" if hi else f"{lo}+ new tokens",
                   [x for x in reqs if lo <= x[0] and (hi is None or x[0] < hi)]) for lo, hi in zip(NEW_TOKEN_BANDS, ends)]
        groups += [("sent alone", [x for x in reqs if x[1] == 0]), ("sent beside others", [x for x in reqs if x[1] > 0])]
        for name, xs in groups:
            if xs:
                m, p = float(np.mean([x[2] for x in xs])), float(np.mean([x[3] for x in xs]))
                out.append({"workload": wl, "requests": name, "n": len(xs), "measured_ms": round(m, 1),
                            "predicted_ms": round(p, 1), "error": (p - m) / m if m else float("nan")})
                alone = [(x[2], x[4]) for x in xs if x[4] is not None]
                if alone:  # the engine's own part where the request met nothing else there, and the rest
                    out[-1]["engine_alone"] = {"n": len(alone), "engine_ms": round(float(np.mean([e for _, e in alone])), 1),
                                               "measured_ms": round(float(np.mean([m_ for m_, _ in alone])), 1)}
    return out


def _block_size(doc: dict) -> int:
    return int(doc.get("profile", {}).get("engine", {}).get("block_size", 32))


def _beside(doc: dict) -> str:
    n = doc.get("setup", {}).get("calibration_background_streams")
    return (f" Every calibration of this run measured its prefills beside {n} decoding stream{'s' if n > 1 else ''} "
            "(`preble calibrate --background-streams`, on the branch `calibrate-beside`).") if n else ""


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=120)
    marks = {"longdoc": "o", "toolbench": "s", "chat": "^"}
    colors = {p: f"C{i}" for i, p in enumerate(POLICIES)}
    for ax, kind in zip(axes, ("ttft", "latency")):
        lo, hi = float("inf"), 0.0
        for r in doc["runs"]:
            x, y = r["measured"][kind]["mean"] * 1e3, r["predicted"][kind]["mean"] * 1e3
            lo, hi = min(lo, x, y), max(hi, x, y)
            ax.scatter(x, y, marker=marks.get(r["workload"], "x"), color=colors.get(r["policy"], "k"),
                       facecolors="none" if r["load"] == "light" else None, zorder=3)
        xs = np.array([lo * 0.8, hi * 1.25])
        ax.plot(xs, xs, "k-", lw=1, zorder=2)
        ax.fill_between(xs, xs * (1 - TARGETS["mean"]), xs * (1 + TARGETS["mean"]), color="0.9", zorder=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured mean {kind} (ms)")
        ax.set_ylabel(f"predicted mean {kind} (ms)")
        ax.set_title(f"mean {kind} per run (open: light load); band ±15%", fontsize=10)
    handles = [plt.Line2D([], [], marker=m, ls="", color="k", label=w) for w, m in marks.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=p) for p, c in colors.items()]
    axes[1].legend(handles=handles, fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)


def summarize(runs: list[dict]) -> tuple[dict, list[dict]]:
    ranks = rankings(runs)
    summary = {k: f"{sum(r['within'][k] for r in runs)}/{len(runs)}" for k in runs[0]["within"]}
    summary["rankings_same"] = sum(k["same"] for k in ranks)
    summary["decisions_same"] = decisions_same(runs)
    summary["median_error"] = {k: float(np.median([r["error"][k] for r in runs]))
                               for k in ("ttft_mean", "latency_mean", "ttft_p99", "latency_p99")}
    return summary, ranks


def requests_decided_alike(runs: list[dict], block: int = 32) -> tuple[int, int] | None:
    """Requests the twin sent down the real router's branch and computed the same new tokens
    for (within a `block` of tokens), over the runs that recorded each request's branch; None
    if none did."""
    same = total = 0
    for r in runs:
        q = r.get("requests", {})
        if "branch" not in q or "predicted_branch" not in q:
            continue
        for b, pb, n, pn in zip(q["branch"], q["predicted_branch"], q["new_tokens"], q["predicted_new_tokens"]):
            total += 1
            same += b == pb and abs(n - pn) < block
    return (same, total) if total else None


def decisions_same(runs: list[dict]) -> str:
    """Runs whose predicted decisions, counted by branch (explore, exploit, rebalance, ...),
    are the real router's: where they differ, the twin is predicting another run."""
    known = [r for r in runs if "branches" in r["measured"] and "branches" in r["predicted"]]
    return f"{sum(r['measured']['branches'] == r['predicted']['branches'] for r in known)}/{len(known)}"


def summary_by_calibration(doc: dict) -> dict:
    """For --recalibrate runs: the targets met when every run is predicted on the first
    calibration, on the one just before its runs, on the reported profile by a router that
    learns its costs (where the runs have that), and on the reported one."""
    out = {}
    for name in [n for n in ("first", "before", "learns") if all(n in r["alternatives"] for r in doc["runs"])]:
        alt = [{**r, **r["alternatives"][name]} for r in doc["runs"]]
        out[name] = summarize(alt)[0]
    out[doc.get("predicted_on", "bracket")] = doc["summary"]  # "profile": --repredict --profile
    return out
