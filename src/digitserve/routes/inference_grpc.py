"""The Open Inference Protocol over gRPC: the `inference.GRPCInferenceService` front end.

The model contract is REST's `/v2` one (`routes.v2`), over the same data plane: `image` (BYTES,
encoded JPEG/PNG) or `pixels` (numbers 0..16, [n, 64] or [n, 8, 8]) in, `label` and
`probabilities` out, the classification extension, versions and request ids. This module turns
protobuf messages into the protocol's tensors and back, and raises `DigitserveError`s as REST
does; the server (`grpc_server`) maps each to a gRPC status (`status_of`) and does admission,
time limits, keys, metrics and the access log.

Input data comes either in `raw_input_contents` (one entry per input: little-endian elements,
BYTES each behind a 4-byte length, as tritonclient sends) or in each input's typed `contents`.
Outputs always go back in `raw_output_contents`, as Triton sends them.
"""

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from digitserve import __version__
from digitserve.dataplane import DataPlane
from digitserve.errors import InvalidInput, ModelNotReady, NotFound
from digitserve.inference_protocol import (
    BYTES,
    DecodedRequest,
    Tensor,
    check_bytes_elements,
    checked_element_count,
    tensor_bytes,
    tensor_from_binary,
    tensor_from_elements,
    validate_request,
)
from digitserve.preprocessing import N_FEATURES
from digitserve.protos import grpc_predict_v2_pb2 as pb
from digitserve.repository import State
from digitserve.routes.v2 import (
    EXTENSIONS,
    describe_model,
    output_tensors,
    prepare_soon,
    warning_codes,
)
from digitserve.schemas import MAX_PARAMETERS, MAX_TENSORS, InferenceRequestInput

SERVICE = "inference.GRPCInferenceService"
"""The service's full name, as clients address it (`/inference.GRPCInferenceService/ModelInfer`)."""

CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
"""Where each datatype's elements go in typed `contents` (FP16 has no field: raw only)."""

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG")
"""How a JPEG and a PNG begin: raw BYTES contents that begin so lack their length prefix."""

HTTP_ONLY = frozenset({"json_encoding", "raw_binary"})
"""Tensor metadata parameters about REST's body formats, which gRPC's messages do not have."""

Parameter = str | int | float | bool


@dataclass(slots=True)
class CallNotes:
    """What an RPC learned for its access-log line: the model that answered, the images read."""

    model: tuple[str, str] | None = None
    images: int | None = None


NOTES: ContextVar[CallNotes | None] = ContextVar("digitserve_grpc_notes", default=None)
"""The running RPC's notes: the server sets a fresh one per call, the handlers fill it in."""


