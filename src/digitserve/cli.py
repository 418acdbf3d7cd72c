"""Command line: `digitserve serve | predict | train | make-evalset | evaluate` (thin)."""

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from digitserve import __version__
from digitserve.errors import DigitserveError, ModelLoadError
from digitserve.settings import Settings

if TYPE_CHECKING:
    from digitserve.dataplane import DataPlane


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command and return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except ModelLoadError as exc:
        verb = "serve" if args.run is _serve else "load"
        print(f"digitserve: cannot {verb} the model: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        print(f"digitserve: invalid settings: {reasons}", file=sys.stderr)
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    """Describe the sub-commands and their flags."""
    parser = argparse.ArgumentParser(prog="digitserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"digitserve {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service: HTTP, and gRPC with --grpc-port")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8000)")
    serve.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the Open Inference Protocol over gRPC on this port (default: off) "
        "[DIGITSERVE_GRPC_PORT]",
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    _model_options(serve)
    serve.add_argument(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        help="none: serve what is there at start-up; explicit: the /v2/repository load and "
        "unload routes change it; poll: watch the folder (default none)",
    )
    serve.add_argument(
        "--poll-seconds",
        type=float,
        dest="model_poll_seconds",
        help="with --model-control-mode poll: how often to look (default 5)",
    )
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="do not log one line per request",
    )
    serve.set_defaults(run=_serve)

    predict = commands.add_parser("predict", help="classify local image files without a server")
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _model_options(predict)
    predict.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    predict.set_defaults(run=_predict)

    train = commands.add_parser("train", help="rebuild a model artefact (and the example images)")
    train.add_argument(
        "--robust",
        action="store_true",
        help="build digits-robust (load_digits and font digits, varied) instead of digits",
    )
    train.add_argument(
        "--quick",
        action="store_true",
        help="with --robust: a tiny recipe that trains in seconds, for smoke tests only",
    )
    train.add_argument(
        "--model",
        type=Path,
        dest="model_path",
        help="where to write the pickle; the model card goes beside it (default: the bundled "
        "repository, src/digitserve/models/digits/1/model.pickle, or digits-robust/1/ with "
        "--robust)",
    )
    train.add_argument(
        "--examples",
        type=Path,
        default=Path("data"),
        help="where to write example JPEGs, not with --robust (default %(default)s)",
    )
    train.add_argument("--no-examples", dest="examples", action="store_const", const=None)
    train.set_defaults(run=_train)

    evalset = commands.add_parser(
        "make-evalset", help="render held-out digits the ways real images arrive, with a manifest"
    )
    evalset.add_argument(
        "directory",
        type=Path,
        nargs="?",
        default=Path("evalset"),
        help="where to write (default %(default)s, ignored by git)",
    )
    evalset.add_argument(
        "--per-group", type=int, default=200, help="images per group (default %(default)s)"
    )
    evalset.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    evalset.add_argument("--group", action="append", dest="groups", help="only this group")
    evalset.set_defaults(run=_make_evalset)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy on a labelled folder, locally or through a running service"
    )
    evaluate.add_argument("source", type=Path, metavar="DIR_OR_MANIFEST")
    evaluate.add_argument("--url", help="a running service (e.g. http://127.0.0.1:8000)")
    _model_options(evaluate)
    evaluate.add_argument(
        "--plain",
        action="store_true",
        help="locally, use the plain reduction (no levels, no framing) instead of the service's",
    )
    evaluate.add_argument("--report", type=Path, help="write a markdown report (and a PNG)")
    evaluate.add_argument(
        "--show", type=int, default=10, help="slowest and worst images to list (%(default)s)"
    )
    evaluate.set_defaults(run=_evaluate)
    return parser


