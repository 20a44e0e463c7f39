"""The README's InteractiveStream example, run as written with the real grpcurl against the demo model.

The command, its heredoc and the output shown after it are read from README.md, so the example cannot
drift from what the gateway does; only the address is changed to the test gateway's.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from typing import Any

from server.app import Gateway
from tests.conftest import repo_root
from tests.integration.test_grpcurl import GRPCURL, Run

README_ADDRESS = "127.0.0.1:50051"


def readme_example() -> tuple[list[str], str, list[Any]]:
    """The grpcurl arguments, the heredoc it reads, and the responses the README shows."""
    readme = (repo_root() / "README.md").read_text()
    section = readme[readme.index("\n## InteractiveStream\n") :]
    command, heredoc = re.search(r"```sh\n(.*? <<EOF)\n(.*?\n)EOF\n```", section, re.DOTALL).groups()  # type: ignore[union-attr]
    shown = re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    args = shlex.split(command.removesuffix(" <<EOF"))
    assert args[0] == ".venv/bin/grpcurl"
    return args[1:], heredoc, [json.loads(line) for line in shown.splitlines()]


async def test_the_readme_grpcurl_example_works_as_pasted(demo_gateway: Gateway) -> None:
    args, heredoc, shown = readme_example()
    assert README_ADDRESS in args
    args = [f"127.0.0.1:{demo_gateway.port}" if a == README_ADDRESS else a for a in args]

    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(heredoc.encode()), timeout=60)  # only against a hang
    run = Run(process.returncode or 0, out.decode(), err.decode())

    assert (run.code, run.err) == (0, "")
    printed = run.messages()
    session_id = printed[0]["started"]["session_id"]
    assert re.fullmatch("[0-9a-f]{16}", session_id)
    printed[0]["started"]["session_id"] = "…"
    assert printed == shown
