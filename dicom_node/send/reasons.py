"""Why an association to a destination failed, in the words of PS3.8.

Why: a delivery that fails is retried for hours and may end as a dead letter; whoever reads
``myonode status`` must see what the destination really did on *every* attempt (refused a
presentation context, rejected the association and why, aborted it, never answered, or was
not there at all), not a guess. pynetdicom reports most of it only to its log, so
:class:`AssociationWitness` watches one association (its PDUs, its connection and the
transport's connection error) and :meth:`AssociationWitness.failure` words what it saw.
"""

from __future__ import annotations

import logging
import threading

from pydicom.uid import UID
from pynetdicom import evt

# PS3.8 table 9-21: A-ASSOCIATE-RJ result, source and reason/diagnostic.
RJ_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
RJ_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (presentation related function)",
}
RJ_REASONS = {
    1: {1: "no-reason-given", 2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized", 7: "called-AE-title-not-recognized"},
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
# PS3.8 table 9-26: A-ABORT source and reason/diagnostic (the reason only from the provider).
ABORT_SOURCES = {0: "DICOM UL service-user", 2: "DICOM UL service-provider"}
ABORT_REASONS = {0: "reason-not-specified", 1: "unrecognized-PDU", 2: "unexpected-PDU",
                 4: "unrecognized-PDU-parameter", 5: "unexpected-PDU-parameter",
                 6: "invalid-PDU-parameter-value"}
# PS3.8 table 9-18: the result of one presentation context.
CONTEXT_RESULTS = {1: "user-rejection", 2: "no-reason; provider rejection",
                   3: "abstract-syntax-not-supported; provider rejection",
                   4: "transfer-syntaxes-not-supported; provider rejection"}

_CONNECT_ERROR = "TCP Initialisation Error: "  # what pynetdicom's transport logs, then the error


def _named(table: dict[int, str], code: int | None) -> str:
    return f"{code} ({table.get(code, 'reserved')})" if code is not None else "none"


def sop_class_name(uid: str) -> str:
    """``1.2.840...88.33 (Comprehensive SR Storage)``, or the bare UID when unknown."""
    name = UID(uid).name
    return uid if name == uid else f"{uid} ({name})"


def rejected_context(context) -> str:
    """One presentation context the destination refused, with the PS3.8 result."""
    return (f"presentation context for SOP class {sop_class_name(context.abstract_syntax)} "
            f"refused: result {_named(CONTEXT_RESULTS, context.result)}")


class _ConnectErrors(logging.Handler):
    """The transport's connection error of one association's thread (pynetdicom logs it)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.by_thread: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(_CONNECT_ERROR) and record.thread is not None:
            self.by_thread[record.thread] = message[len(_CONNECT_ERROR):]


class AssociationWitness:
    """What happened on one requested association: bind :attr:`handlers` to it and call
    :meth:`watching` around ``AE.associate``; :meth:`failure` then says why it failed."""

    def __init__(self) -> None:
        self.connected = False
        self.aborted_here = False  # this side sent an A-ABORT (no context, or a timeout)
        self.closed_by_peer = False
        self.rejection = None  # the A-ASSOCIATE-RJ PDU received
        self.abort = None  # the A-ABORT PDU received
        self._errors = _ConnectErrors()
        self._lock = threading.Lock()
        self.handlers = [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_CONN_CLOSE, self._on_close),
                         (evt.EVT_PDU_RECV, self._on_pdu), (evt.EVT_PDU_SENT, self._on_sent)]

    def _on_open(self, _event) -> None:
        self.connected = True

    def _on_close(self, _event) -> None:
        if not self.aborted_here:
            self.closed_by_peer = True

    def _on_sent(self, event) -> None:
        if type(event.pdu).__name__ == "A_ABORT_RQ":
            self.aborted_here = True

    def _on_pdu(self, event) -> None:
        kind = type(event.pdu).__name__
        with self._lock:
            if kind == "A_ASSOCIATE_RJ":
                self.rejection = event.pdu
            elif kind == "A_ABORT_RQ":
                self.abort = event.pdu

    def watching(self) -> _Watch:
        """A context manager that listens to pynetdicom's transport log meanwhile."""
        return _Watch(self._errors)

    def aborted_by_peer(self) -> str | None:
        """The A-ABORT the destination sent, in PS3.8 words (None when it sent none)."""
        if self.abort is None:
            return None
        reason = (f", reason {_named(ABORT_REASONS, self.abort.reason_diagnostic)}"
                  if self.abort.source == 2 else "")
        return f"A-ABORT, source {_named(ABORT_SOURCES, self.abort.source)}{reason}"

    def failure(self, assoc, where: str, timeout_s: float) -> str:
        """Why ``assoc`` (requested to ``where``: ``AE@host:port``) is not established."""
        if self.rejection is not None:
            rj = self.rejection
            reasons = RJ_REASONS.get(rj.source, {})
            return (f"association rejected by {where}: A-ASSOCIATE-RJ result "
                    f"{_named(RJ_RESULTS, rj.result)}, source {_named(RJ_SOURCES, rj.source)},"
                    f" reason {_named(reasons, rj.reason_diagnostic)}")
        aborted = self.aborted_by_peer()
        if aborted is not None:
            return f"association aborted by {where}: {aborted}"
        if not self.connected:
            error = self._errors.by_thread.get(getattr(assoc.dul, "ident", None) or -1)
            return f"cannot connect to {where}: {error or 'connection failed'}"
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            refused = "; ".join(rejected_context(c) for c in assoc.rejected_contexts)
            return (f"{where} accepted no presentation context ({refused}); "
                    "the association was aborted")
        if self.closed_by_peer:
            return f"{where} closed the connection before answering the association request"
        return (f"no answer from {where} to the association request within {timeout_s:g} s "
                "(ACSE timeout)")


class _Watch:
    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self.logger = logging.getLogger("pynetdicom.transport")

    def __enter__(self) -> None:
        self.logger.addHandler(self.handler)

    def __exit__(self, *_exc: object) -> None:
        self.logger.removeHandler(self.handler)
