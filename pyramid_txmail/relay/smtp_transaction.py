"""One mail transaction over one open session with one relay.

:class:`RelaySession` wraps a ready ``smtplib.SMTP`` (opened by
:mod:`pyramid_txmail.relay.smtp_session`) together with the relay it talks
to, so that the transport can keep a session to its primary relay and, on
demand, sessions to fallback relays (per-message failover), each reused
for later messages.  :meth:`RelaySession.transaction` sends one message to
some recipients and classifies every reply; each
:class:`~pyramid_txmail.relay.result.RecipientResult` names the relay that
answered it.

It also says which recipients are *in doubt*: the final dot went out and
no reply came back (RFC 1047).  The relay may have the message, so those
recipients must not be offered to another relay in the same attempt.
"""
from __future__ import annotations

import smtplib

from ..compose import wire
from ..util.printable import get_logger
from .result import PERMANENT, SENT, TEMPORARY, RecipientResult
from .smtp_session import SessionFailure, _text, format_address

log = get_logger("pyramid_txmail.smtp")


class Stale(Exception):
    """A reused connection turned out to be dead before anything was accepted."""


def reply_status(code):
    if 200 <= code < 300:
        return SENT
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


def angle(address):
    """``<address>``, the address exactly as given.

    Only a ``Name <a@b>`` form (it ends with ``>``, which no address does)
    goes through smtplib's parse: re-parsing an address could change it
    (a quoted local part may hold ``<``, ``,``, ``"`` or spaces).
    """
    if address.endswith(">"):
        return smtplib.quoteaddr(address)
    return f"<{address}>"


def _signed(signer, chunks, size):
    """``(chunks, size)`` DKIM-signed by ``signer``; a message that cannot be
    signed is a :class:`SessionFailure` (temporary or permanent, as the
    signer says)."""
    from .dkim import DKIMSigningError, sign_chunks

    try:
        return sign_chunks(signer, chunks, size, wire.message_id_of(
            chunks if isinstance(chunks, wire.Stream) else chunks[0]))
    except DKIMSigningError as exc:
        raise SessionFailure(str(exc), status=TEMPORARY if exc.temporary else PERMANENT,
                             drop=False) from None


