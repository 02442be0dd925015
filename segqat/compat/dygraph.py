"""Dygraph training on paddle 3.3.1 / paddleslim 2.6 / numpy 2.x: the small gaps.

* ``paddleslim_qat_config``: paddle 3.3.1's ``ImperativeQuantAware(fuse_conv_bn=True)``
  does not fold (``fuse_utils.fuse_conv_bn`` folds a deep copy and drops it);
  segqat folds itself (``quant.fold_batch_norms``) and switches paddle's off.
* ``scalar``: ``float(t)`` on a shape-[1] tensor raises under numpy 2.x ("only
  0-dimensional arrays can be converted to Python scalars").
* ``set_cpu_threads``: paddle has no public API for dygraph's CPU math threads.

Used by ``segqat.quant`` (QAT config), ``segqat.engine`` (loss values, data-loader
workers' threads) and ``segqat.cli`` (``--cpu_threads``).
"""
import numpy as np
import paddle


# paddle 3.3.1's ImperativeQuantAware(fuse_conv_bn=True), which paddleslim's QAT config
# passes on, does not fold: quantization/imperative/fuse_utils.fuse_conv_bn folds a deep copy
# (fuse_layers(..., inplace=False)) and drops it. segqat folds itself (quant.fold_batch_norms)
# and always gives paddleslim fuse_conv_bn=False; tests/test_quant.py checks both.
def paddleslim_qat_config(cfg):
    """paddleslim QAT config with paddle's no-op folding switched off (see above)."""
    return dict(cfg, fuse_conv_bn=False)


def scalar(t):
    """Python float of a 0-d or 1-element tensor (numpy 2.x safe)."""
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def set_cpu_threads(n):
    """Math-library threads for dygraph on CPU (paddle has no public API for it)."""
    paddle.base.core.set_num_threads(int(n))
