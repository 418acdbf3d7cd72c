"""MkDocs hook: the site carries the OpenAPI document of the service, made from the code."""

import json

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add openapi.json, the document a running server serves at /openapi.json."""
    from digitserve.app import create_app
    from digitserve.settings import Settings

    schema = create_app(Settings()).openapi()
    files.append(File.generated(config, "openapi.json", content=json.dumps(schema, indent=2)))
    return files
