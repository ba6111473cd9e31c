"""A real Postfix relay on 127.0.0.1 for the tests, run from Debian's unpacked package.

The Makefile unpacks Debian's ``postfix`` .deb into ``.deps/postfix`` (``apt-get
download`` + ``dpkg -x``); nothing is installed system-wide and no system MTA is
started.  :class:`PostfixRelay` gives each test a private Postfix instance: its own
``main.cf``/``master.cf``, queue, data and log directories in a temporary directory,
an ``smtpd`` on a free loopback port, ``mynetworks = 127.0.0.0/8`` and
``relayhost = [127.0.0.1]:PORT`` pointing at the test's sink, no local delivery.

Postfix must be started as root (its ``master`` binds ports and hands each daemon
to the unprivileged ``mail_owner``).  It needs no user or group of its own: it runs
as existing unprivileged accounts (``postfix``/``postdrop`` when a system has them,
else Debian's ``mail`` user and ``nogroup``/``nobody``), chosen so that Postfix's
own checks hold (``mail_owner``, ``default_privs`` and ``setgid_group`` distinct).

The ``postfix`` command writes its errors to stderr only when stderr is a terminal,
so it is run with a pseudo-terminal as stderr: a start-up failure names its reason.
Daemons log to ``maillog_file`` (postlogd), which :meth:`PostfixRelay.log` returns and
the fixture prints at teardown (pytest shows it for a failing test).
"""
from __future__ import annotations

