"""`preble admin ...`: the operator CLI over the router's Admin API.

Every command prints a table for people, or with `--json` the response message in the
proto3 JSON mapping (field names as in protos/preble/v1/admin.proto; 64-bit hashes as
strings, plus `hash_hex`), which is stable for scripts. Exit codes: 0 ok, 1 the router
refused (its status and message go to stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from preble_tiered.cli.argtypes import at_least, positive_float
from preble_tiered.cli.paths import check_output

DEFAULT_ADDR = "127.0.0.1:50051"
_TIERS = {"hbm": 1, "dram": 2, "disk": 3}
_TIER_NAMES = {0: "-", 1: "hbm", 2: "dram", 3: "disk"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(s: str) -> float:
    """"90", "90s", "15m", "2h", "7d" -> seconds."""
    m = _DURATION.match(s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {s!r}: use a number with an optional unit s, m, h or d")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError("a TTL must be positive")
    return value


def _node_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad node list {s!r}: node ids separated by commas, e.g. 0,2") from None
    if not out or any(n < 0 for n in out):
        raise argparse.ArgumentTypeError("give at least one node id (see `preble admin nodes`)")
    return out


def _leaf(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--json` and `--timeout` are also accepted after the command (`preble admin prefixes ls --json`)."""
    p.add_argument("--json", dest="json_after", action="store_true", help="print the response as JSON")
    p.add_argument("--timeout", dest="timeout_after", type=positive_float, default=None, metavar="TIMEOUT",
                   help="seconds per call (as before the command)")
    return p


def add_parser(sub) -> None:
    ad = sub.add_parser("admin", help="inspect and pin cached prefixes, explain decisions (Admin API)",
                        description="Operator commands against a running router. The admin token comes from "
                                    "--admin-token-file or $PREBLE_ADMIN_TOKEN (the router's own).")
    ad.add_argument("--addr", default=DEFAULT_ADDR, help=f"router address (default: {DEFAULT_ADDR})")
    ad.add_argument("--admin-token-file", metavar="FILE", help="file holding the admin token")
    ad.add_argument("--tls-ca", metavar="PEM", help="CA (or server) certificate: connect with TLS")
    ad.add_argument("--json", action="store_true", help="print the response as JSON (for scripts)")
    ad.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per call (default: 60)")
    cmds = ad.add_subparsers(dest="admin_cmd", required=True, metavar="COMMAND")
    _leaf(cmds.add_parser("nodes", help="nodes: load, KV usage per tier, pins"))
    _leaf(cmds.add_parser("stats", help="cluster totals: hit rates by tier, routing branch counts"))
    ex = _leaf(cmds.add_parser("explain", help="why a recent request went where it did"))
    ex.add_argument("request_id")
    pf = _leaf(cmds.add_parser(
        "profile", help="this cluster's measured profile, for `preble sim --profile`",
        description="Fit a cluster profile from what the nodes measured since the router started (or since "
                    "the last `preble calibrate`): prefill and decode step fits, engine limits, KV per tier, "
                    "links, request overhead. --json prints the profile document; -o writes it to a file. "
                    "Refused (FAILED_PRECONDITION) when the measurements are too narrow to fit."))
    pf.add_argument("--name", default="cluster", help="the profile's name (default: cluster)")
    pf.add_argument("-o", "--output", metavar="PATH", help="write the profile JSON here")

    px = cmds.add_parser("prefixes", help="cached prefixes: ls, name, show, pin, unpin, evict, warm")
    ps = px.add_subparsers(dest="prefix_cmd", required=True, metavar="ACTION")
    ls = _leaf(ps.add_parser("ls", help="list cached prefixes (named first, then by demand)"))
    ls.add_argument("--node", type=at_least(0), help="only prefixes held on this node id")
    ls.add_argument("--tier", choices=sorted(_TIERS), help="only prefixes held in this tier")
    ls.add_argument("--min-tokens", type=at_least(0), default=0, help="only prefixes at least this long")
    ls.add_argument("--limit", type=at_least(0), default=100, help="rows (default 100, at most 10000)")
    ls.add_argument("--named", action="store_true", help="only named prefixes")
    nm = _leaf(ps.add_parser("name", help="register a name for a prefix"))
    nm.add_argument("name", help="1-64 characters of letters, digits and ._:/-")
    src = nm.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the prefix text (tokenized by the router)")
    src.add_argument("--file", metavar="PATH", help="a file holding the prefix text")
    src.add_argument("--request-id", help="the prompt of a recent request")
    nm.add_argument("--replace", action="store_true", help="re-point an existing (unpinned) name")
    sh = _leaf(ps.add_parser("show", help="where a prefix lives: blocks, bytes, last use and hits per node and tier"))
    sh.add_argument("key", help="a name, or a block hash in hex")
    pn = _leaf(ps.add_parser("pin", help="keep a named prefix cached (reconciled by the router; persisted)"))
    pn.add_argument("name")
    pn.add_argument("--replicas", type=at_least(1), default=1, help="nodes that keep it (default 1)")
    pn.add_argument("--tier", choices=sorted(_TIERS), default="dram",
                    help="dram (default), disk, or hbm (DRAM copy pinned, HBM re-warmed when evicted)")
    pn.add_argument("--ttl", type=parse_duration, default=None, help="release after this long: 90s, 15m, 2h, 7d")
    up = _leaf(ps.add_parser("unpin", help="release a pin (the blocks become evictable)"))
    up.add_argument("name")
    ev = _leaf(ps.add_parser("evict", help="drop a prefix from nodes' DRAM/disk tiers (pinned ones refuse)"))
    ev.add_argument("key", help="a name, or a block hash in hex (evicts the subtree under it)")
    ev.add_argument("--node", type=at_least(0), help="only this node id (default: every node)")
    ev.add_argument("--tier", choices=["dram", "disk"], help="only this tier (default: both)")
    wm = _leaf(ps.add_parser("warm", help="prefetch a named prefix onto nodes (KV copy when cheaper than recompute)"))
    wm.add_argument("name")
    wm.add_argument("--nodes", type=_node_list, required=True, metavar="IDS", help="node ids, e.g. 0,1")


