"""Paddle Lite's side of segqat.deploy.lite: runs in the Lite environment, not in segqat's.

paddlelite (2.13rc0) has wheels for Python 3.8 and 3.10 only, segqat runs on 3.11; so
``segqat.deploy.lite`` starts this file with the Lite environment's Python
(``make venv-lite``: paddlelite and numpy, nothing of segqat) in one of two modes:

    python lite_runner.py convert MODEL.pdmodel MODEL.pdiparams OUT_PREFIX x86
        Lite's ``opt`` (paddlelite.lite.Opt): writes OUT_PREFIX.nb for the valid targets
        (x86 or arm); exit status 0 when the file is there.
    python lite_runner.py serve MODEL.nb
        loads the .nb with MobileConfig / create_paddle_predictor and answers requests on
        stdin/stdout until stdin closes. A request is one JSON line, then (for "run" and
        "time") the input batch as .npy bytes: {"cmd": "run", "bytes": N} -> reply
        {"ok": true, "seconds": s, "bytes": M} + the output as .npy bytes, where s is the
        time of the predictor's run() alone; {"cmd": "time", "bytes": N, "warmup": w,
        "repeats": r} -> {"ok": true, "times": [...]}. A failure is {"ok": false, "error": ...}.
        Every batch must have the shape of the first one (else "shape_changed": true): Lite
        2.13rc0's x86 conv kernels are prepared for the first input size only (docs/limits.md).

Threads: the x86 build computes with MKL/Intel OpenMP, whose thread count the parent sets
through OMP_NUM_THREADS / MKL_NUM_THREADS in this process's environment (MobileConfig has
no thread setting in the Python API).
"""
import io
import json
import os
import sys
import time


def convert(model, params, prefix, targets):
    from paddlelite.lite import Opt
    opt = Opt()
    opt.set_model_file(model)
    opt.set_param_file(params)
    opt.set_valid_places(targets)
    opt.set_model_type("naive_buffer")
    opt.set_optimize_out(prefix)
    opt.run()
    return 0 if os.path.isfile(prefix + ".nb") else 1


def _reply(out, header, payload=b""):
    out.write((json.dumps(header) + "\n").encode())
    out.write(payload)
    out.flush()


def serve(nb):
    import numpy as np
    # the protocol owns the real stdout; anything Lite's C++ code prints goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from paddlelite.lite import MobileConfig, create_paddle_predictor
    try:
        config = MobileConfig()
        config.set_model_from_file(nb)
        predictor = create_paddle_predictor(config)
    except Exception as e:  # noqa: BLE001  (reported to the parent, which raises)
        _reply(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    _reply(out, {"ok": True})

    def run(x):
        predictor.get_input(0).from_numpy(x)
        t = time.perf_counter()
        predictor.run()
        seconds = time.perf_counter() - t
        return np.array(predictor.get_output(0).numpy(), copy=True), seconds

    inp = sys.stdin.buffer
    first_shape = None
    for line in iter(inp.readline, b""):
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        # float32 always: Lite takes a float64 array with only a warning and computes on its
        # bytes read as float32 (labels mostly one class)
        x = np.ascontiguousarray(np.load(io.BytesIO(inp.read(req["bytes"]))), dtype=np.float32)
        if first_shape is None:
            first_shape = x.shape
        if x.shape != first_shape:
            # Lite 2.13rc0's x86 conv kernels keep what they prepared for the first input's
            # size: a larger input gives wrong results, a smaller one aborts the process
            # ("double free or corruption"). One input size per process; the parent restarts it.
            _reply(out, {"ok": False, "shape_changed": True,
                         "error": f"input shape {x.shape} after {first_shape}: Paddle Lite's x86 "
                                  "runtime is right only for the size of its first run"})
            continue
        try:
            if req["cmd"] == "run":
                y, seconds = run(x)
                buf = io.BytesIO()
                np.save(buf, y)
                _reply(out, {"ok": True, "seconds": seconds, "bytes": buf.tell()}, buf.getvalue())
            else:
                for _ in range(req["warmup"]):
                    run(x)
                _reply(out, {"ok": True, "times": [run(x)[1] for _ in range(req["repeats"])]})
        except Exception as e:  # noqa: BLE001
            _reply(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit(convert(*rest) if mode == "convert" else serve(*rest))
