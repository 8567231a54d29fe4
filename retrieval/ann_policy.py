"""Which ANN index to build for a size and a memory budget (the rules autofaiss taught us).

``choose_ann`` is a small set of explicit rules from the number of items and
a memory budget; the chosen parameters and the rule that chose them are saved
in the manifest. :mod:`retrieval.ann_tuning` then sets the search parameters
by measured recall, and ``alternatives`` names the other builds the budget
allows when the first cannot reach the target.
"""

from __future__ import annotations

import math

from .ann import ANN_TYPES, HNSW_QUANTIZER_FROM, AnnConfig
from .errors import MMSearchError

DEFAULT_MAX_MEMORY = 4 * 1024**3  # bytes the ANN index may take in RAM, unless --max-memory says otherwise
EXACT_BELOW = 20_000  # brute force over <20k vectors takes ~1-2 ms: no approximation needed
DEFAULT_TARGET_RECALL = 0.95
HNSW_M = 32
PQ_SIZES = (128, 64, 32, 16, 8)  # code bytes per vector, largest first
FAST_SCAN_BITS = 4  # in-memory IVF-PQ codes: 4-bit sub-quantizers, scanned 32 at a time with SIMD ("x4fsr")
ON_DISK_PQ_BYTES = 64  # lists on disk keep 8-bit codes: FAISS's on-disk lists cannot hold fast-scan blocks
# From here ``auto`` prefers fast-scan codes + re-ranking to full vectors even when full vectors fit: on 1M
# CLIP-like vectors they reached the same recall at ~1/7 of IVF-Flat's latency (2.7 vs 19.8 ms; docs/scaling.md),
# while below ~200k items a full-vector scan of the lists a caption query needs still takes a few ms.
FAST_SCAN_FROM = 200_000
COPY_DTYPE = "float16"  # the re-rank copy of the kinds whose own scores are approximate
REBUILD_GROWTH = 4.0  # rebuild a trained index once the collection is 4x what it was built for