# ---------------------------------------------------------------------- client
class AdminClient:
    def __init__(self, addr: str, token: str | None, tls_ca: str | None, timeout: float) -> None:
        from preble_tiered.api.auth import bearer, channel
        from preble_tiered.api.pb import admin_pb2_grpc

        self._channel = channel(addr, tls_ca)
        self.stub = admin_pb2_grpc.AdminStub(self._channel)
        self.metadata = bearer(token) if token else ()
        self.timeout = timeout

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)

    def close(self) -> None:
        self._channel.close()


def to_json(msg) -> dict:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _add_hex(d)
    return d


def _add_hex(obj) -> None:
    if isinstance(obj, dict):
        if "hash" in obj:
            obj["hash_hex"] = f"{int(obj['hash']):016x}"
        for v in obj.values():
            _add_hex(v)
    elif isinstance(obj, list):
        for v in obj:
            _add_hex(v)


def request_for(args: argparse.Namespace):
    """(method, request message) for the parsed command. Raises ValueError on bad input."""
    from preble_tiered.api.pb import admin_pb2, common_pb2

    c = args.admin_cmd
    if c == "nodes":
        return "ListNodes", admin_pb2.ListNodesRequest()
    if c == "stats":
        return "ClusterStats", admin_pb2.ClusterStatsRequest()
    if c == "explain":
        return "Explain", admin_pb2.ExplainRequest(request_id=args.request_id)
    if c == "profile":
        return "GetProfile", admin_pb2.ProfileRequest(name=args.name, source="preble admin profile")
    p = args.prefix_cmd
    if p == "ls":
        if not 0 <= args.limit <= 10000:
            raise ValueError("--limit must be in [0, 10000]")
        if args.min_tokens < 0:
            raise ValueError("--min-tokens must be >= 0")
        req = admin_pb2.ListPrefixesRequest(tier=_TIERS.get(args.tier, 0), min_tokens=args.min_tokens,
                                            limit=args.limit, named_only=args.named)
        if args.node is not None:
            req.node_id = args.node
        return "ListPrefixes", req
    if p == "name":
        req = admin_pb2.NamePrefixRequest(name=args.name, replace=args.replace)
        if args.text is not None:
            req.text = args.text
        elif args.file is not None:
            try:
                with open(args.file, encoding="utf-8") as f:
                    req.text = f.read((4 << 20) + 1)
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read {args.file}: {e}") from None
        else:
            req.request_id = args.request_id
        return "NamePrefix", req
    if p == "show":
        return "ShowPrefix", admin_pb2.PrefixRef(key=args.key)
    if p == "pin":
        return "PinPrefix", admin_pb2.PinPrefixRequest(name=args.name, replicas=args.replicas,
                                                       tier=_TIERS[args.tier], ttl_s=args.ttl or 0.0)
    if p == "unpin":
        return "UnpinPrefix", admin_pb2.PrefixRef(key=args.name)
    if p == "evict":
        req = admin_pb2.EvictPrefixRequest(key=args.key, tier=_TIERS.get(args.tier, common_pb2.TIER_UNSPECIFIED))
        if args.node is not None:
            req.node_id = args.node
        return "EvictPrefix", req
    if p == "warm":
        return "WarmPrefix", admin_pb2.WarmPrefixRequest(key=args.name, node_ids=args.nodes)
    raise ValueError(f"unknown command {c} {p}")


