"""What a pass reports to the operator, shared by one txmail-qp process
(:class:`~.operate.Operations`) and the parent of several
(:class:`~.procmetrics.ParentOperations`): the ``mail.metrics_file`` textfile and
systemd's ``STATUS=`` line.  Each class has ``settings``, ``textfile``,
``notifier``, ``progress`` and says which registry goes into the textfile."""
from __future__ import annotations

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.operate")


class PassReports:

    def textfile_registry(self):
        raise NotImplementedError

    def _write_textfile(self, stats=None):
        try:
            self.textfile.write(self.textfile_registry())
        except OSError as exc:
            log.error("cannot write the metrics to mail.metrics_file = %s: %s",
                      self.settings.metrics_file, exc.strerror or exc)

    def _status(self, stats):
        try:
            status = self.progress.reader.read()
            depth = (f"queued={status.get('queued', 0)} deferred={status.get('deferred', 0)} "
                     f"failed={status.get('failed', 0)}")
        except Exception as exc:
            depth = f"queue unreadable: {type(exc).__name__}"
        self.notifier.status(f"last pass: {stats.summary()}; {depth}")
