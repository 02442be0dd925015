"""Fault injection: nothing a user owns is destroyed, no NaN model is saved, no weights file runs code.

Each test is one way of losing data that was measured on an earlier version
(export wiping its save_dir, NaN checkpoints, a pickle payload, a truncated
export reported as success, kill -9 during saves, two runs on one folder).
The kill and file-size tests run the real scripts in child processes.
"""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, fails, run_script, tree
from segqat import outputs, weights

PY = sys.executable


def child(argv, limit_bytes=None, **kw):
    """A script in a child process (optionally with a file-size limit)."""
    def pre():
        if limit_bytes:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.Popen([PY, *map(str, argv)], cwd=ROOT, preexec_fn=pre,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finished(p, timeout=600):
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


# ---------------------------------------------------------------- export / PTQ save_dir

@pytest.fixture
def fake_run(tmp_path):
    """A training run's folder as a user has it (checkpoints, config, log)."""
    run = tmp_path / "out_fp32"
    for d in ("iter_2", "iter_4", "best_model"):
        (run / d).mkdir(parents=True)
        (run / d / "model.pdparams").write_bytes(b"weights " + d.encode())
    (run / "config.yaml").write_text("batch_size: 2\n")
    (run / "train.log").write_text("log\n")
    return run


@pytest.mark.parametrize("script", ["tools/export.py", "slim/quant/ptq.py"])
def test_export_never_destroys_save_dir(script, syn_cfg, fp32_run, fake_run, tmp_path, caplog,
                                        monkeypatch):
    weights_file = fp32_run / "best_model" / "model.pdparams"
    before = tree(fake_run)
    # 1. into the training run's folder, reading weights from it
    msg = fails(script, ["--config", syn_cfg, "--model_path", fake_run / "iter_4" / "model.pdparams",
                         "--save_dir", fake_run], caplog)
    assert "contains the input" in msg and str(fake_run) in msg
    # 2. into a training run's folder (weights elsewhere), even with --overwrite
    msg = fails(script, ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", fake_run,
                         "--overwrite"], caplog)
    assert "segqat did not write" in msg
    assert tree(fake_run) == before
    # 3. a folder of unrelated files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    msg = fails(script, ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", mine,
                         "--overwrite"], caplog)
    assert "notes.txt" in msg and (mine / "notes.txt").read_text() == "my notes"
    # 4. an existing file
    f = tmp_path / "a_file"
    f.write_text("keep me")
    msg = fails(script, ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", f], caplog)
    assert "is an existing file" in msg and f.read_text() == "keep me"
    # 5. the current folder
    monkeypatch.chdir(mine)
    msg = fails(script, ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", "."], caplog)
    assert "current" in msg
    assert sorted(os.listdir(tmp_path)) == ["a_file", "mine", "out_fp32"]  # no temp folder anywhere


def test_export_overwrite_is_explicit(syn_cfg, fp32_run, exports, tmp_path, caplog):
    import shutil
    weights_file = fp32_run / "best_model" / "model.pdparams"
    out = tmp_path / "fp32_infer"
    shutil.copytree(exports / "fp32", out)
    assert outputs.kind_of(out) == "export"
    before = tree(out)
    msg = fails("tools/export.py", ["--config", syn_cfg, "--model_path", weights_file,
                                    "--save_dir", out], caplog)
    assert "--overwrite" in msg and tree(out) == before
    # a failing --overwrite export (bad input shape) leaves the old one
    fails("tools/export.py", ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", out,
                              "--overwrite", "--input_shape", 1, 3, 0, 0], caplog)
    assert tree(out) == before
    run_script("tools/export.py", ["--config", syn_cfg, "--model_path", weights_file, "--save_dir", out,
                                   "--overwrite", "--output_op", "softmax"])
    assert "output_op: softmax" in (out / "deploy.yaml").read_text()
    assert sorted(os.listdir(tmp_path)) == ["fp32_infer"]


@pytest.mark.parametrize("shape,why", [((1, 3, 0, 0), "H is 0"), ((1, 3, -5, 64), "H is -5"),
                                       ((1, 1, 64, 64), "C is 1 but the model takes 3")])
def test_bad_input_shape(shape, why, syn_cfg, fp32_run, tmp_path, caplog):
    msg = fails("tools/export.py", ["--config", syn_cfg, "--model_path",
                                    fp32_run / "best_model" / "model.pdparams",
                                    "--save_dir", tmp_path / "x", "--input_shape", *shape], caplog)
    assert why in msg and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- training save_dir

def test_second_run_refused_overwrite_replaces(syn_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    base = ["--config", syn_cfg, "--batch_size", 2, "--save_interval", 2, "--log_iters", 2,
            "--save_dir", out, "--keep_checkpoint_max", 1]
    run_script("tools/train.py", base + ["--iters", 4])
    assert sorted(p for p in os.listdir(out) if p.startswith("iter_")) == ["iter_4"]
    first = tree(out / "iter_4")
    msg = fails("tools/train.py", base + ["--iters", 2], caplog)
    assert "holds another run's checkpoints" in msg and "--resume_model" in msg
    assert tree(out / "iter_4") == first
    # resuming the run that lives there is allowed
    run_script("tools/train.py", base + ["--iters", 6, "--resume_model", out / "iter_4"])
    assert sorted(p for p in os.listdir(out) if p.startswith("iter_")) == ["iter_6"]
    # --overwrite: the earlier run's checkpoints give way at this run's first save
    run_script("tools/train.py", base + ["--iters", 2, "--overwrite"])
    assert sorted(p for p in os.listdir(out) if p.startswith("iter_")) == ["iter_2"]
    assert not [p for p in os.listdir(out) if p.startswith(".") and p != outputs.MARKER]


def test_parser_rejects_non_finite_learning_rate(syn_cfg, tmp_path):
    for bad in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit) as e:
            run_script("tools/train.py", ["--config", syn_cfg, "--learning_rate", bad,
                                          "--save_dir", tmp_path / "x"])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        run_script("tools/train.py", ["--config", syn_cfg, "--num_workers", "-1",
                                      "--save_dir", tmp_path / "x"])
    assert e.value.code == 2


def test_non_finite_or_quoted_numbers_in_yaml(syn_cfg, tmp_path, caplog):
    for opt, expect in (("lr_scheduler.learning_rate=.nan", "must be a finite number, got float (nan)"),
                        ("lr_scheduler.learning_rate='0.01'", "(written in quotes?)"),
                        ("train_dataset.ignore_index='255'", "'train_dataset.ignore_index'")):
        msg = fails("tools/train.py", ["--config", syn_cfg, "--iters", 2, "--save_dir", tmp_path / "x",
                                       "--opts", opt], caplog)
        assert expect in msg and "Traceback" not in msg
    assert not (tmp_path / "x").exists() or not outputs.checkpoint_dirs(tmp_path / "x")


def test_no_non_finite_checkpoint(syn_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    msg = fails("tools/train.py", ["--config", syn_cfg, "--iters", 8, "--batch_size", 2,
                                   "--save_interval", 1, "--log_iters", 1, "--save_dir", out,
                                   "--opts", "lr_scheduler.learning_rate=1.0e+6"], caplog)
    assert "at iteration" in msg or "by iteration" in msg
    assert "Lower --learning_rate" in msg
    for d in outputs.checkpoint_dirs(out) + [out / "best_model"]:
        if os.path.isdir(d):
            assert not weights.non_finite(weights.load_state(os.path.join(d, "model.pdparams"))), d


@pytest.mark.parametrize("value", [np.nan, 1.2e33])
def test_non_finite_weights_refused(syn_cfg, fp32_run, tmp_path, caplog, value):
    """NaN, and a finite value no trained model has (a diverged run: 1.2e33 predicted all
    background), are refused by val, export and QAT."""
    state = weights.load_state(fp32_run / "best_model" / "model.pdparams")
    name = next(k for k, v in state.items() if v.dtype == np.float32 and v.size > 1)
    state[name] = state[name].copy()
    state[name][0] = value
    import paddle
    bad = tmp_path / "nan.pdparams"
    paddle.save(state, str(bad))
    for script, extra in (("tools/val.py", []), ("tools/export.py", ["--save_dir", tmp_path / "e"]),
                          ("slim/quant/qat_train.py", ["--save_dir", tmp_path / "q", "--iters", 1]),
                          ("slim/quant/ptq.py", ["--save_dir", tmp_path / "p"])):
        msg = fails(script, ["--config", syn_cfg, "--model_path", bad, *extra], caplog)
        assert "non-finite" in msg and str(bad) in msg and name in msg
    import shutil
    ck = tmp_path / "run" / "iter_150"  # a checkpoint of a diverged run: not resumed from
    shutil.copytree(fp32_run / "iter_150", ck)
    shutil.copy(bad, ck / "model.pdparams")
    msg = fails("tools/train.py", ["--config", syn_cfg, "--iters", 160, "--resume_model", ck,
                                   "--save_dir", ck.parent], caplog)
    assert "non-finite" in msg and name in msg
    assert not [p for p in os.listdir(tmp_path) if p in ("e", "p")]
    msg = fails("tools/train.py", ["--config", syn_cfg, "--resume_model", tmp_path / "missing",
                                   "--save_dir", tmp_path / "r"], caplog)
    assert "not found" in msg


@pytest.mark.unit
def test_diverged_weights_are_never_saved(tmp_path):
    """Every checkpoint is read back and checked before it replaces anything: a finite but
    diverged weight (|w| > MAX_ABS_WEIGHT) is refused like NaN."""
    import paddle
    from segqat import checkpoint
    model = paddle.nn.Linear(2, 2)
    checkpoint.save_checkpoint(str(tmp_path / "best_model"), model, state={"iter": 1})
    before = tree(tmp_path)
    model.weight.set_value(np.full([2, 2], 1.2e33, "float32"))
    assert checkpoint.non_finite_parameters(model) == ["weight"]
    with pytest.raises(weights.WeightsError, match="non-finite weights"):
        checkpoint.save_checkpoint(str(tmp_path / "best_model"), model, state={"iter": 2})
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["best_model"]


def test_diverged_model_is_not_exported(syn_cfg, tmp_path):
    """The written export's parameters are checked too (the last guard of export and PTQ)."""
    import paddle
    from segqat import export, quant
    from segqat.config import load_config
    cfg = load_config(str(syn_cfg))
    model, _ = quant.build_model(cfg)
    p = next(p for p in model.parameters() if p.dtype == paddle.float32 and len(p.shape) == 4)
    p.set_value(np.full(p.shape, 1.2e33, "float32"))
    with pytest.raises(weights.WeightsError, match="exported model holds non-finite parameters"):
        export.export_model(cfg, model, str(tmp_path / "infer"), input_shape=[1, 3, 64, 64])
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- weights files that run code

class _Payload:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (exec, (f"open({self.flag!r}, 'w').write('ran')",))


def test_payload_pdparams_does_not_run(syn_cfg, fp32_run, tmp_path, caplog):
    state = weights.load_state(fp32_run / "best_model" / "model.pdparams")
    flag = tmp_path / "PAYLOAD_RAN"
    state["zz_extra"] = _Payload(str(flag))
    evil = tmp_path / "evil.pdparams"
    with open(evil, "wb") as f:
        pickle.dump(state, f, protocol=4)
    for script, extra in (("tools/val.py", []), ("tools/export.py", ["--save_dir", tmp_path / "e"]),
                          ("slim/quant/qat_train.py", ["--save_dir", tmp_path / "q"])):
        msg = fails(script, ["--config", syn_cfg, "--model_path", evil, *extra], caplog)
        assert "not a plain weights file" in msg and "builtins.exec" in msg and str(evil) in msg
    assert not flag.exists()
    # the same loader reads genuine files exactly like paddle.load
    import paddle
    genuine = paddle.load(str(fp32_run / "best_model" / "model.pdparams"))
    safe = weights.load_state(fp32_run / "best_model" / "model.pdparams")
    assert set(genuine) == set(safe)
    assert all(np.array_equal(genuine[k].numpy(), safe[k]) for k in safe)


def test_damaged_resume_files(syn_cfg, fp32_run, tmp_path, caplog):
    import shutil
    src = fp32_run / "iter_150"
    for what, damage, expect in (("model.pdopt", b"", "is empty (0 bytes)"),
                                 ("state.json", b'{"iter": 1', "state.json is damaged")):
        ck = tmp_path / what / "iter_150"
        shutil.copytree(src, ck)
        (ck / what).write_bytes(damage)
        msg = fails("tools/train.py", ["--config", syn_cfg, "--iters", 160, "--batch_size", 2,
                                       "--resume_model", ck, "--save_dir", ck.parent], caplog)
        assert expect in msg and str(ck) in msg


# ---------------------------------------------------------------- failed writes

def test_write_failure_is_an_error(syn_cfg, fp32_run, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) in the child: export and training fail clearly, leave nothing."""
    out = tmp_path / "infer"
    code, log = finished(child(["tools/export.py", "--config", syn_cfg, "--model_path",
                                fp32_run / "best_model" / "model.pdparams", "--save_dir", out],
                               limit_bytes=1 << 20))
    assert code == 1, log
    assert "does not read back" in log or "file too large" in log, log
    assert not out.exists() and os.listdir(tmp_path) == []
    run = tmp_path / "run"
    code, log = finished(child(["tools/train.py", "--config", syn_cfg, "--iters", 2, "--batch_size", 2,
                                "--save_interval", 1, "--save_dir", run], limit_bytes=1 << 20))
    assert code == 1, log
    assert "file too large" in log and "Traceback" not in log, log
    assert outputs.checkpoint_dirs(run) == []
    assert not [p for p in os.listdir(run) if p.startswith(".iter") or p.startswith(".best")]


# ---------------------------------------------------------------- kill -9 and two runs

def _train_cmd(cfg, out, iters, extra=()):
    return ["tools/train.py", "--config", cfg, "--iters", iters, "--batch_size", 2, "--save_interval", 1,
            "--log_iters", 1, "--keep_checkpoint_max", 2, "--save_dir", out, *extra]


def _wait_for(pred, timeout=120):
    t = time.time()
    while not pred():
        if time.time() - t > timeout:
            raise TimeoutError
        time.sleep(0.05)


def test_kill_during_checkpoint_saves_then_resume(syn_cfg, tmp_path):
    """kill -9 at random moments of a run that saves every iteration; every checkpoint loads."""
    rng = random.Random(0)
    out = tmp_path / "run"
    for trial in range(3):
        last = outputs.checkpoint_dirs(out)
        extra = ["--resume_model", last[-1]] if last else []
        p = child(_train_cmd(syn_cfg, out, 400, extra))
        _wait_for(lambda: len(outputs.checkpoint_dirs(out)) > 0 and
                  os.path.basename(outputs.checkpoint_dirs(out)[-1]) != (
                      os.path.basename(last[-1]) if last else None))
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        for d in outputs.checkpoint_dirs(out) + [str(out / "best_model")]:
            if os.path.isdir(d):
                files = sorted(os.listdir(d))
                assert files == ["model.pdopt", "model.pdparams", "state.json"], (trial, d, files)
                weights.load_state(os.path.join(d, "model.pdparams"))
                weights.load_state(os.path.join(d, "model.pdopt"))
                with open(os.path.join(d, "state.json")) as f:
                    json.load(f)
    # the next run resumes and removes what the killed ones left
    last = outputs.checkpoint_dirs(out)[-1]
    it = int(os.path.basename(last)[5:])
    code, log = finished(child(_train_cmd(syn_cfg, out, it + 1, ["--resume_model", last])))
    assert code == 0, log
    left = [p for p in os.listdir(out) if p.startswith(".") and p != outputs.MARKER]
    assert left == [], left


def test_kill_during_export(syn_cfg, fp32_run, tmp_path):
    rng = random.Random(1)
    out = tmp_path / "infer"
    argv = ["tools/export.py", "--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
            "--save_dir", out, "--overwrite"]
    for trial in range(3):
        p = child(argv)
        time.sleep(rng.uniform(2.0, 8.0))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert not out.exists() or outputs.kind_of(out) == "export"  # all of one, never half
    code, log = finished(child(argv))
    assert code == 0, log
    assert sorted(os.listdir(tmp_path)) == ["infer"], os.listdir(tmp_path)
    assert set(os.listdir(out)) >= {"model.pdmodel", "model.pdiparams", "deploy.yaml"}


def test_two_runs_on_one_save_dir(syn_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    first = child(_train_cmd(syn_cfg, out, 400))
    try:
        _wait_for(lambda: (out / outputs.LOCK).exists())
        msg = fails("tools/train.py", ["--config", syn_cfg, "--iters", 2, "--save_dir", out], caplog)
        assert "in use by another run" in msg and str(first.pid) in msg
        _wait_for(lambda: outputs.checkpoint_dirs(out))
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # the dead run's lock is cleared by the next run (which resumes it)
    last = outputs.checkpoint_dirs(out)[-1]
    run_script("tools/train.py", ["--config", syn_cfg, "--iters", int(os.path.basename(last)[5:]) + 1,
                                  "--batch_size", 2, "--save_dir", out, "--resume_model", last])
    assert not (out / outputs.LOCK).exists()


# ---------------------------------------------------------------- files that say what they are

def _set_deploy(export_dir, **values):
    import yaml
    path = export_dir / "deploy.yaml"
    dic = yaml.safe_load(path.read_text())
    dic["Deploy"].update(values)
    path.write_text(yaml.safe_dump(dic, sort_keys=False))
    return path


def test_export_precision_is_read_from_its_program(exports):
    from segqat import deploy
    fp32 = deploy.program_precision(exports / "fp32" / "model.pdmodel")
    int8 = deploy.program_precision(exports / "int8" / "model.pdmodel")
    assert fp32.precision == "fp32" and not fp32.quant_ops and fp32.quantized_weights == 0
    assert int8.precision == "int8" and int8.quant_ops["dequantize_linear"] > 0
    assert int8.quantized_weights > 0 and "quantized weight(s)" in int8.describe()


def test_deploy_yaml_precision_must_match_the_program(exports, synth, tmp_path, caplog):
    """An INT8 export whose deploy.yaml says fp32 never runs as "FP32" (and the reverse)."""
    import shutil
    from segqat import deploy
    lying = tmp_path / "int8"
    shutil.copytree(exports / "int8", lying)
    dep_yaml = _set_deploy(lying, precision="fp32")
    with pytest.raises(deploy.DeployError) as e:
        deploy.load_deploy_config(str(lying))
    msg = str(e.value)
    assert "\n" not in msg and str(dep_yaml) in msg and "Deploy.precision is fp32" in msg
    assert "INT8 (quantized) program" in msg and "dequantize_linear" in msg
    msg = fails("deploy/python/infer.py", ["--config", dep_yaml, "--image_path",
                                           synth / "images" / "val_0000.png", "--save_dir", tmp_path / "p"],
                caplog)
    assert "Deploy.precision is fp32" in msg and "Traceback" not in msg
    assert not (tmp_path / "p").exists()
    plain = tmp_path / "fp32"
    shutil.copytree(exports / "fp32", plain)
    _set_deploy(plain, precision="int8")
    with pytest.raises(deploy.DeployError, match="Deploy.precision is int8 but model.pdmodel holds an "
                                                 r"FP32 \(not quantized\) program"):
        deploy.load_deploy_config(str(plain))


def test_deploy_yaml_model_files_stay_in_their_folder(exports, synth, tmp_path, caplog):
    """model/params pointing at another export's files (absolute or ../) are refused unless
    --allow_external_model; the precision check still reads the file they point at."""
    import shutil
    from segqat import deploy
    fp32 = tmp_path / "fp32"
    shutil.copytree(exports / "fp32", fp32)
    shutil.copytree(exports / "int8", tmp_path / "int8")
    for key, value in (("model", "../int8/model.pdmodel"),
                       ("params", str(tmp_path / "int8" / "model.pdiparams"))):
        shutil.copy(exports / "fp32" / "deploy.yaml", fp32 / "deploy.yaml")
        dep_yaml = _set_deploy(fp32, **{key: value})
        with pytest.raises(deploy.DeployError) as e:
            deploy.load_deploy_config(str(fp32))
        msg = str(e.value)
        assert f"Deploy.{key} is {value!r}, outside the export folder" in msg
        assert "--allow_external_model" in msg and str(dep_yaml) in msg
    msg = fails("deploy/python/infer.py", ["--config", fp32, "--image_path", synth / "images" / "val_0000.png",
                                           "--save_dir", tmp_path / "p"], caplog)
    assert "outside the export folder" in msg
    # allowed by the flag: the file outside is used ...
    dep = deploy.load_deploy_config(str(fp32), allow_external_model=True)
    assert dep["params_file"] == str(tmp_path / "int8" / "model.pdiparams")
    # ... but an external INT8 program under a deploy.yaml saying fp32 is still what it is
    shutil.copy(exports / "fp32" / "deploy.yaml", fp32 / "deploy.yaml")
    _set_deploy(fp32, model="../int8/model.pdmodel", params="../int8/model.pdiparams")
    with pytest.raises(deploy.DeployError, match="Deploy.precision is fp32 but ../int8/model.pdmodel "
                                                 "holds an INT8"):
        deploy.load_deploy_config(str(fp32), allow_external_model=True)
    for bad in (None, 5, ""):
        shutil.copy(exports / "fp32" / "deploy.yaml", fp32 / "deploy.yaml")
        _set_deploy(fp32, model=bad)
        with pytest.raises(deploy.DeployError, match="Deploy.model is .*; allowed: a file name"):
            deploy.load_deploy_config(str(fp32))


def _pir_program(path, quantized):
    """A new-IR (model.json) program: a convolution, with int8 weights and a quantize ->
    dequantize pair on its input when ``quantized``."""
    import paddle
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter, LinearQuanterDequanter

    class Conv(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([4, 3, 3, 3], dtype="int8" if quantized else "float32",
                                           default_initializer=paddle.nn.initializer.Constant(1))
            self.qd = LinearQuanterDequanter(LinearQuanter(0.5, zero_point=0.0, bit_length=8),
                                             LinearDequanter(0.5, zero_point=0.0, bit_length=8))

        def forward(self, x):
            if quantized:
                x = self.qd(x)
            return paddle.nn.functional.conv2d(x, paddle.cast(self.w, "float32"))

    paddle.jit.save(Conv(), str(path), input_spec=[paddle.static.InputSpec([1, 3, 8, 8], "float32", "x")])
    return f"{path}.json"


def test_precision_of_new_ir_and_onnx_programs(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    from segqat import deploy
    q = deploy.program_precision(_pir_program(tmp_path / "q", quantized=True))
    assert q.precision == "int8" and q.quant_ops == {"quantize_linear": 1, "dequantize_linear": 1}
    assert q.quantized_weights == 1
    assert deploy.program_precision(_pir_program(tmp_path / "f", quantized=False)).precision == "fp32"

    def onnx_file(name, nodes, inits):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
        onnx.save(helper.make_model(graph), str(tmp_path / name))
        return tmp_path / name
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    qdq = onnx_file("q.onnx", [helper.make_node("QuantizeLinear", ["x", "s"], ["xq"]),
                               helper.make_node("DequantizeLinear", ["xq", "s"], ["y"])], [scale])
    plain = onnx_file("f.onnx", [helper.make_node("Relu", ["x"], ["y"])], [])
    facts = deploy.program_precision(qdq)
    assert facts.precision == "int8" and facts.quant_ops == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert deploy.program_precision(plain).precision == "fp32"
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(deploy.DeployError, match="bad.onnx cannot be read as an ONNX model"):
        deploy.program_precision(tmp_path / "bad.onnx")
    (tmp_path / "model.pdmodel").write_bytes(b"")
    with pytest.raises(deploy.DeployError, match=r"model.pdmodel is empty \(0 bytes\)"):
        deploy.program_precision(tmp_path / "model.pdmodel")
