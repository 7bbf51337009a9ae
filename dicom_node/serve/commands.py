"""The node's commands: ``serve``, ``status``, ``retry``, ``release``, ``resend`` (wired into
``cli.py``).

``status``, ``retry``, ``release`` and ``resend`` work on the node's SQLite state directly,
whether the node runs or not: a running node picks up requeued jobs and deliveries within a
second (its workers poll the state), a stopped one at its next start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.node.config import NodeConfig, load_node_config
from dicom_node.node.state import DB_NAME, State, StateError
from dicom_node.serve.progress import last_progress

EXIT_BAD_INPUT = 2


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", type=Path, default=[], metavar="FILE",
                        help="node YAML merged over the embedded config/node.yaml; repeat to "
                             "layer files (later ones win)")


def _config(args: argparse.Namespace) -> NodeConfig:
    return load_node_config(*args.config)


def _existing_state(config: NodeConfig) -> State:
    if not (Path(config.data_dir) / DB_NAME).is_file():
        raise StateError(f"no node state in {config.data_dir} (has the node run yet?)")
    return State.in_data_dir(config.data_dir)


def _fail(command: str, message: str) -> int:
    print(f"myonode {command}: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


# -- serve -----------------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode serve``."""
    _config_argument(parser)


def run_serve_command(args: argparse.Namespace) -> int:
    """``myonode serve``: run the node until SIGTERM/SIGINT."""
    from dicom_node.serve.service import ListenerError, run_serve

    try:
        return run_serve(args.config)
    except ListenerError as exc:  # the DICOM or HTTP port is taken: which, and the setting
        return _fail("serve", str(exc))
    except OSError as exc:
        return _fail("serve", f"cannot start: {exc}")
    except StateError as exc:
        return _fail("serve", str(exc))


# -- status ----------------------------------------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode status``."""
    _config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--limit", type=int, default=20, help="studies and jobs shown")


def node_status(config: NodeConfig, limit: int = 20) -> dict:
    """Studies, jobs and outbox of the node whose data folder ``config`` names."""
    state = State.in_data_dir(config.data_dir, read_only=True)
    try:
        jobs = state.jobs(limit=limit)
        report = {
            "node": _runtime(config),
            "destinations": [
                {"name": d.name, "ae_title": d.ae_title, "host": d.host, "port": d.port,
                 "tls": d.tls} for d in config.destinations
            ],
            "studies": state.studies(limit=limit),
            "job_counts": state.job_counts(),
            "jobs": [{**_job_entry(job), "progress": _progress(config, job)} for job in jobs],
            "held": [
                {"job_id": job.id, "study_uid": job.study_uid, "version": job.version,
                 "received_at": _iso(job.created_at), "reason": job.error}
                for job in state.jobs(("held",), limit=1000)
            ],
            "outbox": state.delivery_counts(),
            "dead_letters": [
                {"job_id": d.job_id, "destination": d.destination,
                 "sop_instance_uid": d.sop_instance_uid, "attempts": d.attempts,
                 "error": d.last_error, "path": d.path}
                for d in state.deliveries(state="dead")
            ],
            "undelivered_results": sum(
                len(state.outbox_items(job.id)) for job in jobs
                if job.state == "done" and job.note and "no destination" in job.note
            ),
        }
    finally:
        state.close()
    return report


