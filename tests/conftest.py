from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (long sweeps over many shapes or samples) run only when ``-m`` names the marker
    (``-m slow``); the README's command, ``python -m pytest -q``, skips them and says so."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a long sweep: opt in with -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_ray():
    """One Ray on this machine for every search that runs in this process (``nas.search.main``, ``search``,
    ``nas.calibrate``): each finds it running and joins it, so only the first pays for Ray's start. Shut down
    when the session ends."""
    import ray

    from nas.cluster import start_ray

    start_ray(None)
    yield
    ray.shutdown()