def cmd_admin(args: argparse.Namespace) -> int:
    import grpc

    from preble_tiered.api.auth import ADMIN_TOKEN_ENV, load_token

    try:
        token = load_token(ADMIN_TOKEN_ENV, args.admin_token_file)
        method, req = request_for(args)
        if method == "GetProfile" and args.output:
            check_output(args.output, "-o")
        client = AdminClient(args.addr, token, args.tls_ca, getattr(args, "timeout_after", None) or args.timeout)
    except ValueError as e:
        print(f"preble admin: {e}", file=sys.stderr)
        return 2
    try:
        resp = client.call(method, req)
    except grpc.RpcError as e:
        print(f"preble admin: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if method == "GetProfile":
        return _profile_out(args, resp)
    if args.json or getattr(args, "json_after", False):
        print(json.dumps(to_json(resp), indent=2))
    else:
        render(method, resp)
    return 0


def _profile_out(args: argparse.Namespace, resp) -> int:
    from preble_tiered.scheduler.profile import ClusterProfile
    from preble_tiered.sim import profile_files

    prof = ClusterProfile.from_dict(json.loads(resp.profile_json))
    if args.output:
        profile_files.save(prof, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json or getattr(args, "json_after", False):
        print(json.dumps(prof.to_dict(), indent=2))
    elif not args.output:
        print(describe_profile(prof))
    return 0


def describe_profile(p) -> str:
    """A cluster profile for people (ClusterProfile)."""
    e, c, pf, d = p.engine, p.coverage, p.prefill, p.decode
    links = ", ".join(f"{k} {f.bandwidth / 1e9:.2f} GB/s{'' if f.measured else ' (preset)'}"
                      for k, f in p.links.items())
    return "\n".join([
        f"profile {p.name}: {p.nodes} node(s) of {p.model}",
        f"  prefill ms = {pf.a:.3g} + {pf.b:.3g}*new + {pf.c:.3g}*context + {pf.d:.3g}*"
        f"{'new*(context-(new-1)/2)' if pf.causal else 'new*context'} "
        f"({c.prefill_samples} samples, {c.prefill_new_tokens[0]}-{c.prefill_new_tokens[1]} new tokens)",
        f"  decode step ms = {d.a:.3g} + {d.b:.3g}*batch + {d.c:.3g}*context "
        f"({c.decode_steps} steps, batch {c.decode_batch[0]}-{c.decode_batch[1]}, "
        f"context {c.decode_context_tokens[0]}-{c.decode_context_tokens[1]})",
        f"  engine: {e.max_num_seqs} sequences, {e.max_batch_tokens} tokens per step, blocks of {e.block_size}; "
        f"KV tokens hbm {e.hbm_tokens}, dram {e.dram_tokens}, disk {e.disk_tokens}",
        f"  links: {links}",
        f"  request overhead {p.request_overhead_s * 1e3:.2f} ms (of which the client's hop "
        f"{p.client_overhead_s * 1e3:.2f} ms; "
        + (f"the median of {c.overhead_samples} requests that met nothing else in the engine)"
           if c.overhead_samples else "no request met nothing else in the engine: the router's part is not measured)"),
    ] + ([f"  host: {p.host_nodes} nodes share one host's cores; a prefill while another works there takes "
          f"{1 + p.host_prefill_slowdown:.2f}x its time alone ({c.host_samples} prefills)"] if p.host_nodes > 1 else []))


# ---------------------------------------------------------------------- tables
def _ago(unix: float) -> str:
    if not unix:
        return "-"
    s = max(0.0, time.time() - unix)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _where(where) -> str:
    return ", ".join(f"{w.node}:{_TIER_NAMES[w.tier]} {w.blocks}" for w in where) or "-"


def render(method: str, resp) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped, rich would cut the tables to 80 columns ("nod…"): print them whole (--json is for scripts).
    con = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)

    def table(title, *cols):
        t = Table(title=title, title_justify="left")
        for c in cols:
            t.add_column(c, justify="right" if c in _NUMERIC else "left")
        return t

    if method == "ListNodes":
        t = table("nodes", "id", "name", "alive", "run", "wait", "infl", "kv %", "hbm blk", "dram", "disk",
                  "pins", "tpot ms")
        for n in resp.nodes:
            tiers = {u.tier: u for u in n.tiers}

            def use(tier):
                u = tiers.get(tier)
                if u is None:
                    return "-"
                return f"{u.used_bytes / 2**20:.0f}/{u.capacity_bytes / 2**20:.0f}M {u.blocks}b {u.pinned_blocks}p"
            t.add_row(str(n.node_id), n.name, "yes" if n.alive else "DOWN", str(n.running), str(n.waiting),
                      str(n.inflight), f"{100 * n.kv_usage:.0f}", str(n.hbm_blocks), use(2), use(3),
                      str(n.pinned_prefixes), f"{n.tpot_ms:.1f}")
        con.print(t)
        con.print("dram/disk: used/capacity MiB, blocks (b), pinned blocks (p)")
    elif method == "ClusterStats":
        t = table("cluster", "metric", "value")
        for k in ("policy", "model", "nodes_alive", "nodes_total", "requests_total", "requests_failed",
                  "requests_rerouted", "prompt_tokens_total", "recomputed_tokens_total", "index_entries", "cost_model"):
            t.add_row(k, str(getattr(resp, k)))
        con.print(t)
        h = table("hit rate by tier (cached prompt tokens / prompt tokens)", "tier", "tokens", "share")
        total = max(resp.prompt_tokens_total, 1)
        for k in ("hbm", "dram", "disk", "remote"):
            v = getattr(resp.cached_tokens_total, k)
            h.add_row(k, str(v), f"{100 * v / total:.1f}%")
        con.print(h)
        b = table("routing branches", "branch", "requests")
        for k, v in sorted(resp.branch_counts.items()):
            b.add_row(k, str(v))
        con.print(b)
    elif method == "ListPrefixes":
        t = table(f"prefixes ({len(resp.prefixes)} of {resp.total})", "name", "hash", "tokens", "where (node:tier blocks)",
                  "demand", "pinned", "last use")
        for p in resp.prefixes:
            t.add_row(p.name or "-", f"{p.hash:016x}", str(p.tokens), _where(p.where), f"{p.demand:.1f}",
                      "yes" if p.pinned else "", _ago(p.last_use_unix))
        con.print(t)
    elif method in ("NamePrefix", "ShowPrefix"):
        p = resp if method == "NamePrefix" else resp.prefix
        con.print(f"[bold]{p.name or '(unnamed)'}[/bold]  hash {p.hash:016x}  {p.tokens} tokens, {p.blocks} blocks, "
                  f"demand {p.demand:.1f}, {'pinned' if p.pinned else 'not pinned'}, last use {_ago(p.last_use_unix)}")
        t = table("placement (last use and hits: requests finished since the prefix was named)", "node", "tier",
                  "blocks", "bytes", "last use", "hits")
        for w in p.where:
            t.add_row(w.node, _TIER_NAMES[w.tier], str(w.blocks), _bytes(w.bytes), _ago(w.last_use_unix), str(w.hits))
        con.print(t)
        if method == "ShowPrefix" and resp.HasField("pin"):
            _render_pin(con, table, resp.pin)
    elif method in ("PinPrefix", "UnpinPrefix"):
        _render_pin(con, table, resp)
    elif method == "EvictPrefix":
        con.print(f"evicted {resp.evicted} block copies on nodes {list(resp.nodes)}; "
                  f"{resp.pinned_kept} kept (pinned)")
    elif method == "WarmPrefix":
        t = table("warm-up", "node", "hbm", "dram", "disk", "remote", "recomputed", "ms", "error")
        for r in resp.results:
            c = r.cached_tokens
            t.add_row(r.node, str(c.hbm), str(c.dram), str(c.disk), str(c.remote), str(r.recomputed_tokens),
                      f"{r.ms:.0f}", r.error)
        con.print(t)
    elif method == "Explain":
        r = resp
        con.print(f"[bold]{r.request_id}[/bold]: {r.branch} -> node {r.node} (id {r.node_id}), {r.prompt_tokens} "
                  f"prompt tokens, state {r.state}, attempt {r.attempt}")
        pc, ac = r.predicted_cached_tokens, r.actual_cached_tokens
        con.print(f"cached tokens predicted hbm {pc.hbm} dram {pc.dram} disk {pc.disk} remote {pc.remote}; "
                  f"actual hbm {ac.hbm} dram {ac.dram} disk {ac.disk} remote {ac.remote}")
        con.print(f"TTFT estimated {r.est_ttft_ms:.1f} ms, measured {r.ttft_ms:.1f} ms")
        decode = any(c.HasField("decode_s") for c in r.candidates)
        t = table("candidates", "node", "load s", "evict s", "plan s", "total s", *(["decode s"] if decode else []),
                  "chosen")
        unpriced = 0
        for c in sorted(r.candidates, key=lambda c: c.total_s):
            priced = c.HasField("evict_s")
            unpriced += not priced
            dec = [f"{c.decode_s:.4f}" if c.HasField("decode_s") else "-"] if decode else []
            t.add_row(c.node, f"{c.load_s:.4f}", f"{c.evict_s:.4f}" if priced else "-", f"{c.plan_s:.4f}",
                      f"{c.total_s:.4f}" if priced else f">= {c.total_s:.4f}", *dec,
                      "<-" if c.node_id == r.node_id else "")
        con.print(t)
        if unpriced:
            con.print(f"evict '-': not priced on {unpriced} node(s) whose cost without eviction already "
                      "exceeded the chosen node's")
        if decode:
            con.print("decode: the request's decode steps at the node's batch plus the slowdown it adds there, "
                      "where e2_tiered weighed moving it for decode (not in total)")
        s = table("plan", "action", "blocks", "tokens", "tier", "source")
        for seg in r.plan:
            s.add_row(seg.action, str(seg.blocks), str(seg.tokens), _TIER_NAMES[seg.tier],
                      str(seg.source_node_id) if seg.HasField("source_node_id") else "")
        con.print(s)


def _render_pin(con, table, pin) -> None:
    if pin.released:
        con.print(f"unpinned {pin.name}")
        return
    exp = f"expires in {max(0, pin.expires_unix - time.time()):.0f}s" if pin.expires_unix else "no ttl"
    con.print(f"pin [bold]{pin.name}[/bold]: tier {_TIER_NAMES[pin.tier]}, {pin.replicas} replica(s), {exp}")
    t = table("replicas", "node", "state", "blocks held")
    for n in pin.nodes:
        t.add_row(n.node, n.state, str(n.blocks_held))
    con.print(t)
    if len(pin.nodes) < pin.replicas:
        con.print(f"only {len(pin.nodes)} node(s) are assigned a replica (all the cluster has now); "
                  f"the pin asks for {pin.replicas}")


_NUMERIC = {"id", "run", "wait", "infl", "kv %", "hbm blk", "pins", "tpot ms", "tokens", "demand", "blocks",
            "bytes", "hits", "value", "requests", "hbm", "dram", "disk", "remote", "recomputed", "ms", "load s",
            "evict s", "plan s", "total s", "blocks held", "share"}
