#!/usr/bin/env python3
"""The CPU floor of a router hop in Python gRPC: a relay that does nothing else.

client --Inference.Generate--> proxy --one Node.Serve stream--> backend (N tokens, 3 ms apart)

The proxy does what our router's relay does and nothing more (no tokenizing, hashing or
scheduling): one submit out, the backend's batches in, one chunk per token out to the
client. Its CPU per request is what any Python grpc.aio router pays to stream N tokens one
message each; compare it with the router's CPU per request in path_overhead.json.

    python benchmarks/grpc_relay_floor.py [N_TOKENS]   (default 16: path_overhead's c1)
"""
import asyncio
import os
import sys
import time

import grpc
import psutil
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from preble_tiered.api.pb import node_pb2, node_pb2_grpc, inference_pb2, inference_pb2_grpc, common_pb2

N_TOK = int(sys.argv[1]) if len(sys.argv) > 1 else 16
REQS = 300

class Backend(node_pb2_grpc.NodeServicer):
    async def Serve(self, it, ctx):
        q = asyncio.Queue()
        async def run(req):
            for i in range(N_TOK):
                await asyncio.sleep(0.003)
                q.put_nowait(node_pb2.ServeItem(request_id=req.request_id, chunk=node_pb2.TokenChunk(token_ids=[7], text="a")))
            q.put_nowait(node_pb2.ServeItem(request_id=req.request_id, done=node_pb2.SubmitDone(completion_tokens=N_TOK)))
        async def read():
            async for r in it:
                asyncio.create_task(run(r.submit))
        asyncio.create_task(read())
        while True:
            items = [await q.get()]
            while not q.empty(): items.append(q.get_nowait())
            yield node_pb2.ServeBatch(items=items)

class Proxy(inference_pb2_grpc.InferenceServicer):
    def __init__(self, addr): self.addr = addr; self.qs = {}; self.out = None
    async def start(self):
        ch = grpc.aio.insecure_channel(self.addr); stub = node_pb2_grpc.NodeStub(ch)
        self.out = asyncio.Queue()
        async def reqs():
            while True: yield await self.out.get()
        call = stub.Serve(reqs())
        async def read():
            async for b in call:
                for it in b.items: self.qs[it.request_id].put_nowait(it)
        asyncio.create_task(read())
    async def Generate(self, request, ctx):
        rid = request.request_id; q = self.qs[rid] = asyncio.Queue()
        self.out.put_nowait(node_pb2.ServeRequest(submit=node_pb2.SubmitRequest(request_id=rid, prompt_token_ids=list(request.token_ids.ids))))
        while True:
            it = await q.get()
            if it.WhichOneof("kind") == "chunk":
                yield inference_pb2.GenerateResponse(chunk=inference_pb2.GenerateChunk(token_ids=it.chunk.token_ids, text=it.chunk.text))
            else:
                yield inference_pb2.GenerateResponse(complete=inference_pb2.GenerateComplete())
                del self.qs[rid]; return

async def serve(kind, port):
    s = grpc.aio.server()
    if kind == "backend": node_pb2_grpc.add_NodeServicer_to_server(Backend(), s)
    else:
        p = Proxy(f"127.0.0.1:{port - 1}"); inference_pb2_grpc.add_InferenceServicer_to_server(p, s)
    s.add_insecure_port(f"127.0.0.1:{port}"); await s.start()
    if kind == "proxy": await p.start()
    await s.wait_for_termination()

async def client(port):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        ids = common_pb2.TokenIds(ids=list(range(4, 2004)))
        for i in range(REQS):
            async for m in stub.Generate(inference_pb2.GenerateRequest(request_id=f"r{i}", token_ids=ids)): pass

if __name__ == "__main__":
    if sys.argv[-1] in ("backend", "proxy"):
        asyncio.run(serve(sys.argv[-1], int(sys.argv[-2]))); sys.exit()
    import subprocess
    port = 52000 + os.getpid() % 1000
    b = subprocess.Popen([sys.executable, __file__, str(N_TOK), str(port), "backend"])
    time.sleep(1.5)
    p = subprocess.Popen([sys.executable, __file__, str(N_TOK), str(port + 1), "proxy"])
    time.sleep(1.5)
    asyncio.run(client(port + 1))  # warm
    pp = psutil.Process(p.pid); c0 = sum(pp.cpu_times()[:2])
    t0 = time.perf_counter(); asyncio.run(client(port + 1)); wall = time.perf_counter() - t0
    c1 = sum(pp.cpu_times()[:2])
    print(f"relay floor: {N_TOK} tokens/request, proxy CPU {(c1 - c0) / REQS * 1e3:.2f} ms per request, {(c1-c0)/REQS/(N_TOK+2)*1e6:.0f} us per message relayed")
    b.kill(); p.kill()
