"""``/metrics`` and ``/healthz`` show what the receiving side did, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from peers import mr_dataset
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from dicom_node.node.config import HttpConfig, NodeConfig, SecurityConfig
from dicom_node.node.metrics import MetricsServer, NodeMetrics, bind_http
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.spool import Spool


class Quiet:
    def on_instance_stored(self, stored) -> None:
        pass

    def on_association_released(self, calling_ae, study_uids) -> None:
        pass


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def node(tmp_path):
    config = replace(NodeConfig(), port=0, data_dir=tmp_path / "data",
                     security=SecurityConfig(allowed_calling_aets=("SCANNER",)))
    metrics = NodeMetrics(config.data_dir)
    scp = StorageSCP(config, Spool(config.data_dir / "spool"), Quiet(), metrics)
    scp.start()
    http = MetricsServer(metrics, "127.0.0.1", 0)
    http.start()
    yield scp, metrics, http
    http.stop()
    scp.stop()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_count_instances_bytes_and_associations(node):
    scp, _, http = node
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MYONODE")
    datasets = [mr_dataset(), mr_dataset()]
    for ds in [*datasets, datasets[0]]:
        assert assoc.send_c_store(ds).Status == 0
    broken = mr_dataset()
    broken.Rows = 64
    assert assoc.send_c_store(broken).Status == 0xA900
    assoc.release()
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(Verification)
    assert intruder.associate("127.0.0.1", scp.port, ae_title="MYONODE").is_rejected

    status, content_type, text = get(http.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert sample(text, "myonode_instances_received_total") == 2
    assert sample(text, "myonode_instances_duplicate_total") == 1
    assert sample(text, "myonode_instances_quarantined_total") == 1
    assert sample(text, 'myonode_instances_rejected_total{reason="does_not_match_sop_class"}') == 1
    assert sample(text, "myonode_received_bytes_total") >= 4 * 128
    assert sample(text, 'myonode_associations_total{result="accepted"}') == 1
    assert sample(text, 'myonode_associations_total{result="rejected"}') == 1
    rejections = 'myonode_association_rejections_total{reason="calling_ae_not_recognised"}'
    assert sample(text, rejections) == 1
    assert sample(text, "myonode_active_associations") == 0
    assert sample(text, "myonode_free_disk_bytes") > 0


def test_healthz_reports_the_scp_and_registered_checks(node):
    scp, metrics, http = node
    status, content_type, body = get(http.port, "/healthz")
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {"status": "ok",
                                "checks": {"dicom_scp": {"ok": True, "detail": f"port {scp.port}"}}}
    metrics.add_check("database", lambda: (False, "locked"))
    metrics.add_check("worker", lambda: 1 / 0)
    status, _, body = get(http.port, "/healthz")
    health = json.loads(body)
    assert status == 503 and health["status"] == "fail"
    assert health["checks"]["database"] == {"ok": False, "detail": "locked"}
    assert health["checks"]["worker"]["detail"].startswith("ZeroDivisionError")
    metrics.add_check("database", lambda: True)
    metrics.add_check("worker", lambda: True)
    scp.stop()
    status, _, body = get(http.port, "/healthz")
    assert status == 503 and json.loads(body)["checks"]["dicom_scp"] == {
        "ok": False, "detail": "not running"}
    assert get(http.port, "/nothing")[0] == 404


def test_http_port_zero_switches_the_endpoint_off():
    assert bind_http(NodeMetrics(), HttpConfig(port=0)) is None