def _runtime(config: NodeConfig) -> dict:
    info: dict = {"ae_title": config.ae_title, "data_dir": str(Path(config.data_dir).resolve()),
                  "running": False}
    runtime = Path(config.data_dir) / "node.json"
    try:
        saved = json.loads(runtime.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    try:
        os.kill(int(saved["pid"]), 0)
        running = True
    except (OSError, KeyError, ValueError):
        running = False
    info.update({k: saved.get(k) for k in ("pid", "dicom_port", "http_port")},
                running=running)
    return info


def _progress(config: NodeConfig, job) -> dict | None:
    """The last progress line of a job being processed (its attempt's ``progress.jsonl``)."""
    if job.state != "processing":
        return None
    return last_progress(Path(config.data_dir) / "jobs" / f"job-{job.id}"
                         / f"attempt-{job.attempts}")


def _job_entry(job) -> dict:
    def span(start: float | None, end: float | None) -> float | None:
        return round(end - start, 1) if start is not None and end is not None else None

    return {
        "id": job.id, "study_uid": job.study_uid, "version": job.version, "state": job.state,
        "trigger": job.trigger, "attempts": job.attempts, "inputs": job.input_count,
        "received_at": _iso(job.created_at),
        "waited_s": span(job.created_at, job.queued_at),
        "queued_s": span(job.queued_at, job.started_at),
        "processing_s": span(job.started_at, job.sending_at),
        "sending_s": span(job.sending_at, job.finished_at),
        "failed_stage": job.failed_stage, "error": job.error, "note": job.note,
    }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def format_status(report: dict) -> str:
    """The status report as readable text."""
    node = report["node"]
    running = (f"running, pid {node['pid']}, DICOM port {node['dicom_port']}, "
               f"HTTP port {node['http_port']}" if node["running"] else "not running")
    lines = [f"node {node['ae_title']} ({running}); data in {node['data_dir']}"]
    if report["destinations"]:
        lines.append("destinations: " + ", ".join(
            f"{d['name']} ({d['ae_title']}@{d['host']}:{d['port']}{', TLS' if d['tls'] else ''})"
            for d in report["destinations"]))
    else:
        lines.append("destinations: none - results stay in the outbox")
    lines.append("")
    lines.append(f"studies ({len(report['studies'])} most recent)")
    lines.append(f"  {'study':<40} {'instances':>9} {'versions':>8}  last received")
    for study in report["studies"]:
        lines.append(f"  {_short(study['study_uid'], 40):<40} {study['instances']:>9} "
                     f"{study['latest_version']:>8}  {_iso(study['last_received_at'])}")
    counts = ", ".join(f"{k} {v}" for k, v in report["job_counts"].items())
    lines += ["", f"jobs: {counts}"]
    lines.append(f"  {'id':>4} {'study':<24} {'v':>2} {'state':<10} {'trigger':<12} "
                 f"{'received':<19} {'wait s':>7} {'proc s':>7} {'send s':>7}  error / note")
    for job in report["jobs"]:
        def num(value: float | None) -> str:
            return f"{value:>7.1f}" if value is not None else f"{'-':>7}"

        detail = job["error"] or _step(job.get("progress")) or job["note"] or ""
        lines.append(
            f"  {job['id']:>4} {_short(job['study_uid'], 24):<24} {job['version']:>2} "
            f"{job['state']:<10} {job['trigger'] or '-':<12} {job['received_at']:<19} "
            f"{num(job['waited_s'])} {num(job['processing_s'])} {num(job['sending_s'])}  "
            f"{detail[:100]}"
        )
    if report["held"]:
        lines += ["", "held studies: not processed until a person releases them "
                      "(myonode release JOB)"]
        for held in report["held"]:
            lines.append(f"  job {held['job_id']} {held['study_uid']} v{held['version']} "
                         f"(received {held['received_at']}): {held['reason']}")
    lines += ["", "outbox (deliveries per destination)"]
    if not report["outbox"]:
        lines.append("  nothing delivered or pending")
    for destination, counts in sorted(report["outbox"].items()):
        lines.append(f"  {destination:<20} pending {counts['pending']:>5}  sent "
                     f"{counts['sent']:>5}  dead {counts['dead']:>5}")
    if report["undelivered_results"]:
        lines.append(f"  {report['undelivered_results']} result(s) of the jobs shown were kept "
                     "in the outbox without a destination")
    if report["dead_letters"]:
        lines += ["", "dead letters (myonode resend --dead-letters)"]
        for dead in report["dead_letters"][:50]:
            lines.append(f"  job {dead['job_id']} -> {dead['destination']}: "
                         f"{dead['sop_instance_uid']} after {dead['attempts']} attempt(s): "
                         f"{dead['error']}")
    return "\n".join(lines)


def _step(progress: dict | None) -> str | None:
    """``now: segment li 40% (at 312.0 s)`` from a job's last progress line."""
    if not progress:
        return None
    step = progress.get("step")
    if progress.get("status") == "finished":
        step = f"{step} done"
    elif "percent" in progress:
        step = f"{step} {progress['percent']}%"
    return f"now: {step} (at {progress.get('elapsed_s', '?')} s)"


def _short(uid: str, width: int) -> str:
    return uid if len(uid) <= width else "..." + uid[-(width - 3):]


def run_status_command(args: argparse.Namespace) -> int:
    """``myonode status``."""
    try:
        report = node_status(_config(args), limit=args.limit)
    except StateError as exc:
        return _fail("status", str(exc))
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


# -- retry and resend --------------------------------------------------------------------------


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode retry``."""
    parser.add_argument("job", type=int, help="id of a failed job (see myonode status)")
    _config_argument(parser)


def _on_state(args: argparse.Namespace, command: str,
              change: Callable[[State, NodeConfig], str]) -> int:
    """Apply ``change`` to the node's state and print what it says; 2 with a line on error."""
    config = _config(args)
    try:
        state = _existing_state(config)
        try:
            print(change(state, config))
        finally:
            state.close()
    except StateError as exc:
        return _fail(command, str(exc))
    return 0


def run_retry_command(args: argparse.Namespace) -> int:
    """``myonode retry JOB``: a failed job runs again (processing, or its dead letters)."""
    return _on_state(args, "retry", lambda state, _: state.retry_job(args.job))


def add_release_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode release``."""
    parser.add_argument("job", type=int, help="id of a held job (see myonode status)")
    _config_argument(parser)


def run_release_command(args: argparse.Namespace) -> int:
    """``myonode release JOB``: a person has checked a held study (for instance that its
    instances are of one patient after all); it is processed with all its instances."""
    return _on_state(args, "release", lambda state, _: state.release_job(args.job))


def add_resend_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode resend``."""
    parser.add_argument("job", type=int, nargs="?",
                        help="send every result of this job again, to every destination")
    parser.add_argument("--dead-letters", action="store_true",
                        help="send the dead letters again (of JOB, or of every job)")
    _config_argument(parser)


def run_resend_command(args: argparse.Namespace) -> int:
    """``myonode resend JOB`` or ``myonode resend --dead-letters``."""
    if args.job is None and not args.dead_letters:
        return _fail("resend", "name a job, or give --dead-letters")

    def resend(state: State, config: NodeConfig) -> str:
        count = state.resend(args.job, [d.name for d in config.destinations],
                             dead_letters_only=args.dead_letters)
        return f"{count} deliver{'y' if count == 1 else 'ies'} queued"

    return _on_state(args, "resend", resend)


COMMANDS = {
    "serve": ("run the DICOM node", add_serve_arguments, run_serve_command),
    "status": ("studies, jobs and outbox of the node", add_status_arguments, run_status_command),
    "retry": ("run a failed job again", add_retry_arguments, run_retry_command),
    "release": ("process a held study after checking it", add_release_arguments,
                run_release_command),
    "resend": ("send results again", add_resend_arguments, run_resend_command),
}
