"""Sliding-window inference: myonode's ``sliding_window_inference`` against MONAI's.

Is our own sliding window worth keeping instead of MONAI's? Both run the same network (the
benchmark model's LI fold, ``inference.models.unet.UNet3D``) over the same inputs: the two leg
volumes that the pipeline feeds the network for the full-size 3-stack phantom (384 x 384,
3 x 140 slices), made with the pipeline's own steps (stitch, model grid, normalisation,
body crop, leg split, pad to the patch). Same patch size, overlap and batch size; Gaussian
weighting (sigma = patch / 8) in both; both average softmax probabilities (MONAI's predictor
returns softmax(net(x))); both under ``torch.inference_mode``, float32 on the CPU.

Reported: the wall time of both legs (median of ``--repeat`` alternating runs), the part of
it spent in the network itself (the same for both, in principle), so the rest is the
method's own overhead; and how far the outputs are apart: max |p_myonode - p_MONAI| over
all classes and voxels, and the share of voxels whose argmax differs. MONAI places its
windows at a fixed step (the last one moved to the end), myonode spreads them evenly, so
on the legs the two average different windows. The same figures are also given for a crop
of the first leg whose size makes both place the very same windows: what remains there is
the Gaussian map's floor (both are the same separable Gaussian centred on
``(patch - 1) / 2``, but MONAI raises every weight below 1e-3 to 1e-3, myonode below 1e-6 of
the peak), which matters where sigma (patch / 8) is about one voxel. Last, on that crop,
MONAI is given myonode's map (``roi_weight_map``): then the two must agree to float
rounding, which checks myonode's accumulation and normalisation.

    python benchmarks/inference_vs_monai.py [--repeat 3] [--overlap 0.5] [--batch-size 1] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from bench_common import (
    benchmark_model,
    busy_processes,
    conditions,
    phantom,
    record,
    row,
    row_note,
)

from dicom_node.phantom.study import PhantomOptions
from dicom_node.process import FF_ROLES, select_study
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.stitch import stitch
from inference.models.package import ModelPackage
from inference.resample import Canonical, model_grid, resample_image, same_spacing
from inference.segment import anatomy_image, pad_to_patch, prepare_legs, required_images
from inference.sliding_window import configure_cpu_threads, gaussian_importance
from inference.sliding_window import sliding_window_inference as myonode_swi


def leg_volumes(package: ModelPackage) -> list[np.ndarray]:
    """The ``[C, k, j, i]`` volumes of both legs, as ``inference.segment.segment`` makes them."""
    study = select_study(phantom("study-3stack", PhantomOptions()), DixonRules.load(), None)
    stitched = stitch(study, roles=sorted(set(package.roles) | set(FF_ROLES)))
    inputs, _ = required_images(stitched.images, package.roles)
    canonical = Canonical.of(stitched.plan.geometry)
    grid = canonical.geometry
    if not same_spacing(grid.spacing, package.spacing_mm):
        grid = model_grid(canonical.geometry, package.spacing_mm)
    on_grid = {role: resample_image(canonical.forward(v), canonical.geometry, grid)
               for role, v in inputs.items()}
    channels = np.stack([spec.normalise(on_grid[spec.role]) for spec in package.inputs])
    legs, _ = prepare_legs(channels, anatomy_image(on_grid), left_is_high_i=grid.row_dir[0] > 0)
    return [np.ascontiguousarray(pad_to_patch(half, package.patch_size, legs.pad_values)[0])
            for half in (legs.right, legs.left)]


class TimedNetwork:
    """The network, with the time spent in its forward passes summed up."""

    def __init__(self, net: torch.nn.Module, softmax: bool) -> None:
        self.net, self.softmax, self.seconds, self.calls = net, softmax, 0.0, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.net(x)
        if self.softmax:
            out = torch.softmax(out, dim=1)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out


def run_myonode(net, volumes, patch, overlap, batch_size) -> tuple[list[torch.Tensor], float, float]:
    timed = TimedNetwork(net, softmax=False)  # myonode applies the softmax itself
    started = time.perf_counter()
    outs = [myonode_swi(timed, torch.from_numpy(v), patch, overlap, batch_size, "cpu")
            for v in volumes]
    return outs, time.perf_counter() - started, timed.seconds


@torch.inference_mode()
def run_monai(net, volumes, patch, overlap, batch_size,
              weights: torch.Tensor | None = None) -> tuple[list[torch.Tensor], float, float]:
    from monai.inferers import sliding_window_inference as monai_swi

    timed = TimedNetwork(net, softmax=True)
    started = time.perf_counter()
    outs = [monai_swi(torch.from_numpy(v)[None], patch, batch_size, timed, overlap=overlap,
                      mode="gaussian", sigma_scale=0.125, padding_mode="constant",
                      roi_weight_map=weights)[0]
            for v in volumes]
    return outs, time.perf_counter() - started, timed.seconds


def aligned_crop(volume: np.ndarray, patch: tuple[int, ...], overlap: float) -> np.ndarray:
    """The largest crop of ``volume`` on which both methods place the same windows: each
    size is the patch plus a whole number of MONAI's steps (int(patch * (1 - overlap)))."""
    sizes = []
    for n, p in zip(volume.shape[1:], patch):
        step = max(int(p * (1 - overlap)), 1)
        sizes.append(p + (n - p) // step * step)
    return np.ascontiguousarray(volume[:, :sizes[0], :sizes[1], :sizes[2]])


def disagreement(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[float, float]:
    """Max absolute difference of the probabilities, and the share of voxels whose argmax
    differs."""
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    voxels = sum(int(a[0].numel()) for a in ours)
    flipped = sum(int((a.argmax(0) != b.argmax(0)).sum()) for a, b in zip(ours, theirs))
    return diff, flipped / voxels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="add the row to BENCHMARKS.md")
    parser.add_argument("--note", default="", help="text for the row's note column")
    args = parser.parse_args()
    import monai

    threads = configure_cpu_threads()
    model_dir, model_name = benchmark_model()
    package = ModelPackage.load(model_dir)
    net = package.build_networks("cpu")["li" if "li" in package.models else "hi"][0]
    volumes = leg_volumes(package)
    patch = package.patch_size
    print(f"legs {[v.shape for v in volumes]}, patch {patch}, overlap {args.overlap}, "
          f"batch {args.batch_size}, {threads} threads, MONAI {monai.__version__}")
    cond = conditions()
    busy = busy_processes()
    with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
        net(torch.from_numpy(volumes[0][None, :, :patch[0], :patch[1], :patch[2]]))
    results: dict[str, list[tuple[float, float]]] = {"myonode": [], "monai": []}
    outputs = {}
    for repeat in range(args.repeat):
        order = [("myonode", run_myonode), ("monai", run_monai)]
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            outs, total, network = run(net, volumes, patch, args.overlap, args.batch_size)
            results[name].append((total, network))
            outputs[name] = outs
            print(f"run {repeat + 1} {name:8s} {total:6.2f} s (network {network:6.2f} s)",
                  flush=True)
    diff, argmax = disagreement(outputs["myonode"], outputs["monai"])
    crop = aligned_crop(volumes[0], patch, args.overlap)
    ours = run_myonode(net, [crop], patch, args.overlap, args.batch_size)[0]
    same_windows = disagreement(ours, run_monai(net, [crop], patch, args.overlap,
                                                args.batch_size)[0])
    same_map = disagreement(ours, run_monai(net, [crop], patch, args.overlap, args.batch_size,
                                            gaussian_importance(patch))[0])
    median = {name: statistics.median(t for t, _ in runs) for name, runs in results.items()}
    network = {name: statistics.median(n for _, n in runs) for name, runs in results.items()}
    speedup = median["monai"] / median["myonode"]
    verdict = "met" if speedup >= 1.0 else f"MISSED: {(1 - speedup) * 100:.0f}% slower"
    print(f"myonode {median['myonode']:.2f} s, MONAI {median['monai']:.2f} s: "
          f"{speedup:.2f}x ({verdict}); max |dp| {diff:.2e}, argmax differs in "
          f"{argmax * 100:.3f}% of voxels; same windows ({'x'.join(map(str, crop.shape[1:]))}): "
          f"max |dp| {same_windows[0]:.2e}, argmax {same_windows[1] * 100:.3f}%; and "
          f"myonode's map: max |dp| {same_map[0]:.2e}, argmax {same_map[1] * 100:.3f}%")
    load_end = "/".join(f"{v:.2f}" for v in os.getloadavg())
    note = row_note([
        f"{model_name}", f"legs {' + '.join('x'.join(map(str, v.shape[1:])) for v in volumes)}",
        (f"patch {'x'.join(map(str, patch))}, overlap {args.overlap}, "
         f"batch {args.batch_size}, {threads} threads"),
        f"median of {args.repeat}", f"MONAI {monai.__version__}",
        f"load at end {load_end}"], busy, args.note)
    cells = ["CPU", f"{median['myonode']:.2f} ({network['myonode']:.2f})",
             f"{median['monai']:.2f} ({network['monai']:.2f})", f"{speedup:.2f}x",
             (f"legs {diff:.1e} / {argmax * 100:.2f}%; same windows {same_windows[0]:.1e} / "
              f"{same_windows[1] * 100:.2f}%; same windows and map {same_map[0]:.1e} / "
              f"{same_map[1] * 100:.2f}%"), f"never slower: {verdict}", note]
    line = row(cond, cells)
    print(line)
    if args.record:
        record("inference_vs_monai", [line])


if __name__ == "__main__":
    main()
