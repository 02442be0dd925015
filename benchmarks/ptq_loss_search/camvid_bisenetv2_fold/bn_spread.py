"""How far apart the output channels of each conv + batch norm are once the BN is folded:
max over channels of max|W * gamma / sqrt(var + eps)| divided by the min over channels.
One per-tensor 8-bit scale gives the weakest channel 127 / ratio levels.

    python benchmarks/ptq_loss_search/camvid_bisenetv2_fold/bn_spread.py RUN/fp32/best_model/model.pdparams
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

import numpy as np  # noqa: E402

from segqat import weights  # noqa: E402


def main(path, top=8):
    st = weights.load_state(path)
    rows = []
    for k in st:
        if not k.endswith("_batch_norm._variance"):
            continue
        pre = k[:-len("_batch_norm._variance")]
        w = st.get(pre + "_conv.weight")
        if w is None:
            continue
        s = st[pre + "_batch_norm.weight"] / np.sqrt(st[k] + 1e-5)
        m = np.abs(w * s.reshape(-1, 1, 1, 1)).reshape(w.shape[0], -1).max(1)
        rows.append((float(m.max() / max(m.min(), 1e-12)), "depthwise" if w.shape[1] == 1 else "", pre))
    rows.sort(reverse=True)
    print(f"{len(rows)} conv + BN pairs; largest max/min channel range after folding:")
    for r, kind, name in rows[:top]:
        print(f"  {r:7.1f}  {name.rstrip('.')} {kind}")


if __name__ == "__main__":
    main(sys.argv[1])
