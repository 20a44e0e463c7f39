"""InteractiveStream sessions for the blocking client, bridged to the asyncio ones.

    with client.interactive(model="demo", system="Be brief.") as session:
        for event in session.send("hello"):          # TextDelta..., then the TurnResult
            ...
        print(session.send("and now?").result().text)
        for result in session.pipeline(["one", "two"]):
            ...

A session runs on an event loop in a daemon thread that the AIClient starts with its first session
(`SessionRunner`); every method hands its work to that loop and waits for it. A KeyboardInterrupt while
waiting stops the wait (the work on the loop is cancelled where that is safe: a turn's events stay
queued), so a terminal can interrupt a running answer and then `cancel` it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

from client.async_client import AsyncAIClient
from client.channel import ConnectionSettings
from client.errors import GatewayError
from client.interactive import AsyncSession, AsyncTurn, PipelineRequests
from client.types import MessageLike, Sampling, SamplingOptions, SessionMode, TurnEvent, TurnResult

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.12

__all__ = ["Session", "SessionRunner", "Turn"]

T = TypeVar("T")


class SessionRunner:
    """An event loop in a daemon thread, with the AsyncAIClient that sessions use on it."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ai-client-sessions", daemon=True)
        self._thread.start()
        self.client = self.call(
            functools.partial(
                AsyncAIClient,
                target=settings.target,
                token=settings.token,
                ca_file=settings.ca_file,
                plaintext=settings.plaintext,
                timeout=settings.timeout,
                options=settings.options,
            )
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it; an interrupted wait cancels it."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the loop's thread (asyncio objects are not thread-safe) and return its result."""

        async def call() -> T:
            return fn()

        return self.run(call())

    def close(self) -> None:
        self.run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Turn(Iterator[TurnEvent]):
    """One turn of a session: iterate it for its events, or call `result()` for its TurnResult."""

    def __init__(self, runner: SessionRunner, turn: AsyncTurn) -> None:
        self._runner = runner
        self._turn = turn

    def __repr__(self) -> str:
        return f"Turn({self.request_id!r}, done={self.done})"

    @property
    def request_id(self) -> str:
        return self._turn.request_id

    @property
    def done(self) -> bool:
        return self._turn.done

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> TurnEvent:
        try:
            return self._runner.run(self._turn.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def result(self) -> TurnResult:
        """Wait for the end of the turn: its TurnResult, or its error raised."""
        return self._runner.run(self._turn.result())

    def cancel(self) -> None:
        """Ask the server to stop this turn; it then ends with finish_reason CANCELLED (or its own end)."""
        self._runner.run(self._turn.cancel())


class Session:
    """One InteractiveStream call of the blocking client; the same methods as AsyncSession."""

    def __init__(self, runner: SessionRunner, session: AsyncSession) -> None:
        self._runner = runner
        self._session = session

    def __repr__(self) -> str:
        return repr(self._session).replace("AsyncSession", "Session", 1)

    def __enter__(self) -> Self:
        self._runner.run(self._session.open())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._runner.run(self._session.__aexit__(exc_type, exc, tb))

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def model(self) -> str:
        return self._session.model

    @property
    def mode(self) -> SessionMode:
        return self._session.mode

    @property
    def max_in_flight(self) -> int:
        return self._session.max_in_flight

    @property
    def draining(self) -> bool:
        return self._session.draining

    @property
    def time_left(self) -> float | None:
        return self._session.time_left

    @property
    def errors(self) -> list[GatewayError]:
        return self._session.errors

    @property
    def ended(self) -> bool:
        return self._session.ended

    def add_go_away_callback(self, callback: Callable[[Session], None]) -> None:
        """Call `callback(session)` when the server announces its shutdown; see AsyncSession. It runs on
        the session's thread, so it must not wait for the session."""
        self._runner.call(functools.partial(self._session.add_go_away_callback, lambda _: callback(self)))

    def send(
        self,
        content: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        request_id: str | None = None,
        model: str | None = None,
        sampling: SamplingOptions | None = None,
        **keywords: Unpack[Sampling],
    ) -> Turn:
        """Send a turn and return it at once; see AsyncSession.send."""
        send = functools.partial(
            self._session.send, content, messages=messages, request_id=request_id, model=model,
            sampling=SamplingOptions.of(sampling, keywords),
        )  # fmt: skip
        return Turn(self._runner, self._runner.call(send))

    def cancel(self, request_id: str) -> None:
        """Ask the server to stop the turn `request_id`; it ends with finish_reason CANCELLED."""
        self._runner.run(self._session.cancel(request_id))

    @overload
    def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: Literal[False] = ...
    ) -> Iterator[TurnResult]: ...

    @overload
    def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: Literal[True]
    ) -> Iterator[TurnResult | GatewayError]: ...

    def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: bool = False
    ) -> Iterator[TurnResult | GatewayError]:
        """Send every request and yield each result as it finishes; see AsyncSession.pipeline."""
        results = self._session.pipeline(requests, return_exceptions=True)
        try:
            while True:
                try:
                    result = self._runner.run(results.__anext__())
                except StopAsyncIteration:
                    return
                if isinstance(result, GatewayError) and not return_exceptions:
                    raise result
                yield result
        finally:
            self._runner.run(results.aclose())

    def close(self) -> None:
        """Half-close, then wait for the turns still running; see AsyncSession.close."""
        self._runner.run(self._session.close())
