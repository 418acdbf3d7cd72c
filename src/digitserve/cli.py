"""Command line: `digitserve serve | predict | train | make-evalset | evaluate` (thin)."""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import URLError

from pydantic import ValidationError

from digitserve import __version__
from digitserve.errors import DigitserveError, InvalidImage, ModelLoadError
from digitserve.settings import Settings, env_name

if TYPE_CHECKING:
    from digitserve.dataplane import DataPlane


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command and return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
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
    except KeyboardInterrupt:
        print("digitserve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`digitserve predict data/ | head`): stop quietly, and point
        # stdout at /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


def _parser() -> argparse.ArgumentParser:
    """Describe the sub-commands and their flags."""
    parser = argparse.ArgumentParser(prog="digitserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"digitserve {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service: HTTP, and gRPC with --grpc-port")
    serve.add_argument("--host", metavar="HOST", help=_setting_help("interface to bind", "host"))
    serve.add_argument(
        "--port", type=int, metavar="PORT", help=_setting_help("HTTP port (0: a free one)", "port")
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help=_setting_help(
            "also serve the Open Inference Protocol over gRPC on this port", "grpc_port", "off"
        ),
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help=_setting_help("worker processes", "workers")
    )
    _model_options(serve)
    serve.add_argument(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        help=_setting_help(
            "none: serve what is there at start-up; explicit: the /v2/repository load and "
            "unload routes change it; poll: watch the folder",
            "model_control_mode",
        ),
    )
    serve.add_argument(
        "--poll-seconds",
        type=float,
        dest="model_poll_seconds",
        metavar="SECONDS",
        help=_setting_help(
            "with --model-control-mode poll: how often to look", "model_poll_seconds"
        ),
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help=_setting_help("how much the server logs", "log_level"),
    )
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="do not log one line per request (default: one line each) [DIGITSERVE_ACCESS_LOG="
        "false]",
    )
    serve.set_defaults(run=_serve)

    compile_ = commands.add_parser(
        "compile",
        help="choose and cache every model's runtime ahead of serving (as serve would at start)",
        description="Load every model as `serve` would, so that each scikit-learn file's runtime "
        "is chosen, checked and cached now (DIGITSERVE_ONNX_CACHE), e.g. while a container image "
        "is built; then print which runtime serves each version and what its check found.",
    )
    _model_options(compile_)
    compile_.set_defaults(run=_compile)

    predict = commands.add_parser(
        "predict",
        help="classify local image files without a server",
        description="Classify JPEG or PNG files in this process, as the service would.",
    )
    predict.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a JPEG or PNG file, a folder of them, or - to read one image from standard input",
    )
    predict.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="read the images in folders' sub-folders too (without it, those directly inside)",
    )
    predict.add_argument(
        "--grid",
        action="store_true",
        help="also print the 8x8 grid the model saw: ink levels 0..16, and shaded",
    )
    predict.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _model_options(predict)
    predict.set_defaults(run=_predict)

    train = commands.add_parser(
        "train",
        help="rebuild a model artefact (and the example images)",
        description="Rebuild a model reproducibly; existing files are kept unless --force.",
    )
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
        dest="output",
        metavar="PATH",
        help="where to write the pickle; the model card goes beside it (default: the bundled "
        "repository, src/digitserve/models/digits/1/model.pickle, or digits-robust/1/ with "
        "--robust)",
    )
    train.add_argument(
        "--examples",
        type=Path,
        default=Path("data"),
        metavar="DIR",
        help="where to write example JPEGs, not with --robust (default: %(default)s)",
    )
    train.add_argument(
        "--no-examples",
        dest="examples",
        action="store_const",
        const=None,
        help="write no example images",
    )
    train.add_argument(
        "--force", action="store_true", help="overwrite a model file or examples already there"
    )
    train.set_defaults(run=_train)

    evalset = commands.add_parser(
        "make-evalset", help="render held-out digits the ways real images arrive, with a manifest"
    )
    evalset.add_argument(
        "directory",
        type=Path,
        nargs="?",
        default=Path("evalset"),
        help="where to write (default: %(default)s, ignored by git)",
    )
    evalset.add_argument(
        "--per-group", type=int, default=200, help="images per group (default: %(default)s)"
    )
    evalset.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    evalset.add_argument(
        "--group",
        action="append",
        dest="groups",
        metavar="GROUP",
        help="only this group; repeat for several (default: every group)",
    )
    evalset.set_defaults(run=_make_evalset)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy on a labelled folder, locally or through a running service"
    )
    evaluate.add_argument(
        "source",
        type=Path,
        metavar="DIR_OR_MANIFEST",
        help="a folder (manifest.csv or labels.csv inside, 7_*.png names, or 7/ sub-folders) or "
        "a file,label[,group] CSV manifest",
    )
    evaluate.add_argument(
        "--url",
        help="send the images to a running service, e.g. http://127.0.0.1:8000 (default: read "
        "them in this process)",
    )
    _model_options(evaluate)
    evaluate.add_argument(
        "--plain",
        action="store_true",
        help="locally, use the plain reduction (no levels, no framing) instead of the service's",
    )
    evaluate.add_argument(
        "--report",
        metavar="PATH",
        help="also write a markdown report there, and the confusion matrix as a PNG beside it; "
        f"a folder gets {REPORT_NAME} (default: none)",
    )
    evaluate.add_argument(
        "--show",
        type=int,
        default=10,
        metavar="N",
        help="slowest and worst images to list (default: %(default)s)",
    )
    evaluate.set_defaults(run=_evaluate)
    return parser