import grp
import os
import pathlib
import pty
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from .smtpserver import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent / ".deps" / "postfix"
POSTFIX = ROOT / "usr" / "sbin" / "postfix"
DAEMONS = ROOT / "usr" / "lib" / "postfix" / "sbin"
LIBS = ROOT / "usr" / "lib" / "postfix"
# Postfix's own queue directories: a message in any of them is still Postfix's to deliver.
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MASTER_CF = """\
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group(name):
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def choose_accounts():
    """(mail_owner, setgid_group, default_privs): existing unprivileged accounts that pass
    Postfix's checks -- three different IDs, none of them root's."""
    owners = [u for u in map(_user, ("postfix", "mail")) if u and u.pw_uid != 0]
    groups = [g for g in map(_group, ("postdrop", "nogroup", "mail")) if g and g.gr_gid != 0]
    privs = [u for u in map(_user, ("nobody", "daemon")) if u and u.pw_uid != 0]
    for owner in owners:
        for group in groups:
            for priv in privs:
                if (priv.pw_uid != owner.pw_uid and group.gr_gid not in
                        (owner.pw_gid, priv.pw_gid)):
                    return owner.pw_name, group.gr_name, priv.pw_name
    pytest.fail("no unprivileged accounts for Postfix: it needs a mail owner user (postfix or "
                "mail), a group (postdrop or nogroup) and a default_privs user (nobody or "
                "daemon), three distinct IDs")


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class PostfixRelay:
    """One private Postfix: smtpd on ``127.0.0.1:port``, relaying to ``relay_port``.

    ``main_cf`` adds or overrides main.cf settings (e.g. ``smtpd_recipient_restrictions``).
    """

    def __init__(self, relay_port, main_cf=None):
        if not (POSTFIX.exists() and (DAEMONS / "master").exists()):
            pytest.fail(f"{POSTFIX} is missing: run `make test` (or `make postfix`), which "
                        "unpacks Debian's postfix package there")
        if os.geteuid() != 0:
            pytest.fail("the Postfix relay test must run as root: Postfix's master binds "
                        "its port and starts each daemon as the unprivileged mail_owner")
        self.port = free_port()
        # Not under pytest's tmp_path: its parents are 0700 and the daemons run as mail_owner.
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="txmail-postfix-"))
        self.base.chmod(0o755)
        self.config = self.base / "etc"
        self.queue = self.base / "queue"
        self.maillog = self.base / "maillog"
        self.config.mkdir()
        owner, group, privs = choose_accounts()
        self.queue.mkdir(mode=0o755)  # root's; `postfix start` makes the rest
        settings = {
            "compatibility_level": "3.6",
            "config_directory": self.config,
            "queue_directory": self.queue,
            "data_directory": self.base / "data",
            "daemon_directory": DAEMONS,
            "command_directory": POSTFIX.parent,
            "shlib_directory": LIBS,
            "meta_directory": ROOT / "etc" / "postfix",  # postfix-files: what start creates
            "mail_owner": owner,
            "setgid_group": group,
            "default_privs": privs,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.base,
            # The daemons find the unpacked shared libraries through the environment.
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C "
                                  "POSTLOG_SERVICE POSTLOG_HOSTNAME LD_LIBRARY_PATH",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "relay.txmail.test",
            "mydomain": "txmail.test",
            "myorigin": "$myhostname",
            # A pure relay: trusted clients by network, every message to the relayhost.
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_peername_lookup": "no",
            # Postfix's own retries quick enough for a test that waits for them.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        settings.update(main_cf or {})
        self.settings = settings
        self._write_main_cf()
        _write_old(self.config / "master.cf", MASTER_CF.format(port=self.port))
        self.running = False

    def _write_main_cf(self):
        _write_old(self.config / "main.cf",
                   "".join(f"{key} = {value}\n" for key, value in self.settings.items()))

    def reconfigure(self, main_cf):
        """Change main.cf settings (a value of ``None`` removes one) and ``postfix reload``."""
        for key, value in main_cf.items():
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = value
        self._write_main_cf()
        if self.running:
            self.command("reload")

    def version(self):
        """Postfix's version, e.g. ``3.7.11``."""
        return subprocess.run(
            [str(POSTFIX.parent / "postconf"), "-c", str(self.config), "-h", "mail_version"],
            capture_output=True, text=True, env=dict(os.environ, LD_LIBRARY_PATH=str(LIBS)),
            timeout=30).stdout.strip()

    def command(self, *args, check=True):
        """Run ``postfix -c CONFIG ARGS``; returns its terminal output (errors included)."""
        env = dict(os.environ, LD_LIBRARY_PATH=str(LIBS))
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run([str(POSTFIX), "-c", str(self.config), *args],
                                  stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                                  env=env, timeout=60)
        finally:
            os.close(follower)
            output = self._drain(leader)
        if check and proc.returncode != 0:
            pytest.fail(f"postfix {' '.join(args)} exited {proc.returncode}:\n{output}\n"
                        f"--- maillog ---\n{self.log()}")
        return output

    @staticmethod
    def _drain(fd):
        chunks = []
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:  # EIO: the terminal's other end is closed, all is read
            pass
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def start(self):
        self.command("start")
        self.running = True
        if not wait_until(lambda: port_open(self.port), 15):
            pytest.fail(f"Postfix's smtpd did not answer on 127.0.0.1:{self.port}:\n"
                        f"{self.log()}")

    def stop(self):
        """Stop master (SIGTERM, as ``postfix stop`` does, without its one-second poll)."""
        if self.running:
            pid = self.master_pid()
            if pid is None:
                self.command("stop", check=False)
            else:
                os.kill(pid, signal.SIGTERM)
                if not wait_until(lambda: not _alive(pid), 15):
                    self.command("abort", check=False)
            self.running = False
        wait_until(lambda: not port_open(self.port), 15)

    def master_pid(self):
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def flush(self):
        """Ask Postfix to retry its deferred mail now (``postfix flush``)."""
        self.command("flush")

    def queued(self):
        """Messages Postfix still holds (in any of its queues)."""
        return sum(len(files) for name in QUEUES if (self.queue / name).is_dir()
                   for _, _, files in os.walk(self.queue / name))

    def log(self):
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return "(no maillog yet)"

    def close(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _write_old(path, text):
    """Write a configuration file dated a minute back: Postfix re-reads a main.cf changed
    within the last second until it is a second old (300 ms at a time), as a guard against
    half-written files -- several seconds for every start of a fresh instance."""
    path.write_text(text)
    then = time.time() - 60
    os.utime(path, (then, then))


def _alive(pid):
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_until(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def postfix_relay():
    """Factory: ``postfix_relay(relay_port, main_cf=None)`` -> a started :class:`PostfixRelay`.

    Every instance is stopped and removed at teardown; the maillog is printed then, so
    a failing test shows what Postfix did.
    """
    relays = []

    def make(relay_port, main_cf=None, start=True):
        relay = PostfixRelay(relay_port, main_cf)
        relays.append(relay)
        if start:
            relay.start()
        return relay

    yield make
    for relay in relays:
        print(f"--- Postfix maillog ({relay.base}) ---\n{relay.log()}")
        relay.close()
