"""An in-process engine gets no CPU binding from vLLM (only its multiprocess executor sets the
OpenMP environment of a worker it spawns): `pin_compute` binds the engine's thread alone."""

import json
import subprocess
import sys

SCRIPT = r"""
import os, threading
from preble_tiered.engine.vllm_setup import pin_compute
before = os.sched_getaffinity(0)
seen = {}
def engine_thread():
    pin_compute(0)
    import torch
    seen["mine"] = os.sched_getaffinity(0)
    seen["threads"] = torch.get_num_threads()
t = threading.Thread(target=engine_thread)
t.start(); t.join()
import json
print(json.dumps([sorted(before), sorted(seen["mine"]), sorted(os.sched_getaffinity(0)), seen["threads"],
                  os.environ["OMP_NUM_THREADS"]]))
"""


def test_pin_compute_binds_only_the_calling_thread_to_one_core_with_one_thread():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    before, mine, after, threads, omp = json.loads(out.strip().splitlines()[-1])
    assert mine == [0]
    assert after == before  # the process's other threads keep every core
    assert threads == 1 and omp == "1"
