"""Paddle Lite (--runtime lite, deploy/python/export_lite.py) on the tiny synthetic exports.

Lite runs in its own Python 3.10 environment (``make venv-lite``); the tests that run it
skip when .venv-lite is absent. The unit tests (kernel strings of a .nb, the missing
environment, flags, timing) need no Lite.
"""
import json
import logging
import os
import struct

import cv2
import numpy as np
import pytest

from conftest import run_script
from segqat import bench, deploy, outputs
from segqat.deploy import lite, parity

needs_lite = pytest.mark.skipif(not os.path.isfile(lite.DEFAULT_PYTHON),
                                reason=f"{lite.DEFAULT_PYTHON} is absent (make venv-lite)")


def val_images(synth):
    pairs = [ln.split() for ln in (synth / "val.txt").read_text().splitlines()]
    return [cv2.imread(str(synth / p[0])) for p in pairs]


def fake_nb(path, kernels):
    """Bytes laid out as opt writes them: uint16 meta version, opt's version, and kernel
    type strings each behind its uint32 length and followed by a NUL."""
    data = b"\x02\x00v2.13-rc\x00" + b"\x00" * 7
    for k in kernels:
        data += b"\x00" * 5 + struct.pack("<I", len(k)) + k.encode() + b"\x00"
    path.write_bytes(data)
    return path


@pytest.mark.unit
def test_kernels_of_a_nb_prove_int8_and_name_the_target(tmp_path):
    nb = fake_nb(tmp_path / "m.nb", ["conv2d/int8_out/2/2/1", "conv2d/fp32_out/2/2/1",
                                     "depthwise_conv2d/def/2/1/1", "calib/fp32_to_int8/2/2/1",
                                     "arg_max/fp32/1/4/1", "conv2d/fp32_out/2/2/1"])
    assert lite.nb_version(str(nb)) == "v2.13-rc"
    kernels = lite.nb_kernels(str(nb))
    assert kernels[("conv2d", "fp32_out", "x86", 2, 1)] == 2
    # calib (a conversion) and the float depthwise conv are not INT8 compute
    assert lite.int8_kernels(kernels) == {"conv2d": 3}
    assert lite.nb_target(kernels) == "x86"
    arm_nb = str(fake_nb(tmp_path / "a.nb", ["conv2d/int8_out/4/2/1", "feed/def/1/4/2"]))
    assert lite.nb_target(lite.nb_kernels(arm_nb)) == "arm"
    with pytest.raises(deploy.DeployError, match="holds arm kernels; Paddle Lite's runtime here runs x86"):
        lite.LiteProcess(arm_nb, 1)  # refused before Lite loads it (it would segfault)
    (tmp_path / "x.nb").write_bytes(b"PK\x03\x04 not a lite model")
    assert lite.nb_version(str(tmp_path / "x.nb")) is None
    with pytest.raises(deploy.DeployError, match="x.nb is not a Paddle Lite model"):
        lite.nb_kernels(str(tmp_path / "x.nb"))


@pytest.mark.unit
def test_missing_lite_environment_is_one_clear_error(tmp_path):
    with pytest.raises(deploy.DeployError, match=r"Paddle Lite's Python .*nope/python is missing; "
                                                 r"create it with `make venv-lite`"):
        lite.lite_python(str(tmp_path / "nope" / "python"))


@pytest.mark.unit
def test_lite_flags_belong_to_runtime_lite(caplog):
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit):
        run_script("deploy/python/infer.py", ["--config", "x", "--image_path", "x.png",
                                              "--lite_python", "py"])
    assert "--lite_python (lite): not options of --runtime paddle" in caplog.text
    with pytest.raises(SystemExit):
        run_script("deploy/python/infer.py", ["--config", "x", "--image_path", "x.png",
                                              "--runtime", "openvino", "--min_agreement", "0.5"])
    assert "--min_agreement (onnxruntime/lite): not options of --runtime openvino" in caplog.text


@pytest.mark.unit
def test_latency_takes_a_runtimes_own_timing():
    """A runtime in another process (Lite) reports the time of its own run, without the
    transfer of the batch; bench uses it."""
    class Timed:
        def run(self, batch):
            pass

        def timed_run(self, batch):
            return 0.25

    times = bench.interleaved_latency({"lite int8": Timed()}, None, warmup=1, repeats=3)
    assert times == {"lite int8": [0.25, 0.25, 0.25]}


@needs_lite
def test_lite_runs_fp32_and_int8_exports_like_paddle(synth, exports):
    """FP32 Lite labels equal Paddle's; INT8 Lite runs INT8 conv kernels and agrees with the
    fake-quantized model (Paddle's executor running the quantize/dequantize ops)."""
    imgs = val_images(synth)
    for name in ("fp32", "int8"):
        dep = deploy.load_deploy_config(str(exports / name))
        pred = deploy.create_predictor(str(exports / name), runtime="lite", threads=1)
        try:
            ops = pred.int8_ops()
            if name == "fp32":
                assert pred.precision == "fp32" and not ops
            else:
                assert pred.precision == "int8" and sum(ops.values()) >= 40, dict(ops)
            batch = np.stack([pred.preprocess(im)[0] for im in imgs])
            got = np.concatenate([pred.run(x[None]) for x in batch])
            assert len(pred.benchmark(batch[:1], warmup=1, repeats=2)) == 2
        finally:
            pred.close()
        ref = parity.paddle_outputs(dep, [x[None] for x in batch])
        agree = float((got == ref).mean())
        print(f"lite {name}: labels agree with Paddle on {agree:.4%} of {got.size} val pixels")
        assert agree >= (0.999 if name == "fp32" else 0.99), (name, agree)


