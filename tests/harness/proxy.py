"""A TCP proxy that adds a fixed latency, for 'slow link' tests (``tc netem`` is unavailable).

Every chunk read from either side is forwarded ``delay_s`` seconds after it arrived, in
order.  Each direction of each connection has its own queue, so a delayed chunk never
holds up another connection (or the other direction).  EOF is delayed the same way and
forwarded as a half-close.

The proxy runs an asyncio loop in a background thread and is driven from sync code::

    with LatencyProxy(host.address, 22, delay_s=0.2) as proxy:
        connect("127.0.0.1", proxy.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

__all__ = ["LatencyProxy"]

_CHUNK = 64 * 1024


class LatencyProxy:
    """Forward ``listen_host:port`` to ``target_host:target_port`` with ``delay_s`` each way."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay_s: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        """``listen_port=0`` picks a free port; read it from :attr:`port` after :meth:`start`."""
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self.target_host = target_host
        self.target_port = target_port
        self.delay_s = delay_s
        """Latency added to each chunk; may be changed while running (applies to new chunks)."""
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.connections = 0
        """Connections accepted so far."""

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._port is None:
            raise RuntimeError("the proxy is not running")
        return self._port

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10) -> LatencyProxy:
        """Start listening; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("latency proxy did not start")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError(f"latency proxy failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10) -> None:
        """Close the listener and every proxied connection; idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(self._shutdown)
        thread.join(timeout)
        self._thread = None
        self._port = None

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen_host, self._listen_port)
            )
            self._port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._drain_tasks())
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        self._loop.stop()

    async def _drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target_r, target_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(self._pipe(client_r, target_w), self._pipe(target_r, client_w))
        finally:
            for w in (client_w, target_w):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction: a reader stamps chunks, a writer releases each at its due time."""
        loop = asyncio.get_running_loop()
        # Bounded: a slow receiver pushes back on the sender, as a real link would.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)

        async def read() -> None:
            try:
                while chunk := await reader.read(_CHUNK):
                    await queue.put((loop.time() + self.delay_s, chunk))
            except OSError:
                pass
            await queue.put((loop.time() + self.delay_s, b""))  # EOF, delayed like data

        async def write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not chunk:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(chunk)
                    await writer.drain()
                except OSError:
                    return

        reader_task = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task
