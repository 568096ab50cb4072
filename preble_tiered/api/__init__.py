"""The wire, shared by router/, node/, transfer/ and the client; imports none of them.

    pb         generated protobuf and gRPC code of protos/preble/v1 (scripts/gen_protos.py)
    convert    the one proto <-> dataclass conversion
    auth       bearer-token interceptor, token loading, TLS credentials
    grpc_util  channel/server options, health, reflection, binding
    metrics    the per-request Prometheus metrics both processes count, and /metrics
"""
