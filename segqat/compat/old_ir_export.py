"""The old-IR export guard: ``old_ir_export()`` writes ``model.pdmodel`` programs.

Why the old IR: new-IR (``model.json``) programs with ``bilinear_interp``
cannot run with oneDNN (PaddlePaddle/Paddle#79749:
``ConvertPirAttribute2RuntimeAttribute not support
[pir::ArrayAttribute<pir::DoubleAttribute>]``), and paddleslim's QAT export
fails under the new IR. What the guard changes, for its duration only
(restored on exit, errors included):

* paddle's IR switch (``FLAGS_enable_pir_api`` off);
* every API paddle 3.3.1 binds to a new-IR-only op (``paddle.sigmoid``,
  ``bmm``, ``sum``, ...) and every module-level reference to it builds its
  legacy op (``legacy_ops.py``); a few broken or too strict paddle functions
  are replaced (``function_fixes.py``); the replacements are
  ``paddle.jit.not_to_static`` (else dy2static deadlocks on its own cache
  lock: the DNLNet hang);
* paddle's QAT export writes paddleslim's output observers as observers
  (``only_observer``) instead of rounding quantize/dequantize pairs, so the
  export computes what QAT trained;
* paddle's ``IrGraph`` link methods run without their O(graph) asserts (the
  QAT export of HRNet spent minutes in them);
* a watchdog bounds the export, and errors name the layer and op traced.

``old_ir_export`` is used by ``segqat.export`` (FP32 and QAT exports) and the
tests; PTQ and reading exports back use ``program_io.old_ir_static``.
"""
import contextlib
import logging

import paddle
import paddle.nn.functional as F

from .function_fixes import replacements
from .ir_switch import old_ir
from .legacy_ops import TRACING, ExportError, binding_tables, legacy_op, new_ir_only_names

logger = logging.getLogger(__name__)


def _ir_graph_links_unchecked():
    """``IrGraph`` link methods without their membership asserts, as ``python -O`` runs them.

    ``link_to``, ``update_input_link`` and ``update_output_link``
    (paddle/base/framework.py) assert ``node.node in self.graph.nodes()``,
    and ``nodes()`` copies every node of the graph into a new Python set on
    each call (14 ms for HRNet-W18's QAT program). paddle's
    ``ReplaceFakeQuantDequantPass`` links 8 times per fake-quant op: the
    ONNX-format QAT export of FCN-HRNet_W18 (921 such ops) spent 305 of its
    455 s in these checks (cProfile; 15,662 ``nodes()`` calls), OCRNet's
    likewise (the zoo's >7 min INT8 exports). The bodies are paddle's own.
    """
    def link_to(self, node_in, node_out):
        node_in.append_output(node_out)
        node_out.append_input(node_in)

    def update_input_link(self, old_input_node, new_input_node, op_node):
        old_input_node.remove_output(op_node)
        op_node.remove_input(old_input_node)
        new_input_node.append_output(op_node)
        op_node.append_input(new_input_node)
        op_node.rename_input(old_input_node.name(), new_input_node.name())

    def update_output_link(self, old_output_node, new_output_node, op_node):
        old_output_node.remove_input(op_node)
        op_node.remove_output(old_output_node)
        new_output_node.append_input(op_node)
        op_node.append_output(new_output_node)
        op_node.rename_output(old_output_node.name(), new_output_node.name())

    return {"link_to": link_to, "update_input_link": update_input_link,
            "update_output_link": update_output_link}


