"""The ``myonode`` command line.

Every command reports bad input as one clear line on stderr and a non-zero exit code; a
traceback only ever means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dicom_node.study.dixon_roles import RulesError

EXIT_BAD_INPUT = 2


def _phantom(args: argparse.Namespace) -> int:
    from dicom_node.phantom.study import PhantomOptions, default_slices, make_phantom

    options = PhantomOptions(
        seed=args.seed,
        infiltration=args.infiltration,
        vendor=args.vendor,
        stacks=args.stacks or 3,
        calf_stacks=args.stacks or 2,
        slices=args.slices if args.slices is not None else default_slices(
            args.slice_thickness, args.slice_gap
        ),
        matrix=args.matrix,
        overlap=args.overlap,
        snr=args.snr,
        oblique_deg=args.oblique,
        slice_thickness=args.slice_thickness,
        slice_gap=args.slice_gap,
        region=args.region,
        dixon_output=args.dixon_output,
    )
    started = time.perf_counter()
    paths = make_phantom(Path(args.out_dir), options)
    elapsed = time.perf_counter() - started
    stacks = " + ".join(f"{options.stacks_of(s)} {s}" for s in options.stations)
    print(
        f"wrote {len(paths)} DICOM files and truth/ to {args.out_dir} in {elapsed:.1f} s "
        f"({stacks} stack(s), vendor {options.vendor}, {options.infiltration} "
        "infiltration)"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dicom_node.study.inspection import format_report, inspect_folder

    report = inspect_folder(Path(args.dicom_dir), Path(args.rules) if args.rules else None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["studies"] else EXIT_BAD_INPUT


def _process(args: argparse.Namespace) -> int:
    from dicom_node.process import format_table, run_process

    result = run_process(
        Path(args.dicom_dir),
        Path(args.out),
        Path(args.config) if args.config else None,
        args.device,
        study_uid=args.study,
        rules_path=Path(args.rules) if args.rules else None,
    )
    print(format_table(result.results))
    total = result.results["timings_s"]["total"]
    print(f"wrote labels, results, {len(result.seg_paths)} SEG(s) and an SR to {args.out} "
          f"in {total:.1f} s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from inference.evaluate import run_evaluate

    return run_evaluate(args)


def _train(args: argparse.Namespace) -> int:
    from inference.training.cli import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="myonode", description="DICOM node for quantitative muscle MRI (Dixon fat fraction)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser(
        "phantom", help="write a synthetic Dixon study (thighs, calves or both) with ground truth"
    )
    phantom.add_argument("out_dir", help="folder to write dicom/ and truth/ into")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--infiltration", choices=["low", "high"], default="low")
    phantom.add_argument(
        "--vendor", choices=["siemens", "philips", "philips-enhanced", "ge"], default="siemens"
    )
    phantom.add_argument(
        "--region", choices=["thigh", "calf", "both"], default="thigh",
        help="thigh (knee to hip), calf (ankle to knee) or both stations in one study, as "
             "separate series (truth/thigh/ and truth/calf/)",
    )
    phantom.add_argument(
        "--stacks", type=int, choices=[1, 2, 3], default=None,
        help="stacks per station (default 3 for the thigh, 2 for the calf)",
    )
    phantom.add_argument(
        "--slices", type=int, default=None,
        help="slices per stack (default 140, or a 280 mm stack with --slice-thickness)",
    )
    phantom.add_argument("--matrix", type=int, default=384, help="in-plane matrix size")
    phantom.add_argument(
        "--overlap", type=int, default=None, help="slices shared by neighbouring stacks"
    )
    phantom.add_argument("--snr", type=float, default=40.0, help="signal-to-noise ratio")
    phantom.add_argument(
        "--oblique", type=float, default=0.0, help="tilt of the slices in degrees"
    )
    phantom.add_argument(
        "--slice-thickness", type=float, default=None, metavar="MM",
        help="2D multi-slice protocol with slices this thick (default: the 3D stack)",
    )
    phantom.add_argument(
        "--slice-gap", type=float, default=0.0, metavar="MM",
        help="gap between 2D slices, edge to edge (spacing = thickness + gap)",
    )
    phantom.add_argument(
        "--dixon-output", choices=["scanner", "echoes", "echoes+phase"], default="scanner",
        help="scanner: the scanner's water, fat, in- and out-of-phase images; echoes: only the "
             "echo magnitudes (siemens 3 T 3.45/4.60/5.75 ms, ge 1.5 T 2.2/4.4 ms); "
             "echoes+phase: and each echo's phase (docs/vendors.md)",
    )
    phantom.set_defaults(run=_phantom)

    inspect = commands.add_parser(
        "inspect", help="recognise Dixon roles and stacks in a folder; show the stitched grid"
    )
    inspect.add_argument("dicom_dir")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--rules", help="site Dixon rules YAML (default: embedded rules)")
    inspect.set_defaults(run=_inspect)

    process = commands.add_parser(
        "process", help="segment the muscles of one Dixon study and quantify their fat fraction"
    )
    process.add_argument("dicom_dir")
    process.add_argument("--out", required=True, help="output folder")
    process.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    process.add_argument("--config", help="pipeline YAML (default: embedded config/pipeline.yaml)")
    process.add_argument("--study", help="StudyInstanceUID, when the folder holds several")
    process.add_argument("--rules", help="site Dixon rules YAML (default: embedded rules)")
    process.set_defaults(run=_process)

    from inference.evaluate import add_evaluate_arguments
    from inference.training.cli import add_train_arguments

    evaluate = commands.add_parser(
        "evaluate", help="Dice, surface distance and FF agreement of predictions against truth"
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="train or fine-tune a model package")
    add_train_arguments(train)
    train.set_defaults(run=_train)

    from dicom_node.serve.commands import COMMANDS as NODE_COMMANDS

    for name, (help_text, add_arguments, run) in NODE_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``myonode`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, NotADirectoryError, RulesError, ValueError) as exc:
        print(f"myonode {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
