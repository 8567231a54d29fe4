"""Shared by the ANN tests: one FAISS thread, so that training does not crawl on a busy machine.

FAISS's OpenMP threads spin while they wait for each other; on a shared
2-core machine a descheduled thread makes a 0.2 s IVF-PQ training take 3-8 s
(measured). Import ``one_faiss_thread`` into a test module: it is autouse.
"""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