def _model_options(command: argparse.ArgumentParser) -> None:
    """Which model a command uses: one file, or a repository folder (default: the bundled one)."""
    command.add_argument(
        "--model",
        type=Path,
        dest="model_path",
        metavar="PATH",
        help=_setting_help(
            "one model file (.pickle, .pkl, .joblib, .skops or .onnx), served as --model-name "
            "version 1",
            "model_path",
            "unset, the model repository is used",
        ),
    )
    command.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help=_setting_help(
            "a model repository folder, <name>/<version>/model.<ext>",
            "model_repository",
            "the bundled one",
        ),
    )
    command.add_argument(
        "--model-name",
        metavar="NAME",
        help=_setting_help("the default model, and the name of a --model file", "model_name"),
    )


def _setting_help(text: str, field: str, default: str | None = None) -> str:
    """Help for a flag that overrides a setting: what it does, its default, its variable."""
    shown = default if default is not None else Settings.model_fields[field].default
    return f"{text} (default: {shown}) [{env_name(field)}]"


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


def _compile(args: argparse.Namespace) -> int:
    """Load every model (which makes and caches its plan), then say what serves each version."""
    dataplane = _dataplane(_settings(args))
    repository = dataplane.repository
    for line in repository.index():
        if line.state != "READY":
            print(f"{line.name} {line.version}: {line.state} {line.reason}".rstrip())
            continue
        classifier = dataplane.model(line.name, line.version).classifier
        check = classifier.card.get("runtime_check", "")
        print(f"{line.name} {line.version}: {classifier.path}" + (f" ({check})" if check else ""))
    return 0 if repository.all_ready() else 1


STDIN = "-"
"""The FILE that stands for standard input."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

SHADES = " .:-=+*#%@"
"""Ink levels 0..16 drawn darker and darker, for `predict --grid`."""


@dataclass(frozen=True, slots=True)
class Source:
    """One image `predict` was asked for: a file, standard input, or why there is none."""

    name: str
    path: Path | None = None
    problem: str | None = None
    code: str = "unreadable_file"
    """The error code printed with `problem`."""

    def read(self) -> bytes:
        """The image's bytes; an empty file or input is refused here, where it can be named."""
        data = sys.stdin.buffer.read() if self.path is None else self.path.read_bytes()
        if not data:
            raise InvalidImage(f"{'standard input' if self.path is None else 'the file'} is empty")
        return data


