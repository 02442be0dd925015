"""The PACT numbers of docs/results.md: learned alphas, weights against the plain QAT run, scales.

    python benchmarks/options/inspect_pact.py   # after the runs in benchmarks/options/commands.sh
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import paddle  # noqa: E402

from segqat import deploy  # noqa: E402

# the runs of benchmarks/options/commands.sh: $RUNS, by default ../runs relative to the repository root
RUNS = os.environ.get("RUNS", os.path.join(os.path.dirname(__file__), "..", "..", "..", "runs"))
IB = os.path.join(RUNS, "isbi_bisenetv2", "20261122-152413")
O = os.path.join(RUNS, "options")
plain = paddle.load(f"{IB}/qat/best_model/model.pdparams")
s_plain = np.array(deploy.conv_input_scales(f"{IB}/qat_infer"))
print(f"plain QAT: {len(s_plain)} conv input scales, max {s_plain.max():.2f}, "
      f"{int((s_plain > 10).sum())} above 10")
for run in ("isbi_bisenetv2_pact", "isbi_bisenetv2_pact10"):
    w = paddle.load(f"{O}/{run}/qat/best_model/model.pdparams")
    alphas = np.array([float(v.item()) for k, v in w.items() if k.endswith("_act_preprocess.alpha")])
    diff = max(float(np.abs(plain[k].numpy() - w[k].numpy()).max()) for k in plain)
    print(f"{run}: {len(alphas)} alphas in [{alphas.min():.3f}, {alphas.max():.3f}]; "
          f"max |weight - plain QAT weight| {diff:.2e}")
