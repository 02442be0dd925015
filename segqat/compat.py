"""Paddle-version workarounds, all in one place.

Every workaround here is scoped (a context manager or a small function that
callers opt into) and names the Paddle/PaddleSeg problem it works around.
Supporting another Paddle version (2.6.2 is next) should only touch this file.

Workarounds for paddle 3.3.1 + paddleseg 2.8.0:

* ``old_ir_export()``: write the old ``model.pdmodel`` format. New-IR
  (``model.json``) programs with ``bilinear_interp`` cannot run with oneDNN
  (PaddlePaddle/Paddle#79749: ``ConvertPirAttribute2RuntimeAttribute not
  support [pir::ArrayAttribute<pir::DoubleAttribute>]``), and the QAT export
  fails under the new IR. Under ``paddle.pir_utils``' old-IR switch, paddle
  3.3 still binds ``paddle.sigmoid``, ``argmax``, ``multiply``, ``sum``, ...
  straight to new-IR ops (``generated_tensor_methods_patch.py``), which fails
  with ``sigmoid(): argument (position 1) must be Value, but got Variable``.
  Inside the guard those names are routed to legacy old-IR ops.
* ``CrossEntropyLoss``: paddleseg 2.8's ``_post_process_loss`` multiplies a
  float loss by an int64 mask, which paddle 3.x rejects ("Type promotion only
  support calculations between floating-point numbers"). ``LOSS_OVERRIDES``
  maps the name to a subclass that casts the mask; ``OhemCrossEntropyLoss``
  adds an int64 mask to float probabilities, same error, same remedy.
* ``scalar(t)``: ``float(t)`` on a shape-[1] tensor raises under numpy 2.x
  ("only 0-dimensional arrays can be converted to Python scalars").
"""
import contextlib
import functools
import logging

import numpy as np  # noqa: F401  (import numpy before paddle: paddle 2.6.2 zlib clash)
import paddle
import paddle.nn.functional as F

logger = logging.getLogger(__name__)

PADDLE_VERSION = paddle.__version__


def scalar(t):
    """Python float of a 0-d or 1-element tensor (numpy 2.x safe)."""
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def set_cpu_threads(n):
    """Math-library threads for dygraph on CPU (paddle has no public API for it)."""
    paddle.base.core.set_num_threads(int(n))


# ---------------------------------------------------------------- old-IR export

def _helper(op_type):
    from paddle.base.layer_helper import LayerHelper
    return LayerHelper(op_type)


def _legacy_unary(op_type):
    def fn(x, name=None, **kwargs):
        helper = _helper(op_type)
        out = helper.create_variable_for_type_inference(dtype=x.dtype)
        helper.append_op(type=op_type, inputs={"X": x}, outputs={"Out": out})
        return out
    fn.__name__ = f"legacy_{op_type}"
    return fn


def _legacy_binary(op_type, out_bool=False):
    def fn(x, y, name=None, **kwargs):
        helper = _helper(op_type)
        if not isinstance(y, paddle.base.framework.Variable):
            y = paddle.full([1], y, dtype=x.dtype)
        dtype = paddle.bool if out_bool else x.dtype
        out = helper.create_variable_for_type_inference(dtype=dtype)
        attrs = {} if op_type.startswith("logical") or out_bool else {"axis": -1}
        helper.append_op(type=op_type, inputs={"X": x, "Y": y},
                         outputs={"Out": out}, attrs=attrs)
        return out
    fn.__name__ = f"legacy_{op_type}"
    return fn


def _legacy_logical_not(x, name=None, **kwargs):
    helper = _helper("logical_not")
    out = helper.create_variable_for_type_inference(dtype=paddle.bool)
    helper.append_op(type="logical_not", inputs={"X": x}, outputs={"Out": out})
    return out


def _legacy_arg(op_type):
    def fn(x, axis=None, keepdim=False, dtype="int64", name=None):
        from paddle.base.framework import convert_np_dtype_to_dtype_
        helper = _helper(op_type)
        var_dtype = convert_np_dtype_to_dtype_(dtype)
        out = helper.create_variable_for_type_inference(var_dtype)
        helper.append_op(
            type=op_type, inputs={"X": x}, outputs={"Out": [out]},
            attrs={"keepdims": keepdim, "axis": 0 if axis is None else axis,
                   "flatten": axis is None, "dtype": var_dtype})
        out.stop_gradient = True
        return out
    fn.__name__ = f"legacy_{op_type}"
    return fn