def _sources(names: Sequence[str], recursive: bool) -> list[Source]:
    """The images named on the command line, folders opened, in the order given."""
    sources = []
    for name in names:
        path = Path(name)
        if name == STDIN:
            sources.append(Source(name))
        elif _URL.match(name):
            sources.append(
                Source(
                    name,
                    problem="predict reads local files only; download it first (curl -o "
                    "digit.jpg URL), or send it to a running service",
                    code="not_a_file",
                )
            )
        elif path.is_dir():
            from digitserve.preprocessing import IMAGE_SUFFIXES

            found = sorted(
                child
                for child in (path.rglob("*") if recursive else path.iterdir())
                if child.suffix.lower() in IMAGE_SUFFIXES and child.is_file()
            )
            sources.extend(Source(str(child), child) for child in found)
            if not found:
                where = "under it" if recursive else "in it (--recursive reads sub-folders)"
                sources.append(
                    Source(name, problem=f"a folder with no .jpg, .jpeg or .png file {where}")
                )
        else:
            sources.append(Source(name, path))
    return sources


def _predict(args: argparse.Namespace) -> int:
    """Classify files and print a table or JSON lines; exit 1 if any file could not be read."""
    from digitserve.diagnostics import confidence_warnings
    from digitserve.preprocessing import GRID

    if STDIN in args.files and sys.stdin.isatty():
        print(
            "digitserve: - reads an image from standard input: pipe one in "
            "(cat digit.jpg | digitserve predict -)",
            file=sys.stderr,
        )
        return 2
    sources = _sources(args.files, args.recursive)
    settings = _settings(args)
    dataplane = _dataplane(settings)
    classifier = dataplane.default_model().classifier
    status = 0
    if not args.json:
        print(f"{'file':40} {'label':>5} {'confidence':>10}  warnings")
    for source in sources:
        problem: tuple[str, str] | None = None
        if source.problem is not None:
            problem = source.problem, source.code
        else:
            try:
                read = dataplane.read_bytes(source.read())
            except OSError as exc:
                problem = exc.strerror or str(exc), "unreadable_file"
            except DigitserveError as exc:
                problem = exc.detail, exc.code
        if problem is not None:
            status = 1
            message, code = problem
            if args.json:
                print(json.dumps({"file": source.name, "error": message, "code": code}))
            else:
                print(f"{source.name:40} error: {message}", file=sys.stderr)
            continue
        [prediction] = classifier.predict(read.features.reshape(1, -1))
        warnings = list(read.warnings)
        if prediction.confidence is not None:
            warnings.extend(confidence_warnings(prediction.scores))
        if args.json:
            line: dict[str, Any] = {
                "file": source.name,
                "label": prediction.label,
                "confidence": prediction.confidence,
                classifier.score_kind: prediction.scores,
                "warnings": [{"code": w.code, "message": w.message} for w in warnings],
            }
            if args.grid:
                line["pixels"] = read.features.reshape(GRID, GRID).tolist()
            print(json.dumps(line))
        else:
            confidence = "-" if prediction.confidence is None else f"{prediction.confidence:.3f}"
            codes = ", ".join(w.code for w in warnings)
            print(f"{source.name:40} {prediction.label!s:>5} {confidence:>10}  {codes}".rstrip())
            if args.grid:
                print("\n".join(_grid_lines(read.features.tolist())))
    return status


def _grid_lines(features: Sequence[int]) -> list[str]:
    """The 8x8 features row by row, as numbers and as shades (two characters a cell: square)."""
    from digitserve.preprocessing import GRID, LEVELS

    lines = []
    for start in range(0, GRID * GRID, GRID):
        row = features[start : start + GRID]
        numbers = "".join(f"{value:>3}" for value in row)
        shades = "".join(2 * SHADES[round(value * (len(SHADES) - 1) / LEVELS)] for value in row)
        lines.append(f"  {numbers}   |{shades}|")
    return lines


def _train(args: argparse.Namespace) -> int:
    """Rebuild an artefact reproducibly and report its accuracy."""
    from digitserve import training

    if args.quick and not args.robust:
        print("digitserve: --quick is for --robust", file=sys.stderr)
        return 2
    default = training.ROBUST_MODEL_PATH if args.robust else training.MODEL_PATH
    model_path = args.output or default
    examples = None if args.robust else args.examples
    there = _existing(model_path, examples)
    if there and not args.force:
        print(
            f"digitserve: {' and '.join(there)} already there; pass --force to overwrite "
            f"{'it' if len(there) == 1 else 'them'}, or --model"
            f"{'' if examples is None else ' / --examples'} to write elsewhere",
            file=sys.stderr,
        )
        return 2
    if args.robust:
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
        card = training.train(model_path, examples)
        extra = ""
    print(
        f"wrote {model_path} (sha256 {card['sha256'][:12]}): "
        f"train accuracy {card['training']['train_accuracy']:.4f}, "
        f"held-out accuracy {card['training']['test_accuracy']:.4f}{extra}"
    )
    return 0


