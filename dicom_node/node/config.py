"""Configuration of the DICOM node (``myonode serve``): typed, validated, with embedded defaults.

The embedded ``config/node.yaml`` is the single documented source of the defaults; a site
file only names what it changes and is merged over it (mappings key by key, lists replaced
whole). Every mistake is a ``ValueError`` whose message starts with the dotted key
(``limits.max_associations: ...``), so a typo in a hospital's config is found at start-up and
not when the first study arrives. Relative paths in a site file are resolved against the
file's own folder; those of the embedded defaults against the working directory.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from myonode_config import config_path
from pydicom._uid_dict import UID_dictionary

DEFAULT_CONFIG = "node.yaml"

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

OTHER_SOP_POLICIES = ("accept-and-ignore", "reject")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# PS3.5 9.1: at most 64 characters, components of digits separated by dots.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# PS3.5 6.2 (AE): 1..16 characters of the default repertoire, no backslash or control codes.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True)
class Destination:
    """A peer that results are sent to (C-STORE SCP), optionally over TLS."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca: Path | None = None  # CA bundle that verifies the peer's certificate (None: system CAs)
    cert: Path | None = None  # our client certificate, when the peer asks for one
    key: Path | None = None


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS; enabled when ``cert`` and ``key`` are set."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # when set, client certificates are verified against it
    require_client_cert: bool = False
    handshake_timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class SecurityConfig:
    """Who may open an association: empty allow-lists mean anyone."""

    allowed_calling_aets: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()  # CIDR networks, e.g. 10.1.0.0/16, ::1/128
    require_called_aet: bool = True
    tls: TlsConfig = field(default_factory=TlsConfig)

    def address_allowed(self, address: str) -> bool:
        """True when ``address`` lies in one of the allowed networks (or none is configured)."""
        if not self.allowed_addresses:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.allowed_addresses)


@dataclass(frozen=True)
class LimitsConfig:
    """Resource limits of the receiving side."""

    max_associations: int = 8
    min_free_disk_mb: int = 1024
    max_pdu: int = 131072  # bytes we advertise as our maximum PDU length (0: unlimited)
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    max_pending_connections: int = 32  # accepted, not yet established; more close the oldest
    max_message_mb: int = 1024  # largest DIMSE command or dataset held in memory
    max_decoded_mb: int = 256  # most an instance may inflate / decompress to (checked first)


@dataclass(frozen=True)
class StorageConfig:
    """What C-STORE accepts: image SOP classes that are spooled, the policy for every other
    storage SOP class, and the transfer syntaxes offered (compressed ones are offered only
    when a pixel-data decoder for them is installed)."""

    sop_classes: tuple[str, ...] = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)
    other_sop_classes: str = "accept-and-ignore"
    transfer_syntaxes: tuple[str, ...] = (
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE Lossless
    )


@dataclass(frozen=True)
class CompletionConfig:
    """When a received study counts as complete (used by the study tracker)."""

    quiet_period_s: float = 10.0
    max_wait_s: float = 600.0


@dataclass(frozen=True)
class OutboxConfig:
    """Retry schedule of result delivery: exponential back-off, then a dead letter."""

    retry_initial_s: float = 30.0
    retry_max_s: float = 1800.0
    give_up_after_s: float = 86400.0


@dataclass(frozen=True)
class HttpConfig:
    """``/metrics`` and ``/healthz``; port 0 switches the HTTP endpoint off."""

    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True)
