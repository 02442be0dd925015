"""Activation scales of the PTQ variants against the real-data calibration (numbers of docs/results.md).

    python benchmarks/ptq_variants/compare_scales.py   # after benchmarks/ptq_variants/commands.sh
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import deploy  # noqa: E402

# the runs of benchmarks/ptq_variants/commands.sh: $RUNS, by default ../runs relative to the repository root
RUNS = os.environ.get("RUNS", os.path.join(os.path.dirname(__file__), "..", "..", "..", "runs"))
S = os.path.join(RUNS, "sweep")
ref = np.array(deploy.conv_input_scales(f"{S}/camvid_bisenetv2/ptq_f1_s0"))
for name in ("camvid_bisenetv2_ptq_random", "camvid_bisenetv2_ptq_abs_max",
             "camvid_bisenetv2_ptq_per_tensor"):
    r = np.array(deploy.conv_input_scales(f"{S}/{name}")) / ref
    print(f"{name}: conv input scales / hist-calibrated ones: min {r.min():.2f}, "
          f"median {np.median(r):.2f}, max {r.max():.2f} ({len(r)} inputs)")
