"""Merge sim_policies.py outputs of runs split by workload into one result set.

    python scripts/merge_sim_results.py OUT_PREFIX IN_PREFIX [IN_PREFIX ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sim_policies  # noqa: E402


def main(out: str, *parts: str) -> None:
    docs = [json.loads(Path(p).with_suffix(".json").read_text()) for p in parts]
    merged = dict(docs[0])
    merged["command"] = " && ".join(d["command"] for d in docs)
    merged["grid"] = [b for d in docs for b in d["grid"]]
    merged["scale"] = [b for d in docs for b in d["scale"]]
    o = Path(out)
    o.with_suffix(".json").write_text(json.dumps(merged, indent=1) + "\n")
    o.with_suffix(".md").write_text(sim_policies.markdown(merged))
    sim_policies.plot(merged, o.with_suffix(".png"))
    print(f"merged {len(parts)} runs into {o}.json/.md/.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
