"""Issue 14: property-based tests of the contract every input must keep.

- The CLI's query options, in any combination and with any values: exit 0, or
  exit 1 with one ``error:`` line on stderr and no traceback.
- The Python API's inputs: a list of hits, or an ``MMSearchError`` (never
  another exception type: no ZeroDivisionError, AttributeError, OverflowError...).

Seeded (``derandomize``) and bounded in examples, so the run is the same each time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.errors import MMSearchError

from .conftest import TINY_MODEL, make_image

runner = CliRunner()
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("props")
    photos = base / "photos"
    photos.mkdir()
    for i in range(8):
        make_image(i).save(photos / f"p{i}.png")
    texts = base / "texts.txt"
    texts.write_text("a red shoe\na blue cup\nzwölf Boxkämpfer\n", encoding="utf-8")
    root = base / "indexes"
    result = runner.invoke(app, ["index", str(photos), "--texts", str(texts), "--model", TINY_MODEL,
                                 "--index-dir", str(root), "-q"])
    assert result.exit_code == 0, result.output
    return {"root": str(root), "photos": str(photos), "image": str(photos / "p1.png")}


def assert_clean(result) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"exception escaped: {result.exception!r}")
    if result.exit_code == 0:
        return
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1, result.stderr


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
weighted = st.one_of(text, st.builds(lambda w, t: f"{w}:{t}", st.sampled_from(["2", "-1", "0", "1e30", ".5", "-.0",
                                                                               "99999999999999999999"]), text))
number_text = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-5, 5).map(str), text)
date_text = st.one_of(st.dates().map(str), st.sampled_from(["0001-01-01", "9999-12-31", "2023-02-30", "", " ",
                                                             "2023-06-01T25:00"]), text)
option = st.one_of(
    st.tuples(st.just("-k"), st.one_of(st.integers(-3, 600).map(str), text)),
    st.tuples(st.just("--target"), st.one_of(st.sampled_from(["image", "text", "all", "auto"]), text)),
    st.tuples(st.just("--min-score"), number_text),
    st.tuples(st.just("--dedup"), number_text),
    st.tuples(st.just("--under"), st.one_of(text, st.just("/"), st.just(""))),
    st.tuples(st.just("--glob"), st.one_of(text, st.just("*[")), ),
    st.tuples(st.just("--type"), st.one_of(text, st.just("jpg,,png,"))),
    st.tuples(st.just("--after"), date_text),
    st.tuples(st.just("--before"), date_text),
    st.tuples(st.just("--text"), weighted),
    st.tuples(st.just("--not-text"), weighted),
    st.tuples(st.just("--image"), st.one_of(st.just("IMAGE"), st.just("/no/such.png"), st.just("/"), text)),
    st.tuples(st.just("--precision"), st.one_of(st.sampled_from(["auto", "fp32", "bf16", "int8"]), text)),
    st.tuples(st.just("--json"), st.none()),
    st.tuples(st.just("--paths"), st.none()),
)


@SETTINGS
@given(query=st.one_of(st.none(), weighted), options=st.lists(option, max_size=5))
def test_cli_query_options_keep_the_contract(world: dict[str, str], query: str | None, options: list) -> None:
    args = ["query"] + ([query] if query is not None else [])
    for name, value in options:
        args.append(name)
        if value is not None:
            args.append(world["image"] if value == "IMAGE" else value)
    args += ["--index-dir", world["root"]]
    assert_clean(runner.invoke(app, args))


@SETTINGS
@given(item=st.one_of(st.integers(-2, 2**70).map(str), text, st.just("IMAGE")),
       k=st.one_of(st.integers(-1, 50).map(str), text))
def test_cli_similar_keeps_the_contract(world: dict[str, str], item: str, k: str) -> None:
    assert_clean(runner.invoke(app, ["similar", world["image"] if item == "IMAGE" else item, "-k", k,
                                     "--index-dir", world["root"]]))


# -- the Python API ------------------------------------------------------------------------------------

anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text, st.binary(max_size=8),
                     st.lists(st.integers(), max_size=3), st.just(object()))
weight = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), anything)
term = st.one_of(
    st.builds(retrieval.QueryTerm.text, st.one_of(text, anything), weight),
    st.builds(retrieval.QueryTerm.image, st.one_of(st.just("IMAGE"), anything), weight),
    st.builds(retrieval.QueryTerm.item, st.one_of(st.integers(-5, 2**70), anything), weight),
    st.builds(retrieval.QueryTerm.vector, st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=40).map(np.array),
        anything), weight),
)
filters = st.fixed_dictionaries({}, optional={
    "target": st.one_of(st.sampled_from(["image", "text", "all", "auto"]), anything),
    "min_score": st.one_of(st.floats(), anything),
    "under": st.one_of(text, anything), "glob": st.one_of(text, anything), "types": st.one_of(text, anything),
    "after": st.one_of(date_text, anything), "before": st.one_of(date_text, anything),
})


@pytest.fixture(scope="module")
def opened(world: dict[str, str]):  # type: ignore[no-untyped-def]
    index = retrieval.open_index(root=world["root"])
    yield index
    index.close()


def _fix(value: object, world: dict[str, str]) -> object:
    return world["image"] if value == "IMAGE" else value


@SETTINGS
@given(terms=st.lists(term, max_size=4), k=st.one_of(st.integers(-2, 100), anything), chosen=filters,
       dedup=st.one_of(st.none(), st.floats(), anything))
def test_api_search_inputs_keep_the_contract(opened, world: dict[str, str], terms: list, k: object,  # type: ignore[no-untyped-def]
                                             chosen: dict, dedup: object) -> None:
    terms = [retrieval.QueryTerm(t.kind, _fix(t.value, world), t.weight) for t in terms]
    try:
        built = retrieval.Filters.parse(**chosen)
        hits = opened.search(terms, k, filters=built, dedup=dedup)  # type: ignore[arg-type]
    except MMSearchError:
        return
    assert isinstance(hits, list) and len(hits) <= int(k)  # type: ignore[call-overload]
    assert all(math.isfinite(h.score) for h in hits)


@SETTINGS
@given(value=st.one_of(anything, text, st.integers(-5, 2**70), st.just("IMAGE")))
def test_api_single_inputs_keep_the_contract(opened, world: dict[str, str], value: object) -> None:  # type: ignore[no-untyped-def]
    value = _fix(value, world)
    for call in (lambda: opened.search_text(value), lambda: opened.search_image(value),
                 lambda: opened.similar(value), lambda: opened.item(value), lambda: opened.find_item(value),
                 lambda: opened.search_vector(value)):
        try:
            call()
        except MMSearchError:
            pass


def test_api_odd_images_are_typed_errors(opened) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    for image in (Image.new("RGB", (0, 0)), Image.new("RGB", (1, 0)), Image.new("L", (1, 1)), Image.new("I;16", (3, 3)),
                  Image.new("RGBA", (2, 9000)), Path("/")):
        try:
            opened.search_image(image)
        except MMSearchError:
            pass
