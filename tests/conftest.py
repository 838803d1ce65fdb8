import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import write_tiny_checkpoint  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random HD checkpoint with tokenizer, shared read-only by tests."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "hd")


@pytest.fixture(scope="session")
def tiny_ckpt_vd(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "vd", decompose="vertical", seed=1)


@pytest.fixture(scope="session")
def shared_corpora(tmp_path_factory) -> Path:
    """One corpus cache for the session: corpora are deterministic builds, and every default
    selection compares with every corpus (tests of building itself use their own, fresh_corpora)."""
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture
def fresh_corpora(tmp_path, monkeypatch) -> Path:
    """An empty corpus cache for this test alone."""
    path = tmp_path / "home" / "corpora"
    monkeypatch.setenv("MONET_EDIT_CORPORA", str(path))
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, shared_corpora):
    """Never touch the user's cache: every test gets its own MONET_EDIT_HOME (profiles, ...)."""
    monkeypatch.setenv("MONET_EDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MONET_EDIT_CORPORA", str(shared_corpora))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