class LogConfig:
    """JSON-lines logs to stderr, and to ``file`` as well when set."""

    level: str = "INFO"
    file: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``myonode serve`` needs; ``NodeConfig()`` equals the embedded defaults."""

    ae_title: str = "MYONODE"
    host: str = "127.0.0.1"  # listen on the network only when a site config says so
    port: int = 11112  # 0: an ephemeral port (tests)
    data_dir: Path = Path("myonode-data")
    destinations: tuple[Destination, ...] = ()
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    pipeline: Path | None = None  # pipeline YAML; None: the embedded config/pipeline.yaml
    log: LogConfig = field(default_factory=LogConfig)


def load_node_config(*paths: Path) -> NodeConfig:
    """The node configuration: the embedded defaults, with each file merged over in order.

    Several files layer: the container image passes its own settings (listen on every
    interface, data on the volume) and then the site's file, which names only what it changes.
    Relative paths resolve against the folder of the last file (the cwd with none)."""
    data = _read(config_path(DEFAULT_CONFIG))
    base: Path | None = None  # embedded defaults: relative paths stay relative to the cwd
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"node config not found: {path}")
        data = _merge(data, _read(path), "")
        base = path.resolve().parent
    return _parse(data, base)


def _read(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return data


def _merge(base: dict, override: dict, prefix: str) -> dict:
    merged = dict(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ValueError(f"{dotted}: unknown key; expected one of {_keys(base)}")
        if isinstance(base[key], dict) and value is not None:
            if not isinstance(value, dict):
                raise ValueError(f"{dotted}: must be a mapping")
            merged[key] = _merge(base[key], value, dotted + ".")
        else:
            merged[key] = value
    return merged


def _keys(mapping: dict) -> str:
    return ", ".join(sorted(str(k) for k in mapping))


class _Section:
    """Typed reads from one mapping; every error names the full dotted key."""

    def __init__(self, data: Any, prefix: str, base: Path | None) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{prefix.rstrip('.') or 'config'}: must be a mapping")
        self.data = data
        self.prefix = prefix
        self.base = base

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def section(self, name: str, allowed: set[str]) -> _Section:
        value = self.data.get(name)
        sub = _Section({} if value is None else value, self.key(name) + ".", self.base)
        sub.only(allowed)
        return sub

    def only(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise ValueError(
                    f"{self.key(str(key))}: unknown key; expected one of "
                    f"{', '.join(sorted(allowed))}"
                )

    def raw(self, name: str, default: Any) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ValueError(f"{self.key(name)}: must be true or false, got {value!r}")
        return value

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.key(name)}: must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"{self.key(name)}: must be {bound}, got {value}")
        return value

    def number(self, name: str, default: float, positive: bool = True) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.key(name)}: must be a number, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"{self.key(name)}: must be > 0, got {value}")
        return float(value)

    def text(self, name: str, default: str) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.key(name)}: must be a non-empty string, got {value!r}")
        return value.strip()

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in options:
            raise ValueError(
                f"{self.key(name)}: must be one of {', '.join(options)}, got {value!r}"
            )
        return value

    def path(self, name: str, default: Path | None) -> Path | None:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.key(name)}: must be a path, got {value!r}")
        resolved = Path(value).expanduser()
        return resolved if resolved.is_absolute() or self.base is None else self.base / resolved

    def strings(self, name: str) -> list[str]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.key(name)}: must be a list of strings")
        return [v.strip() for v in value]


def ae_title(value: str, key: str) -> str:
    """A valid AE title (PS3.5 6.2), stripped of padding; ValueError naming ``key`` if not."""
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"{key}: {value!r} is not a valid AE title (1-16 characters, no backslash)"
        )
    return value.strip()


def is_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (safe to use as a file name, too)."""
    return len(value) <= 64 and bool(_UID.match(value))


def _uid_or_keyword(value: str, key: str, kind: str) -> str:
    """A UID given as such or by its DICOM keyword (``MRImageStorage``)."""
    if is_uid(value):
        return value
    for uid, entry in UID_dictionary.items():
        if entry[4] == value and entry[1] == kind:
            return uid
    raise ValueError(f"{key}: {value!r} is neither a UID nor a known {kind} keyword")


def _port(section: _Section, name: str, default: int) -> int:
    return section.integer(name, default, 0, 65535)


