"""Regenerate the modules of `grpc_predict_v2.proto` (`make protos`; needs grpcio-tools).

protoc writes them as always, with one change: the messages go into a descriptor pool of their
own instead of protobuf's default one. tritonclient.grpc puts its own build of the same
`inference.*` messages into the default pool, and two files defining one name cannot share a
pool, so a process that both served digitserve's gRPC and called Triton (the test suite does)
failed on import. The wire format does not depend on the pool.
"""

import sys
from pathlib import Path

PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
SOURCE_ROOT = PROTO.parents[2]
"""`src/`: the include root, so that the modules import each other as `digitserve.protos.*`."""

MODULES = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
"""What protoc writes beside the .proto (messages, their type stubs, the service)."""

DEFAULT_POOL = "_descriptor_pool.Default()"
OWN_POOL = "_descriptor_pool.DescriptorPool()"


def generate(out: Path) -> list[Path]:
    """Write the modules under `out` (as `out/digitserve/protos/...`) and return their paths."""
    from grpc_tools import protoc  # a development tool: the service never needs it

    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    folder = out / PROTO.parent.relative_to(SOURCE_ROOT)
    messages = folder / MODULES[0]
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"{messages}: expected one {DEFAULT_POOL}; has protoc's output changed?")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    return [folder / name for name in MODULES]


def main() -> int:
    """Regenerate the committed modules in place."""
    for path in generate(SOURCE_ROOT):
        print(path.relative_to(SOURCE_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