def _output_observers_stay_identity():
    """paddle's QAT export without rounding where QAT only observed.

    paddleslim's QAT wraps each quantized layer in ``MAOutputScaleLayer``,
    whose ``MovingAverageAbsMaxScale`` only records the output's range: in
    training and in the fake-quant model the output passes unchanged. The
    ONNX-format export (``ReplaceFakeQuantDequantPass._replace_op``,
    paddle/static/quantization/quantization_pass.py) turns that observer into
    a plain quantize_linear/dequantize_linear pair, so the exported program
    rounds every quantized layer's output to 8 bits, which the trained model
    never did. Measured on the zoo's PP-MobileSeg: the INT8 export run by
    paddle's own executor agreed with its fake-quant model on 87-98% of an
    image's pixels. (Where a quantized layer's output feeds the next quantized
    layer directly, paddle drops that layer's input quantizer and lets this
    pair round instead, with the producer's scale: such a pair stays.) Here
    every other pair is written with ``only_observer=True``, as
    paddle's PTQ export writes its observers: Paddle runs it as identity, the
    scale stays in the program for the runtimes that read it, and OpenVINO and
    the ONNX writer drop it (``drop_observer_only_quant``).
    """
    from paddle.static.quantization import quantization_pass as qp
    original = qp.ReplaceFakeQuantDequantPass._replace_op

    def _replace_op(self, graph, op):
        if op.name() != "moving_average_abs_max_scale":
            return original(self, graph, op)
        out = graph._find_node_by_name(op.outputs, op.output("Out")[0])
        if any(n.name() in qp._fake_quant_dequant_op_list for n in out.outputs):
            # the next layer's input quantizer was dropped in favour of this pair
            # (apply(): a quantizer reading an observer's output): it must round
            return original(self, graph, op)
        create = graph.create_op_node

        def create_op_node(op_type, attrs, inputs, outputs):
            if op_type in ("quantize_linear", "dequantize_linear"):
                attrs = {**attrs, "only_observer": True}
            return create(op_type, attrs, inputs, outputs)

        graph.create_op_node = create_op_node
        try:
            return original(self, graph, op)
        finally:
            del graph.create_op_node

    return qp.ReplaceFakeQuantDequantPass, {"_replace_op": _replace_op}


def _module_refs(originals):
    """(holder, attribute) pairs in loaded modules that point at one of ``originals``.

    Modules bind these functions under their own names (``from paddle._C_ops
    import bmm`` in ``paddle/tensor/linalg.py``, ``from paddle import sigmoid`` in
    a model file); each such reference must be rerouted, not only ``paddle.X``.
    """
    import sys
    skip = {"paddle._C_ops", "paddle.base.dygraph.generated_tensor_methods_patch",
            "paddle._paddle_docs"}
    refs = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod_name in skip or mod_name.startswith("paddle.base.core") \
                or mod_name == __package__ or mod_name.startswith(__package__ + "."):
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for attr, value in items:
            target = originals.get(id(value))
            if target is not None and value is target[1]:
                refs.append((mod, attr, target[0]))
    return refs


