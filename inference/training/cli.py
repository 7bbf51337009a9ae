"""``myonode train`` on the command line.

Kept apart from ``inference/training/loop.py`` so that building the ``myonode`` parser (for
``myonode serve`` or ``status`` too) does not import torch: that alone took 3-4 s and
several hundred MB. The training module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode train``."""
    parser.add_argument("--out", required=True, metavar="PACKAGE_DIR", help="folder to write the model package to")
    parser.add_argument("--config", metavar="YAML", help="training configuration (default: embedded config/training.yaml)")
    parser.add_argument("--site-data", metavar="DIR", help="folder of NIfTI training cases (see docs/training.md)")
    parser.add_argument("--phantoms", type=int, metavar="N", help="training phantom subjects per stage and fold")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs of every stage")
    parser.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default from the config)")
    parser.add_argument("--seed", type=int, help="random seed (default from the config)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all cores; on a machine "
                                                                  "shared with other jobs 1 can be faster)")
    parser.add_argument("--init", metavar="PACKAGE_DIR", help="fine-tune from this package's weights (its network, "
                                                               "inputs and spacing are used)")


def _printer() -> Callable[[str, str], None]:
    """Progress on stderr: a redrawn bar on a terminal, one line per epoch always."""
    tty = sys.stderr.isatty()

    def show(event: str, text: str) -> None:
        if event == "tick":
            if tty:
                sys.stderr.write("\r" + text[:120].ljust(120))
                sys.stderr.flush()
            return
        if tty:
            sys.stderr.write("\r" + " " * 120 + "\r")
        print(text, flush=True)

    return show


def run_train(args: argparse.Namespace) -> int:
    """``myonode train``: returns 0, or 2 with one line on stderr for a bad configuration."""
    from inference.models.package import ModelPackageError
    from inference.training.config import TrainingConfigError, load_training_config
    from inference.training.loop import train

    command = " ".join(["myonode", *sys.argv[1:]])
    try:
        config = load_training_config(args.config).with_overrides(
            phantoms=args.phantoms,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            site_data=args.site_data,
            init_package=args.init,
            command=command,
        )
        if args.threads is not None:
            if args.threads < 1:
                raise TrainingConfigError("--threads must be >= 1")
            config = dataclasses.replace(config, cpu_threads=args.threads)
        started = time.perf_counter()
        out = train(config, Path(args.out), resume=args.resume, progress=_printer())
    except (TrainingConfigError, ModelPackageError, ValueError) as exc:
        print(f"myonode train: {exc}", file=sys.stderr)
        return 2
    print(f"trained in {(time.perf_counter() - started) / 60:.1f} min; package {out}")
    return 0
