"""Old-IR static programs: the static mode they need, reading exports back.

paddle 3.3.1 runs static programs in the new IR (PIR) by default:
``static.load_inference_model`` then looks for ``model.json`` and cannot read
segqat's ``model.pdmodel`` exports, and paddle's PostTrainingQuantization and
IrGraph passes (PTQ) only work on old-IR programs. ``old_ir_static()`` switches
to the old IR for a block (PTQ in ``segqat.ptq``, the program rewrites in
``program_fixes``); ``load_old_ir_program`` reads an export with its parameters
(the ONNX conversion and its check against Paddle, INT8 scale inspection in
``segqat.deploy.paddle_inference``, the export's own load check).
"""
import contextlib
import os

import paddle

from .ir_switch import old_ir_static_mode


@contextlib.contextmanager
def old_ir_static():
    """Static-graph mode on the old IR (``model.pdmodel`` programs), restored on exit.

    paddle 3.3.1 runs static programs in the new IR (PIR) by default, and
    ``static.load_inference_model`` then looks for ``model.json``; paddle's
    PostTrainingQuantization and its IrGraph passes (used by PTQ) only work
    on old-IR programs. ``ir_switch.old_ir_static_mode`` switches both (paddle
    2.6: static mode only) and restores dygraph + PIR on exit, errors included.
    """
    with old_ir_static_mode():
        yield


def load_old_ir_program(model_file, params_file):
    """(program, feed names, fetch vars, scope, executor) of a saved old-IR program with
    its parameters loaded into a fresh scope.

    paddle 3.3.1 reads static programs as new IR by default (``model.json``);
    the old-IR guard makes ``load_inference_model`` read ``model.pdmodel``.
    Raises whatever paddle raises on a truncated or corrupt file.
    """
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with old_ir_static(), paddle.static.scope_guard(scope):
        prefix = model_file[:-len(".pdmodel")]
        if params_file == prefix + ".pdiparams":
            prog, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
        else:  # files named otherwise: the older (deprecated, warning) form
            folder = os.path.dirname(model_file)
            prog, feeds, fetches = paddle.static.load_inference_model(
                folder, exe, model_filename=os.path.basename(model_file),
                params_filename=os.path.relpath(params_file, folder))
    return prog, feeds, fetches, scope, exe


def load_old_ir_inference_model(infer_dir):
    """Load an old-IR inference directory (program + every parameter); returns the number of ops."""
    prog = load_old_ir_program(os.path.join(str(infer_dir), "model.pdmodel"),
                               os.path.join(str(infer_dir), "model.pdiparams"))[0]
    return len(prog.global_block().ops)

