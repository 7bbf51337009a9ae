"""Node configuration: embedded defaults, the documented example, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from myonode_config import config_path

from dicom_node.node.config import (
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    Destination,
    NodeConfig,
    SecurityConfig,
    load_node_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_are_the_dataclass_defaults():
    config = load_node_config()
    assert config == NodeConfig()
    assert (config.ae_title, config.host, config.port) == ("MYONODE", "127.0.0.1", 11112)
    assert config.destinations == ()
    assert config.storage.sop_classes == (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)
    assert not config.security.tls.enabled


def test_the_example_config_loads_with_every_section(tmp_path):
    example = tmp_path / "node.example.yaml"
    shutil.copy(config_path("node.example.yaml"), example)
    for name in ("hospital-ca.pem", "myonode-server.pem", "myonode-server.key",
                 "myonode-client.pem", "myonode-client.key"):
        (tmp_path / "tls").mkdir(exist_ok=True)
        (tmp_path / "tls" / name).write_text("placeholder")
    config = load_node_config(example)
    assert config.ae_title == "MYONODE_MSK" and config.host == "0.0.0.0"
    assert config.destinations[0] == Destination("pacs", "PACS_MAIN", "pacs.hospital.example", 104)
    archive = config.destinations[1]
    assert archive.tls and archive.ca == tmp_path / "tls" / "hospital-ca.pem"
    assert config.security.tls.enabled and config.security.tls.require_client_cert
    assert config.security.allowed_calling_aets == ("MR_3T_1", "MR_1T5_2", "PACS_MAIN")
    assert "1.2.840.10008.5.1.4.1.1.4.4" in config.storage.sop_classes  # by keyword
    assert config.storage.transfer_syntaxes[2] == "1.2.840.10008.1.2.4.70"
    assert config.pipeline == tmp_path / "pipeline.yaml"
    assert config.limits.min_free_disk_mb == 20480 and config.outbox.give_up_after_s == 172800


def test_a_site_file_changes_only_what_it_names(tmp_path):
    config = load_node_config(write(tmp_path, "node: {port: 104, data_dir: spool-here}\n"
                                              "limits: {max_associations: 2}\n"))
    assert config.port == 104 and config.ae_title == "MYONODE"
    assert config.data_dir == tmp_path / "spool-here"
    assert config.limits.max_associations == 2 and config.limits.min_free_disk_mb == 1024


@pytest.mark.parametrize("text, key", [
    ("node: {prot: 104}\n", "node.prot: unknown key"),
    ("nodes: {}\n", "nodes: unknown key"),
    ("node: {port: 70000}\n", "node.port: must be between 0 and 65535"),
    ("node: {port: '104'}\n", "node.port: must be an integer"),
    ("node: {ae_title: THIS_TITLE_IS_TOO_LONG}\n", "node.ae_title"),
    ("node: {ae_title: 'A\\\\B'}\n", "node.ae_title"),
    ("limits: {max_associations: 0}\n", "limits.max_associations: must be >= 1"),
    ("limits: {max_pdu: 100}\n", "limits.max_pdu"),
    ("limits: {acse_timeout_s: -1}\n", "limits.acse_timeout_s: must be > 0"),
    ("security: {allowed_addresses: [10.0.0.0/33]}\n", "security.allowed_addresses"),
    ("security: {allowed_calling_aets: SCANNER}\n",
     "security.allowed_calling_aets: must be a list"),
    ("security: {require_called_aet: 'yes'}\n",
     "security.require_called_aet: must be true or false"),
    ("security: {tls: {cert: a.pem}}\n", "security.tls: cert and key must be given together"),
    ("storage: {other_sop_classes: drop}\n", "storage.other_sop_classes: must be one of"),
    ("storage: {sop_classes: [MRImageStorrage]}\n", "storage.sop_classes: 'MRImageStorrage'"),
    ("storage: {transfer_syntaxes: [MRImageStorage]}\n", "storage.transfer_syntaxes"),
    ("storage: {sop_classes: []}\n", "storage.sop_classes: at least one"),
    ("completion: {quiet_period_s: 60, max_wait_s: 30}\n", "completion.max_wait_s"),
    ("log: {level: LOUD}\n", "log.level: must be one of"),
    ("http: {port: -1}\n", "http.port"),
    ("destinations: [{name: pacs, ae_title: PACS, host: pacs}]\n", "destinations[0].port: missing"),
    ("destinations: [{name: a, ae_title: A, host: h, port: 104},"
     " {name: a, ae_title: B, host: h, port: 105}]\n", "destinations[1].name: 'a' is used twice"),
    ("destinations: [{name: a, ae_title: A, host: h, port: 104, ca: ca.pem}]\n",
     "destinations[0]: ca/cert/key need tls: true"),
    ("destinations: {pacs: 1}\n", "destinations: must be a list"),
    ("- just a list\n", "the top level must be a mapping"),
])
def test_mistakes_name_their_key(tmp_path, text, key):
    with pytest.raises(ValueError) as raised:
        load_node_config(write(tmp_path, text))
    assert key in str(raised.value)


def test_tls_files_must_exist_and_client_verification_needs_a_ca(tmp_path):
    (tmp_path / "s.pem").write_text("x")
    (tmp_path / "s.key").write_text("x")
    with pytest.raises(ValueError, match=r"security.tls.require_client_cert: needs"):
        load_node_config(write(tmp_path, "security: {tls: {cert: s.pem, key: s.key, "
                                         "require_client_cert: true}}\n"))
    with pytest.raises(ValueError, match=r"security.tls.ca: file not found"):
        load_node_config(write(tmp_path, "security: {tls: {cert: s.pem, key: s.key, "
                                         "ca: missing.pem}}\n"))
    config = load_node_config(write(tmp_path, "security: {tls: {cert: s.pem, key: s.key}}\n"))
    assert config.security.tls.cert == tmp_path / "s.pem"


def test_a_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="node config not found"):
        load_node_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("address, allowed", [
    ("10.1.2.3", True), ("10.2.0.1", False), ("192.168.5.5", True),
    ("::ffff:10.1.9.9", True), ("fe80::1", False), ("::1", True), ("not-an-ip", False),
])
def test_address_allow_list(address, allowed):
    security = SecurityConfig(allowed_addresses=("10.1.0.0/16", "192.168.5.5", "::1/128"))
    assert security.address_allowed(address) is allowed
    assert SecurityConfig().address_allowed(address)  # no list: anyone