class RelaySession:
    """An open session with one relay, and the transactions sent over it.

    ``limits`` is the transport: its ``timeout``, ``data_timeout`` and
    ``dkim`` (signer or ``None``) are read from it.  ``smtp`` is ``None``
    once the session was dropped (the server closed it, a reply was lost);
    the transport then opens a new one when it needs this relay again.
    """

    def __init__(self, smtp, host, limits):
        self.smtp = smtp
        self.host = host
        self.address = format_address(*host)
        self.limits = limits
        #: Transactions started over this session (``max_messages`` counts them).
        self.sent = 0

    @property
    def alive(self):
        return self.smtp is not None

    def drop(self):
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            smtp.close()

    def close(self):
        """QUIT and close, if still open."""
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except OSError:
                pass
            finally:
                smtp.close()

    # -- one message -------------------------------------------------------------

    def transaction(self, fromaddr, toaddrs, data):
        """``(results, in_doubt)``: one result per recipient, and the indexes
        of the recipients whose outcome is unknown (no reply to the final dot).

        Raises :class:`Stale` when a reused session is found dead before
        anything was sent, and :class:`SessionFailure` when the message
        cannot be sent to this relay at all (cannot be encoded, SMTPUTF8
        needed but not offered).
        """
        smtp = self.smtp
        reused = self.sent > 0
        self.sent += 1
        addr = self.address
        pipelined = smtp.has_extn("pipelining")
        if reused and not pipelined:
            self._rset_or_stale(smtp)
        chunks, options = self._payload(smtp, fromaddr, toaddrs, data)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        commands = [f"MAIL FROM:{angle(fromaddr)}" + "".join(" " + o for o in options)]
        commands += [f"RCPT TO:{angle(r)}" for r in toaddrs]
        results = [None] * len(toaddrs)
        accepted = []
        stage = "MAIL FROM"
        smtp.final_dot_sent = False
        try:
            if pipelined:
                group = (["RSET"] if reused else []) + commands + ["DATA"]
                smtp.send("".join(c + "\r\n" for c in group).encode(encoding))
                if reused:
                    self._rset_or_stale(smtp, sent=True)
                replies = iter(smtp.getreply, None)
            else:
                replies = (smtp.docmd(c) if i < len(commands) else smtp.docmd("DATA")
                           for i, c in enumerate(commands + ["DATA"]))
                replies = self._encoded(smtp, encoding, replies)
            code, reply = next(replies)
            if not 200 <= code < 300:
                if code == 421:
                    self.drop()
                elif pipelined:
                    self._drain(smtp, replies, len(toaddrs) + 1)
                else:
                    self._end(smtp, code)
                text = f"{_text(reply)} (in reply to MAIL FROM at {addr})"
                return [self._result(r, reply_status(code), code, text) for r in toaddrs], ()
            stage = "RCPT TO"
            for i, rcpt in enumerate(toaddrs):
                code, reply = next(replies)
                text = f"{_text(reply)} (in reply to RCPT TO at {addr})"
                if 200 <= code < 300:
                    accepted.append(i)
                    continue
                status = TEMPORARY if code == 552 else reply_status(code)
                results[i] = self._result(rcpt, status, code, text)
                if code == 421:  # the server is closing the session
                    self.drop()
                    return self._fill(results, toaddrs, TEMPORARY, code, text), ()
            if not accepted and not pipelined:
                self._end(smtp, None)
                return results, ()
            stage = "DATA"
            code, reply = next(replies)
            if code == 354 and not accepted:  # RFC 2920: end the empty message
                smtp.send(b".\r\n")
                smtp.getreply()
                return results, ()
            if code != 354 and 200 <= code < 400:
                # RFC 5321 4.3.2: DATA is answered 354, then the data goes.
                # Any other positive reply means the replies are out of step
                # (or the server is broken): nothing was delivered, and the
                # session cannot be trusted with the next message either.
                self.drop()
                return self._fill(results, toaddrs, TEMPORARY, code,
                                  f"{_text(reply)} (unexpected reply to DATA at {addr}, "
                                  "expected 354; the message was not sent)"), ()
            if code == 354:
                stage = "the message data"
                for block in wire.data_section(chunks):
                    smtp.send(block)
                smtp.final_dot_sent = True
                stage = "end of data"
                code, reply = self._final_reply(smtp)
            if code == 421:
                self.drop()
            elif not 200 <= code < 300 and stage == "DATA" and not pipelined:
                self._end(smtp, code)
            if not accepted:
                return results, ()
            status = reply_status(code)
            text = _text(reply) if status == SENT else \
                f"{_text(reply)} (in reply to {stage} at {addr})"
            for i in accepted:
                results[i] = self._result(toaddrs[i], status, code, text)
            return results, ()
        except OSError as exc:  # connection lost or timed out (smtplib closed it)
            final_dot_sent = smtp.final_dot_sent
            self.drop()
            in_doubt = tuple(accepted) if final_dot_sent else ()
            return self._fill(results, toaddrs, TEMPORARY, None,
                              self._lost(exc, stage, final_dot_sent)), in_doubt

    def _result(self, recipient, status, code, text):
        return RecipientResult(recipient, status, code, text, relay=self.address)

    def _payload(self, smtp, fromaddr, toaddrs, data):
        """``(chunks, MAIL FROM options)`` for this server, or SessionFailure."""
        addr = self.address
        eightbit = smtp.has_extn("8bitmime")
        if isinstance(data, wire.Stream) and data.eightbit and not eightbit:
            data = b"".join(data)  # a 7-bit server: re-encoded below, in memory
        if isinstance(data, wire.Stream):
            chunks, head, size, has_8bit = data, data, data.size, data.eightbit
        else:
            try:
                payload = wire.to_wire(data, eightbit=eightbit)
            except Exception as exc:  # a message the email package cannot re-encode
                log.exception("cannot encode the message for %s", addr)
                raise SessionFailure(f"the message cannot be encoded for SMTP: {exc!r}",
                                     status=PERMANENT, drop=False) from None
            chunks, head, size, has_8bit = (payload,), payload, len(payload), \
                wire.has_8bit(payload)
        if self.limits.dkim is not None:  # over exactly these bytes, after any re-encoding
            chunks, size = _signed(self.limits.dkim, chunks, size)
        options = []
        if wire.needs_smtputf8(fromaddr, toaddrs, head):
            if not smtp.has_extn("smtputf8"):
                raise SessionFailure(
                    "SMTPUTF8 needed (non-ASCII address or header) but not offered by "
                    f"{addr}", status=PERMANENT, drop=False)
            options.append("SMTPUTF8")
        if eightbit and has_8bit:
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size") and size is not None:
            options.append(f"SIZE={size}")
        return chunks, options

    @staticmethod
    def _encoded(smtp, encoding, replies):
        """Send the commands in ``encoding`` (SMTPUTF8 allows UTF-8 addresses)."""
        before = smtp.command_encoding
        smtp.command_encoding = encoding
        try:
            yield from replies
        finally:
            smtp.command_encoding = before

    def _final_reply(self, smtp):
        """The reply to the final dot, waited for ``data_timeout``.

        RFC 5321 4.5.3.2.6: "DATA Termination: 10 minutes" -- the server
        may be delivering or scanning the message, and a client that gives
        up here has most likely delivered it already: a retry would send
        it twice (RFC 1047).
        """
        smtp.reply_timeout = self.limits.data_timeout  # for the whole reply, not per read
        try:
            return smtp.getreply()
        finally:
            smtp.reply_timeout = None

    @staticmethod
    def _rset_or_stale(smtp, sent=False):
        """RSET on a reused connection; a dead one raises :class:`Stale`."""
        try:
            code, reply = smtp.getreply() if sent else smtp.rset()
        except OSError as exc:
            raise Stale(f"RSET: {exc or 'no reply'}") from None
        if code != 250:
            raise Stale(f"RSET: {code} {_text(reply)}")

    def _drain(self, smtp, replies, count):
        """Read the replies still owed for a pipelined group, then RSET's turn.

        A server that hangs up instead (some do right after refusing the
        sender) owes nothing more: the connection is dropped, and the reply
        already had stands -- a refusal must not turn into "connection lost".
        """
        try:
            for _ in range(count):
                code, _ = next(replies)
                if code == 354:
                    smtp.send(b".\r\n")
                    smtp.getreply()
                    return
        except OSError:
            self.drop()

    def _end(self, smtp, code):
        """After a refused transaction: RSET, or give up the connection."""
        if code == 421:
            self.drop()
            return
        try:
            code, _ = smtp.rset()
        except OSError:
            code = None
        if code != 250:
            self.drop()

    def _fill(self, results, toaddrs, status, code, text):
        return [r or self._result(toaddrs[i], status, code, text)
                for i, r in enumerate(results)]

    def _lost(self, exc, stage, final_dot_sent):
        addr = self.address
        timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
        if final_dot_sent:
            what = (f"no reply from {addr} within {self.limits.data_timeout:g}s" if timed_out
                    else f"connection to {addr} lost ({exc})")
            return (f"{what} after the end of the message data; the server may have "
                    "accepted it, so a retry may deliver it twice")
        if timed_out:
            return f"no reply from {addr} within {self.limits.timeout:g}s to {stage}"
        return f"connection to {addr} lost at {stage} ({exc})"
