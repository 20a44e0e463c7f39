"""Every README code block marked runnable runs as pasted, against real gateways.

The convention: an HTML comment on the line right before a ```sh or ```python fence marks the block
(GitHub does not render it; it is plain in the source):

    <!-- runnable -->                               the block must exit 0
    <!-- runnable: fails with InvalidArgument -->   the block must fail, and print the word (a documented error)

Unmarked blocks are not run: those that need real provider keys or a file of the reader's own, start a
server in the foreground, run `make` or docker. MIN_RUNNABLE catches a marker lost in an edit.

Each block runs as a reader would run it after the README's set-up, with two differences that the test
makes explicit:

- The gateways: the embedded default (`make run`, documented at 127.0.0.1:50051) and examples/secure.yaml
  (TLS and the token dev-token-0123456789, documented at 127.0.0.1:50052) run as `python -m server`
  children, each on a port it chose itself, so two test runs side by side never collide. The test replaces
  the literal addresses 127.0.0.1:50051 and 127.0.0.1:50052 in a block by the real ones, and exports
  GATEWAY_TARGET as the first (the Python client's default target is 127.0.0.1:50051). Nothing else of
  the environment's GATEWAY_* and OPENAI_* variables reaches a block: a block exports what it needs.
- The folder: a scratch folder laid out like a checkout after `make certs`: the repository's top-level
  entries linked in, examples/ copied (its relative TLS paths must resolve inside the scratch folder) and
  dev/tls/ freshly made.

sh blocks run with `bash -e -o pipefail` (the first failing command fails the block); python blocks are
saved to a file and run with this interpreter. stdin is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from server.config import GatewayConfig
from server.routing.catalog import BUILTIN_MODELS, PROVIDER_PRESETS
from tests.process import REPO_ROOT, child_env, run_gateway
from tools.devcerts import make_certs

README = REPO_ROOT / "README.md"
# The README's blocks marked runnable today; lower it only with a reason in the commit message.
MIN_RUNNABLE = 11
DEFAULT_ADDRESS = "127.0.0.1:50051"  # `make run`
SECURE_ADDRESS = "127.0.0.1:50052"  # examples/secure.yaml
SECURE_TOKEN = "dev-token-0123456789"  # what the README exports for examples/secure.yaml
# A fail-safe for a block that hangs, not a measure: the slowest block takes a few seconds.
BLOCK_TIMEOUT_S = 120.0

_MARKER = re.compile(r"<!--\s*runnable(?::\s*(?P<option>.*?))?\s*-->")
_FENCE = re.compile(r"^```(?P<info>\S*)\s*$")
_FAILS_WITH = re.compile(r"fails with (?P<word>\S+)")
_LOCAL_ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1?\]):\d+")
_NOT_LINKED = {".git", "dev", "examples", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True, slots=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    fails_with: str | None  # None: the block must exit 0

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}"


def parse_blocks(text: str) -> list[Block]:
    """The marked blocks of `text`; ValueError for a marker that is not right before a sh or python fence.
    A marker inside a code block is text, not a marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    in_block = False
    for i, line in enumerate(lines):
        if in_block or _FENCE.match(line):
            in_block = not (in_block and line == "```")
            continue
        marker = _MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        opening = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if opening is None or opening["info"] not in ("sh", "python"):
            raise ValueError(f"README line {i + 1}: a runnable marker must be right before a ```sh or ```python fence")
        option = marker["option"] or ""
        fails = _FAILS_WITH.fullmatch(option)
        if option and fails is None:
            raise ValueError(f"README line {i + 1}: unknown runnable option {option!r} (known: 'fails with WORD')")
        end = next(j for j in range(i + 2, len(lines)) if lines[j] == "```")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        blocks.append(Block(i + 2, opening["info"], code, fails["word"] if fails else None))
    return blocks


RUNNABLE = parse_blocks(README.read_text())


