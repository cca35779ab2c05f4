"""A small mutual-TLS WSGI server (stdlib only) for the scheduler-extender routes.

Why a second server: kube-scheduler authenticates to an extender only through ``tlsConfig``
(client certificate, key, CA) on an ``https`` ``urlPrefix``; it cannot send a bearer token.
The API's port is plain HTTP, and a TLS stack for the extender alone must not weaken the main API, so
``dtlab serve --extender-tls-cert ... --extender-client-ca ...`` serves ONLY the extender routes
here, on their own port, and requires a client certificate signed by the given CA
(``CERT_REQUIRED``): a caller without one never completes the handshake, so it never reaches the
app. Bounded like the main server: at most ``max_connections`` connections are handled at once
(more are closed at once), each socket has a timeout (a slow handshake cannot hold a thread
forever), and the Flask app caps the body size. The handshake runs in the connection's thread,
never in the accept loop.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger("dtlab.api.tls")


def server_context(cert: str, key: str | None, client_ca: str) -> ssl.SSLContext:
    """TLS >= 1.2 server context that requires a client certificate signed by ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)


class MutualTLSServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app, context: ssl.SSLContext, max_connections: int = 16,
                 timeout_s: float = 10.0):
        self.context, self.timeout_s = context, timeout_s
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)
        self.set_app(app)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):  # saturated: refuse rather than queue threads
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request, client_address):
        request.settimeout(self.timeout_s)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("extender TLS handshake from %s refused: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            tls.close()


def serve_in_thread(app, host: str, port: int, context: ssl.SSLContext) -> MutualTLSServer:
    """Start the server on a daemon thread; ``server.shutdown()`` stops it."""
    server = MutualTLSServer((host, port), app, context)
    threading.Thread(target=server.serve_forever, daemon=True, name="extender-tls").start()
    return server
