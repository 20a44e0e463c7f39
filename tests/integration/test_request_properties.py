"""Property tests (hypothesis): whatever a client sends, the gateway answers OK or INVALID_ARGUMENT.

Any request (any model name, roles, contents, names, sampling numbers including NaN, infinities and the
int32 extremes, stop lists) sent to a real `python -m server` ends with OK or INVALID_ARGUMENT, with an
ErrorInfo, never another code and never an exception in the gateway. Token parsing is checked the same way:
any `authorization` metadata either names a configured client or none, and never raises.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import cast

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.auth import authenticate
from server.config import ClientToken
from tests.process import _LISTENING, REPO_ROOT, SAFETY_TIMEOUT_S, child_env
from tests.rpc import error_info

pytestmark = pytest.mark.slow  # starts `python -m server`

ROLES = st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "", "USER"]), st.text(max_size=12))
MESSAGES = st.lists(
    st.builds(pb.Message, role=ROLES, content=st.text(max_size=300), name=st.text(max_size=16)), max_size=6
)
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)
CONFIGS = st.builds(
    pb.GenerationConfig,
    temperature=st.none() | FLOATS,
    max_tokens=st.none() | st.integers(-(2**31), 2**31 - 1),
    top_p=st.none() | FLOATS,
    stop=st.lists(st.text(max_size=20), max_size=6),
)
MODELS = st.one_of(st.sampled_from(["demo", "", "Demo", "demo ", "openai/x"]), st.text(max_size=40))


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.AIServiceStub]:
    """A gateway process serving the demo model, and a blocking stub on it (hypothesis drives sync tests)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--listen", "127.0.0.1:0"],
        cwd=REPO_ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    address = None
    for line in process.stderr:  # until the start-up line, or the end of stderr if the child died
        lines.append(line)
        if found := _LISTENING.search(line):
            address = found["address"]
            break
    # Read on, so that the child never blocks on a full pipe, and so that its stderr can be checked at the end.
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    try:
        assert address is not None, "".join(lines)
        with grpc.insecure_channel(address) as channel:
            yield pb_grpc.AIServiceStub(channel)
    finally:
        process.terminate()
        process.wait(SAFETY_TIMEOUT_S)
        reader.join(SAFETY_TIMEOUT_S)
        process.stderr.close()
    stderr = "".join(lines)
    assert "Traceback" not in stderr
    assert "INTERNAL" not in stderr


def outcome(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status `call` ends with, and its ErrorInfo reason when it is INVALID_ARGUMENT."""
    try:
        call()
    except grpc.RpcError as error:
        failed = cast("grpc.Call", error)
        invalid = failed.code() is grpc.StatusCode.INVALID_ARGUMENT
        return failed.code(), error_info(error).reason if invalid else ""
    return grpc.StatusCode.OK, ""


ANSWERED = {(grpc.StatusCode.OK, "")}
REFUSED = {(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_NOT_FOUND")}


_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(model=MODELS, messages=MESSAGES, config=CONFIGS)
def test_any_generate_request_is_answered_or_refused_as_invalid(
    stub: pb_grpc.AIServiceStub, model: str, messages: list[pb.Message], config: pb.GenerationConfig
) -> None:
    req = pb.GenerateRequest(model=model, messages=messages, config=config)
    assert outcome(lambda: stub.Generate(req, timeout=SAFETY_TIMEOUT_S)) in ANSWERED | REFUSED


@_SETTINGS
@given(model=MODELS, messages=MESSAGES, config=CONFIGS)
def test_any_stream_request_is_answered_or_refused_as_invalid(
    stub: pb_grpc.AIServiceStub, model: str, messages: list[pb.Message], config: pb.GenerationConfig
) -> None:
    req = pb.StreamGenerateRequest(model=model, messages=messages, config=config)
    assert outcome(lambda: list(stub.StreamGenerate(req, timeout=SAFETY_TIMEOUT_S))) in ANSWERED | REFUSED


TOKEN = "team-token-0123456789"
CLIENTS = (ClientToken("team", hashlib.sha256(TOKEN.encode()).digest()),)
HEADER_VALUES = st.one_of(st.text(max_size=60), st.binary(max_size=60), st.just(f"Bearer {TOKEN}"))


@settings(max_examples=500)
@given(metadata=st.lists(st.tuples(st.sampled_from(["authorization", "x-other", "Authorization"]), HEADER_VALUES)))
def test_any_authorization_metadata_names_a_configured_client_or_none(
    metadata: list[tuple[str, str | bytes]],
) -> None:
    client = authenticate(metadata, CLIENTS)
    first = next((value for key, value in metadata if key == "authorization"), None)
    if first == f"Bearer {TOKEN}":
        assert client == "team"
    elif not isinstance(first, str) or TOKEN not in first:
        assert client is None  # no header, a binary one, or one without the token
    else:
        assert client in {None, "team"}


@given(scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]), padding=st.sampled_from(["", " ", "  ", "\t"]))
def test_the_scheme_is_case_insensitive_and_the_token_may_be_padded(scheme: str, padding: str) -> None:
    assert authenticate([("authorization", f"{scheme} {padding}{TOKEN}{padding}")], CLIENTS) == "team"