def _existing(model_path: Path, examples: Path | None) -> list[str]:
    """What training would overwrite: the model file (or its card), and a folder with files."""
    card = model_path.with_suffix(".json")
    there = [str(path) for path in (model_path, card) if path.exists()][:1]
    if examples is not None and examples.is_dir() and any(examples.iterdir()):
        there.append(f"{examples}/")
    return there


def _make_evalset(args: argparse.Namespace) -> int:
    """Render the evaluation set, with progress on stderr."""
    from digitserve.evalset import write_evalset

    try:
        with Progress("rendering") as progress:
            manifest = write_evalset(
                args.directory,
                args.per_group,
                seed=args.seed,
                groups=args.groups,
                progress=progress,
            )
    except ValueError as exc:
        print(f"digitserve: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest}")
    return 0


REPORT_NAME = "report.md"
"""The report's file name when `evaluate --report` names a folder."""


def _evaluate(args: argparse.Namespace) -> int:
    """Run a labelled folder through the model (here or at --url) and report accuracy.

    Whatever fails is said in one line, and before the run when it can be known then (a report
    folder that cannot be made, a URL that is none).
    """
    from digitserve import evaluation

    try:
        samples = evaluation.read_samples(args.source)
    except (OSError, ValueError) as exc:
        print(f"digitserve: {exc}", file=sys.stderr)
        return 2
    report = _report_path(args.report) if args.report else None
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"digitserve: cannot write the report to {report}: {exc}", file=sys.stderr)
            return 2
    if args.url:
        if args.plain:
            print("digitserve: --plain is for local runs; a service uses its own", file=sys.stderr)
            return 2
        if not re.match(r"^https?://", args.url, re.IGNORECASE):
            print(
                f"digitserve: --url must start with http:// or https:// (got {args.url})",
                file=sys.stderr,
            )
            return 2
        reader = evaluation.remote_reader(args.url, args.model_name or "digits")
        source = f"{args.source} via {args.url}"
    else:
        settings = _settings(args)
        dataplane = _dataplane(settings)
        pipeline: evaluation.Pipeline = "plain" if args.plain else "digitserve"
        reader = evaluation.local_reader(dataplane, dataplane.default_model(), pipeline)
        source = f"{args.source} ({pipeline} pipeline, in process)"
    try:
        with Progress("evaluating") as progress:
            outcomes = evaluation.evaluate(samples, reader, progress)
    except URLError as exc:  # before OSError, which it is
        print(f"digitserve: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError, HTTPException) as exc:
        print(f"digitserve: cannot evaluate: {exc}", file=sys.stderr)
        return 1
    summary = evaluation.summarise(outcomes, source, args.show)
    print(evaluation.format_summary(summary), end="")
    if report is not None:
        try:
            picture = evaluation.write_report(summary, report)
        except OSError as exc:
            print(f"digitserve: cannot write the report to {report}: {exc}", file=sys.stderr)
            return 1
        print(f"\nwrote {report} and {picture}")
    return 0


def _report_path(given: str) -> Path:
    """Where the report goes: the path given, or `REPORT_NAME` inside it when it is a folder."""
    path = Path(given)
    if path.is_dir() or given.endswith(("/", os.sep)):
        return path / REPORT_NAME
    return path


class Progress:
    """A progress bar on stderr, with rate and time left (tqdm), drawn only on a terminal.

    Piped or redirected to a log, it writes nothing: a log file has no use for hundreds of
    redraws. Use it as a context manager, so the bar's line is ended however the work ends.
    """

    def __init__(self, label: str, unit: str = "image") -> None:
        self.label = label
        self.unit = unit
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        """Move the bar to `done` of `total`."""
        if self.bar is None:
            from tqdm import tqdm

            # disable=None: tqdm draws only when its file is a terminal.
            self.bar = tqdm(
                total=total, desc=self.label, unit=self.unit, file=sys.stderr, disable=None
            )
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
