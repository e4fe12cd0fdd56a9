"""Fixtures: one tiny trained run (greetings data, hashing encoder, identity core, nearest decoder:
trains in well under a second, no model download) and in-process clients of the app serving it."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained run directory (the core's tiny greetings config); its embedding cache beside it."""
    from cellnet_core import api
    from cellnet_core.testing.fakes import GREETINGS_CONFIG

    d = tmp_path_factory.mktemp("serve-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLNET_CACHE_DIR", str(d / "cache"))
        (d / "greet.yaml").write_text(GREETINGS_CONFIG)
        api.train(str(d / "greet.yaml"), d / "run", echo=None)
    return d / "run"


@pytest.fixture(scope="session")
def tiny_pipe(tiny_run):
    """The tiny run, loaded once."""
    from cellnet_core import api

    with pytest.MonkeyPatch.context() as mp:  # the cache folder is fixed when the pipeline is built
        mp.setenv("CELLNET_CACHE_DIR", str(tiny_run.parent / "cache"))
        return api.load_run(tiny_run, warn=False)


@pytest.fixture
def make_client(tiny_pipe):
    """``make_client(gate=None, **settings) -> TestClient`` of an app serving the tiny run (the
    lifespan runs: loading and the batch worker). ``gate``: a :class:`threading.Event` the loader
    waits for, to hold the run in its loading state."""
    from fastapi.testclient import TestClient

    from cellnet_serve import ServeSettings, Service, create_app

    made = []

    def make(gate: threading.Event | None = None, **settings):
        def loader():
            if gate is not None:
                gate.wait(30)
            return tiny_pipe

        service = Service(loader, ServeSettings(**settings), name="tiny")
        client = TestClient(create_app(service))
        client.__enter__()
        made.append(client)
        if gate is None:
            assert service.wait_ready(30)
        client.service = service
        return client

    yield make
    for c in made:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    """A client of the tiny run with the default settings, the run loaded."""
    return make_client()