class InferenceService:
    """The RPCs of `inference.GRPCInferenceService` over one data plane (see the module doc).

    `draining` says whether shutdown has begun: the server then says it is not ready, but serves.
    """

    def __init__(self, dataplane: DataPlane, draining: Callable[[], bool]) -> None:
        self.dataplane = dataplane
        self.draining = draining
        # What the model takes at most: that many images, or pixel rows of 64 features.
        self.max_elements = dataplane.settings.max_images_per_request * N_FEATURES
        self.max_message = dataplane.settings.max_body_bytes

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        """Live while the process answers at all."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        """Ready once every model is loaded and warmed up, until shutdown begins."""
        return pb.ServerReadyResponse(ready=not self.draining() and self.dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: object
    ) -> pb.ModelReadyResponse:
        """Whether the model (version) can infer; an unknown one is not ready, as in Triton."""
        try:
            self.dataplane.model(request.name, request.version or None)
        except (NotFound, ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: object
    ) -> pb.ServerMetadataResponse:
        """The server's name, version and protocol extensions (REST's list)."""
        return pb.ServerMetadataResponse(
            name="digitserve", version=__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        """REST's model metadata; what each tensor means goes in `properties`."""
        served = self.dataplane.model(request.name, request.version or None)
        return metadata_message(describe_model(served, self.dataplane))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: object
    ) -> pb.ModelInferResponse:
        """Run the model on an `image` or `pixels` tensor, as REST's `/v2/.../infer` does."""
        dataplane = self.dataplane
        served = dataplane.model(request.model_name, request.model_version or None)
        notes = NOTES.get()
        if notes is not None:
            notes.model = (served.name, served.version)
        call = decode_request(
            request, max_elements=self.max_elements, message_bytes=self.max_message
        )
        wanted, rows = await prepare_soon(call, dataplane)
        if notes is not None:
            notes.images = len(rows.features)
        predictions = await dataplane.predict(served, rows.features)
        tensors = output_tensors(wanted, predictions, served, rows.warnings)
        response = pb.ModelInferResponse(
            model_name=served.name, model_version=served.version, id=call.id or ""
        )
        for tensor, _binary in tensors:  # gRPC outputs are always raw
            response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape
            )
            response.raw_output_contents.append(tensor_bytes(tensor))
        codes = warning_codes(rows.warnings)
        if codes is not None:
            response.parameters["warnings"].string_param = codes
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: object
    ) -> pb.RepositoryIndexResponse:
        """Every model and version with its state; `ready` keeps only those ready to serve."""
        _one_repository(request.repository_name)
        lines = self.dataplane.repository.index()
        response = pb.RepositoryIndexResponse()
        for line in lines:
            if request.ready and line.state is not State.READY:
                continue
            response.models.add(
                name=line.name, version=line.version, state=line.state.value, reason=line.reason
            )
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: object
    ) -> pb.RepositoryModelLoadResponse:
        """Load (or reload) a model from the repository folder (explicit control mode only)."""
        _one_repository(request.repository_name)
        if request.parameters:
            raise InvalidInput(
                "load parameters (a config or files sent inline) are not supported: put the "
                "model's files in the repository folder and load it by name"
            )
        lines = await self.dataplane.load(request.model_name)
        if not any(line.state is State.READY for line in lines):
            reasons = "; ".join(f"version {line.version or '-'}: {line.reason}" for line in lines)
            raise ModelNotReady(f"model {request.model_name!r} did not load: {reasons}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: object
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop serving a model (explicit control mode only); running requests finish on it.

        Triton's `unload_dependents` parameter is accepted: no model here has dependents.
        """
        _one_repository(request.repository_name)
        unknown = sorted(set(request.parameters) - {"unload_dependents"})
        if unknown:
            raise InvalidInput(f"unknown unload parameter {unknown[0]!r}")
        await self.dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _one_repository(name: str) -> None:
    """The server has one repository, which an empty `repository_name` names."""
    if name:
        raise InvalidInput(
            f"repository {name!r} is not served: digitserve has one model repository; leave "
            "repository_name empty"
        )


def metadata_message(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """REST's metadata document as the protocol's message.

    gRPC's tensor metadata has no parameters, so each goes in `properties` as `<tensor>.<key>`,
    beside the model's own parameters.
    """
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for kind in ("inputs", "outputs"):
        for tensor in metadata[kind]:
            getattr(response, kind).add(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
            )
            for key, value in tensor.get("parameters", {}).items():
                if key not in HTTP_ONLY:
                    response.properties[f"{tensor['name']}.{key}"] = str(value)
    for key, value in metadata.get("parameters", {}).items():
        response.properties[key] = str(value)
    return response


def decode_request(
    request: pb.ModelInferRequest, *, max_elements: int, message_bytes: int
) -> DecodedRequest:
    """The request's tensors, checked as REST checks a JSON request (`validate_request`).

    `max_elements` bounds BYTES elements, as for REST; no shape dimension may exceed
    `message_bytes`, the most any input could carry.
    """
    if len(request.inputs) > MAX_TENSORS or len(request.outputs) > MAX_TENSORS:
        raise InvalidInput(
            f"a request may list at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs"
        )
    document = {
        "id": request.id or None,
        "parameters": _parameters(request.parameters, "the request"),
        "inputs": [
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": _parameters(tensor.parameters, f"input {tensor.name!r}"),
            }
            for tensor in request.inputs
        ],
        "outputs": [
            {
                "name": output.name,
                "parameters": _parameters(output.parameters, f"output {output.name!r}"),
            }
            for output in request.outputs
        ]
        or None,
    }
    checked = validate_request(document)
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, in the order of inputs (or use each input's contents)"
        )
    inputs = []
    for index, (spec, tensor) in enumerate(zip(checked.inputs, request.inputs, strict=True)):
        where = f"input {spec.name!r}"
        if spec.parameters and "shared_memory_region" in spec.parameters:
            raise InvalidInput(f"{where}: shared memory is not supported; send the data")
        checked_element_count(where, spec.shape, message_bytes)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"{where} has contents, but the request uses raw_input_contents: send every "
                    "input one way"
                )
            inputs.append(_raw_tensor(spec, raw[index], max_elements))
        else:
            inputs.append(_typed_tensor(spec, tensor.contents, max_elements))
    return DecodedRequest(checked.id, dict(checked.parameters or {}), inputs, checked.outputs)


def _raw_tensor(spec: InferenceRequestInput, data: bytes, max_elements: int) -> Tensor:
    """An input from its raw contents (the binary data extension's layout)."""
    check_bytes_elements(spec, max_elements)
    try:
        return tensor_from_binary(spec.name, spec.datatype, spec.shape, data)
    except InvalidInput as exc:
        if spec.datatype == BYTES and data.startswith(IMAGE_MAGIC):
            raise InvalidInput(
                f"input {spec.name!r}: raw BYTES contents give each element a 4-byte "
                "little-endian length first, and this one starts with an image's own bytes: "
                "prefix the length (tritonclient's set_data_from_numpy does) or send the image "
                "in contents.bytes_contents"
            ) from exc
        raise


def _typed_tensor(
    spec: InferenceRequestInput, contents: pb.InferTensorContents, max_elements: int
) -> Tensor:
    """An input from its typed contents: the one field its datatype uses, and no other."""
    where = f"input {spec.name!r}"
    field = CONTENTS_FIELDS.get(spec.datatype)
    if field is None:
        raise InvalidInput(f"{where}: {spec.datatype} has no typed contents; send it raw")
    others = [
        descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field
    ]
    if others:
        raise InvalidInput(
            f"{where}: {spec.datatype} elements go in contents.{field}, not contents.{others[0]}"
        )
    check_bytes_elements(spec, max_elements)
    return tensor_from_elements(spec.name, spec.datatype, spec.shape, getattr(contents, field))


def _parameters(
    entries: Mapping[str, pb.InferParameter], where: str
) -> dict[str, Parameter] | None:
    """Protocol parameters as REST reads them (None when there are none)."""
    if not entries:
        return None
    if len(entries) > MAX_PARAMETERS:
        raise InvalidInput(f"{where}: at most {MAX_PARAMETERS} parameters are accepted")
    values: dict[str, Parameter] = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(f"{where}: parameter {key!r} has no value")
        values[key] = getattr(parameter, choice)
    return values