def _legacy_reduce(op_type):
    def fn(x, axis=None, dtype=None, keepdim=False, name=None):
        if isinstance(dtype, bool):  # paddle.any/all(x, axis, keepdim)
            dtype, keepdim = None, dtype
        if axis is None or axis == []:
            axis, reduce_all = [0], True
        else:
            axis, reduce_all = ([axis] if isinstance(axis, int) else list(axis)), False
        helper = _helper(op_type)
        out = helper.create_variable_for_type_inference(dtype=x.dtype)
        helper.append_op(type=op_type, inputs={"X": x}, outputs={"Out": out},
                         attrs={"dim": axis, "keep_dim": keepdim, "reduce_all": reduce_all})
        return out
    fn.__name__ = f"legacy_{op_type}"
    return fn


def _legacy_matmul(x, y, transpose_x=False, transpose_y=False, name=None):
    helper = _helper("matmul_v2")
    out = helper.create_variable_for_type_inference(dtype=x.dtype)
    helper.append_op(type="matmul_v2", inputs={"X": x, "Y": y}, outputs={"Out": out},
                     attrs={"trans_x": transpose_x, "trans_y": transpose_y})
    return out


# The names paddle 3.3.1 binds to new-IR-only ops (methods_map / funcs_map /
# nn_funcs_map in paddle/base/dygraph/generated_tensor_methods_patch.py) that
# segmentation models call, with their legacy op equivalents.
_LEGACY_OPS = {
    **{n: _legacy_unary(n) for n in (
        "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "floor",
        "ceil", "round", "sin", "cos", "sign", "gelu", "softplus")},
    "multiply": _legacy_binary("elementwise_mul"),
    "maximum": _legacy_binary("elementwise_max"),
    "minimum": _legacy_binary("elementwise_min"),
    "greater_than": _legacy_binary("greater_than", out_bool=True),
    "logical_and": _legacy_binary("logical_and", out_bool=True),
    "logical_or": _legacy_binary("logical_or", out_bool=True),
    "logical_xor": _legacy_binary("logical_xor", out_bool=True),
    "logical_not": _legacy_logical_not,
    "argmax": _legacy_arg("arg_max"),
    "argmin": _legacy_arg("arg_min"),
    "sum": _legacy_reduce("reduce_sum"),
    "amax": _legacy_reduce("reduce_max"),
    "amin": _legacy_reduce("reduce_min"),
    "matmul": _legacy_matmul,
}


@contextlib.contextmanager
def old_ir_export():
    """Build and save static programs in the old IR (``model.pdmodel``).

    Workaround for PaddlePaddle/Paddle#79749 (oneDNN cannot run new-IR
    programs with bilinear_interp) and for the new-IR-only bindings of
    ``paddle.sigmoid`` & co. in paddle 3.x. Create the wrapper layers before
    entering; call ``paddle.jit.save`` (or paddleslim's
    ``save_quantized_model``) inside.
    """
    from paddle.base import framework
    from paddle.pir_utils import _switch_to_old_ir_, _switch_to_pir_

    targets = [paddle, paddle.tensor, F, paddle.base.core.eager.Tensor]
    saved = []
    pir_flag = paddle.get_flags("FLAGS_enable_pir_api")["FLAGS_enable_pir_api"]
    if pir_flag:
        paddle.set_flags({"FLAGS_enable_pir_api": False})
        _switch_to_old_ir_()
    try:
        for module in targets:
            for name, legacy in _LEGACY_OPS.items():
                if hasattr(module, name):
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, legacy)
        # Variable methods (x.sum(), x.sigmoid()) come from the same table.
        for name, legacy in _LEGACY_OPS.items():
            if hasattr(framework.Variable, name):
                saved.append((framework.Variable, name, getattr(framework.Variable, name)))
                setattr(framework.Variable, name,
                        lambda self, *a, _f=legacy, **k: _f(self, *a, **k))
        yield
    finally:
        for module, name, orig in reversed(saved):
            setattr(module, name, orig)
        if pir_flag:
            paddle.set_flags({"FLAGS_enable_pir_api": True})
            _switch_to_pir_()