@needs_lite
def test_export_lite_writes_checked_models(exports, tmp_path, caplog):
    out = tmp_path / "lite_int8"
    info = run_script("deploy/python/export_lite.py", ["--config", exports / "int8", "--save_dir", out,
                                                      "--valid_targets", "x86", "arm"])
    assert sorted(os.listdir(out)) == [".segqat.json", "lite.json", "model_arm.nb", "model_x86.nb"]
    assert json.loads((out / "lite.json").read_text()) == info
    assert info["precision"] == "int8" and info["agreement_with_paddle"]["x86"] >= 0.99
    for target in ("x86", "arm"):
        kernels = lite.nb_kernels(str(out / f"model_{target}.nb"))
        assert lite.nb_target(kernels) == target
        assert sum(lite.int8_kernels(kernels).values()) >= 40
    assert outputs.kind_of(str(out)) == "lite"
    before = (out / "model_x86.nb").read_bytes()
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit):  # an earlier Lite folder needs --overwrite
        run_script("deploy/python/export_lite.py", ["--config", exports / "int8", "--save_dir", out])
    assert "holds an earlier lite" in caplog.text
    assert (out / "model_x86.nb").read_bytes() == before
    with pytest.raises(SystemExit):  # the export itself is an input, never a target
        run_script("deploy/python/export_lite.py", ["--config", exports / "int8", "--save_dir",
                                                    exports / "int8", "--overwrite"])
    assert "contains the input" in caplog.text


def test_lite_x86_int8_copy_bounds_weights(exports, tmp_path):
    """Lite's x86 int8 GEMM sums u8 x s8 product pairs in a saturating int16: the copy it
    converts has |q| <= 64 (255 * 64 * 2 < 32768), the same dequantized weights up to one
    7-bit step, and the export is left as it was."""
    from segqat import compat
    src = exports / "int8"
    before = (src / "model.pdiparams").read_bytes()
    n = compat.lite_x86_int8_copy(str(src / "model.pdmodel"), str(src / "model.pdiparams"), str(tmp_path))
    assert n >= 40 and (src / "model.pdiparams").read_bytes() == before
    weights = {}
    for d in (src, tmp_path):
        prog, _, _, scope, _ = compat.load_old_ir_program(str(d / "model.pdmodel"), str(d / "model.pdiparams"))
        blk = prog.global_block()
        weights[d] = {op.input("X")[0]: (np.array(scope.find_var(op.input("X")[0]).get_tensor()),
                                         np.array(scope.find_var(op.input("Scale")[0]).get_tensor()))
                      for op in blk.ops if op.type == "dequantize_linear" and blk.var(op.input("X")[0]).persistable}
    assert weights[src].keys() == weights[tmp_path].keys()
    for name, (q, s) in weights[src].items():
        q7, s7 = weights[tmp_path][name]
        assert np.abs(q).max() > compat.MAX_ABS_WEIGHT_7BIT >= np.abs(q7.astype(int)).max(), name
        np.testing.assert_allclose(s7, 2 * s)
        shape = [-1] + [1] * (q.ndim - 1) if s.size > 1 else [1]
        step = (2 * s).reshape(shape) / 127
        assert np.abs(q7 * step - q * s.reshape(shape) / 127).max() <= step.max() / 2 + 1e-6


@needs_lite
def test_lite_process_takes_one_input_shape(exports, tmp_path):
    """Lite 2.13rc0's x86 conv kernels are prepared for the first input size (a larger one
    computes wrong labels, a smaller one aborts the process): a process refuses another shape,
    and the predictor starts a new one, giving what a fresh predictor gives."""
    dep = deploy.load_deploy_config(str(exports / "fp32"))
    nb = str(tmp_path / "m.nb")
    lite.convert(dep, nb)
    rng = np.random.RandomState(0)
    big, small = (rng.randn(1, 3, s, s).astype("float32") for s in (96, 64))
    proc = lite.LiteProcess(nb, 1)
    try:
        proc.run(big)
        with pytest.raises(lite.ShapeChanged, match=r"input shape \(1, 3, 64, 64\) after \(1, 3, 96, 96\)"):
            proc.run(small)
    finally:
        proc.close()
    pred = deploy.create_predictor(str(exports / "fp32"), runtime="lite", threads=1)
    try:
        got = [pred.run(x) for x in (big, small, big)]
    finally:
        pred.close()
    fresh = []
    for x in (big, small):
        p = lite.LiteProcess(nb, 1)
        fresh.append(p.run(x)[0])
        p.close()
    for g, f in zip(got, fresh + fresh[:1]):
        np.testing.assert_array_equal(g, f)