def nlist_for(n: int) -> int:
    """Inverted lists: ~4*sqrt(n), a power of two, at least 16 vectors per list on average."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n / nlist < 16:
        nlist //= 2
    return int(min(nlist, 262_144))


def ivf_prefix(nlist: int) -> str:
    """``IVF{nlist}``, with an HNSW graph over the centroids from :data:`~retrieval.ann.HNSW_QUANTIZER_FROM` lists."""
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"


def estimate_memory(config: AnnConfig, n: int, dim: int) -> int:
    """Approximate RAM of the index in bytes (vectors/codes, ids, lists, quantizers).

    Lists on disk are not counted (the page cache holds what queries read),
    nor is the re-rank copy (memory-mapped; see :func:`estimate_disk`).
    """
    ids = 16 * n  # id per entry + the id map's bookkeeping
    if config.type == "flat":
        return 4 * dim * n + ids
    if config.type == "hnsw":
        links = int(2 * (config.hnsw_m or HNSW_M) * 4 * 1.1)  # level-0 neighbours + upper levels
        return (4 * dim + links) * n + ids
    nlist = config.nlist or 1
    centroids = 4 * dim * nlist + (int(2 * 32 * 4 * 1.1) * nlist if nlist >= HNSW_QUANTIZER_FROM else 0)
    lists = 0 if config.lists_on_disk else n
    if config.type == "ivf":
        return (4 * dim + 8) * lists + centroids
    code = code_bytes(config)
    opq = 4 * dim * dim
    codebooks = 4 * 2 ** (config.pq_bits or 8) * dim
    # Fast-scan lists are stored in blocks of 32 codes: half a block of padding per list, on average.
    blocks = 16 * code * nlist if config.pq_bits == FAST_SCAN_BITS and not config.lists_on_disk else 0
    return (code + 8) * lists + centroids + opq + codebooks + blocks


def code_bytes(config: AnnConfig) -> int:
    """Bytes of one vector's PQ code."""
    return -(-(config.pq_m or 8) * (config.pq_bits or 8) // 8)


def estimate_disk(config: AnnConfig, n: int, dim: int) -> int:
    """Approximate bytes on disk beside items.sqlite: index.faiss, lists file, re-rank copy."""
    if config.type in ("ivf", "ivfpq"):
        codes = 4 * dim if config.type == "ivf" else code_bytes(config)
        index = (codes + 8) * n + 4 * dim * (config.nlist or 1)
    else:
        index = estimate_memory(config, n, dim)
    copy = {"float16": 2 * dim + 8, "int8": dim + 12}.get(config.copy_dtype or "", 0) * n
    return index + copy


def make_config(
    kind: str, n: int, dim: int, *, max_memory: int = DEFAULT_MAX_MEMORY, rule: str = "", opq: bool = False
) -> AnnConfig:
    """The config of one explicit kind (``--ann flat|hnsw|ivf|ivfpq``), sized for ``n`` items.

    ``ivfpq`` takes the largest PQ code (64/32/16/8 bytes) whose lists fit
    ``max_memory``; when even 8-byte codes do not, or ``ivf``'s full vectors
    do not, the lists go **on disk** (memory-mapped; RAM holds the centroids).
    ``opq`` adds FAISS's OPQ rotation before PQ: more recall per byte, but its
    training costs minutes at 512-d, so it is what the builder tries when the
    plain code misses the target (:func:`alternatives`).
    """
    if kind == "flat":
        return AnnConfig("flat", "IDMap2,Flat", rule=rule or "asked for exact search", built_for=n)
    if kind == "hnsw":
        return AnnConfig(
            "hnsw", f"IDMap2,HNSW{HNSW_M},Flat", hnsw_m=HNSW_M, rule=rule or "asked for HNSW", built_for=n
        )
    nlist = nlist_for(n)
    prefix = ivf_prefix(nlist)
    if kind == "ivf":
        config = AnnConfig("ivf", f"{prefix},Flat", nlist=nlist, rule=rule or "asked for IVF", built_for=n)
        if estimate_memory(config, n, dim) > max_memory:
            config = config.but(lists_on_disk=True,
                                rule=rule or f"asked for IVF; its lists exceed the {_gib(max_memory)} budget: on disk")
        return config
    if kind == "ivfpq":
        return _ivfpq_config(n, dim, nlist, prefix, max_memory=max_memory, rule=rule, opq=opq)
    raise MMSearchError(f"unknown ANN type {kind!r}: use auto, {', '.join(ANN_TYPES)}")


def _ivfpq_config(
    n: int, dim: int, nlist: int, prefix: str, *, max_memory: int, rule: str, opq: bool
) -> AnnConfig:
    """The largest fast-scan code whose lists fit ``max_memory``, or 8-bit codes in lists on disk."""
    # A 4-bit code of b bytes has 2b sub-quantizers, each over dim / 2b dimensions.
    fast = [b for b in PQ_SIZES if dim % (2 * b) == 0]
    slow = [b for b in PQ_SIZES if dim % b == 0]
    if not slow:
        raise MMSearchError(f"IVF-PQ needs a dimension divisible by 8, this index has {dim}")

    def sized(b: int, bits: int, on_disk: bool) -> AnnConfig:
        m = b * 8 // bits
        codes = f"PQ{m}x4fsr" if bits == FAST_SCAN_BITS else f"PQ{m}x8"  # fsr: fast scan of residuals
        rotation = f"OPQ{opq_blocks(m, dim)}," if opq else ""
        return AnnConfig(
            "ivfpq", f"{rotation}{prefix},{codes}", nlist=nlist, pq_m=m, pq_bits=bits,
            built_for=n, copy_dtype=COPY_DTYPE, lists_on_disk=on_disk,
            rule=rule or f"asked for IVF-PQ ({b} bytes per vector{', lists on disk' if on_disk else ''})",
        )

    fits = [c for c in (sized(b, FAST_SCAN_BITS, False) for b in fast) if estimate_memory(c, n, dim) <= max_memory]
    if not fast:  # no 4-bit layout divides the dimension: 8-bit codes in memory
        fits = [c for c in (sized(b, 8, False) for b in slow) if estimate_memory(c, n, dim) <= max_memory]
    if fits:
        return fits[0]
    on_disk = [b for b in slow if b <= ON_DISK_PQ_BYTES]
    config = sized(on_disk[0] if on_disk else slow[-1], 8, True)
    if estimate_memory(config, n, dim) > max_memory:
        raise MMSearchError(
            f"--max-memory {max_memory} bytes cannot even hold the {nlist} centroids of {n} items "
            f"({estimate_memory(config, n, dim)} bytes with lists on disk); raise it"
        )
    return config


def opq_blocks(m: int, dim: int) -> int:
    """The sub-spaces OPQ balances its rotation over: ``m``, but at least 8 dimensions each.

    FAISS trains OPQ with an 8-bit PQ over its sub-spaces. Over a 4-bit code's narrow ones it crawls:
    OPQ64 on 30k 64-d vectors (one dimension each) ran past 5 minutes, OPQ8 built the index in 7 s.
    """
    blocks = min(m, max(1, dim // 8))
    while dim % blocks:
        blocks -= 1
    return blocks


def choose_ann(n: int, dim: int, *, max_memory: int = DEFAULT_MAX_MEMORY) -> AnnConfig:
    """``--ann auto``: the documented rule.

    1. fewer than 20k items: ``flat`` (exact; brute force is already fast);
    2. else, below :data:`FAST_SCAN_FROM` items, if full vectors fit the budget:
       ``ivf`` (IVF{~4 sqrt(n)},Flat; exact scores);
    3. else: ``ivfpq`` with the largest 4-bit fast-scan code (128/64/32/16/8
       bytes) that fits, and exact re-ranking of the top candidates (from a
       float16 copy, refined from the stored float32 vectors): from
       :data:`FAST_SCAN_FROM` items this is chosen even when full vectors fit,
       because it reaches the same recall several times faster;
    4. else (not even 8-byte codes fit): ``ivfpq`` with 64-byte (8-bit) codes
       whose lists live on disk, memory-mapped.
    From 8,192 lists the coarse quantizer is an HNSW graph over the centroids.
    HNSW is never chosen automatically: FAISS cannot delete from it and its build is the
    slowest on CPUs; ask for it with ``--ann hnsw``.
    """
    if n < EXACT_BELOW:
        return make_config("flat", n, dim, rule=f"auto: {n} < {EXACT_BELOW} items, exact search")
    ivf = make_config("ivf", n, dim, max_memory=max_memory)
    if not ivf.lists_on_disk and n < FAST_SCAN_FROM:
        return ivf.but(rule=f"auto: {n} items, full vectors fit the {_gib(max_memory)} budget: IVF")
    pq = make_config("ivfpq", n, dim, max_memory=max_memory)
    code = f"IVF-PQ {code_bytes(pq)}-byte codes"
    if pq.lists_on_disk:
        why = f"not even {min(PQ_SIZES)}-byte codes fit the {_gib(max_memory)} budget: {code}, lists on disk"
    elif not ivf.lists_on_disk:
        why = f"at least {FAST_SCAN_FROM} items: {code}, fast scan (faster than full vectors at the same recall)"
    else:
        why = f"full vectors exceed the {_gib(max_memory)} budget: {code}, fast scan"
    return pq.but(rule=f"auto: {n} items, {why} + re-ranking")


def alternatives(config: AnnConfig, n: int, dim: int, *, max_memory: int = DEFAULT_MAX_MEMORY) -> list[AnnConfig]:
    """Other builds within the same budget that may reach a target ``config`` missed, most promising first.

    For IVF-PQ: full vectors (IVF-Flat, exact scores) when they fit the
    budget, then OPQ (a learned rotation that spreads the variance evenly over
    the sub-quantizers: the same bytes, more recall, minutes of training).
    """
    if config.type != "ivfpq":
        return []
    out = []
    ivf = make_config("ivf", n, dim, max_memory=max_memory)
    if not ivf.lists_on_disk:
        out.append(ivf.but(rule=config.rule + "; full vectors instead (the code missed the target)"))
    if not config.factory.startswith("OPQ"):
        opq = make_config("ivfpq", n, dim, max_memory=max_memory, opq=True)
        out.append(opq.but(rule=config.rule + ", with OPQ (the plain code missed the target)"))
    return out


def needs_rebuild(config: AnnConfig, n: int) -> bool:
    """Whether the collection has grown (or shrunk) enough that the index should be rebuilt."""
    base = max(config.built_for, 1)
    if config.type == "flat":
        return False
    return n > REBUILD_GROWTH * base or n < base / REBUILD_GROWTH


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"
