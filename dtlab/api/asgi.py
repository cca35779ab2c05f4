"""``dtlab serve``'s HTTP front: uvicorn (httptools parser, uvloop) with /plan, /healthz and the scheduler
extender's verbs answered on the event loop, every other route by the Flask app (through a2wsgi).

Why not waitress: a /plan is ~0.45-0.7 ms of GIL-bound Python, and waitress hands every request
from its I/O thread to a worker thread (and dtlab's gate to the planning thread). The threads took
turns on the GIL, and the plan ran at about half its in-process speed inside the server (per-thread
CPU from /proc): the server spent 1.6-2.6 ms of CPU per request. On one event loop, with httptools
parsing in C, it spends 0.8 ms, and ``bench_api.py`` answers 1,200 req/s instead of 570-620 (ratio to
in-process 0.54-0.55 instead of 0.26-0.30; 3 alternating pairs, 2026-12-05). A prototype that handed
every plan to a planning thread instead reached only 630-640 req/s where inline planning reached
850-940. So a plan whose estimated work (:func:`dtlab.api.limits.plan_work`) is at most
:data:`INLINE_WORK_US` runs on the loop (it stalls the loop for at most about that long); a larger
one goes to the planning thread with the request time limit (503), as before.

/healthz is answered on the loop too: a probe never waits for a thread while plans hold the GIL.

What waitress did for the API and this front keeps (the hardening tests run against it): a body
announced or counted over ``max_body_bytes`` is a 413 JSON at once; malformed requests, an
unsupported ``Transfer-Encoding`` (501) and request heads over :data:`MAX_HEAD_BYTES` (431) are
answered in the API's JSON ``{error, field}``, not the server's plain text; at most
``connection_limit`` connections are open (more are closed at once); a request head or body that
does not arrive within :data:`READ_TIMEOUT_S` closes the connection (408 for a body), and idle
keep-alive connections close after the same time.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any, Awaitable, Callable

from .. import strict_json
from ..errors import DtlabError, InfeasibleError, SpecError
from .app import ClientError, ServiceCore, health, timed_out
from .limits import over_limit_error

log = logging.getLogger("dtlab.api")
INLINE_WORK_US = 25_000.0   # plans estimated at most this (µs of CPU) run on the event loop
MAX_HEAD_BYTES = 262_144    # waitress's max_request_header_size, kept
READ_TIMEOUT_S = 30.0       # waitress's channel_timeout as dtlab serve set it, kept
HEAD_TOO_LARGE = (431, f"request header fields too large: over {MAX_HEAD_BYTES:,} bytes")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
CLIENT_ERRORS = (ClientError, SpecError, InfeasibleError)


def json_bytes(body: Any) -> bytes:
    """What Flask's ``jsonify`` writes with dtlab's strict provider: sorted keys, compact, a newline."""
    return (strict_json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()


class ServiceFront:
    """The ASGI app ``dtlab serve`` runs: /plan and the extender verbs here, the rest in ``flask_app``.

    Every request's body is read here first, counted against ``max_body_bytes`` and the read time
    limit, so the Flask app's worker threads (``wsgi_threads`` of them) never wait on a slow client."""

    def __init__(self, flask_app: Any, *, extender: Any = None, wsgi_threads: int = 8,
                 inline_work_us: float = INLINE_WORK_US, read_timeout_s: float = READ_TIMEOUT_S):
        from a2wsgi import WSGIMiddleware

        state = flask_app.extensions["dtlab"]
        self.core: ServiceCore = state["core"]
        self.config = state["config"]
        self.metrics = state["metrics"]
        self.wsgi: Any = WSGIMiddleware(flask_app, workers=wsgi_threads)   # ASGI-typed; our scope is a dict
        self.extender = extender
        self.inline_work_us = min(inline_work_us, self.config.request_timeout_s * 1e6 / 4)
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            raw = await asyncio.wait_for(self._body(scope, receive), self.read_timeout_s)
        except ClientError as exc:
            status, error, headers = self.core.error_answer(exc, path)
            await respond(send, status, error, headers, close=True)
            return
        except asyncio.TimeoutError:
            await respond(send, 408, {"error": f"the request body did not arrive within {self.read_timeout_s:g} s",
                                      "field": "body"}, close=True)
            return
        if raw is None:   # the client went away
            return
        if scope["method"] == "GET" and path == "/healthz":   # probes answer on the loop, never behind a thread
            await respond(send, 200, health(self.core.twin))
            return
        if scope["method"] == "POST":
            if path == "/plan":
                await self._plan(scope, raw, send)
                return
            verb = self._extender_verb(path)
            if verb is not None:
                await self._extender(verb, raw, send)
                return
        await self.wsgi(scope, replay(raw), send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self.config.max_body_bytes
        announced = header(scope, b"content-length")
        if announced.isdigit() and int(announced) > limit:
            raise ClientError(413, *over_limit_error(limit))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ClientError(413, *over_limit_error(limit))
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _plan(self, scope: Scope, raw: bytes, send: Send) -> None:
        core = self.core
        try:
            call = core.prepare(raw, header(scope, b"authorization"))
            if call.work <= self.inline_work_us:
                result = core.gate.run_here(call.compute)
            else:
                future = core.gate.submit(call.compute)
                try:
                    result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                                    self.config.request_timeout_s)
                except asyncio.TimeoutError:
                    raise timed_out(self.config.request_timeout_s) from None
            if call.dry_run:
                body = core.finish(call, result)
            else:   # acting calls the controller (the Kubernetes API): never on the loop
                body = await asyncio.get_running_loop().run_in_executor(None, core.finish, call, result)
        except CLIENT_ERRORS as exc:
            status, error, headers = core.error_answer(exc, "/plan")
            await respond(send, status, error, headers)
            return
        except Exception:
            log.exception("internal error on POST /plan")
            await respond(send, 500, {"error": "internal server error", "field": None})
            return
        await respond(send, 200, body)

    def _extender_verb(self, path: str) -> Callable[[dict[str, Any]], Any] | None:
        """The extender verb ``path`` names (``/extender[/<secret>]/<verb>``), or None (then the Flask
        app answers it: its blueprint has the same routes, and anything else is its 404)."""
        if self.extender is None or not path.startswith("/extender/"):
            return None
        from ..extender import secret_ok

        secret = self.config.extender_secret
        parts = path[len("/extender/"):].split("/")
        if len(parts) != (1 if secret is None else 2) or not secret_ok(parts[0] if secret else "", secret):
            return None
        return {"filter": self.extender.filter, "prioritize": self.extender.prioritize_json}.get(parts[-1])

    async def _extender(self, verb: Callable[[dict[str, Any]], Any], raw: bytes, send: Send) -> None:
        from ..extender import call_verb, verb_name

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            if self.extender.annotate is None:
                status, body = call_verb(verb, raw)
            else:   # annotating patches the pod through the Kubernetes API: never on the loop
                status, body = await loop.run_in_executor(None, call_verb, verb, raw)
        except Exception:
            log.exception("internal error on an extender call")
            status, body = 500, json_bytes({"Error": "internal server error"})
        if status == 200:
            self.metrics.extender_latency.labels(verb_name(verb)).observe((loop.time() - t0) * 1e3)
        await send_bytes(send, status, body)


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def replay(raw: bytes) -> Receive:
    """A ``receive`` that gives the body already read, then waits for the disconnect as ASGI says."""
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    return receive


