"""The metrics port listens on IPv6 too, drops clients that stop sending, and never
starts more than a bounded number of threads (issue 15, outside probe findings 6, 11)."""
from __future__ import annotations

import socket
import threading
import urllib.request

import pytest

from pyramid_txmail.processor.health import Health, MetricsServer, Progress
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.settings import MailSettings

from .metrics_support import RunningDaemon, wait_until
from .smtpserver import free_port
from .test_qp import write_ini


def _server(tmp_path, host="127.0.0.1", **limits):
    queue = MaildirQueue(Spool(str(tmp_path / "spool")))
    health = Health(Progress(queue), MailSettings())
    return MetricsServer(None, health, host, 0, **limits).start()


def _healthz(url):
    try:
        with urllib.request.urlopen(url + "healthz", timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):  # closed at once: every slot busy
        return None


@pytest.mark.parametrize("host", ["::1", "::", "[::1]"])
def test_an_ipv6_metrics_host_is_served(tmp_path, host):
    server = _server(tmp_path, host)
    try:
        assert server.httpd.address_family == socket.AF_INET6
        port = server.httpd.server_address[1]
        assert _healthz(f"http://[::1]:{port}/") in (200, 503)
        assert server.httpd.url == f"http://[{host.strip('[]')}]:{port}/"
    finally:
        server.close()


def test_the_daemon_serves_on_an_ipv6_metrics_host(tmp_path):
    port = free_port()
    (tmp_path / "spool").mkdir()
    ini = write_ini(tmp_path, None, f"mail.metrics_port = {port}\nmail.metrics_host = ::1\n")
    with RunningDaemon(ini, port) as daemon:
        daemon.url = lambda path: f"http://[::1]:{port}{path}"
        status, body = daemon.health()
        assert status == 200 and body["status"] == "ok", body
        assert daemon.stop() == 0, daemon.stderr()


def test_a_client_that_stops_sending_is_dropped(tmp_path):
    server = _server(tmp_path, request_timeout=0.5)
    try:
        client = socket.create_connection(server.address, timeout=60)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert client.recv(100) == b""  # the server closed it (timeout 60 on our side)
        client.close()
    finally:
        server.close()


def test_half_sent_requests_cannot_pin_more_than_the_bound_of_threads(tmp_path):
    before = threading.active_count()
    server = _server(tmp_path, max_connections=4, request_timeout=30)
    clients = []
    try:
        for _ in range(60):
            client = socket.create_connection(server.address, timeout=60)
            client.sendall(b"GET /healthz HTTP/1.1\r\n")
            clients.append(client)
        # each connection beyond the 4 is closed at once: the 60th sees its end
        assert clients[-1].recv(100) == b""
        assert threading.active_count() <= before + 1 + 4  # serve_forever and 4 handlers
        for client in clients:
            client.close()
        clients = []
        # once those are gone, a scrape is answered again
        assert wait_until(lambda: _healthz(server.httpd.url) in (200, 503),
                          what="/healthz after the half-sent requests closed")
    finally:
        for client in clients:
            client.close()
        server.close()
