"""Ray Serve: the same application (`create_app`) as a Ray Serve deployment with N replicas.

Needs the `ray` extra (`pip install 'digitserve[ray]'`). Run it locally with

    serve run digitserve.ray_app:app_builder replicas=2

or point a KubeRay `RayService` at `digitserve.ray_app:app_builder` (deploy/ray/). Each replica
builds the app itself, loads the model in its lifespan, and names itself in an
`X-Digitserve-Replica` header. Limits, errors and metrics are those of `digitserve serve`, per
replica; SIGTERM handling is Ray's.
"""

import os
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.app import create_app
from digitserve.settings import Settings

DEPLOYMENT_NAME = "digitserve"
"""The deployment's name, which a RayService's serveConfigV2 refers to."""

REPLICA_HEADER = b"x-digitserve-replica"
"""Names the replica that answered, so that clients and tests can see requests spread out."""


class ReplicaHeader:
    """Add the replica's id to every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER, replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through, tagging the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, tagged)


def deployment(settings: Settings, replicas: int = 1, num_cpus: float = 1.0) -> Application:
    """The digitserve app as a Ray Serve application of `replicas` replicas."""
    paths = {"model_path": settings.model_path, "model_repository": settings.model_repository}
    settings = settings.model_copy(
        update={key: path.resolve() for key, path in paths.items() if path is not None}
    )

    def build() -> ASGIApp:
        """Build the app inside the replica (the model loads in its lifespan there)."""
        context = serve.get_replica_context()
        replica = f"{context.replica_id.unique_id}/{os.getpid()}"
        return ReplicaHeader(create_app(settings), replica)

    @serve.deployment(
        name=DEPLOYMENT_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}
    )
    @serve.ingress(build)
    class Digitserve:
        """One replica of the service."""

    bound: Application = Digitserve.bind()  # type: ignore[attr-defined]  # added by the decorator
    return bound


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for `serve run` and RayService: `replicas`, `num_cpus`, then any setting.

    Settings not given come from DIGITSERVE_* variables, as for `digitserve serve`.
    """
    options = dict(args)
    replicas = int(options.pop("replicas", 1))
    num_cpus = float(options.pop("num_cpus", 1.0))
    return deployment(Settings(**options), replicas=replicas, num_cpus=num_cpus)
