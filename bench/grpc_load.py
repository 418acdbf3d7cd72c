"""A gRPC load generator for the benchmark's `grpc` cell: wrk's role, for ModelInfer.

    python -m bench.grpc_load 127.0.0.1:8081 --pixels 0,0,5,... --concurrency 8 --seconds 3

Each of `concurrency` callers has a connection of its own (as wrk's connections) and sends one
pre-serialized ModelInferRequest after another, carrying the pixels as an INT64 [1, 64] tensor in
raw_input_contents and asking for `label` and `probabilities`, as the REST body `oip-pixels` does.
It prints one line, `GRPCJSON {...}`, with the fields of wrk's summary that run.py reads. It is
Python (grpc.aio on one core): past a few thousand calls a second the client, not the server,
sets the pace, so compare the server's CPU per call, not only req/s.
"""

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import grpc
import grpc.aio
import numpy as np

from digitserve.protos import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(pixels: list[int], model: str = "digits") -> bytes:
    """The serialized request every call sends."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="pixels", datatype="INT64", shape=[1, len(pixels)])
    request.outputs.add(name="label")
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(np.asarray(pixels, dtype="<i8").tobytes())
    return request.SerializeToString()


def labels_of(response: bytes) -> tuple[int, ...]:
    """The labels a serialized ModelInferResponse carries."""
    message = pb.ModelInferResponse.FromString(response)
    for index, output in enumerate(message.outputs):
        if output.name == "label":
            return tuple(np.frombuffer(message.raw_output_contents[index], dtype="<i8").tolist())
    return ()


async def load(target: str, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """Call for `seconds` from `concurrency` callers; return the summary."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    # A local subchannel pool each: channels to one target would otherwise share a connection.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]
    try:
        for channel in channels:
            await channel.channel_ready()
        started = time.perf_counter()
        end = started + seconds

        async def caller(channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(METHOD)  # bytes in, bytes out
            while time.perf_counter() < end:
                sent = time.perf_counter()
                try:
                    await call(body, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                latencies.append(time.perf_counter() - sent)
                statuses[code] += 1

        await asyncio.gather(*(caller(channel) for channel in channels))
        duration = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    ordered = sorted(latencies) or [0.0]

    def percentile(share: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1e6)

    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "status_errors": sum(count for code, count in statuses.items() if code != "OK"),
        "timeouts": statuses.get("DEADLINE_EXCEEDED", 0),
        "p50_us": percentile(0.5),
        "p90_us": percentile(0.9),
        "p99_us": percentile(0.99),
        "max_us": int(ordered[-1] * 1e6),
        "statuses": dict(statuses),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("--pixels", required=True, help="64 comma-separated ink levels 0..16")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    body = request_bytes([int(value) for value in args.pixels.split(",")])
    summary = asyncio.run(load(args.target, body, args.concurrency, args.seconds))
    print("GRPCJSON " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
