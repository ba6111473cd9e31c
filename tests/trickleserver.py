"""A scripted socket relay on 127.0.0.1 that never finishes a reply, one line at a time.

``TrickleServer(stage)``: at ``stage`` (``"banner"``, ``"ehlo"``, ``"mail"``,
``"dot"``) it sends a continuation line (``220-``, ``250-``) every
``every`` seconds, forever; each line arrives well inside any per-read
timeout, so only a deadline for the whole reply ends the wait.  Stage
``"stop-reading"`` answers DATA with 354 and then never reads again, so
the client's writes fill the socket buffers and block.  Everything else
is a minimal, well-behaved relay.
"""
from __future__ import annotations

import socket
import threading
import time


class TrickleServer:
    def __init__(self, stage, every=0.2):
        self.stage = stage
        self.every = every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self.closed = threading.Event()
        self.trickling = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _trickle(self, conn, code):
        self.trickling.set()
        while not self.closed.is_set():
            conn.sendall(f"{code}-still thinking\r\n".encode())
            time.sleep(self.every)

    def _client(self, conn):
        reader = conn.makefile("rb")
        try:
            if self.stage == "banner":
                self._trickle(conn, 220)
            conn.sendall(b"220 ready\r\n")
            while not self.closed.is_set():
                line = reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    if self.stage == "ehlo":
                        self._trickle(conn, 250)
                    conn.sendall(b"250-hi\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL" and self.stage == "mail":
                    self._trickle(conn, 250)
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    if self.stage == "stop-reading":
                        self.trickling.set()
                        self.closed.wait()
                        return
                    while reader.readline() not in (b".\r\n", b""):
                        pass
                    if self.stage == "dot":
                        self._trickle(conn, 250)
                    conn.sendall(b"250 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.closed.set()
        self.sock.close()