@contextlib.contextmanager
def _watchdog(seconds):
    """Raise ExportError in the main thread after ``seconds`` (SIGALRM; POSIX main thread only).

    Lock waits are interruptible in Python 3, so even a deadlock inside
    dy2static ends with an error naming the layer being traced. Elsewhere
    (another thread, Windows) there is no watchdog and a warning says so.
    """
    import signal
    import threading
    if not seconds or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "SIGALRM"):
        if seconds:
            logger.warning("old-IR export runs without its %s s watchdog (not the main thread)", seconds)
        yield
        return

    def on_alarm(signum, frame):
        raise ExportError(f"old-IR export did not finish within {seconds} s; it was tracing "
                          f"{TRACING.where()}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EXPORT_TIMEOUT_S = 900  # the largest registry model (HRNet-W48 OCRNet, QAT) takes minutes here


@contextlib.contextmanager
def old_ir_export(model=None, timeout=EXPORT_TIMEOUT_S, infer_reshape_dims=False):
    """Build and save static programs in the old IR (``model.pdmodel``).

    Workaround for PaddlePaddle/Paddle#79749 (oneDNN cannot run new-IR
    programs with bilinear_interp) and for paddle 3.x binding ``paddle.bmm``,
    ``sigmoid``, ``sum``, ``argmax`` & co. straight to C++ ops that reject an
    old-IR Variable (``bmm(): argument (position 1) must be Value, but got
    Variable``). Inside the guard every such name (``legacy_ops.new_ir_only_names``:
    module functions, ``Tensor``/``Variable`` methods and every module-level
    reference to them) builds its legacy op instead (``legacy_ops.legacy_op``). Create
    the wrapper layers before entering; call ``paddle.jit.save`` (or
    paddleslim's ``save_quantized_model``) inside.

    DNLNet hang (fixed here): dy2static's AST pass evaluates callee
    expressions such as ``_jst.Call(paddle.matmul)`` while it holds its
    non-reentrant ``_CACHE_LOCK`` (``program_translator.convert_to_static``).
    A plain Python function on ``paddle.matmul`` made that ``convert_call``
    convert it, taking the same lock: a self-deadlock at 0% CPU. The legacy
    functions are ``paddle.jit.not_to_static``, so ``convert_call`` returns
    them untouched. ``timeout`` (seconds, main thread) bounds any other hang
    with an ExportError naming the layer being traced; ``model``'s layers are
    hooked so that errors name the layer. paddle's IrGraph link methods run
    without their O(graph) membership asserts (``_ir_graph_links_unchecked``:
    the QAT export's post-processing took minutes on HRNet).
    ``infer_reshape_dims``: reshapes also infer their ``-1`` at build time
    where copied dims cancel (``function_fixes``; for exports with a
    fixed batch size).
    """
    from paddle.base import framework

    names = new_ir_only_names()
    originals, legacy = {}, {}
    for n in names:
        orig = getattr(paddle, n, None) or getattr(F, n, None) or getattr(paddle.Tensor, n, None)
        legacy[n] = legacy_op(n, orig)
        for holder in (paddle, paddle.tensor, F, paddle.Tensor, paddle._C_ops):
            v = getattr(holder, n, None)
            if v is not None:
                originals[id(v)] = (legacy[n], v)
        # the wrappers ``_bmm`` & co. that paddle put on paddle.X / Tensor.X
    for table in binding_tables():
        for n, f in table:
            if n in legacy:
                originals[id(f)] = (legacy[n], f)
    replaced = replacements(infer_reshape_dims)
    for orig, fixed in replaced.values():
        originals[id(orig)] = (fixed, orig)

    saved = []
    hooks = []
    TRACING.stack, TRACING.last_op = [], None
    restore = contextlib.ExitStack()
    restore.enter_context(old_ir())  # the IR switch (per Paddle version: ir_switch)
    try:
        for mod, attr, fn in _module_refs(originals):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, fn)
        # methods: x.sum(), x.bmm(y) on a Variable (old IR) or eager Tensor
        for cls in (framework.Variable, paddle.base.core.eager.Tensor):
            for n, fn in legacy.items():
                if n in vars(cls) or hasattr(cls, n):
                    saved.append((cls, n, cls.__dict__.get(n, getattr(cls, n))))
                    setattr(cls, n, fn)
        for n, fn in _ir_graph_links_unchecked().items():
            saved.append((framework.IrGraph, n, framework.IrGraph.__dict__[n]))
            setattr(framework.IrGraph, n, fn)
        cls, methods = _output_observers_stay_identity()
        for n, fn in methods.items():
            saved.append((cls, n, cls.__dict__[n]))
            setattr(cls, n, fn)
        # x.reshape(...) on a Variable is paddle.reshape itself (paddle's monkey_patch_variable)
        for n, (orig, fixed) in replaced.items():
            if framework.Variable.__dict__.get(n) is orig:
                saved.append((framework.Variable, n, orig))
                setattr(framework.Variable, n, fixed)
        if model is not None:
            for lname, layer in model.named_sublayers(include_self=True):
                label = f"{lname or type(model).__name__} ({type(layer).__name__})"
                hooks.append(layer.register_forward_pre_hook(TRACING.enter(label)))
                hooks.append(layer.register_forward_post_hook(TRACING.leave))
        with _watchdog(timeout):
            try:
                yield
            except ExportError:
                raise
            except Exception as e:
                raise ExportError(f"old-IR export failed at {TRACING.where()}: {type(e).__name__}: "
                                  f"{str(e).strip()[:2000]}") from e
    finally:
        for h in hooks:
            h.remove()
        for holder, attr, orig in reversed(saved):
            setattr(holder, attr, orig)
        restore.close()

