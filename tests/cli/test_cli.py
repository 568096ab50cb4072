"""`preble sim` and `preble workload`: output schema, plot, trace round trip, errors."""

import argparse
import json
import shutil
import signal
import subprocess
import sys

import pytest

from preble_tiered.cli.main import main
from preble_tiered.scheduler.registry import policy_names

STATS = {"mean", "p50", "p90", "p99"}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sim_json_schema_and_plot(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    code, out, _ = run_cli(capsys, "sim", "--workload", "toolbench", "--nodes", "2", "--requests", "60",
                           "--policy", "round_robin", "--policy", "e2_tiered", "--json", str(js), "--plot", str(png))
    assert code == 0
    doc = json.loads(js.read_text())
    assert doc["command"] == ("preble sim --workload toolbench --nodes 2 --requests 60 --policy round_robin "
                              f"--policy e2_tiered --json {js} --plot {png}")
    assert [r["policy"] for r in doc["runs"]] == ["round_robin", "e2_tiered"]
    for r in doc["runs"]:
        assert r["workload"] == "toolbench" and r["nodes"] == 2 and r["requests"] == 60
        for key in ("latency", "ttft", "tpot"):
            assert set(r[key]) == STATS
            assert r[key]["p50"] <= r[key]["p90"] <= r[key]["p99"]
        assert set(r["cached_tokens"]) == {"hbm", "dram", "disk", "remote"}
        assert set(r["decision_us"]) == {"mean", "p99"}
        assert r["throughput_rps"] > 0
        assert r["recomputed_tokens"] + sum(r["cached_tokens"].values()) == r["prompt_tokens"]
    # round_robin runs on an HBM-only stack: it can never report lower tiers or pulls.
    rr = doc["runs"][0]["cached_tokens"]
    assert rr["dram"] == rr["disk"] == rr["remote"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table names every policy and the ideal bound.
    assert "round_robin" in out and "e2_tiered" in out and "(ideal bound)" in out


def test_sim_policy_all_runs_every_policy(tmp_path, capsys):
    js = tmp_path / "r.json"
    code, _, _ = run_cli(capsys, "sim", "--workload", "agent", "--nodes", "2", "--requests", "40",
                         "--policy", "all", "--json", str(js), "--quiet")
    assert code == 0
    assert [r["policy"] for r in json.loads(js.read_text())["runs"]] == policy_names()


def test_workload_export_then_replay_gives_the_same_run(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    code, _, err = run_cli(capsys, "workload", "export", "--workload", "loogle", "--nodes", "2",
                           "--requests", "30", "-o", str(trace))
    assert code == 0 and "wrote 30 requests" in err
    assert len(trace.read_text().splitlines()) == 30
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli(capsys, "sim", "--trace", str(trace), "--nodes", "2", "--json", str(a), "--quiet")[0] == 0
    assert run_cli(capsys, "sim", "--workload", "loogle", "--nodes", "2", "--requests", "30",
                   "--json", str(b), "--quiet")[0] == 0
    ra, rb = json.loads(a.read_text())["runs"][0], json.loads(b.read_text())["runs"][0]
    for key in ("latency", "ttft", "cached_tokens", "recomputed_tokens", "prompt_tokens", "requests"):
        assert ra[key] == rb[key]


@pytest.mark.parametrize("argv, message", [
    (["sim", "--workload", "toolbench", "--policy", "nope"], "unknown policy 'nope'"),
    (["sim", "--trace", "/no/such/trace.jsonl"], "No such file"),
    (["sim", "--workload", "loogle", "--nodes", "2", "--requests", "5", "--hbm-tokens", "1000"], "--hbm-tokens"),
])
def test_sim_errors_say_what_to_fix(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err


@pytest.mark.parametrize("argv", [
    ["sim", "--workload", "loogle", "--nodes", "2", "--requests", "5", "--json", "{dir}"],
    ["workload", "export", "--workload", "loogle", "-o", "{dir}"],
    ["calibrate", "--addr", "127.0.0.1:1", "-o", "{dir}"],
    ["admin", "--addr", "127.0.0.1:1", "profile", "-o", "{dir}"],
    ["bench", "--addr", "127.0.0.1:1", "--workload", "loogle", "--nodes", "1", "--json", "{dir}"],
])
def test_an_output_path_that_is_a_directory_is_refused_before_any_work(capsys, tmp_path, argv):
    (tmp_path / "keep").write_text("x")
    code, _, err = run_cli(capsys, *[a.format(dir=tmp_path) for a in argv])
    assert code == 2 and f"{tmp_path} is a directory: give a file path" in err  # not a connection error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_a_profile_that_cannot_be_written_leaves_no_temporary_file(tmp_path):
    from preble_tiered.sim import profile_files

    prof = profile_files.load("cpu-tiny")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        profile_files.save(prof, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_ctrl_c_ends_a_command_with_one_line_and_130(capsys, monkeypatch):
    from preble_tiered.cli import main as cli_main

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_main, "cmd_sim", interrupted)
    code, _, err = run_cli(capsys, "sim", "--workload", "loogle", "--nodes", "2")
    assert code == 130 and err.strip() == "preble sim: interrupted"


def test_the_serve_banner_s_commands_carry_the_token_file_and_the_certificate(tmp_path, monkeypatch):
    import argparse
    import types

    from preble_tiered.cli.serving import _serving_banner

    monkeypatch.chdir(tmp_path)
    cluster = types.SimpleNamespace(addr="127.0.0.1:50051", http_url="https://127.0.0.1:8000/v1", model="/m/tiny")
    args = argparse.Namespace(nodes=2, policy="e2_tiered", inference_token_file="tok", tls_cert="cert.pem")
    lines = _serving_banner(cluster, args, token=True).splitlines()
    gen = next(ln for ln in lines if " generate " in ln)
    curl = next(ln for ln in lines if ln.strip().startswith("curl"))
    assert f"--inference-token-file {tmp_path / 'tok'}" in gen and f"--tls-ca {tmp_path / 'cert.pem'}" in gen
    assert f'Authorization: Bearer $(cat {tmp_path / "tok"})' in curl and f"--cacert {tmp_path / 'cert.pem'}" in curl
    plain = _serving_banner(cluster, argparse.Namespace(nodes=2, policy="p", inference_token_file=None,
                                                        tls_cert=None), token=False)
    assert "token-file" not in plain and "--cacert" not in plain and "Authorization" not in plain


def test_serve_refuses_a_missing_model_and_a_port_in_use_before_starting_anything(capsys, tmp_path):
    # Start from Ctrl-C's default whatever this test process inherited (a shell starts its
    # background jobs with SIGINT ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _serve_refuses_bad_model_and_busy_port(capsys, tmp_path)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _serve_refuses_bad_model_and_busy_port(capsys, tmp_path):
    import socket

    base = ["serve", "--nodes", "1", "--dram-bytes", "0", "--disk-bytes", "0", "--http-port", "0",
            "--log-dir", str(tmp_path / "logs")]
    code, _, err = run_cli(capsys, *base, "--model", str(tmp_path / "nope"))
    assert code == 2 and "model directory" in err and "does not exist" in err
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, _, err = run_cli(capsys, *base, "--model", str(tmp_path), "--port", str(port))
    assert code == 2 and f"127.0.0.1:{port} is in use" in err and "--port" in err
    assert not (tmp_path / "logs" / "router.log").exists()  # nothing was started
    # run in this process, serve leaves Ctrl-C as it found it (children started later inherit it)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_serve_starts_its_router_on_the_cpu_tiny_profile_for_the_tiny_model_and_checks_a_given_one(capsys, tmp_path,
                                                                                                  monkeypatch):
    import argparse

    from preble_tiered.cli import launcher
    from preble_tiered.cli.serving import _serve_profile
    from preble_tiered.sim import profile_files

    def ns(**kw):
        return argparse.Namespace(**{"profile": None, "model": None, **kw})
    assert _serve_profile(ns()) == "cpu-tiny"  # the tiny model: the shipped profile of this kind of machine
    assert _serve_profile(ns(model="/m/llama")) is None  # another model: its costs are unknown
    assert _serve_profile(ns(profile="none")) is None
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(profile_files.load("cpu-tiny").to_dict()))
    assert _serve_profile(ns(model="/m/llama", profile=str(path))) == str(path)
    started = []
    monkeypatch.setattr(launcher.LocalCluster, "start", lambda self, progress=print: started.append(self))
    code, _, err = run_cli(capsys, "serve", "--nodes", "1", "--dram-bytes", "0", "--disk-bytes", "0",
                           "--http-port", "0", "--profile", str(tmp_path / "missing.json"))
    assert code == 2 and "no profile" in err and "preble calibrate" in err and not started  # before anything starts
    # the router child is told the profile
    spec = launcher.ClusterSpec(profile="cpu-tiny", log_dir=str(tmp_path / "logs"))
    cluster = launcher.LocalCluster(spec)
    monkeypatch.setattr(cluster, "_spawn", lambda name, args, env: started.append(args) or (_ for _ in ()).throw(
        RuntimeError("stop here")))
    monkeypatch.setattr(launcher, "_port_free", lambda host, port: True)
    cluster.model = str(tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        cluster._start(progress=lambda m: None)
    args = started[-1]
    assert args[args.index("--profile") + 1] == "cpu-tiny"


def test_router_refuses_a_profile_it_cannot_read(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run_cli(capsys, "router", "--port", "0", "--profile", str(bad))
    assert code == 2 and "preble router: error:" in err and "not JSON" in err


def test_node_refuses_a_model_directory_that_does_not_exist(capsys, tmp_path):
    code, _, err = run_cli(capsys, "node", "--model", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in err and "nothing is downloaded" in err


def test_too_little_kv_cache_names_the_nodes_own_options(capsys, tmp_path, monkeypatch):
    from preble_tiered.node import agent

    async def too_small(*_a, **_k):  # what vLLM raises when max_model_len does not fit the cache
        raise ValueError("0.06 GiB KV cache is needed ... Try increasing `gpu_memory_utilization`")
    monkeypatch.setattr(agent, "serve_node", too_small)
    code, _, err = run_cli(capsys, "node", "--model", str(tmp_path), "--kv-cache-bytes", "1000000")
    assert code == 2 and "raise --kv-cache-bytes (now 1000000) or lower --max-model-len" in err


def test_bench_over_openai_takes_another_servers_key_as_it_is(capsys, monkeypatch):
    monkeypatch.setenv("PREBLE_INFERENCE_TOKEN", "token-abc123")  # vLLM's --api-key example: 12 characters
    monkeypatch.setenv("PREBLE_ADMIN_TOKEN", "x")  # not ours to check here: the admin API is not asked
    code, _, err = run_cli(capsys, "bench", "--openai", "http://127.0.0.1:1/v1", "--workload", "loogle",
                           "--requests", "2", "--vocab-size", "256", "--quiet")
    assert code == 2 and "cannot use the OpenAI API at http://127.0.0.1:1/v1" in err and "characters" not in err


def test_a_node_whose_engine_fails_to_start_exits_2_with_the_reason_and_nothing_else(tmp_path):
    (tmp_path / "model").mkdir()  # a directory, but no model in it: vLLM refuses it while the node's server is up
    ran = subprocess.run([sys.executable, "-m", "preble_tiered.cli", "node", "--model", str(tmp_path / "model")],
                         capture_output=True, text=True, timeout=180)
    assert ran.returncode == 2 and "preble node: error:" in ran.stderr
    assert "Error in sys.excepthook" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr[-2000:]


def test_admin_tables_piped_are_not_cut_to_80_columns(capsys, monkeypatch):
    from preble_tiered.api.pb import admin_pb2
    from preble_tiered.cli.admin import render

    monkeypatch.delenv("COLUMNS", raising=False)
    resp = admin_pb2.ListNodesResponse()
    resp.nodes.add(node_id=0, name="a-rather-long-node-name-for-the-table", address="127.0.0.1:45678", alive=True)
    render("ListNodes", resp)
    assert "a-rather-long-node-name-for-the-table" in capsys.readouterr().out


def test_a_pin_asking_for_more_replicas_than_it_has_says_so(capsys):
    from preble_tiered.api.pb import admin_pb2
    from preble_tiered.cli.admin import render

    pin = admin_pb2.PinInfo(name="travel", tier=2, replicas=5)
    pin.nodes.add(node="node0", state="pinned", blocks_held=7)
    pin.nodes.add(node="node1", state="pinned", blocks_held=7)
    render("PinPrefix", pin)
    assert "only 2 node(s) are assigned a replica (all the cluster has now); the pin asks for 5" in capsys.readouterr().out
    pin.replicas = 2
    render("PinPrefix", pin)
    assert "only" not in capsys.readouterr().out


def test_admin_takes_timeout_and_json_after_the_command_too():
    from preble_tiered.cli.main import build_parser

    args = build_parser().parse_args(["admin", "prefixes", "ls", "--timeout", "3", "--json"])
    assert args.timeout_after == 3.0 and args.json_after
    assert build_parser().parse_args(["admin", "--timeout", "4", "nodes"]).timeout == 4.0


def test_a_failed_start_shows_the_end_of_the_process_log(tmp_path):
    from preble_tiered.cli.launcher import _log_tail

    log = tmp_path / "node0.log"
    log.write_text("".join(f"line {i}\n" for i in range(20))
                   + "preble node: error: the reason\nError in sys.excepthook:\n\nOriginal exception was:\n")
    tail = _log_tail(log, lines=3).splitlines()
    assert tail == ["  line 18", "  line 19", "  preble node: error: the reason"]
    assert _log_tail(tmp_path / "missing.log") == "  (no log)"


def test_sim_rejects_bad_numbers_at_parse_time(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim", "--workload", "toolbench", "--nodes", "0"])
    assert e.value.code == 2
    assert "expected a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_positive_float_refuses_what_is_not_a_finite_positive_number(value):
    from preble_tiered.cli.argtypes import positive_float

    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive number"):
        positive_float(value)
    assert positive_float("0.3") == 0.3


def test_bad_trace_line_is_reported_with_its_line_number(tmp_path, capsys):
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"t": 0, "segments": [["a", 64]], "output_tokens": 4}\n{"t": 1, "segments": []}\n')
    code, _, err = run_cli(capsys, "sim", "--trace", str(trace), "--nodes", "2")
    assert code == 2 and ":2:" in err


def test_console_script_help_lists_the_commands():
    exe = shutil.which("preble") or str(__import__("pathlib").Path(sys.executable).with_name("preble"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "sim" in out.stdout and "workload" in out.stdout


def test_admin_ttl_durations_parse_with_units_and_refuse_garbage():
    import argparse

    from preble_tiered.cli.admin import parse_duration

    assert [parse_duration(s) for s in ("90", "90s", "15m", "2h", "1.5d")] == [90, 90, 900, 7200, 129600]
    for bad in ("", "abc", "5y", "-3m", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_admin_with_an_unreadable_token_file_exits_2_with_the_reason(capsys, tmp_path):
    from preble_tiered.cli.main import main

    assert main(["admin", "--admin-token-file", str(tmp_path / "nope"), "nodes"]) == 2
    assert "cannot read token file" in capsys.readouterr().err


def test_admin_explain_renders_a_candidate_that_was_not_priced(capsys):
    """A candidate without evict_s (not priced: it could not win) shows '-' and a lower-bound
    total, and the table says why; priced candidates show their numbers."""
    from preble_tiered.cli.admin import render
    from preble_tiered.api.pb import admin_pb2

    rec = admin_pb2.DecisionRecord(request_id="r1", branch="explore", node_id=1, node="n1", state="done")
    rec.candidates.add(node_id=1, node="n1", load_s=0.5, evict_s=0.25, plan_s=0.125, total_s=0.875)
    rec.candidates.add(node_id=0, node="n0", load_s=9.0, plan_s=0.125, total_s=9.125)
    assert rec.candidates[0].HasField("evict_s") and not rec.candidates[1].HasField("evict_s")
    render("Explain", rec)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "0.1250" in line]  # the plan column
    n0 = next(line for line in rows if " n0 " in line)
    n1 = next(line for line in rows if " n1 " in line)
    assert ">= 9.1250" in n0 and " - " in n0
    assert "0.2500" in n1 and "0.8750" in n1 and ">=" not in n1
    assert "not priced on 1 node(s)" in out


def test_admin_explain_shows_the_decode_term_only_where_it_was_priced(capsys):
    from preble_tiered.cli.admin import render
    from preble_tiered.api.pb import admin_pb2

    rec = admin_pb2.DecisionRecord(request_id="r1", branch="replicate", node_id=1, node="n1", state="done")
    rec.candidates.add(node_id=0, node="n0", load_s=0.5, plan_s=0.125, total_s=0.625, decode_s=3.75)
    rec.candidates.add(node_id=1, node="n1", load_s=0.25, evict_s=0.0, plan_s=0.375, total_s=0.625, decode_s=1.5)
    rec.candidates.add(node_id=2, node="n2", load_s=0.25, evict_s=0.0, plan_s=0.375, total_s=0.625)
    render("Explain", rec)
    out = capsys.readouterr().out
    assert "decode s" in out and "not in total" in out
    rows = [line for line in out.splitlines() if "0.6250" in line]  # the total column
    assert "3.7500" in next(line for line in rows if " n0 " in line)
    assert "1.5000" in next(line for line in rows if " n1 " in line)
    assert " - " in next(line for line in rows if " n2 " in line)
    rec = admin_pb2.DecisionRecord(request_id="r2", branch="explore", node_id=0, node="n0", state="done")
    rec.candidates.add(node_id=0, node="n0", load_s=0.5, evict_s=0.0, plan_s=0.125, total_s=0.625)
    render("Explain", rec)
    assert "decode" not in capsys.readouterr().out  # no column where no decode was weighed


@pytest.mark.parametrize("text, value", [("0", 0), ("268435456", 256 << 20), ("256M", 256 << 20), ("2G", 2 << 30),
                                         ("2GiB", 2 << 30), ("512mb", 512 << 20), ("1.5K", 1536)])
def test_sizes_take_binary_suffixes(text, value):
    from preble_tiered.cli.tier_defaults import byte_size

    assert byte_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1G", "2X", "lots", "nan"])
def test_bad_sizes_are_refused_with_an_example(text):
    import argparse

    from preble_tiered.cli.tier_defaults import byte_size

    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        byte_size(text)


def test_serve_sizes_tiers_from_the_machine_and_honours_explicit_sizes(tmp_path):
    from preble_tiered.cli.tier_defaults import DISK_CAP, DRAM_CAP, plan_tiers

    gib = 1 << 30
    plan = plan_tiers(2, None, None, tmp_path / "kv", available_memory=20 * gib, free_disk=100 * gib)
    assert plan.dram_bytes == 2 * gib and plan.disk_bytes == 5 * gib and plan.disk_dir == tmp_path / "kv"
    assert "DRAM 2.0 GiB, disk 5.0 GiB under" in plan.describe()
    big = plan_tiers(1, None, None, tmp_path, available_memory=1000 * gib, free_disk=10000 * gib)
    assert (big.dram_bytes, big.disk_bytes) == (DRAM_CAP, DISK_CAP)
    small = plan_tiers(8, None, None, tmp_path, available_memory=1 * gib, free_disk=1 * gib)
    assert (small.dram_bytes, small.disk_bytes, small.disk_dir) == (0, 0, None)  # a share under 64 MiB: off
    assert plan_tiers(2, 1 << 30, 0, tmp_path, free_disk=gib).describe().endswith("disk off")
    assert plan_tiers(2, 0, None, tmp_path, free_disk=100 * gib).disk_bytes == 0  # no DRAM: no disk either
    with pytest.raises(ValueError, match="disk tier needs a DRAM tier"):
        plan_tiers(2, 0, 4 * gib, tmp_path)


def test_node_refuses_a_disk_tier_without_dram(capsys, tmp_path):
    assert main(["node", "--model", str(tmp_path), "--dram-bytes", "0", "--disk-path", str(tmp_path / "d")]) == 2
    assert "disk tier needs a DRAM tier" in capsys.readouterr().err
