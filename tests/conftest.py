"""Shared fixtures: a tiny synthetic stream and a helper that runs a method through the real
runner, fast enough for CI (seconds per method)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curb.runner import CellSpec, run_cell

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_root() -> Path | None:
    """MovieLens root from $CURB_DATA (CI points it at the read-only shared copy)."""
    root = os.environ.get("CURB_DATA")
    return Path(root) if root and Path(root).is_dir() else None


def needs_data(release: str):
    root = data_root()
    return pytest.mark.skipif(
        root is None or not (root / release).is_dir(),
        reason=f"MovieLens {release} not found: set CURB_DATA to a folder holding {release}/ "
        "(MovieLens may not be redistributed, so the repository does not ship it)",
    )


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write to the user's ~/.cache: built streams and fetched data go to a temp dir."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def tiny_stream():
    from curb.datasets.synthetic import generate

    return generate(n_users=400, n_items=60, seq_len=12)


@pytest.fixture
def run_mini(tmp_path):
    """Run one method on `synthetic-mini` through the real runner; returns the result dict."""

    def run(method: str, order: str = "default", noise: int | None = None, seed: int = 0, **overrides: str) -> dict:
        spec = CellSpec(method, "synthetic-mini", order, noise, seed, None,
                        tuple(sorted((k, str(v)) for k, v in overrides.items())))
        return run_cell(spec, tmp_path / "runs", echo=lambda *_: None)

    return run


@pytest.fixture(scope="session")
def t1_cache(tmp_path_factory) -> Path:
    """Where `harness.Harness(..., t1_cache=...)` caches the real pre-trained T1: trained once a session."""
    return tmp_path_factory.getbasetemp() / "t1-cache"
