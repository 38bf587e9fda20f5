"""ComfyUI's module names are installed for these tests, as the runtime installs them for packs."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "plugins_fixtures"


@pytest.fixture(scope="session", autouse=True)
def comfy_names():
    from genloom import compat

    compat.install()
    yield compat
