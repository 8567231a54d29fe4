"""Issue 14: a tamper suite over every index file (see tests/tamper.py for what must hold)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from .tamper import Tampering, build_index, tamperings, try_one

N_ITEMS = 1500  # ~6 sqlite pages of vectors: enough for a damaged page to hit some rows, not all


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, bytes], Path]:
    base = tmp_path_factory.mktemp("tamper")
    truth = build_index(base / "pristine", N_ITEMS, seed=0)
    build_index(base / "other", N_ITEMS, seed=1)
    return base / "pristine", truth, base / "other" / "default"


ALL = tamperings(Path("."))  # names only; the real 'other' index is bound in the test


@pytest.mark.parametrize("name", [t.name for t in ALL])
def test_tampering_gives_a_clear_message_and_repair_keeps_every_good_vector(
    name: str, pristine: tuple[Path, dict[int, bytes], Path], tmp_path: Path
) -> None:
    source, truth, other = pristine
    tampering: Tampering = next(t for t in tamperings(other) if t.name == name)
    root = tmp_path / "root"
    shutil.copytree(source, root)
    outcome = try_one(tampering, root, truth, random.Random(7))
    assert outcome.tracebacks == [], outcome
    assert outcome.unclear == [], outcome
    assert outcome.wrong_results == [], outcome  # what answers, answers exactly
    assert outcome.repaired and outcome.verify_ok, outcome
    assert outcome.changed_vectors == 0, outcome
    if outcome.lost_allowed:
        # Only what sat on damaged pages is gone: an independent read of the damaged file finds
        # none of the lost items with its vector.
        assert outcome.lost_but_readable == 0, outcome
        assert outcome.lost_vectors < len(truth), outcome
    else:
        assert outcome.lost_vectors == 0, outcome
