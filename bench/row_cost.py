"""One row's predict cost through the runtime digitserve picks, timed in a process of its own.

    taskset -c 0 python -m bench.row_cost MODEL_PATH NAME --grid 0,0,5,...

Run by the model matrix under `taskset`, as the servers are: a process that starts on one core
sizes its thread pools (OpenMP, BLAS, ONNX Runtime) for one core, as the servers' do. Pinning the
harness itself after its pools were made for two cores would time threads spinning on one core
instead (a k-nearest-neighbours row: tens of milliseconds instead of hundreds of microseconds).
`load_model` compiles into `DIGITSERVE_ONNX_CACHE`, as digitserve does. It prints one line,
`ROWJSON {"runtime": ..., "us_per_row": ...}`.
"""

import argparse
import json
import timeit
from pathlib import Path

import numpy as np

from digitserve.runtimes import load_model


def row_cost(path: Path, name: str, grid: list[int]) -> tuple[str, float]:
    """The runtime `load_model` picks and the best time of one row's predict through it, in µs."""
    classifier = load_model(path, name, compile_onnx=True)
    row = np.asarray(grid, dtype=np.int64).reshape(1, -1)

    def predict() -> None:
        classifier.predict(row)

    single = min(timeit.repeat(predict, number=1, repeat=5))
    # Best of many short runs of ~20 ms each: on a shared machine the minimum is the cost.
    number = max(1, int(0.02 / max(single, 1e-7)))
    best = min(timeit.repeat(predict, number=number, repeat=15)) / number
    return classifier.path, best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("name")
    parser.add_argument("--grid", required=True, help="the 64 features, comma-separated")
    args = parser.parse_args(argv)
    runtime, us = row_cost(args.path, args.name, [int(v) for v in args.grid.split(",")])
    print("ROWJSON " + json.dumps({"runtime": runtime, "us_per_row": us}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