async def respond(send: Send, status: int, body: Any, headers: dict[str, str] | None = None,
                  close: bool = False) -> None:
    await send_bytes(send, status, json_bytes(body), headers, close)


async def send_bytes(send: Send, status: int, data: bytes, headers: dict[str, str] | None = None,
                     close: bool = False) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


def protocol_class(connection_limit: int, read_timeout_s: float = READ_TIMEOUT_S) -> type:
    """uvicorn's httptools protocol answering what it refuses itself in the API's JSON, with a head
    size limit, a head time limit and a connection limit (see the module docstring)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class JSONErrorProtocol(HttpToolsProtocol):
        _refusal: tuple[int, str] | None = None
        _in_head = True
        _head_bytes = 0      # bytes read while the head is incomplete (bounds what the parser buffers)
        _head_parsed = 0     # the head's size as parsed (URL and headers)
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:   # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > connection_limit:
                log.warning("over the connection limit (%d): closing a new connection", connection_limit)
                transport.close()
                return
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _start_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_timed_out)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
                self._start_head_timer()
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._refuse(*HEAD_TOO_LARGE)

        def on_url(self, url: bytes) -> None:
            self._head_parsed += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_parsed += len(name) + len(value) + 4
            if name.lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
                self._refusal = (501, f"transfer-encoding {value.decode('latin-1')[:50]!r} is not implemented "
                                      "(only chunked)")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._stop_head_timer()
            if self._head_parsed > MAX_HEAD_BYTES:   # the head ended inside the read that took it over
                self._refusal = HEAD_TOO_LARGE
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes, self._head_parsed = True, 0, 0

        def send_400_response(self, msg: str) -> None:
            self._refuse(*(self._refusal or (400, f"malformed request: {msg}")))

        def _refuse(self, status: int, error: str) -> None:
            data = json_bytes({"error": error[:300], "field": None})   # bodies are the front's (413 there)
            reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large", 501: b"Not Implemented"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(data), data))
            self.transport.close()

    return JSONErrorProtocol


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for ``host:port`` (every address a host name resolves to)."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, addr in dict.fromkeys((family, addr) for family, *_, addr in infos):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            socks.append(sock)
            sock.bind(addr)
            sock.listen(2048)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise DtlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return socks


def make_server(front: ServiceFront, connection_limit: int) -> Any:
    """The uvicorn server for ``front`` (``.run(sockets=...)``; ``.should_exit = True`` stops it)."""
    import uvicorn

    config = uvicorn.Config(front, http=protocol_class(connection_limit, front.read_timeout_s),
                            loop="uvloop", lifespan="off", access_log=False, log_level="warning",
                            timeout_keep_alive=max(1, int(front.read_timeout_s)), proxy_headers=False,
                            server_header=False, log_config=None)
    return uvicorn.Server(config)


class BackgroundServer:
    """``front`` served on a daemon thread (the controller's API, tests): listening once constructed
    (connections wait in the backlog until the loop runs); ``port``, ``close()``."""

    def __init__(self, front: ServiceFront, host: str, port: int, connection_limit: int = 500):
        socks = listen(host, port)
        self.port: int = socks[0].getsockname()[1]
        self.server = make_server(front, connection_limit)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": socks}, daemon=True,
                                       name="dtlab-api")
        self.thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def run(front: ServiceFront, socks: list[socket.socket], connection_limit: int) -> None:
    """Serve ``front`` on the sockets of :func:`listen` until SIGINT/SIGTERM (uvicorn's graceful shutdown)."""
    make_server(front, connection_limit).run(sockets=socks)