# ---------------------------------------------------------------- losses

def _fixed_cross_entropy():
    from paddleseg.models.losses import CrossEntropyLoss

    class CrossEntropyLossFixed(CrossEntropyLoss):
        """paddleseg 2.8 CrossEntropyLoss with the mask cast to the loss dtype."""

        def _post_process_loss(self, logit, label, semantic_weights, loss):
            mask = label != self.ignore_index
            mask = paddle.cast(mask, loss.dtype)
            label.stop_gradient = True
            mask.stop_gradient = True
            if loss.ndim > mask.ndim:
                loss = paddle.squeeze(loss, axis=-1)
            loss = loss * mask
            if semantic_weights is not None:
                loss = loss * semantic_weights
            if self.weight is not None:
                _one_hot = F.one_hot(label * paddle.cast(mask, label.dtype), logit.shape[-1])
                coef = paddle.sum(_one_hot * self.weight, axis=-1)
            else:
                coef = paddle.ones_like(label, dtype=loss.dtype)
            if self.top_k_percent_pixels == 1.0:
                return paddle.mean(loss) / (paddle.mean(mask * coef) + self.EPS)
            loss = loss.reshape((-1,))
            top_k_pixels = int(self.top_k_percent_pixels * loss.numel())
            loss, indices = paddle.topk(loss, top_k_pixels)
            coef = coef.reshape((-1,))
            coef = paddle.gather(coef, indices)
            coef.stop_gradient = True
            coef = coef.astype("float32")
            return loss.mean() / (paddle.mean(coef) + self.EPS)

    CrossEntropyLossFixed.__name__ = "CrossEntropyLoss"
    return CrossEntropyLossFixed


def _fixed_ohem_cross_entropy():
    from paddleseg.models.losses import OhemCrossEntropyLoss

    class OhemCrossEntropyLossFixed(OhemCrossEntropyLoss):
        """paddleseg 2.8 OhemCrossEntropyLoss with ``prob + (1 - valid_mask)`` in float.

        The original adds an int64 mask to float probabilities, which paddle 3.x
        rejects ("Type promotion only support calculations between
        floating-point numbers ... float32, int64"). Same algorithm otherwise.
        """

        def forward(self, logit, label):
            if len(label.shape) != len(logit.shape):
                label = paddle.unsqueeze(label, 1)
            n, c, h, w = logit.shape
            label = label.reshape((-1,)).astype("int64")
            valid_mask = (label != self.ignore_index).astype("int64")
            num_valid = valid_mask.sum()
            label = label * valid_mask
            prob = F.softmax(logit, axis=1)
            prob = prob.transpose((1, 0, 2, 3)).reshape((c, -1))
            if self.min_kept < num_valid and num_valid > 0:
                prob = prob + (1 - valid_mask).astype(prob.dtype)  # ignored pixels: prob > 1
                label_onehot = F.one_hot(label, c).transpose((1, 0))
                prob = paddle.sum(prob * label_onehot, axis=0)
                threshold = self.thresh
                if self.min_kept > 0:
                    index = prob.argsort()
                    threshold_index = int(index[min(len(index), self.min_kept) - 1].item())
                    if prob[threshold_index] > self.thresh:
                        threshold = prob[threshold_index]
                    kept_mask = (prob < threshold).astype("int64")
                    label = label * kept_mask
                    valid_mask = valid_mask * kept_mask
            label = label + (1 - valid_mask) * self.ignore_index
            label = label.reshape((n, 1, h, w))
            valid_mask = valid_mask.reshape((n, 1, h, w)).astype("float32")
            loss = F.softmax_with_cross_entropy(logit, label, ignore_index=self.ignore_index, axis=1)
            loss = loss * valid_mask
            label.stop_gradient = True
            valid_mask.stop_gradient = True
            return paddle.mean(loss) / (paddle.mean(valid_mask) + self.EPS)

    OhemCrossEntropyLossFixed.__name__ = "OhemCrossEntropyLoss"
    return OhemCrossEntropyLossFixed


