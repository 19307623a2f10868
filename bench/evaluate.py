"""Evaluation cost on CPU, to size an eval: feature extraction images/s and the Fréchet distance.

  shapes     the synthetic-shapes extractor (megatron_cogview.evaluation.shapes) on 32 px images
  inception  the FID Inception-v3 (torch-fidelity's network, random weights: speed only) on 32 px inputs that it
             resizes to 299 px inside, as `cogview evaluate --features inception` runs it
  blur       FID-k Gaussian blur of 256 px images at radius 8 (the widest kernel of the protocol)
  frechet    the distance between two 2048-d Gaussians (512-d with --quick): ours (eigh of C1^1/2 C2 C1^1/2, fp64) beside
             scipy.linalg.sqrtm(C1 C2) as pytorch-fid computes it

Timings alternate between repeats in one process, fixed threads; min and median are printed and written to
bench/results/evaluate_cpu.json.

    python bench/evaluate.py            # ~2-4 min on 2 cores
    python bench/evaluate.py --quick
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_cogview.evaluation.metrics import frechet_distance, gaussian_blur  # noqa: E402
from megatron_cogview.evaluation.shapes import ShapesNet  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(name: str, seconds: list[float], items: int, unit: str) -> dict[str, float]:
    med, best = statistics.median(seconds), min(seconds)
    row = {"median_s": med, "min_s": best, f"{unit}_per_s_median": items / med}
    print(f"{name:<34} median {med * 1e3:9.1f} ms  min {best * 1e3:9.1f} ms  {items / med:10.1f} {unit}/s")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluate_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5
    g = torch.Generator().manual_seed(0)
    results: dict[str, object] = {"threads": args.threads, "machine": platform.platform(), "torch": torch.__version__}

    shapes = ShapesNet(32).eval()
    small = torch.randint(0, 256, (256, 3, 32, 32), generator=g, dtype=torch.uint8)
    results["shapes_32px_batch256"] = summary("shapes extractor, 32 px", timed(lambda: shapes.extract(small), repeats),
                                              256, "img")

    batch = 8 if args.quick else 32
    try:
        from megatron_cogview.evaluation.inception import InceptionFeatures, random_inception_weights

        with tempfile.TemporaryDirectory() as tmp:
            net = InceptionFeatures(random_inception_weights(Path(tmp) / "random.pth"))
        x = torch.randint(0, 256, (batch, 3, 32, 32), generator=g, dtype=torch.uint8)
        results[f"inception_299px_batch{batch}"] = summary("FID Inception-v3, 299 px", timed(lambda: net.extract(x),
                                                           max(1, repeats - 2)), batch, "img")
    except Exception as e:  # torch-fidelity missing: report, keep the other rows
        print(f"inception: skipped ({e})")

    big = torch.randint(0, 256, (16, 3, 256, 256), generator=g, dtype=torch.uint8)
    results["blur_r8_256px_batch16"] = summary("Gaussian blur r=8, 256 px", timed(lambda: gaussian_blur(big, 8), repeats),
                                               16, "img")

    d = 512 if args.quick else 2048  # 2048-d: FID Inception's pool features
    a = torch.randn(2 * d, d, generator=g, dtype=torch.float64)
    c1 = torch.cov(a.T)
    c2 = torch.cov((a * 0.9 + 0.1).T)
    mu = torch.zeros(d, dtype=torch.float64)
    rows = {"ours_eigh": timed(lambda: frechet_distance(mu, c1, mu, c2), 1 if args.quick else 3)}
    try:
        import numpy as np
        from scipy import linalg

        n1, n2 = c1.numpy(), c2.numpy()
        rows["scipy_sqrtm"] = timed(lambda: np.trace(linalg.sqrtm(n1 @ n2)).real, 1 if args.quick else 3)
    except ImportError:
        print("scipy missing: the sqrtm reference is skipped")
    results[f"frechet_{d}d"] = {k: summary(f"Fréchet distance {d}-d, {k}", v, 1, "call") for k, v in rows.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
