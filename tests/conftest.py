"""Shared fixtures: tiny synthetic data, a config pointing at it, script runners.

The session fixtures train one small FP32 BiSeNetV2 and one QAT model that
several tests share, so the whole suite stays within a few minutes on 2 CPUs.
"""
import fcntl
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SYN_CONFIG = ROOT / "configs" / "bisenetv2" / "bisenetv2_synthetic_64x64.yml"


def load_script(rel):
    """Import a script (tools/train.py, slim/quant/qat_train.py, ...) as a module."""
    path = ROOT / rel
    name = "script_" + rel.replace("/", "_").replace(".py", "")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_script(rel, argv):
    """Run a script's main in-process like its __main__ does (errors -> SystemExit(1))."""
    from segqat import cli
    mod = load_script(rel)
    args = mod.get_args_parser().parse_args([str(a) for a in argv])
    return cli.run(mod.main, args)


def fails(script, argv, caplog):
    """Run a script in-process; it must exit 1 with a one-line error. Returns the log."""
    caplog.clear()
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script(script, argv)
    assert e.value.code == 1
    assert "Traceback" not in caplog.text
    return caplog.text


def tree(path):
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


def write_config(path, base=SYN_CONFIG, data_root=None, extra=""):
    """A config that inherits ``base`` and points its datasets at ``data_root``."""
    text = f"_base_: {base}\n"
    if data_root:
        text += (f"train_dataset:\n  dataset_root: {data_root}\n  train_path: {data_root}/train.txt\n"
                 f"val_dataset:\n  dataset_root: {data_root}\n  val_path: {data_root}/val.txt\n")
    path.write_text(text + extra)
    return path


# The session fixtures live in one SEGQAT_TEST_SHARE folder when it is set: `make test`
# runs two pytest processes (see the Makefile), each with xdist workers, and all of them
# reuse what the first one built. A lock per fixture lets exactly one process build it.
SHARE = os.environ.get("SEGQAT_TEST_SHARE")


def pytest_configure(config):
    """Under xdist without a share folder, give the workers one (they inherit the env)."""
    global SHARE
    if SHARE or hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    SHARE = tempfile.mkdtemp(prefix="segqat-test-share-")
    os.environ["SEGQAT_TEST_SHARE"] = SHARE
    config._segqat_own_share = SHARE


def pytest_unconfigure(config):
    own = getattr(config, "_segqat_own_share", None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


def _session_dir(tmp_path_factory, name, build):
    """The folder of a session fixture: built by ``build(path)`` once per share."""
    if not SHARE:
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    path = Path(SHARE) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (path / ".built").exists():
            return path
        shutil.rmtree(path, ignore_errors=True)  # a half-built one from an interrupted run
        path.mkdir(parents=True)
        build(path)
        (path / ".built").touch()
    return path


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    from segqat import datagen
    return _session_dir(tmp_path_factory, "synthetic", lambda root: datagen.make_synthetic(
        str(root), num_train=64, num_val=12, size=64, num_classes=4, seed=0))


@pytest.fixture(scope="session")
def syn_cfg(synth, tmp_path_factory):
    return _session_dir(tmp_path_factory, "cfg",
                        lambda d: write_config(d / "syn.yml", data_root=synth)) / "syn.yml"


@pytest.fixture(scope="session")
def fp32_run(syn_cfg, tmp_path_factory):
    """A BiSeNetV2 trained briefly on the synthetic data (eval at the end)."""
    return _session_dir(tmp_path_factory, "fp32", lambda out: run_script("tools/train.py", [
        "--config", syn_cfg, "--iters", 150, "--batch_size", 8, "--save_interval", 150,
        "--log_iters", 50, "--do_eval", "--save_dir", out, "--cpu_threads", 2]))


@pytest.fixture(scope="session")
def qat_run(syn_cfg, fp32_run, tmp_path_factory):
    return _session_dir(tmp_path_factory, "qat", lambda out: run_script("slim/quant/qat_train.py", [
        "--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
        "--learning_rate", 0.005, "--iters", 30, "--batch_size", 8, "--save_interval", 15,
        "--log_iters", 15, "--do_eval", "--save_dir", out, "--cpu_threads", 2]))


@pytest.fixture(scope="session")
def exports(syn_cfg, fp32_run, qat_run, tmp_path_factory):
    def build(out):
        run_script("tools/export.py", ["--config", syn_cfg, "--model_path",
                                       fp32_run / "best_model" / "model.pdparams", "--save_dir", out / "fp32"])
        run_script("slim/quant/qat_export.py", ["--config", syn_cfg, "--model_path",
                                                qat_run / "best_model" / "model.pdparams",
                                                "--save_dir", out / "int8"])
    return _session_dir(tmp_path_factory, "exports", build)


@pytest.fixture(autouse=True)
def _quiet_logging():
    yield
    logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                       if not isinstance(h, logging.FileHandler)]


def shared(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
