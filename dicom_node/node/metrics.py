"""Prometheus metrics and the health endpoint of the node (``/metrics``, ``/healthz``).

A hospital's monitoring scrapes ``/metrics`` and a container runtime polls ``/healthz``; both
are served by a small HTTP server bound to the configured host and port. Each ``NodeMetrics``
owns its own registry (several nodes in one test process do not collide); other parts of the
node register their own metrics on ``NodeMetrics.registry`` and their own health checks with
``add_check``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from dicom_node.node import disk
from dicom_node.node.config import HttpConfig
from dicom_node.node.log import log_event

LOG = logging.getLogger("myonode.http")

# A check returns True/False, or (ok, detail); an exception counts as a failed check.
HealthCheck = Callable[[], "bool | tuple[bool, str]"]


class NodeMetrics:
    """The receiving side's counters and gauges, and the registry of health checks."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "myonode_instances_received", "Instances stored in the spool (new SOP instances)",
            registry=r)
        self.instances_duplicate = Counter(
            "myonode_instances_duplicate",
            "Instances received again with a SOP Instance UID already spooled", registry=r)
        self.instances_ignored = Counter(
            "myonode_instances_ignored",
            "Instances of other SOP classes answered with Success and not stored", registry=r)
        self.instances_rejected = Counter(
            "myonode_instances_rejected", "C-STORE requests answered with a failure status",
            ["reason"], registry=r)
        self.instances_quarantined = Counter(
            "myonode_instances_quarantined", "Malformed instances kept in the quarantine",
            registry=r)
        self.bytes_received = Counter(
            "myonode_received_bytes", "Dataset bytes received by C-STORE", registry=r)
        self.associations = Counter(
            "myonode_associations", "Association requests by outcome", ["result"], registry=r)
        self.association_rejections = Counter(
            "myonode_association_rejections", "Rejected association requests by reason",
            ["reason"], registry=r)
        self.echoes = Counter("myonode_echoes", "C-ECHO requests answered", registry=r)
        self.active_associations = Gauge(
            "myonode_active_associations", "Associations currently open", registry=r)
        self.free_disk = Gauge(
            "myonode_free_disk_bytes", "Free bytes on the file system of the data folder",
            registry=r)
        if data_dir is not None:
            self.free_disk.set_function(lambda: disk.free_bytes(data_dir))
        self._checks: dict[str, HealthCheck] = {}
        self._lock = threading.Lock()

    def add_check(self, name: str, check: HealthCheck) -> None:
        """Register (or replace) a named health check shown by ``/healthz``."""
        with self._lock:
            self._checks[name] = check

    def health(self) -> tuple[bool, dict]:
        """(all checks pass, the JSON body of ``/healthz``)."""
        with self._lock:
            checks = dict(self._checks)
        results: dict[str, dict] = {}
        for name, check in checks.items():
            try:
                outcome = check()
                ok, detail = outcome if isinstance(outcome, tuple) else (bool(outcome), "")
            except Exception as exc:  # a failing check is a finding, not a crash of /healthz
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results[name] = {"ok": bool(ok), **({"detail": detail} if detail else {})}
        healthy = all(item["ok"] for item in results.values())
        return healthy, {"status": "ok" if healthy else "fail", "checks": results}

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` on ``host:port`` (port 0: an ephemeral port)."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), _handler_for(metrics))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="myonode-http", daemon=True
        )
        self._thread.start()
        log_event(LOG, "http.started", host=self._server.server_address[0], port=self.port)

    def stop(self) -> None:
        """Stop serving (if it was started) and close the socket."""
        if self._thread is not None:
            self._server.shutdown()  # waits for serve_forever, which must have been started
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log_event(LOG, "http.stopped", port=self.port)


def bind_http(metrics: NodeMetrics, config: HttpConfig) -> MetricsServer | None:
    """The endpoint as configured, bound but not serving yet (``start`` it); None when
    ``http.port`` is 0 (switched off). A port in use raises ``OSError`` here."""
    if config.port == 0:
        return None
    return MetricsServer(metrics, config.host, config.port)


def _handler_for(metrics: NodeMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/healthz":
                healthy, body = metrics.health()
                self._reply(200 if healthy else 503, "application/json",
                            json.dumps(body).encode())
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not worth a log line each."""

    return Handler