def _parse(data: dict, base: Path | None) -> NodeConfig:
    top = _Section(data, "", base)
    top.only({"node", "destinations", "security", "limits", "storage", "completion", "outbox",
              "http", "pipeline", "log"})
    node = top.section("node", {"ae_title", "host", "port", "data_dir"})
    defaults = NodeConfig()

    security = top.section(
        "security", {"allowed_calling_aets", "allowed_addresses", "require_called_aet", "tls"}
    )
    calling = tuple(
        ae_title(v, security.key("allowed_calling_aets"))
        for v in security.strings("allowed_calling_aets")
    )
    networks = security.strings("allowed_addresses")
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"security.allowed_addresses: {net!r} is not an address or "
                             f"CIDR network ({exc})") from exc
    tls_section = security.section(
        "tls", {"cert", "key", "ca", "require_client_cert", "handshake_timeout_s"}
    )
    tls = TlsConfig(
        cert=tls_section.path("cert", None),
        key=tls_section.path("key", None),
        ca=tls_section.path("ca", None),
        require_client_cert=tls_section.boolean(
            "require_client_cert", TlsConfig.require_client_cert
        ),
        handshake_timeout_s=tls_section.number(
            "handshake_timeout_s", TlsConfig.handshake_timeout_s
        ),
    )
    _check_tls(tls)

    limits = top.section("limits", {"max_associations", "min_free_disk_mb", "max_pdu",
                                    "acse_timeout_s", "dimse_timeout_s", "network_timeout_s",
                                    "max_pending_connections", "max_message_mb",
                                    "max_decoded_mb"})
    storage = top.section("storage", {"sop_classes", "other_sop_classes", "transfer_syntaxes"})
    sop_classes = tuple(
        _uid_or_keyword(v, storage.key("sop_classes"), "SOP Class")
        for v in storage.strings("sop_classes")
    )
    if not sop_classes:
        raise ValueError("storage.sop_classes: at least one SOP class must be accepted")
    syntaxes = tuple(
        _uid_or_keyword(v, storage.key("transfer_syntaxes"), "Transfer Syntax")
        for v in storage.strings("transfer_syntaxes")
    )
    if not syntaxes:
        raise ValueError("storage.transfer_syntaxes: at least one transfer syntax is needed")

    completion = top.section("completion", {"quiet_period_s", "max_wait_s"})
    outbox = top.section("outbox", {"retry_initial_s", "retry_max_s", "give_up_after_s"})
    http = top.section("http", {"host", "port"})
    log = top.section("log", {"level", "file"})
    pipeline = top.path("pipeline", None)

    config = NodeConfig(
        ae_title=ae_title(node.raw("ae_title", defaults.ae_title), "node.ae_title"),
        host=node.text("host", defaults.host),
        port=_port(node, "port", defaults.port),
        data_dir=node.path("data_dir", defaults.data_dir) or defaults.data_dir,
        destinations=_destinations(top.data.get("destinations"), base),
        security=SecurityConfig(
            allowed_calling_aets=calling,
            allowed_addresses=tuple(networks),
            require_called_aet=security.boolean(
                "require_called_aet", SecurityConfig.require_called_aet
            ),
            tls=tls,
        ),
        limits=LimitsConfig(
            max_associations=limits.integer("max_associations", LimitsConfig.max_associations, 1),
            min_free_disk_mb=limits.integer("min_free_disk_mb", LimitsConfig.min_free_disk_mb, 0),
            max_pdu=limits.integer("max_pdu", LimitsConfig.max_pdu, 0),
            acse_timeout_s=limits.number("acse_timeout_s", LimitsConfig.acse_timeout_s),
            dimse_timeout_s=limits.number("dimse_timeout_s", LimitsConfig.dimse_timeout_s),
            network_timeout_s=limits.number("network_timeout_s", LimitsConfig.network_timeout_s),
            max_pending_connections=limits.integer(
                "max_pending_connections", LimitsConfig.max_pending_connections, 1),
            max_message_mb=limits.integer("max_message_mb", LimitsConfig.max_message_mb, 1),
            max_decoded_mb=limits.integer("max_decoded_mb", LimitsConfig.max_decoded_mb, 1),
        ),
        storage=StorageConfig(
            sop_classes=sop_classes,
            other_sop_classes=storage.choice(
                "other_sop_classes", StorageConfig.other_sop_classes, OTHER_SOP_POLICIES
            ),
            transfer_syntaxes=syntaxes,
        ),
        completion=CompletionConfig(
            quiet_period_s=completion.number("quiet_period_s", CompletionConfig.quiet_period_s),
            max_wait_s=completion.number("max_wait_s", CompletionConfig.max_wait_s),
        ),
        outbox=OutboxConfig(
            retry_initial_s=outbox.number("retry_initial_s", OutboxConfig.retry_initial_s),
            retry_max_s=outbox.number("retry_max_s", OutboxConfig.retry_max_s),
            give_up_after_s=outbox.number("give_up_after_s", OutboxConfig.give_up_after_s),
        ),
        http=HttpConfig(
            host=http.text("host", HttpConfig.host), port=_port(http, "port", HttpConfig.port)
        ),
        pipeline=pipeline,
        log=LogConfig(
            level=log.choice("level", LogConfig.level, LOG_LEVELS),
            file=log.path("file", None),
        ),
    )
    if 0 < config.limits.max_pdu < 4096:
        raise ValueError("limits.max_pdu: must be 0 (unlimited) or at least 4096 bytes")
    if config.completion.max_wait_s < config.completion.quiet_period_s:
        raise ValueError("completion.max_wait_s: must not be shorter than quiet_period_s")
    if config.outbox.retry_max_s < config.outbox.retry_initial_s:
        raise ValueError("outbox.retry_max_s: must not be shorter than retry_initial_s")
    return config


