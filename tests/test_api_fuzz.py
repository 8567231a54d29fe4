"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), on the tiny model.

Every operation the schema lists (the page's API and clip-retrieval's protocol)
is called with generated requests, valid and invalid: no answer may be a 500,
and every answer must have a status, a media type and a body that the schema
declares for it. Bounded: a fixed number of examples per operation, seeded,
with a deadline per example, so the run takes seconds.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the API fuzz test needs 'schemathesis' (the test extra)")
pytest.importorskip("fastapi", reason="the server needs the 'fastapi' package")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from retrieval.api import create_index  # noqa: E402
from retrieval.server import create_app  # noqa: E402

from .conftest import make_image  # noqa: E402

EXAMPLES_PER_OPERATION = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, tiny_encoder):
    """The schema of a served tiny-model index (6 pictures, a copy, 3 captions), with clip-retrieval on."""
    base = tmp_path_factory.mktemp("fuzz")
    folder = base / "photos"
    folder.mkdir()
    for seed in range(6):
        make_image(seed).save(folder / f"img{seed}.{'jpg' if seed % 2 else 'png'}")
    shutil.copyfile(folder / "img1.jpg", folder / "copy.jpg")
    captions = base / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n"
                                for i, t in enumerate(("a red square", "two circles", "a blue sky"))))
    index = create_index("fuzz", encoder=tiny_encoder, root=base / "root")
    index.add_folder(folder)
    index.add_texts(captions, id_field="id")
    app = create_app(index, clip_retrieval=True)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    index.close()


# Every operation of the schema, by label (test_every_operation_is_fuzzed keeps this list complete): a
# test per operation and mode names what failed. (schemathesis' own pytest plugin cannot load a schema
# from a fixture under pytest 9, so its Hypothesis strategies are driven here directly.)
OPERATIONS = [
    "GET /api/health", "GET /api/info", "GET /api/search", "POST /api/search", "POST /api/search/image",
    "GET /api/items/{item_id}/similar", "GET /api/items/{item_id}", "GET /api/items/{item_id}/thumbnail",
    "GET /api/items/{item_id}/original", "GET /api/duplicates", "POST /api/items/{item_id}/explain",
    "POST /knn-service", "POST /metadata", "GET /indices-list",
    "GET /config.json", "GET /clip-retrieval/images/{indice_name}/{item_id}.jpg",
    "GET /clip-retrieval/originals/{indice_name}/{item_id}",
]


NO_INPUT = {"GET /api/health", "GET /api/info", "GET /indices-list", "GET /config.json"}  # nothing to get wrong


@pytest.mark.parametrize(("label", "mode"), [(label, mode) for label in OPERATIONS for mode in ("positive", "negative")
                                             if not (mode == "negative" and label in NO_INPUT)])
def test_every_answer_is_declared_and_none_is_a_500(api_schema, label: str, mode: str) -> None:
    from hypothesis import given

    from schemathesis import GenerationMode

    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=timedelta(seconds=20), derandomize=True,
              database=None, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        case.call_and_validate(checks=CHECKS)

    call()


def test_every_operation_is_fuzzed(api_schema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def test_the_schema_declares_the_error_shape_everywhere(api_schema) -> None:
    raw = api_schema.raw_schema
    for path, operations in raw["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("400", "401", "403", "404", "413", "422", "500", "503"):
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, status)
    assert set(raw["paths"]) >= {"/api/search/image", "/knn-service", "/api/items/{item_id}/original"}
    assert Path(__file__).name == "test_api_fuzz.py"
