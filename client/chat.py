"""`python -m client chat`: a terminal conversation over InteractiveStream that outlives a gateway's drain.

Each line read is a turn; the answer is printed to stdout as it arrives, everything else (the prompt,
summaries, errors, notices) goes to stderr. On a terminal the line is read with prompt_toolkit (editing,
and the earlier lines with the arrow keys); from a pipe, with plain input().

When the gateway announces its shutdown (go_away) the chat says so at once. The next line then goes to a
new session, opened with the client's retry policy (UNAVAILABLE is retried with its backoff), and carries
the conversation so far, so the conversation goes on where it was. The chat keeps its own copy of what the
gateway's session holds (`Transcript`) for that, and never sends a turn into a session that has ended.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from client import console
from client.errors import GatewayError, UnavailableError
from client.retry import Retrier, RetryPolicy
from client.sync_client import AIClient
from client.sync_interactive import Session
from client.types import FinishReason, Message, SamplingOptions, TextDelta, TurnResult

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

__all__ = ["Chat", "LineReader", "Transcript", "open_with_retry"]

PROMPT = "> "
# The time all the attempts to open a replacement session may take together.
REOPEN_TIMEOUT_S = 60.0


class LineReader:
    """The user's lines: with prompt_toolkit when stdin and stderr are a terminal, else with input()."""

    def __init__(self, stdin: TextIO | None = None, stderr: TextIO | None = None) -> None:
        stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
        self._terminal = stdin.isatty() and stderr.isatty()
        self._prompt: PromptSession[str] | None = None
        self._waiting = False  # input() is waiting after the prompt

    def notice(self, text: str) -> None:
        """Show `[text]` on its own line, from any thread; the prompt stays usable."""
        if self._waiting:  # below the prompt, then the prompt again (prompt_toolkit redraws its own)
            sys.stderr.write(f"\n[{text}]\n{PROMPT}")
            sys.stderr.flush()
        else:
            console.print_notice(text)

    def read(self) -> str | None:
        """The next line; None at the end of input (Ctrl-D) or on Ctrl-C."""
        try:
            return self._edited() if self._terminal else self._plain()
        except (EOFError, KeyboardInterrupt):
            sys.stderr.write("\n")
            return None

    def _plain(self) -> str:
        sys.stderr.write(PROMPT)
        sys.stderr.flush()
        self._waiting = True
        try:
            return input()
        finally:
            self._waiting = False

    def _edited(self) -> str:
        # Imported here: a chat driven through pipes, and every other command, never pays for it.
        from prompt_toolkit import PromptSession
        from prompt_toolkit.application import create_app_session
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.output import create_output
        from prompt_toolkit.patch_stdout import patch_stdout

        if self._prompt is None:
            # The prompt goes to stderr like every other non-answer line; the history lives as long as the chat.
            output = create_output(stdout=sys.stderr)
            self._prompt = PromptSession(history=InMemoryHistory(), output=output)
        # While the prompt waits, a notice written (to stderr, from the session's thread) appears above it.
        with create_app_session(output=self._prompt.output), patch_stdout():
            return self._prompt.prompt(PROMPT)