def _model_options(command: argparse.ArgumentParser) -> None:
    """Which model a command uses: one file, or a repository folder (default: the bundled one)."""
    command.add_argument(
        "--model",
        type=Path,
        dest="model_path",
        help="one model file (.pickle, .pkl, .joblib, .skops or .onnx), served as --model-name "
        "version 1 [DIGITSERVE_MODEL_PATH]",
    )
    command.add_argument(
        "--model-repository",
        type=Path,
        help="a model repository folder, <name>/<version>/model.<ext> (default: the bundled "
        "one) [DIGITSERVE_MODEL_REPOSITORY]",
    )
    command.add_argument(
        "--model-name",
        help="the default model, and the name of a --model file (default digits) "
        "[DIGITSERVE_MODEL_NAME]",
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    fields = (
        "host",
        "port",
        "grpc_port",
        "workers",
        "model_path",
        "model_repository",
        "model_name",
        "model_control_mode",
        "model_poll_seconds",
        "log_level",
        "access_log",
    )
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in fields if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def _dataplane(settings: Settings) -> "DataPlane":
    """Load the models the one checked way every command uses: sha256 pins, trusted types.

    A model file is code (a pickle runs whatever it holds), so no command may skip the checks
    `serve` makes; a refusal is a `ModelLoadError`, reported by `main` in one line.
    """
    from digitserve.dataplane import DataPlane
    from digitserve.metrics import Metrics

    dataplane = DataPlane(settings, Metrics(), admitted=lambda: 1)
    dataplane.start()
    return dataplane


METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when first imported: set it before anything imports the app."""


def _serve(args: argparse.Namespace) -> int:
    """Load and check the model before the port opens, then serve until SIGINT or SIGTERM."""
    settings = _settings(args)
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get(METRICS_DIR_VARIABLE):
        # Workers add up their metrics through files; a fresh directory (under $TMPDIR, so a
        # read-only root filesystem with a writable /tmp is enough) holds no stale counts.
        metrics_dir = tempfile.mkdtemp(prefix="digitserve-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    from digitserve.server import serve

    try:
        serve(settings, _dataplane(settings))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Classify files and print a table or JSON lines; exit 1 if any file could not be read."""
    from digitserve.diagnostics import confidence_warnings

    settings = _settings(args)
    dataplane = _dataplane(settings)
    served = dataplane.default_model()
    classifier = served.classifier
    status = 0
    if not args.json:
        print(f"{'file':40} {'label':>5} {'confidence':>10}  warnings")
    for path in args.files:
        try:
            read = dataplane.read_bytes(path.read_bytes())
        except (OSError, DigitserveError) as exc:
            status = 1
            message = exc.detail if isinstance(exc, DigitserveError) else exc.strerror
            code = exc.code if isinstance(exc, DigitserveError) else "unreadable_file"
            if args.json:
                print(json.dumps({"file": str(path), "error": message, "code": code}))
            else:
                print(f"{path!s:40} error: {message}", file=sys.stderr)
            continue
        [prediction] = classifier.predict(read.features.reshape(1, -1))
        warnings = list(read.warnings)
        if prediction.confidence is not None:
            warnings.extend(confidence_warnings(prediction.scores))
        if args.json:
            print(
                json.dumps(
                    {
                        "file": str(path),
                        "label": prediction.label,
                        "confidence": prediction.confidence,
                        classifier.score_kind: prediction.scores,
                        "warnings": [{"code": w.code, "message": w.message} for w in warnings],
                    }
                )
            )
        else:
            confidence = "-" if prediction.confidence is None else f"{prediction.confidence:.3f}"
            codes = ", ".join(w.code for w in warnings)
            print(f"{path!s:40} {prediction.label!s:>5} {confidence:>10}  {codes}".rstrip())
    return status


def _train(args: argparse.Namespace) -> int:
    """Rebuild an artefact reproducibly and report its accuracy."""
    from digitserve import training

    if args.quick and not args.robust:
        print("digitserve: --quick is for --robust", file=sys.stderr)
        return 2
    if args.robust:
        model_path = args.model_path or training.ROBUST_MODEL_PATH
        recipe = training.QUICK_RECIPE if args.quick else training.RobustRecipe()
        try:
            card = training.train_robust(model_path, recipe)
        except FileNotFoundError as exc:
            print(f"digitserve: {exc}", file=sys.stderr)
            return 2
        evalset = card["evaluation"]["evalset"]["all"]
        extra = (
            f", evaluation set {evalset[training.ROBUST_NAME]:.4f} (digits {evalset['digits']:.4f})"
        )
    else:
        model_path = args.model_path or training.MODEL_PATH
        card = training.train(model_path, args.examples)
        extra = ""
    print(
        f"wrote {model_path} (sha256 {card['sha256'][:12]}): "
        f"train accuracy {card['training']['train_accuracy']:.4f}, "
        f"held-out accuracy {card['training']['test_accuracy']:.4f}{extra}"
    )
    return 0


def _make_evalset(args: argparse.Namespace) -> int:
    """Render the evaluation set, with progress on stderr."""
    from digitserve.evalset import write_evalset

    progress = Progress("rendering")
    try:
        manifest = write_evalset(
            args.directory, args.per_group, seed=args.seed, groups=args.groups, progress=progress
        )
    except ValueError as exc:
        progress.done()
        print(f"digitserve: {exc}", file=sys.stderr)
        return 2
    progress.done()
    print(f"wrote {manifest}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Run a labelled folder through the model (here or at --url) and report accuracy."""
    from digitserve import evaluation

    try:
        samples = evaluation.read_samples(args.source)
    except (OSError, ValueError) as exc:
        print(f"digitserve: {exc}", file=sys.stderr)
        return 2
    if args.url:
        if args.plain:
            print("digitserve: --plain is for local runs; a service uses its own", file=sys.stderr)
            return 2
        reader = evaluation.remote_reader(args.url)
        source = f"{args.source} via {args.url}"
    else:
        settings = _settings(args)
        dataplane = _dataplane(settings)
        pipeline: evaluation.Pipeline = "plain" if args.plain else "digitserve"
        reader = evaluation.local_reader(dataplane, dataplane.default_model(), pipeline)
        source = f"{args.source} ({pipeline} pipeline, in process)"
    progress = Progress("evaluating")
    try:
        outcomes = evaluation.evaluate(samples, reader, progress)
    except OSError as exc:
        progress.done()
        print(f"digitserve: cannot evaluate: {exc}", file=sys.stderr)
        return 1
    progress.done()
    summary = evaluation.summarise(outcomes, source, args.show)
    print(evaluation.format_summary(summary), end="")
    if args.report:
        picture = evaluation.write_report(summary, args.report)
        print(f"\nwrote {args.report} and {picture}")
    return 0


class Progress:
    """A progress bar on stderr, redrawn in place, at most about 100 times per run."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label = label
        self.width = width
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        """Redraw when the bar has moved by a percent (or at the end)."""
        percent = 100 * done // max(total, 1)
        if percent == self.shown and done != total:
            return
        self.shown = percent
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        print(f"\r{self.label} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        """End the bar's line."""
        if self.shown >= 0:
            print(file=sys.stderr, flush=True)
