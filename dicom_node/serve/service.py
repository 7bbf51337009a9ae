"""``myonode serve``: the node as a whole: receive, complete, process, deliver, observe.

Wiring (threads of one process, plus one child process per running job):

* the storage SCP (:mod:`dicom_node.receive.scp`) spools each instance durably and tells
  :class:`NodeListener`, which records it in the state (:mod:`dicom_node.node.state`) before the
  sender hears Success;
* the completion monitor (:mod:`dicom_node.serve.completion`) queues study versions;
* the job worker (:mod:`dicom_node.serve.jobs`) runs each queued version through the pipeline in a
  child process and puts SEG and SR into the outbox;
* the outbox (:mod:`dicom_node.send.outbox`) delivers them to every destination;
* ``/metrics`` and ``/healthz`` (:mod:`dicom_node.node.metrics`) report all of it.

Every step's progress lives in SQLite, so a restart (after a crash, ``kill -9`` or a power
cut) goes on where the node stopped: jobs caught processing run again, deliveries continue.
SIGTERM and SIGINT stop the node cleanly (the SCP first, so nothing is acknowledged that is
not recorded). ``<data_dir>/node.json`` tells ``myonode status`` (and tests) the process id
and the ports actually bound. A listener that cannot bind ends the start with a
:class:`ListenerError` naming the port and the setting to change.

Everything under the data folder is readable by the node's user and group only
(:mod:`dicom_node.node.permissions`): ``serve`` sets the umask for itself and its job
children, and the start tightens what is already there.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.core import GaugeMetricFamily

from dicom_node.node.config import Destination, NodeConfig, load_node_config
from dicom_node.node.log import log_event, setup_logging
from dicom_node.node.metrics import MetricsServer, NodeMetrics, bind_http
from dicom_node.node.permissions import make_dir, restrict_umask, tighten
from dicom_node.node.state import State
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.spool import Spool, StoredInstance
from dicom_node.send.outbox import Outbox, RetryPolicy, write_durable
from dicom_node.send.scu import Peer
from dicom_node.serve.completion import CompletionMonitor
from dicom_node.serve.jobs import JobWorker
from dicom_node.study.dixon_roles import DixonRules
from inference.pipeline_config import load_pipeline_config

log = logging.getLogger("myonode.serve")

RUNTIME_FILE = "node.json"
T = TypeVar("T")
# What a bind can fail with that the site's config must change (in use, no such address,
# a privileged port).
_LISTEN_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


class ListenerError(RuntimeError):
    """A listener of the node cannot bind: which one, where, and the setting to change."""


def _listening(what: str, setting: str, bind: Callable[[], T], hint: str = "") -> T:
    """``bind()``, with a bind failure turned into a :class:`ListenerError` about ``what``."""
    try:
        return bind()
    except OSError as exc:
        if exc.errno not in _LISTEN_ERRORS:
            raise
        reason = (exc.strerror or str(exc)).lower()
        log_event(log, "node.cannot_listen", logging.ERROR, listener=what, error=reason,
                  setting=setting)
        raise ListenerError(f"cannot listen on {what}: {reason}; change {setting} in the "
                            f"config{hint}") from None


class NodeListener:
    """What the SCP reports, recorded in the state and passed to the completion monitor."""

    def __init__(self, state: State, monitor: CompletionMonitor) -> None:
        self.state = state
        self.monitor = monitor

    def on_instance_stored(self, stored: StoredInstance) -> None:
        """Record the instance (committed before the sender is told Success)."""
        outcome = self.state.record_instance(
            stored.study_uid, stored.series_uid, stored.sop_instance_uid, stored.sop_class_uid,
            str(stored.path), calling_ae=stored.calling_ae, peer=stored.peer,
        )
        if outcome.opened_job:
            log_event(log, "study.version_opened", study_uid=stored.study_uid,
                      version=outcome.version, job_id=outcome.job_id,
                      calling_ae=stored.calling_ae)

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        """Check these studies for completeness now."""
        self.monitor.released(study_uids)


def peer_for(destination: Destination) -> Peer:
    """The SCU's view of a configured destination (with a TLS context when asked for)."""
    context = None
    if destination.tls:
        context = ssl.create_default_context(
            cafile=str(destination.ca) if destination.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if destination.cert is not None:
            context.load_cert_chain(str(destination.cert), str(destination.key))
    return Peer(destination.name, destination.ae_title, destination.host, destination.port,
                ssl_context=context)


class _StateCollector:
    """Prometheus gauges read from the state at each scrape (jobs, deliveries, outbox age)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self):
        jobs = GaugeMetricFamily("myonode_jobs", "Jobs (study versions) by state",
                                 labels=["state"])
        for state, count in self.state.job_counts().items():
            jobs.add_metric([state], count)
        yield jobs
        deliveries = GaugeMetricFamily("myonode_deliveries",
                                       "Result deliveries by destination and state",
                                       labels=["destination", "state"])
        for destination, counts in self.state.delivery_counts().items():
            for state, count in counts.items():
                deliveries.add_metric([destination, state], count)
        yield deliveries
        pending = self.state.deliveries(state="pending")
        oldest = min((d.created_at for d in pending), default=None)
        age = GaugeMetricFamily("myonode_outbox_oldest_pending_seconds",
                                "Age of the oldest undelivered result (0: none)")
        age.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest))
        yield age


@dataclass
class Node:
    """A running node's parts (built by :func:`build_node`)."""

    config: NodeConfig
    state: State
    spool: Spool
    metrics: NodeMetrics
    monitor: CompletionMonitor
    worker: JobWorker
    outbox: Outbox
    scp: StorageSCP
    http: MetricsServer | None = None

    def start(self) -> None:
        """Resume unfinished work, then start every service: the HTTP endpoint is bound
        before the SCP, so a taken HTTP port stops the start before anything was received."""
        resumed = self.state.resume_unfinished()
        if resumed:
            log_event(log, "jobs.resumed", logging.WARNING, job_ids=resumed,
                      message="jobs interrupted while processing run again")
        if not self.config.destinations:
            log_event(log, "outbox.no_destination", logging.WARNING,
                      message="no destination configured: results stay in the outbox "
                              f"({self.outbox.root}); add destinations to the config")
        http = self.config.http
        self.http = _listening(f"metrics/health HTTP port {http.port} on {http.host}",
                               "http.port", lambda: bind_http(self.metrics, http),
                               " (0 switches the endpoint off)")
        self.outbox.start()
        self.worker.start()
        self.monitor.start()
        _listening(f"DICOM port {self.config.port} on {self.config.host}", "node.port",
                   self.scp.start)
        if self.http is not None:
            self.http.start()
        self._write_runtime()
        log_event(log, "node.ready", ae_title=self.config.ae_title, dicom_port=self.scp.port,
                  http_port=self.http.port if self.http else None,
                  data_dir=str(self.config.data_dir.resolve()),
                  destinations=[d.name for d in self.config.destinations])

    def stop(self) -> None:
        """Stop receiving first, then the workers; a job in progress resumes at next start."""
        self.scp.stop()
        self.monitor.stop()
        self.worker.stop()
        self.outbox.stop()
        if self.http is not None:
            self.http.stop()
        (self.config.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        self.state.close()
        log_event(log, "node.stopped")

    def _write_runtime(self) -> None:
        info = {"pid": os.getpid(), "ae_title": self.config.ae_title,
                "host": self.config.host, "dicom_port": self.scp.port,
                "http_port": self.http.port if self.http else None,
                "started_at": time.time()}
        write_durable(self.config.data_dir / RUNTIME_FILE, json.dumps(info).encode())


def build_node(config: NodeConfig) -> Node:
    """Every part of a node for ``config``, wired, not yet started. The data folder is
    tightened first (before the state opens it)."""
    data_dir = make_dir(Path(config.data_dir))
    tightened = tighten(data_dir)
    if tightened:
        log_event(log, "data_dir.tightened", logging.WARNING, paths=len(tightened),
                  examples=[str(p) for p in tightened[:5]],
                  message="folders and files open to others were restricted to the node's "
                          "user and group")
    state = State.in_data_dir(data_dir)
    spool = Spool(data_dir / "spool")
    metrics = NodeMetrics(data_dir)
    outbox = Outbox(
        state, data_dir / "outbox", {d.name: peer_for(d) for d in config.destinations},
        calling_ae=config.ae_title,
        policy=RetryPolicy(config.outbox.retry_initial_s, config.outbox.retry_max_s,
                           config.outbox.give_up_after_s),
    )
    worker = JobWorker(state, data_dir, outbox, pipeline_config=config.pipeline)
    monitor = CompletionMonitor(state, DixonRules.load(), config.completion.quiet_period_s,
                                config.completion.max_wait_s, on_queued=lambda _: worker.wake())
    scp = StorageSCP(config, spool, NodeListener(state, monitor), metrics)
    metrics.registry.register(_StateCollector(state))
    metrics.add_check("state_db", lambda: (state.job_counts() is not None, str(state.path)))
    metrics.add_check("completion", lambda: monitor.alive())
    metrics.add_check("job_worker", lambda: (
        worker.alive(), f"job {worker.current_job}" if worker.current_job else "idle"))
    metrics.add_check("outbox", lambda: outbox.alive())
    return Node(config, state, spool, metrics, monitor, worker, outbox, scp)


def run_serve(config_paths: list[Path]) -> int:
    """Run the node until SIGTERM or SIGINT; the exit code of ``myonode serve``."""
    config = load_node_config(*config_paths)
    load_pipeline_config(config.pipeline)  # a mistake there stops the node now, not each job
    restrict_umask()  # before the log file, the state and the spool are created
    setup_logging(config.log)
    node = build_node(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log_event(log, "node.signal", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
