"""The committed gRPC modules are exactly what `make protos` makes of the .proto today."""

from pathlib import Path

from digitserve.protos.generate import MODULES, PROTO, generate


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    made = generate(tmp_path)
    assert [path.name for path in made] == list(MODULES)
    for path in made:
        committed = PROTO.with_name(path.name)
        assert path.read_bytes() == committed.read_bytes(), f"run `make protos`: {path.name}"


def test_the_messages_live_in_a_pool_of_their_own() -> None:
    """tritonclient.grpc registers the same `inference.*` names in the default pool."""
    import tritonclient.grpc.service_pb2 as triton
    from google.protobuf import descriptor_pool

    from digitserve.protos import grpc_predict_v2_pb2 as ours

    default = descriptor_pool.Default()
    assert default.FindMessageTypeByName("inference.ModelInferRequest") is (
        triton.ModelInferRequest.DESCRIPTOR
    )
    assert ours.ModelInferRequest.DESCRIPTOR.file.pool is not default
    # Either side reads the other's bytes.
    request = ours.ModelInferRequest(model_name="digits", id="x")
    request.raw_input_contents.append(b"\x01")
    parsed = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert (parsed.model_name, parsed.id, list(parsed.raw_input_contents)) == (
        "digits",
        "x",
        [b"\x01"],
    )
