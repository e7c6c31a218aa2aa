import os

import pytest

# Workers inherit the environment: keep them single-threaded so several fit on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def no_fault(monkeypatch):
    monkeypatch.delenv("PPSVD_FAULT", raising=False)
