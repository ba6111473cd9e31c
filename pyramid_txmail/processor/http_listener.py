"""The listening side of ``mail.metrics_port``: any address family, bounded, with deadlines.

http.server's ``ThreadingHTTPServer`` as it comes listens on IPv4 only
(``mail.metrics_host = ::1`` failed to bind), waits for ever on a client that
sends half a request, and starts a thread for every connection: 1,500
half-sent requests pinned 300+ threads of the daemon (outside probe of issue
15, findings 6 and 11).  So:

* the address family is the one ``getaddrinfo`` gives for ``mail.metrics_host``
  (a literal ``::1``/``::`` is IPv6; a name that resolves to both keeps IPv4,
  as before, so that a scraper configured for 127.0.0.1 still finds it);
* every connection's socket has :data:`REQUEST_TIMEOUT`: a client that stops
  sending is dropped (http.server answers nothing and closes);
* at most :data:`MAX_CONNECTIONS` are served at once; one more is closed at
  once instead of getting a thread (a scraper retries; the daemon's memory
  and thread count stay bounded).
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import ThreadingHTTPServer

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.health")

#: Seconds a client may take to send each part of its request (and to read the answer).
REQUEST_TIMEOUT = 10.0
#: Connections served at once; a scraper and a probe or two need far fewer.
MAX_CONNECTIONS = 16


def address_family(host, port):
    """``AF_INET6`` for an IPv6 address (or a name that resolves only to IPv6), else ``AF_INET``."""
    try:
        return (socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6
                else socket.AF_INET)
    except ValueError:
        pass  # a name
    try:
        families = {info[0] for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    except socket.gaierror:
        return socket.AF_INET  # binding says what is wrong with the name
    return socket.AF_INET if socket.AF_INET in families or not families else socket.AF_INET6


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server of the right family, with a per-connection timeout and
    at most ``max_connections`` threads."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections=MAX_CONNECTIONS,
                 request_timeout=REQUEST_TIMEOUT):
        host, port = address[0].strip("[]"), address[1]
        self.address_family = address_family(host, port)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refused = 0
        super().__init__((host, port), handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                log.warning("metrics http: %d connections refused so far: %d already "
                            "served at once (clients that do not finish their requests?)",
                            self._refused, self.max_connections)
            self.shutdown_request(request)
            return
        try:
            request.settimeout(self.request_timeout)
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
