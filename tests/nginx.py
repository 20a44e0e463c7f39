"""nginx (Debian's package, installed by `make system-deps`) as a child process in front of gateways, for the
load-balancer tests in tests/integration/test_load_balancer.py.

    async with run_nginx(tmp_path, grpc_proxy(["127.0.0.1:41001", "127.0.0.1:41002"])) as nginx:
        channel = grpc.aio.insecure_channel(nginx.address)        # h2c to nginx, grpc_pass to the gateways
        await nginx.reload(grpc_proxy([...]))                     # SIGHUP: a new upstream list

The test binds the listening socket itself (127.0.0.1, a port the kernel chooses) and hands it to nginx the
way nginx hands sockets to its own new binary on an upgrade (the NGINX environment variable), so no port
is picked and released in between, and connections made before the worker runs wait in the backlog:
there is no start-up to wait for. nginx runs in the foreground (`daemon off`) with a master and one
worker, its pid file and temporary paths in the test's directory, and its log on stderr, which is read
continuously. Every timeout here only keeps a broken child from hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path

from tests.process import SAFETY_TIMEOUT_S

__all__ = ["NGINX", "Nginx", "grpc_proxy", "run_nginx", "tcp_proxy"]

# Debian installs nginx into /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream

# A config's text for the listening port; the functions below make them.
Render = Callable[[int], str]

_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log stderr notice;
{modules}events {{ worker_connections 1024; }}
"""

# grpc_pass over h2c. A new call that cannot reach an instance (connection refused or reset before the
# request went out, GOAWAY) is tried on the next one: `grpc_next_upstream error timeout`, at most once
# more. A call already sent is never sent again (gRPC calls are POSTs, and nginx retries those only with
# non_idempotent, which a generation must not have: it costs money). One failure takes an instance out for
# fail_timeout; timeouts are long, since a stream may wait minutes for its first token.
_HTTP = """\
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream gateways {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        http2_max_concurrent_streams 1024;
        location / {{
            grpc_pass grpc://gateways;
            grpc_next_upstream error timeout;
            grpc_next_upstream_tries 2;
            grpc_connect_timeout 5s;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
        }}
    }}
}}
"""

# An L4 balancer: each TCP connection goes to the next instance and stays there.
_STREAM = """\
stream {{
    upstream gateways {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass gateways;
    }}
}}
"""


def _servers(addresses: Sequence[str], down: Collection[str] = ()) -> str:
    return "\n".join(
        f"        server {address} {'down' if address in down else 'max_fails=1 fail_timeout=60s'};"
        for address in addresses
    )


def _main(workdir: Path, *, stream: bool) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody otherwise
    modules = f"load_module {STREAM_MODULE};\n" if stream else ""
    return _MAIN.format(user=user, dir=workdir, modules=modules)


def grpc_proxy(workdir: Path, upstreams: Sequence[str], *, down: Collection[str] = ()) -> Render:
    """An L7 gRPC load balancer: round robin over `upstreams` (HOST:PORT each) per call; those in `down` are
    out of rotation, as an operator marks an instance before stopping it."""
    return lambda port: (
        _main(workdir, stream=False) + _HTTP.format(dir=workdir, port=port, servers=_servers(upstreams, down))
    )


def tcp_proxy(workdir: Path, upstreams: Sequence[str]) -> Render:
    """An L4 load balancer: round robin over `upstreams` per TCP connection."""
    return lambda port: _main(workdir, stream=True) + _STREAM.format(port=port, servers=_servers(upstreams))


class Nginx:
    """A running nginx master; its log lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process, workdir: Path, port: int) -> None:
        self.process = process
        self.workdir = workdir
        self.port = port
        self._lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stderr())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self._lines)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._lines.append(line.decode(errors="replace"))
            self._changed.set()
            self._changed = asyncio.Event()
        self._changed.set()

    async def wait_for_line(self, text: str, *, after: int = 0) -> None:
        """Until a log line after the first `after` ones contains `text`; fails if nginx exits first."""

        async def seen() -> None:
            while not any(text in line for line in self._lines[after:]):
                if self.process.returncode is not None or self._reader.done():
                    raise AssertionError(f"nginx exited before logging {text!r}:\n{self.log}")
                await self._changed.wait()

        try:
            await asyncio.wait_for(seen(), SAFETY_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"nginx did not log {text!r}:\n{self.log}") from None

    async def reload(self, render: Render) -> None:
        """Write a new config and SIGHUP; returns once the old worker stopped accepting connections (it still
        serves the ones it has, as nginx does)."""
        mark = len(self._lines)
        (self.workdir / "nginx.conf").write_text(render(self.port))
        self.process.send_signal(signal.SIGHUP)
        await self.wait_for_line("gracefully shutting down", after=mark)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: master and workers
            try:
                await asyncio.wait_for(self.process.wait(), SAFETY_TIMEOUT_S)
            except TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group: the workers too
                await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, SAFETY_TIMEOUT_S)


@contextlib.asynccontextmanager
async def run_nginx(workdir: Path, render: Render) -> AsyncIterator[Nginx]:
    """Start nginx with the config `render` makes for its listening port; stop it on the way out."""
    assert NGINX is not None, "nginx is not installed: run `make system-deps`"
    workdir.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
        (workdir / "nginx.conf").write_text(render(port))
        fd = listener.fileno()
        process = await asyncio.create_subprocess_exec(
            NGINX,
            "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr",
            env={"NGINX": f"{fd};"},
            pass_fds=(fd,),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
    nginx = Nginx(process, workdir, port)
    try:
        yield nginx
    finally:
        await nginx.stop()