def _check_tls(tls: TlsConfig) -> None:
    if (tls.cert is None) != (tls.key is None):
        raise ValueError("security.tls: cert and key must be given together")
    if not tls.enabled and (tls.ca is not None or tls.require_client_cert):
        raise ValueError("security.tls: ca and require_client_cert need cert and key")
    if tls.require_client_cert and tls.ca is None:
        raise ValueError("security.tls.require_client_cert: needs security.tls.ca to verify "
                         "client certificates against")
    for name in ("cert", "key", "ca"):
        value = getattr(tls, name)
        if value is not None and not value.is_file():
            raise ValueError(f"security.tls.{name}: file not found: {value}")


def _destinations(value: Any, base: Path | None) -> tuple[Destination, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("destinations: must be a list of {name, ae_title, host, port}")
    result: list[Destination] = []
    for index, item in enumerate(value):
        entry = _Section(item, f"destinations[{index}].", base)
        entry.only({"name", "ae_title", "host", "port", "tls", "ca", "cert", "key"})
        for required in ("name", "ae_title", "host", "port"):
            if required not in entry.data:
                raise ValueError(f"{entry.key(required)}: missing")
        destination = Destination(
            name=entry.text("name", ""),
            ae_title=ae_title(entry.data["ae_title"], entry.key("ae_title")),
            host=entry.text("host", ""),
            port=entry.integer("port", 0, 1, 65535),
            tls=entry.boolean("tls", False),
            ca=entry.path("ca", None),
            cert=entry.path("cert", None),
            key=entry.path("key", None),
        )
        if (destination.cert is None) != (destination.key is None):
            raise ValueError(f"destinations[{index}]: cert and key must be given together")
        if not destination.tls and (destination.ca or destination.cert):
            raise ValueError(f"destinations[{index}]: ca/cert/key need tls: true")
        if any(d.name == destination.name for d in result):
            raise ValueError(f"destinations[{index}].name: {destination.name!r} is used twice")
        result.append(destination)
    return tuple(result)
