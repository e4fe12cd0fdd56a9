import pytest


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Core tests never touch the user's embedding cache."""
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "emb-cache"))
