"""Warnings: every code used is documented, and low confidence follows the top two classes."""

import re
from pathlib import Path

import pytest

from digitserve.diagnostics import (
    LOW_CONFIDENCE_MARGIN,
    WARNING_CODES,
    Diagnostic,
    confidence_warnings,
    warning,
)

SOURCE = Path(__file__).resolve().parents[1] / "src" / "digitserve"


def test_every_code_the_service_raises_is_documented_and_used() -> None:
    used = set()
    for module in SOURCE.rglob("*.py"):
        used.update(re.findall(r'warning\(\s*"(\w+)"', module.read_text()))
    assert used == set(WARNING_CODES)


def test_an_undocumented_code_is_a_bug() -> None:
    with pytest.raises(ValueError, match="undocumented warning code 'blurry'"):
        warning("blurry")


def test_a_warning_carries_its_standard_sentence_unless_told() -> None:
    assert warning("touches_border") == Diagnostic(
        "touches_border", WARNING_CODES["touches_border"]
    )
    assert warning("touches_border", "cut").message == "cut"


def test_low_confidence_names_the_two_digits() -> None:
    close = {"0": 0.05, "3": 0.44, "8": 0.41, "9": 0.10}
    [diagnostic] = confidence_warnings(close)
    assert diagnostic.code == "low_confidence"
    assert diagnostic.message == (
        "the model hesitates between 3 (0.44) and 8 (0.41); treat the label with care"
    )
    sure = {"3": 0.5 + LOW_CONFIDENCE_MARGIN / 2 + 0.01, "8": 0.5 - LOW_CONFIDENCE_MARGIN / 2}
    assert confidence_warnings(sure) == ()
    assert confidence_warnings({"3": 1.0}) == ()
