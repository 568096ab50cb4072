#!/usr/bin/env python3
"""Engine steps in the shapes the simulator prices, measured on a bare engine and set beside a
profile's prices: a prefill on a cached context, and a step a prefill shares with decodes.

A bare vLLM `LLMEngine` in this process with the node's shape (the tiny model, blocks of 32,
96 MiB of KV, 16 sequences, a 2,048-token step budget, chunked prefill, prefix caching), its
compute on one core with one OpenMP thread (`pin_compute`), stepped on the thread that built it.

  cached prefill  E new tokens after a C-token context already in the prefix cache, alone on
                  the idle engine: its one step (the simulator: `prefill_s(E, C + E)`)
  decode alone    B sequences (prompts of --prompt tokens) decoding, nothing else: one step
  prefill alone   a fresh E-token prompt on the idle engine: its one step
  mixed           the same B decoding and a fresh E-token prompt added: the step that prefills
                  it (the simulator: the prefill's price plus the decode step's)

Each figure is the median of --reps repetitions; decode-alone and mixed steps alternate so the
machine's drift hits both alike. With --profile, each shape's price on that profile is printed
beside it.

    python benchmarks/engine_steps.py [--profile PATH] [--reps 7] [--json benchmarks/results/engine_steps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preble_tiered.cli.argtypes import positive_int  # noqa: E402
from preble_tiered.scheduler.profile import ClusterProfile  # noqa: E402

KV_BYTES = 96 << 20
BUDGET = 2048


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=positive_int, nargs="+", default=[512, 1024, 3072], help="cached contexts C")
    ap.add_argument("--news", type=positive_int, nargs="+", default=[32, 128, 512], help="new tokens E on a context")
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[4, 12], help="decoding sequences B")
    ap.add_argument("--prompt", type=positive_int, default=600, help="prompt tokens of each decoding sequence")
    ap.add_argument("--prefills", type=positive_int, nargs="+", default=[64, 256, 1024],
                    help="prefill sizes E beside the decodes")
    ap.add_argument("--reps", type=positive_int, default=7, help="repetitions of each measurement (median)")
    ap.add_argument("--profile", type=Path, help="a profile JSON (preble calibrate) to price each shape on")
    ap.add_argument("--model", help="model directory (default: the tiny model)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/engine_steps.json")
    args = ap.parse_args()
    if max(args.prefills) + max(args.batches) > BUDGET or max(args.news) > BUDGET:
        ap.error(f"a prefill (and the decodes beside it) must fit one {BUDGET}-token step")
    if max(args.batches) >= 16:
        ap.error("--batches must leave room for the prefill's sequence (16 at most in all)")
    cost = ClusterProfile.from_dict(json.loads(args.profile.read_text())).cost_model() if args.profile else None
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_HOST_IP="127.0.0.1")
    from preble_tiered.engine.tiny_model import ensure_tiny_model
    from preble_tiered.engine.vllm_setup import pin_compute

    model = args.model or str(ensure_tiny_model())
    pin_compute(0)
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

    llm = LLMEngine.from_engine_args(EngineArgs(
        model=model, block_size=32, kv_cache_memory_bytes=KV_BYTES, max_model_len=8192, max_num_seqs=16,
        max_num_batched_tokens=BUDGET, enable_prefix_caching=True, disable_log_stats=True, enforce_eager=True,
        dtype="float32"))
    rng = np.random.default_rng(0)
    n = 0

    def fresh(tokens: int) -> list[int]:
        return rng.integers(4, 260, size=tokens).tolist()  # never seen before: nothing cached

    def add(ids: list[int], max_tokens: int) -> str:
        nonlocal n
        n += 1
        llm.add_request(f"r{n}", {"prompt_token_ids": ids},
                        SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                       output_kind=RequestOutputKind.DELTA))
        return f"r{n}"

    def step() -> tuple[float, list]:
        t = time.perf_counter()
        outs = llm.step()
        return time.perf_counter() - t, outs

    def drain() -> None:
        while llm.has_unfinished_requests():
            llm.step()

    def price(s: float | None) -> str:
        return f" (profile {s * 1e3:7.2f})" if s is not None else ""

    for _ in range(3):  # warm-up: the first steps of a shape cost more
        add(fresh(256), 4)
        drain()
    cached_rows = []
    for c in args.contexts:
        for e in args.news:
            ts = []
            for _ in range(args.reps):
                ctx = fresh(c)
                add(ctx, 1)  # the context, computed and left in the prefix cache
                drain()
                add(ctx + fresh(e), 1)
                ts.append(step()[0])
                drain()
            m = statistics.median(ts)
            p = cost.prefill_s(e, c + e) if cost else None
            cached_rows.append({"context_tokens": c, "new_tokens": e, "measured_ms": m * 1e3,
                                **({"profile_ms": p * 1e3, "profile_over_measured": p / m} if cost else {})})
            print(f"cached prefill C={c:5d} E={e:5d}: {m * 1e3:7.2f} ms{price(p)}", flush=True)
    prefill_alone, alone_rows = {}, []
    for e in args.prefills:
        ts = []
        for _ in range(args.reps):
            add(fresh(e), 1)
            ts.append(step()[0])
            drain()
        prefill_alone[e] = statistics.median(ts)
        p = cost.prefill_s(e, e) if cost else None
        alone_rows.append({"new_tokens": e, "measured_ms": prefill_alone[e] * 1e3,
                           **({"profile_ms": p * 1e3, "profile_over_measured": p / prefill_alone[e]} if cost else {})})
        print(f"prefill alone E={e:5d}: {prefill_alone[e] * 1e3:7.2f} ms{price(p)}", flush=True)
    mixed_rows = []
    for b in args.batches:
        decoders = [add(fresh(args.prompt), 100_000) for _ in range(b)]
        while sum(1 for o in step()[1] if o.outputs and o.outputs[0].token_ids) < b:
            pass  # until every decoder has its first token: the next steps are decode only
        generated = 1
        for _ in range(3):
            step()
            generated += 1
        for e in args.prefills:
            dec, mix, ctxs = [], [], []
            for _ in range(args.reps):
                dec.append(step()[0])
                rid = add(fresh(e), 1)
                ctxs.append(b * (args.prompt + generated + 1))
                t, outs = step()  # the B decodes and the E-token prefill in one step (B + E <= budget)
                if not any(o.request_id == rid and o.outputs and o.outputs[0].token_ids for o in outs):
                    raise RuntimeError(f"the {e}-token prefill did not run in the step after it was added")
                mix.append(t)
                step()  # a decode step after the prefill finished: not measured
                generated += 3
            d, m, p = statistics.median(dec), statistics.median(mix), prefill_alone[e]
            ctx = int(statistics.median(ctxs))  # the decodes' context in the mixed steps
            sim = (cost.prefill_s(e, e) + cost.decode_step_s(ctx, b)) if cost else None
            mixed_rows.append({"batch": b, "prompt_tokens": args.prompt, "prefill_tokens": e,
                               "decode_alone_ms": d * 1e3, "prefill_alone_ms": p * 1e3, "mixed_ms": m * 1e3,
                               "mixed_over_sum": m / (p + d), "mixed_minus_prefill_ms": (m - p) * 1e3,
                               **({"profile_mixed_ms": sim * 1e3, "profile_over_measured": sim / m} if cost else {})})
            print(f"B={b:2d} E={e:5d}: decode alone {d * 1e3:6.2f} ms, prefill alone {p * 1e3:7.2f}, mixed "
                  f"{m * 1e3:7.2f}{price(sim)} = {m / (p + d):.2f}x the sum of its parts, {(m - p) * 1e3:+.2f} ms "
                  "over the prefill alone", flush=True)
        llm.abort_request(decoders)
        drain()
    doc = {"command": "python " + shlex.join(sys.argv),
           "engine": {"kv_cache_bytes": KV_BYTES, "block_size": 32, "max_num_seqs": 16, "max_num_batched_tokens": BUDGET},
           "profile": str(args.profile) if args.profile else None, "cached_prefill": cached_rows,
           "prefill_alone": alone_rows, "mixed": mixed_rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
