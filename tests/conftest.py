import os

import pytest

os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")


@pytest.fixture(autouse=True)
def _no_tqdm_monitor():
    """tqdm's monitor thread would otherwise outlive tests that count threads."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0
    return
