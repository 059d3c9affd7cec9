from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory) -> str:
    """One synthetic cache for the session: each tiny checkpoint is built once."""
    return str(tmp_path_factory.mktemp("zmlx-synthetic"))
