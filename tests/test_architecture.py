"""The import rules of ARCHITECTURE.md, checked on the source (an AST walk, no imports run).

- faiss is imported by ``retrieval.ann`` alone; torch and open_clip by the model
  side (encoder, its fast paths and text export) and the training package alone;
- the faces (the CLI package and the HTTP server) reach the engine only through
  the door: ``api``, ``query``, ``search`` (plus typed errors, constants and
  their own helpers);
- data flows one way: every module imports only its own layer or the layers
  below it, and there is no import cycle.

Imports under ``if TYPE_CHECKING:`` are type hints, not dependencies, and are
ignored; imports inside functions (lazy ones) count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: list[set[str]] = [
    {"errors", "config", "manifest", "model_spec", "jxl", "synthetic", "synthetic_scenes", "synthetic_vectors", "text_light",
     "store_schema", "export_cache", "model_folder", "multilingual", "multilingual_figures", "text_normalise", "hf_text_light",
     "synthetic_zh", "cpu_threads", "image_onnx"},
    {"loading", "sources", "originals", "photo_meta", "photo_tags", "photo_time", "xmp", "gazetteer",
     "places", "video", "video_decode", "video_frames", "video_select", "video_pixels", "video_meta", "video_files"},
    # what files exist; decoding them (pictures, video frames); their metadata and places; opening them to serve
    {"embed", "urls", "video_embed"},  # files -> pixels -> vectors (with any encoder)
    {"encoder", "fast_paths", "text_export", "hf_text_export", "model_save", "zeroshot",
     "image_export", "image_choice", "image_accuracy",
     "explain", "explain_towers", "explain_overlay", "explanation"},  # the model side (explain_overlay, explanation: torch-free)
    {"search", "photo_filters", "video_moments", "ann", "ann_policy", "ann_tuning", "ann_lifecycle", "vector_copy",
     "duplicates"},  # vectors: ANN, tuning, ranking
    {"store", "store_salvage", "store_rows", "store_db", "store_photos", "store_checks", "store_videos",
     "store_vectors"},  # the index folder
    {"indexer", "photo_store", "video_index", "maintenance", "integrity", "catalog", "shards", "thumbnails"},
    # changing an index
    {"merge", "engine_ray", "shard_embed"},  # embedding elsewhere
    {"query"},  # terms -> a vector
    {"api_items", "api_explain", "api_models"},  # the door's halves
    {"api"},  # the door
    {"html_report", "explain_report", "duplicates_report", "server_guard", "server_files", "server_ranges", "server_http", "server",
     "server_clip_retrieval", "immich_models", "immich_ml"},  # faces
    {"cli", "cli.options", "cli.indexing", "cli.searching", "cli.inspecting", "cli.duplicates", "cli.maintenance",
     "cli.serving", "cli.scaling", "cli.explaining",
     "cli.training", "cli.__main__", "__init__"},
]
TRAINING = "train"  # a separate application over the model side: it may import layers up to the model side
MODEL_SIDE = {"encoder", "fast_paths", "text_export", "hf_text_export", "model_save", "explain", "explain_towers",
              "image_export", "image_choice"}
DOOR = {"api", "query", "search", "errors", "config"}
FACE_HELPERS = {"html_report", "explain_report", "duplicates_report", "thumbnails", "server_guard", "server_files", "server_ranges",
                "server_http",
                "immich_models", "cpu_threads"}  # cpu_threads: how OpenMP waits, chosen before torch loads
FACES = {name for name in LAYERS[-1] if name.startswith("cli")} | {"server", "server_clip_retrieval", "immich_ml"}
EXTRA_FOR_FACE = {"cli.serving": {"server"}, "cli.training": {"train", "synthetic"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports at run time (absolute names, 'retrieval.' stripped for our own)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0:
                    found.add(child.module or "")
                else:
                    base = package.split(".") if package and package != "__init__" else []
                    base = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    target = ".".join([*base, child.module] if child.module else base)
                    if child.module is None:  # from . import a, b
                        found.update(".".join([*base, alias.name]) for alias in child.names)
                    else:
                        found.add("retrieval." + target if target else "retrieval")
                        continue
                    found.discard("")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out = set()
    for imported in found:
        if imported.startswith("retrieval."):
            out.add(imported[len("retrieval."):])
        elif imported == "retrieval":
            out.add("__init__")
        else:  # a third-party module, or one of ours named by 'from . import x'
            out.add(imported)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _ours(graph: dict[str, set[str]], imported: str) -> str | None:
    """The module of ours an import names (``cli.options``, ``train``), or None for a third-party one."""
    if imported in graph:
        return imported
    head = imported.split(".")[0]
    return head if head in graph else None


def _layer(module: str) -> int | None:
    for level, names in enumerate(LAYERS):
        if module in names:
            return level
    return None


GRAPH = _graph()


def test_every_module_has_a_place_in_the_layers() -> None:
    unplaced = [m for m in GRAPH if _layer(m) is None and m.split(".")[0] not in (TRAINING, "demo")]
    assert not unplaced, f"add these modules to a layer in tests/test_architecture.py: {unplaced}"


def test_faiss_is_imported_by_the_ann_module_alone() -> None:
    users = sorted(m for m, imports in GRAPH.items() if any(i.split(".")[0] == "faiss" for i in imports))
    assert users == ["ann"]


@pytest.mark.parametrize("library", ["torch", "open_clip", "torchvision"])
def test_torch_and_open_clip_stay_on_the_model_side(library: str) -> None:
    users = {m for m, imports in GRAPH.items() if any(i.split(".")[0] == library for i in imports)}
    outside = sorted(m for m in users if m not in MODEL_SIDE and m.split(".")[0] != TRAINING)
    assert not outside, f"{library} imported outside the model side and train/: {outside}"


def test_faces_reach_the_engine_only_through_the_door() -> None:
    problems = []
    for face in sorted(FACES):
        allowed = DOOR | FACE_HELPERS | FACES | {"__init__"} | EXTRA_FOR_FACE.get(face, set())
        for imported in GRAPH[face]:
            ours = _ours(GRAPH, imported)
            if ours is not None and ours not in allowed and ours.split(".")[0] not in allowed:
                problems.append(f"{face} imports {ours}")
    assert not problems, problems


def test_data_flows_one_way() -> None:
    upward = []
    for module, imports in GRAPH.items():
        if module.split(".")[0] in (TRAINING, "demo"):
            mine = _layer("encoder") if module.split(".")[0] == TRAINING else len(LAYERS)
        else:
            mine = _layer(module)
        assert mine is not None
        for imported in imports:
            ours = _ours(GRAPH, imported)
            if ours is None or ours.split(".")[0] in (TRAINING,) and module.split(".")[0] in (TRAINING, "demo"):
                continue
            if ours.split(".")[0] == TRAINING:
                if module not in ("cli.training", "demo"):
                    upward.append(f"{module} imports the training package")
                continue
            theirs = _layer(ours)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} (layer {mine}) imports {ours} (layer {theirs})")
    assert not upward, upward


def test_no_import_cycles() -> None:
    edges = {m: {o for i in imports if (o := _ours(GRAPH, i)) is not None and o != m} for m, imports in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_rules_see_real_imports() -> None:
    """Guards the walker itself: known edges are found, type-only ones are not."""
    assert "faiss" in GRAPH["ann"]
    assert "store" in GRAPH["indexer"]
    assert "api" in GRAPH["cli.searching"]  # a lazy import inside a command
    assert "store" not in GRAPH["search"]  # only under TYPE_CHECKING there
