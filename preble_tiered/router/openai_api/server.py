"""uvicorn serving the OpenAI front inside the router's running event loop (beside gRPC).

uvicorn's `serve()` normally takes over SIGINT/SIGTERM; here the router owns the signals and
stops this server itself, so signal capture is turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

logger = logging.getLogger(__name__)


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpServer:
    def __init__(self, app, host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        config = uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_level="warning",
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_graceful_shutdown=2,
                                timeout_keep_alive=30)
        self._server = _InLoopServer(config)
        self._task: asyncio.Task | None = None
        self.tls = tls_cert is not None

    async def start(self) -> int:
        """Listen; returns the bound port.

        Raises:
            OSError: the port could not be bound (the message names it).
        """
        c = self._server.config
        sock = _listen(c.host, c.port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server stopped while starting on {c.host}:{c.port}")
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen for HTTP on {host}:{port}: {e.strerror} "
                               "(choose another --http-port, or 0 to turn HTTP off)") from None
    sock.set_inheritable(True)
    return sock
