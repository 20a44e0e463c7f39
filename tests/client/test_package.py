"""The package's public names: all of them load, lazily, and importing the package alone imports no grpc."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest

import client
from tests.conftest import repo_root


def test_every_public_name_loads_from_its_module() -> None:
    homes = client._HOME  # the lazy import table: it must list exactly the public names
    assert sorted(homes) == sorted(client.__all__)
    for name, module in homes.items():
        assert getattr(client, name) is getattr(importlib.import_module(module), name)
    assert set(client.__all__) <= set(dir(client))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'Nope'"):
        _ = client.Nope


async def test_importing_the_package_imports_no_grpc_until_a_name_is_used() -> None:
    probe = (
        "import sys\n"
        "import client\n"
        "assert 'grpc' not in sys.modules\n"
        "from client import AIClient\n"
        "assert 'grpc' in sys.modules\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", probe, cwd=repo_root())
    assert await asyncio.wait_for(process.wait(), 30) == 0