class Transcript:
    """The conversation as the gateway's session holds it, so that a new session can be sent all of it.

    It follows the gateway's rules (server/interactive/history.py): a turn that ends with a reply adds the
    user's line and the reply (a cancelled turn, the part that arrived), a failed turn adds nothing, and
    `history_trimmed` says how many of the oldest messages the gateway dropped.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._replay = False

    def restart(self) -> None:
        """A new session holds nothing yet: the next turn carries the whole conversation."""
        self._replay = bool(self.messages)

    def pending(self) -> list[Message]:
        """The messages to send before the next line: the conversation, right after a restart."""
        return list(self.messages) if self._replay else []

    def record(self, line: str, result: TurnResult) -> None:
        if result.finish_reason is FinishReason.CANCELLED and not result.text:
            return  # the gateway kept nothing of this turn, not even the line, nor what it was sent with
        # history_trimmed counts from the front of what the session held; a replayed conversation was the
        # turn's own messages, which the gateway never trims, so it is 0 then.
        self.messages = [*self.messages[result.history_trimmed :], Message("user", line)]
        self.messages.append(Message("assistant", result.text))
        self._replay = False


def open_with_retry(
    start: Callable[[], Session],
    policy: RetryPolicy | None,
    *,
    timeout: float = REOPEN_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
    retrier: Retrier | None = None,
) -> Session:
    """`start()`, started again after UNAVAILABLE as the retry policy says; other errors are raised."""
    retrier = retrier or Retrier(policy, timeout)
    while True:
        try:
            return start()
        except UnavailableError as error:
            delay = retrier.delay(error, unavailable=True)
            if delay is None:
                raise
            sleep(delay)


class Chat:
    """One terminal conversation; `run` reads lines until the end of input."""

    def __init__(
        self,
        client: AIClient,
        *,
        model: str,
        system: str | None,
        sampling: SamplingOptions,
        retry: RetryPolicy | None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._model, self._system, self._sampling = model, system, sampling
        self._retry = retry
        self._sleep = sleep
        self._transcript = Transcript()
        self._session: Session | None = None
        self._notice: Callable[[str], None] = console.print_notice

    def run(self, reader: LineReader) -> None:
        """Chat until the end of input; raises the GatewayError that ends it early (no session, or none
        again after a drain)."""
        self._notice = reader.notice
        session = self._open()
        console.print_notice(
            f"chat with {session.model} (session {session.session_id}); Ctrl-C stops an answer, "
            "Ctrl-D or Ctrl-C at the prompt quits"
        )
        try:
            while (line := reader.read()) is not None:
                if line.strip():
                    self._turn(line)
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    def _turn(self, line: str) -> None:
        """Answer `line`. A line the gateway refused because it is shutting down goes to a new session."""
        for attempt in range(2):
            session = self._live_session()
            refused = self._answer(session, line)
            if refused is None:
                return
            if attempt or not (session.draining or session.ended):
                console.print_error(refused)
                return

    def _answer(self, session: Session, line: str) -> GatewayError | None:
        """Print one turn's answer as it arrives (Ctrl-C cancels the turn), or its error. Returns, unprinted,
        the error of a turn refused as the gateway shuts down before any of its answer arrived."""
        out = sys.stdout
        turn = session.send(line, messages=self._transcript.pending())
        printed = False
        try:
            try:
                for event in turn:
                    if isinstance(event, TextDelta):
                        printed = True  # first: a Ctrl-C right after the write must still end the line
                        out.write(event.text)
                        out.flush()
            except KeyboardInterrupt:
                turn.cancel()  # the turn ends with finish_reason cancelled; a second Ctrl-C quits the chat
            result = turn.result()
        except GatewayError as exc:
            console.end_line(printed)
            if not printed and isinstance(exc, UnavailableError) and exc.reason == "SHUTTING_DOWN":
                return exc
            console.print_error(exc)
            return None
        console.end_line(printed)
        console.print_summary(result)
        self._transcript.record(line, result)
        return None

    def _live_session(self) -> Session:
        """The session, or a new one if it has ended or is draining."""
        session = self._session
        if session is not None and not session.ended and not session.draining:
            return session
        with contextlib.suppress(GatewayError):  # its errors were shown, or are why it is replaced
            self._end(None)
        session = self._open()
        self._transcript.restart()
        carried = len(self._transcript.pending())
        history = f"; the conversation so far ({carried} messages) goes with the next turn" if carried else ""
        self._notice(f"new session {session.session_id}{history}")
        return session

    def _open(self) -> Session:
        def start() -> Session:
            session = self._client.interactive(model=self._model, system=self._system, sampling=self._sampling)
            session.__enter__()
            return session

        session = open_with_retry(start, self._retry, sleep=self._sleep)
        session.add_go_away_callback(self._announce_go_away)
        self._session = session
        return session

    def _end(self, exc: BaseException | None) -> None:
        """Half-close the session and wait for its end (raising an error no turn has shown), or after
        `exc`, cancel it."""
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def _announce_go_away(self, session: Session) -> None:
        left = f", {session.time_left:g} s left" if session.time_left is not None else ""
        self._notice(
            f"the gateway is shutting down (go_away{left}): an answer under way may finish; "
            "the next line goes to a new session, with the conversation so far"
        )