@functools.lru_cache(maxsize=None)
def loss_overrides():
    """Loss classes that replace paddleseg's registry entries on this Paddle (made once)."""
    return {"CrossEntropyLoss": _fixed_cross_entropy(),
            "OhemCrossEntropyLoss": _fixed_ohem_cross_entropy()}


@contextlib.contextmanager
def old_ir_static():
    """Static-graph mode on the old IR (``model.pdmodel`` programs), restored on exit.

    paddle 3.3.1 runs static programs in the new IR (PIR) by default, and
    ``static.load_inference_model`` then looks for ``model.json``; paddle's
    PostTrainingQuantization and its IrGraph passes (used by PTQ) only work
    on old-IR programs. ``paddle.pir_utils.OldIrGuard`` switches both and
    restores dygraph + PIR on exit, errors included.
    """
    from paddle.pir_utils import OldIrGuard
    with OldIrGuard():
        yield


# ---------------------------------------------------------------- conv bias axis

def fix_conv_bias_axis(pdmodel_path):
    """Rewrite conv biases in a saved old-IR program so oneDNN can fuse them.

    paddle 3.x's old-IR export adds a conv bias as ``reshape2(b)`` followed by
    ``elementwise_add(axis=-1)``. Paddle's own oneDNN fuse passes
    (``conv_bias_onednn_fuse_pass``, ``conv_eltwiseadd_bn_fuse_pass``) reject
    ``axis=-1`` in their op-compat check ("Check the Attr(axis) of
    Op(elementwise_add) ... failed"), so neither the bias nor the following
    batch norm is folded into the (INT8) convolution: 53 of BiSeNetV2's batch
    norms stayed separate ops. Paddle 2.x wrote ``elementwise_add(X, b,
    axis=1)``; this restores that form. Only adds fed directly by a conv whose
    other input is the reshape of a 1-D persistable bias used nowhere else are
    touched. Returns the number of adds rewritten.
    """
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    blk = desc.block(0)  # keep ``desc`` alive while ``blk`` is used
    ops = [blk.op(i) for i in range(blk.op_size())]
    producer = {name: op for op in ops for name in op.output_arg_names()}
    users = {}
    for op in ops:
        for name in op.input_arg_names():
            users[name] = users.get(name, 0) + 1
    dead, count = set(), 0
    for op in ops:
        if op.type() != "elementwise_add" or op.attr("axis") != -1:
            continue
        reshape, conv = producer.get(op.input("Y")[0]), producer.get(op.input("X")[0])
        if (reshape is None or conv is None or reshape.type() != "reshape2"
                or conv.type() not in ("conv2d", "depthwise_conv2d")):
            continue
        bias = reshape.input("X")[0]
        var = blk.find_var(bias.encode())
        if (var is None or not var.persistable() or len(var.shape()) != 1
                or users.get(reshape.output("Out")[0], 0) != 1):
            continue
        op.set_input("Y", [bias])
        op._set_attr("axis", 1)
        dead.add(id(reshape))
        count += 1
    for i in reversed(range(blk.op_size())):
        if id(ops[i]) in dead:
            blk._remove_op(i, i + 1)
    with open(pdmodel_path, "wb") as f:
        f.write(desc.serialize_to_string())
    return count

# ---------------------------------------------------------------- reading an export back

def load_old_ir_inference_model(infer_dir):
    """Load an old-IR inference directory (program + every parameter) into a fresh scope.

    paddle 3.3.1 reads static programs as new IR by default (``model.json``);
    the old-IR guard makes ``load_inference_model`` read ``model.pdmodel``.
    Returns the number of ops. Raises whatever paddle raises on a truncated
    or corrupt file.
    """
    import os
    exe = paddle.static.Executor(paddle.CPUPlace())
    with old_ir_static():
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            prog, _, _ = paddle.static.load_inference_model(os.path.join(str(infer_dir), "model"), exe)
            return len(prog.global_block().ops)