def test_enough_blocks_are_marked_runnable() -> None:
    assert len(RUNNABLE) >= MIN_RUNNABLE, [b.id for b in RUNNABLE]
    assert {b.language for b in RUNNABLE} == {"sh", "python"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<!-- runnable -->\n```yaml\na: 1\n```\n", "right before"),
        ("<!-- runnable -->\n\n```sh\ntrue\n```\n", "right before"),
        ("<!-- runnable: sometimes -->\n```sh\ntrue\n```\n", "unknown runnable option"),
    ],
)
def test_a_misplaced_or_unknown_marker_is_an_error(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_blocks(text)


def test_only_marked_blocks_are_run_and_a_marker_inside_a_block_is_text() -> None:
    text = (
        "```sh\nmake run\n```\n"
        "```md\n<!-- runnable -->\n```\n"
        "<!-- runnable: fails with Unauthenticated -->\n```sh\ngrpcurl\n```\n"
        "<!-- runnable -->\n```python\nprint()\n```\n"
    )
    blocks = [(b.line, b.language, b.code, b.fails_with) for b in parse_blocks(text)]
    assert blocks == [(8, "sh", "grpcurl\n", "Unauthenticated"), (12, "python", "print()\n", None)]


def test_a_block_naming_another_local_address_is_refused() -> None:
    machine = ReadersMachine(Path(), "127.0.0.1:40001", "127.0.0.1:40002")
    assert machine.prepared("grpcurl 127.0.0.1:50051 list; x 127.0.0.1:50052\n") == (
        "grpcurl 127.0.0.1:40001 list; x 127.0.0.1:40002\n"
    )
    with pytest.raises(AssertionError, match="localhost:50051"):
        machine.prepared("grpcurl localhost:50051 list\n")


def yaml_blocks(text: str) -> list[str]:
    """Every ```yaml block of `text` (config excerpts: read, not run)."""
    return re.findall(r"^```yaml\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_yaml_excerpts_are_config_and_ask_upstreams_for_their_real_model_ids() -> None:
    """A preset provider's upstream is asked for an id its built-in table knows (the Resilience example
    once asked Anthropic for 'claude-sonnet-4.5', a catalog alias; Anthropic's id is claude-sonnet-4-5)."""
    excerpts = [yaml.safe_load(block) for block in yaml_blocks(README.read_text())]
    assert len(excerpts) >= 3
    config_keys = {f.name for f in dataclasses.fields(GatewayConfig)}
    asked = []
    for excerpt in excerpts:
        assert set(excerpt) <= config_keys, set(excerpt) - config_keys
        for model in excerpt.get("models", []):
            deployments = model.get("deployments") or [model]
            asked += [(d["provider"], d.get("upstream_model", model["name"])) for d in deployments]
    presets = [(provider, upstream) for provider, upstream in asked if provider in PROVIDER_PRESETS]
    assert presets
    assert [f"{p}/{u}" for p, u in presets if f"{p}/{u}" not in BUILTIN_MODELS] == []


@dataclass(frozen=True, slots=True)
class ReadersMachine:
    """The scratch checkout and the addresses its gateways really listen on."""

    folder: Path
    default_address: str
    secure_address: str

    def prepared(self, code: str) -> str:
        """`code` with the documented addresses replaced; a block that names any other local address would
        reach whatever listens there (a developer's own `make run`), so it is an error."""
        code = code.replace(DEFAULT_ADDRESS, self.default_address).replace(SECURE_ADDRESS, self.secure_address)
        ours = {self.default_address, self.secure_address}
        others = set(_LOCAL_ADDRESS.findall(code)) - ours
        assert not others, f"a runnable block may name only {DEFAULT_ADDRESS} and {SECURE_ADDRESS}, not {others}"
        return code


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def machine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReadersMachine]:
    folder = tmp_path_factory.mktemp("checkout")
    for entry in REPO_ROOT.iterdir():
        if entry.name not in _NOT_LINKED:
            (folder / entry.name).symlink_to(entry)
    shutil.copytree(REPO_ROOT / "examples", folder / "examples")
    (folder / "dev" / "tls").mkdir(parents=True)
    make_certs(folder / "dev" / "tls")
    secure = ("--config", str(folder / "examples" / "secure.yaml"))
    async with contextlib.AsyncExitStack() as stack:
        default = await stack.enter_async_context(run_gateway("--listen", "127.0.0.1:0"))
        tls = await stack.enter_async_context(
            run_gateway(*secure, "--listen", "127.0.0.1:0", env={"GATEWAY_TOKEN": SECURE_TOKEN})
        )
        yield ReadersMachine(folder, await default.wait_ready(), await tls.wait_ready())


async def run_block(block: Block, machine: ReadersMachine) -> tuple[int, str]:
    """The block's exit status and its stdout and stderr together."""
    code = machine.prepared(block.code)
    if block.language == "python":
        script = machine.folder / f"readme_{block.id}.py"
        script.write_text(code)
        command = [sys.executable, script.name]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=machine.folder,
        env=child_env({"GATEWAY_TARGET": machine.default_address}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BLOCK_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"README {block.id} still running after {BLOCK_TIMEOUT_S} s:\n{code}") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
async def test_the_readme_block_runs_as_pasted(block: Block, machine: ReadersMachine) -> None:
    status, output = await run_block(block, machine)
    shown = f"README {block.id} exited {status}:\n{block.code}\n--- output ---\n{output}"
    assert "Traceback" not in output, shown
    if block.fails_with is None:
        assert status == 0, shown
    else:
        assert status not in (0, 127), shown  # 127: a command that does not exist fails too, for the wrong reason
        assert block.fails_with in output, shown
