"""Zoo x runtime compatibility matrix: does each configs/zoo model export, load and run,
FP32 and INT8, on Paddle Inference, OpenVINO and ONNX Runtime (CPU), and does each
INT8 run compile real INT8 kernels?

    python benchmarks/zoo/runtimes_all.py                       # the sweep (resumes), then the report
    python benchmarks/zoo/runtimes_all.py --models bisenetv2 unet
    python benchmarks/zoo/runtimes_all.py --work_dir output/zoo_runtimes
    python benchmarks/zoo/runtimes_all.py --report-only         # rebuild the report from the JSONs

Run it from the project root, alone on the machine (it is one process at a time,
2 threads). For every configs/zoo/*.yml (in `ls` order) it builds the model with
random weights (paddle.seed(0)), exports it FP32 at 1x3x256x512 (1x3x512x512 if
that fails), inserts fake quantization (quant_settings(purpose="export"), no
PACT), calibrates it on 4 random batches (numpy RandomState(0)) and exports it
INT8, as slim/quant/bench_latency.py does. The check batch is 2 synthetic images
(segqat.datagen) preprocessed by deploy.yaml's transforms
(onnx_export.check_batch). Then each runtime builds an FP32 and an INT8 predictor
(2 threads; ONNX Runtime with min_agreement=0: report, never refuse), runs the
batch one image at a time, and the labels are compared with a reference: FP32
runs with the Paddle Inference FP32 predictor's labels, INT8 runs with Paddle's
executor running the quantized program as written (fake quantization,
onnx_export.paddle_outputs). An INT8 run's proof is ``Predictor.int8_ops()``
(INT8 kernels in the runtime's compiled graph; every predictor refuses an INT8
model for which it compiled none). Nothing is timed.

Each model runs in a subprocess of its own (--one NAME, timeout --timeout s); an
error is recorded per runtime and precision. If the subprocess dies (signal,
timeout), the runs it did not finish are retried each in a subprocess of its own,
reusing the exports. One JSON per model goes to WORK_DIR/NAME.json (models with
one are skipped: the sweep resumes); exports, check batch, references and logs
to WORK_DIR/NAME/. At the end the per-model JSONs are merged into
benchmarks/zoo/runtimes_all.json and the table written to
benchmarks/zoo/runtimes_all.md.

Shared with the zoo's runner (segqat.zoo): every subprocess runs through
``segqat.zoo.runner.run_logged`` (a process group of its own, killed as a whole at
--timeout or on Ctrl-C), the model list is ``segqat.zoo.discover`` of configs/zoo,
and JSON files are written by ``segqat.zoo.common.write_json``. Kept here, because
moving them onto the runner would change what the sweep does or writes:

- Resume: a model is done when WORK_DIR/NAME.json exists, and that file is also its
  result, which the report merges. The zoo's state.json (a record per entry and step,
  keyed by the config's hash) would be a second record that existing work dirs do not
  have, and would skip differently (an edited config would start a model over).
- Retrying the runs a dead subprocess did not finish, each alone, and the crash
  records: the zoo has no counterpart (a failed step fails its row).
- Lock: this sweep never took one; holding ``segqat.zoo.lock_work_dir`` on WORK_DIR
  would add a refusal it did not have.
- Error texts (error_record, _log_tail) and the --models check: their wording is in
  runtimes_all.json and the table's footnotes; the zoo's error_reason words errors
  differently.
"""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from segqat.zoo import common as zoo_common  # noqa: E402
from segqat.zoo.runner import run_logged  # noqa: E402

RUNTIMES = ("paddle", "openvino", "onnxruntime")
RUNTIME_NAMES = {"paddle": "Paddle", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
PRECISIONS = ("fp32", "int8")
SHAPES = ([1, 3, 256, 512], [1, 3, 512, 512])
THREADS = 2
CALIB_BATCHES = 4
CHECK_IMAGES = 2
COMMAND = "python benchmarks/zoo/runtimes_all.py"
PACKAGES = ("paddlepaddle", "paddleseg", "paddleslim", "openvino", "onnxruntime", "paddle2onnx", "onnx")

# Failure causes for the report: (regular expression on the error text, short label for the
# cell, cause for the list below the table); \1 is the expression's first group. The first that
# matches names the cause; an error that none matches is listed by its text. The explanations
# come from inspecting the exports of this sweep (op types, attributes, converted ONNX graphs).
CAUSES = [
    (r"No creator found for (\w+) node", r"no `\1` in OV",
     r"OpenVINO's Paddle frontend has no converter for the Paddle op `\1`"),
    (r"paddings Params size should be 6 in pad3d", "pad3d refused",
     "OpenVINO's Paddle frontend refuses a `pad3d` whose paddings are a tensor (\"paddings Params size "
     "should be 6 in pad3d\"; ISANet pads inside a conditional block)"),
    (r"paddle2onnx [\d.]+ cannot convert the op\(s\) ([\w, ]+), so", r"no `\1` in paddle2onnx",
     r"paddle2onnx 1.3.1 has no converter for the Paddle op `\1` (segqat names it; paddle2onnx itself "
     r"would abort the process)"),
    (r"operators not supported yet, including (\w+)", r"paddle2onnx abort: `\1`",
     r"paddle2onnx 1.3.1 has no conversion for the Paddle op `\1` and aborts the process (SIGABRT; "
     r"the error is from the native output of a retry in a subprocess of its own)"),
    (r"MaxPool.*strides must only contain positive values", "MaxPool strides 0",
     "ONNX Runtime refuses a MaxPool with strides 0: paddle2onnx's conversion of the adaptive max pooling "
     "(`max_pool2d_with_index`, adaptive, 12x12 bins; segqat rewrites adaptive *average* pooling only)"),
    (r"ConstantOfShape.*shape input must be 1D", "ConstantOfShape 0-d",
     "ONNX Runtime refuses a ConstantOfShape that paddle2onnx writes with a 0-d shape input (it feeds "
     "NonZero -> Mul -> Add: apparently paddle2onnx's `linspace`, of SFNet's flow-alignment grid)"),
    (r"Dilation not supported for AutoPadType", "dilated conv, auto_pad SAME",
     "ONNX Runtime cannot run a dilated convolution with auto_pad SAME_UPPER/SAME_LOWER, which is how "
     "paddle2onnx writes ESPNetV2's dilated depthwise convolutions (padding_algorithm SAME)"),
    (r"quantization scale of (\S+) is not positive", "zero quant scale",
     r"segqat's INT8 ONNX conversion refuses an activation quantization scale of 0 (`\1`, a ReLU output "
     r"that was 0 on all calibration inputs: an artefact of random weights; Paddle and OpenVINO run it)"),
    (r"must be topologically sorted.*OpType: If", "If node order",
     "the INT8 ONNX model (segqat's QDQ conversion, paddle2onnx with its optimizer off) fails the ONNX "
     "checker: a node in an If subgraph (ISANet's conditional padding) reads a tensor that is not "
     "produced before it"),
]

# Remarks on single models, from inspecting their exports (printed below the table).
REMARKS = {
    "segnext_mscan_t": "SegNeXt's decoder (PaddleSeg NMF2D, RAND_INIT true by default) draws random bases "
                       "(`uniform_random`) in every forward pass, inference included: its outputs are not "
                       "deterministic, so its agreements measure run-to-run randomness, not the runtime.",
}


# ------------------------------------------------------------------ helpers

def rel(path):
    return os.path.relpath(os.path.abspath(path), ROOT)


def sanitize(text):
    """An error text without this machine's absolute paths."""
    text = str(text)
    site = [p for p in sys.path if p.endswith("site-packages")]
    for p in sorted(site, key=len, reverse=True):
        text = text.replace(p + os.sep, "site-packages/").replace(p, "site-packages")
    text = text.replace(ROOT + os.sep, "").replace(ROOT, ".")
    text = re.sub(r"/tmp/[^\s'\":,)\]]*", "<tmp>", text)
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = text.replace(home + os.sep, "~/")
    return text


def error_record(e):
    """{error: 'Class: first line' (<= 200 chars), error_full: message (<= 2000 chars),
    where: innermost frame}."""
    msg = sanitize(str(e)).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    first = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{sanitize(tb[-1].filename)}:{tb[-1].lineno} ({tb[-1].name})" if tb else ""
    return {"error": first[:200] + ("..." if len(first) > 200 else ""),
            "error_full": f"{type(e).__name__}: {msg}"[:2000], "where": where}


def write_json(path, obj):
    zoo_common.write_json(path, obj, indent=1)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def zoo_models():
    return list(zoo_common.discover(os.path.join(ROOT, "configs", "zoo")))


# ------------------------------------------------------------------ child: one model

def _prepare(name, mdir):
    """Exports (FP32, INT8), check batch, INT8 reference (fake quantization); returns the
    prepare record (also written to mdir/prepare.json). Reused if it exists."""
    import numpy as np
    import paddle
    from segqat import export, quant
    from segqat.config import load_config
    from segqat.deploy import contract, load_deploy_config, onnx_export
    path = os.path.join(mdir, "prepare.json")
    if os.path.isfile(path):
        return read_json(path)
    cfg = load_config(os.path.join(ROOT, "configs", "zoo", f"{name}.yml"))
    attempts, chosen = [], None
    for shape in SHAPES:
        tag = f"{shape[2]}x{shape[3]}"
        att = {"input_shape": shape}
        dirs = {k: os.path.join(mdir, tag, k) for k in PRECISIONS}
        try:
            paddle.seed(0)
            model, _ = quant.build_model(cfg, None)
            export.export_model(cfg, model, dirs["fp32"], shape)
            att["fp32"] = {"ok": True, "dir": rel(dirs["fp32"])}
        except Exception as e:
            att["fp32"] = dict(ok=False, **error_record(e))
        finally:
            model = None
        try:
            paddle.seed(0)
            rng = np.random.RandomState(0)
            quant.export_calibrated_int8(cfg, dirs["int8"], shape, rng, batches=CALIB_BATCHES)
            att["int8"] = {"ok": True, "dir": rel(dirs["int8"])}
        except Exception as e:
            att["int8"] = dict(ok=False, **error_record(e))
        attempts.append(att)
        print(f"[{name}] export {tag}: fp32 {att['fp32'].get('error', 'ok')} | "
              f"int8 {att['int8'].get('error', 'ok')}", flush=True)
        if att["fp32"]["ok"] and att["int8"]["ok"]:
            chosen = att
            break
    if chosen is None:  # no shape exported both: the first at which FP32 did (its INT8 failed)
        chosen = next((a for a in attempts if a["fp32"]["ok"]), attempts[0])
    rec = {"input_shape": chosen["input_shape"], "fp32": chosen["fp32"], "int8": chosen["int8"],
           "attempts": attempts}
    good = next((chosen[k] for k in PRECISIONS if chosen[k]["ok"]), None)
    if good is not None:
        dep = load_deploy_config(os.path.join(ROOT, good["dir"]))
        # deploy.yaml's transforms, as every runtime's Predictor.preprocess applies them
        batch = onnx_export.check_batch(dep, contract.Predictor(dep, "fp32", THREADS).preprocess,
                                        count=CHECK_IMAGES)
        np.save(os.path.join(mdir, "batch.npy"), batch)
        rec["check_batch"] = {"shape": list(batch.shape),
                              "images": f"{CHECK_IMAGES} synthetic images (segqat.datagen.synthetic_image, "
                                        f"seeds 0..{CHECK_IMAGES - 1}) preprocessed by deploy.yaml's transforms"}
    if chosen["int8"]["ok"]:
        try:
            dep = load_deploy_config(os.path.join(ROOT, chosen["int8"]["dir"]))
            ref = onnx_export.labels_of(dep, onnx_export.paddle_outputs(dep, [x[None] for x in batch]))
            np.save(os.path.join(mdir, "ref_int8.npy"), ref)
            rec["ref_int8"] = {"ok": True, "what": "Paddle executor, quantized program as written "
                                                   "(fake quantization; onnx_export.paddle_outputs)"}
        except Exception as e:
            rec["ref_int8"] = dict(ok=False, **error_record(e))
    write_json(path, rec)
    return rec


def _run_one(rt, prec, prep, mdir, verbose=False):
    """One runtime x precision: build the predictor, run the check batch, compare."""
    import numpy as np
    from segqat import deploy
    from segqat.deploy import load_deploy_config, onnx_export
    ex = prep[prec]
    if not ex["ok"]:
        return {"ok": False, "stage": "export", "error": f"not run: the {prec.upper()} export failed",
                "error_full": f"not run: the {prec.upper()} export failed: {ex['error']}"}
    d = os.path.join(ROOT, ex["dir"])
    dep = load_deploy_config(d)
    batch = np.load(os.path.join(mdir, "batch.npy"))
    opts = {"min_agreement": 0} if rt == "onnxruntime" else {}
    res = {"ok": False, "stage": "load"}
    try:
        pred = deploy.create_predictor(d, runtime=rt, precision=prec, threads=THREADS, verbose=verbose, **opts)
    except Exception as e:
        res.update(error_record(e))
        return res
    try:
        res["stage"] = "run"
        out = np.concatenate([np.asarray(pred.run(x[None])) for x in batch])
        labels = onnx_export.labels_of(dep, out)
        res["stage"] = "compare"
        res["int8_ops"] = dict(sorted(pred.int8_ops().items()))
        res["int8_kernels"] = int(sum(res["int8_ops"].values()))
        if rt == "onnxruntime":
            res["ort_self_check_agreement"] = pred.agreement  # its own check vs Paddle's executor
        res["output_shape"] = list(out.shape)
        if rt == "paddle" and prec == "fp32":
            np.save(os.path.join(mdir, "ref_fp32.npy"), labels)
            res["reference"] = "self (the FP32 reference)"
            res["agreement"] = 1.0
            # also: oneDNN FP32 vs Paddle's plain executor (no oneDNN passes)
            try:
                plain = onnx_export.labels_of(dep, onnx_export.paddle_outputs(dep, [x[None] for x in batch]))
                res["agreement_vs_executor"] = float((plain == labels).mean()) if plain.shape == labels.shape else None
            except Exception as e:
                res["agreement_vs_executor_error"] = error_record(e)["error"]
        else:
            ref_file = os.path.join(mdir, f"ref_{prec}.npy")
            res["reference"] = ("Paddle Inference FP32 predictor" if prec == "fp32"
                                else "Paddle executor, fake quantization")
            if os.path.isfile(ref_file):
                ref = np.load(ref_file)
                if ref.shape == labels.shape:
                    res["agreement"] = float((ref == labels).mean())
                else:
                    res["agreement"] = None
                    res["agreement_note"] = f"output shape {list(labels.shape)} vs reference {list(ref.shape)}"
            else:
                res["agreement"] = None
                res["agreement_note"] = "no reference (it failed)"
        res["labels_present"] = sorted(int(v) for v in np.unique(labels))[:20]
        res["ok"] = True
        del res["stage"]
    except Exception as e:
        res.update(error_record(e))
    finally:
        try:
            pred.close()
        except Exception:
            pass
    return res


def child(args):
    """--one NAME: prepare (or reuse) the exports, then run the asked runtimes x precisions,
    writing --out after every step ('stage' names the step in progress)."""
    from segqat import cli
    cli.setup(argparse.Namespace(cpu_threads=THREADS))
    if args.verbose:  # a retry after a crash: let native (C++) output reach the log, e.g. an abort's reason
        import contextlib
        from segqat import compat
        compat.native_output = lambda verbose=False: contextlib.nullcontext()
    name = args.one
    mdir = os.path.join(ROOT, args.work_dir, name)
    os.makedirs(mdir, exist_ok=True)
    out = args.out
    res = read_json(out) if os.path.isfile(out) else {"model": name, "runs": {}}
    res["stage"] = "export"
    write_json(out, res)
    try:
        prep = _prepare(name, mdir)
    except Exception as e:
        res["prepare_error"] = error_record(e)
        res.pop("stage", None)
        write_json(out, res)
        return
    res["export"] = prep
    for rt in args.runtimes:
        for prec in args.precisions:
            if prec in res["runs"].get(rt, {}):
                continue
            res["stage"] = f"{rt} {prec}"
            write_json(out, res)
            print(f"[{name}] {rt} {prec} ...", flush=True)
            r = _run_one(rt, prec, prep, mdir, verbose=args.verbose)
            print(f"[{name}] {rt} {prec}: " + ("ok, agreement %s, INT8 kernels %s" % (
                r.get("agreement"), r.get("int8_kernels")) if r["ok"] else r["error"]), flush=True)
            res["runs"].setdefault(rt, {})[prec] = r
    res.pop("stage", None)
    write_json(out, res)


# ------------------------------------------------------------------ parent: the sweep

def _spawn(args, name, out, log, runtimes=RUNTIMES, precisions=PRECISIONS, verbose=False):
    """Run a child; returns None if it exited normally, else how it died."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--work_dir", args.work_dir,
           "--out", out, "--runtimes", *runtimes, "--precisions", *precisions] + (["--verbose"] if verbose else [])
    with open(log, "a") as f:
        f.write(f"\n===== {datetime.datetime.now().isoformat(timespec='seconds')} "
                f"{' '.join(runtimes)} x {' '.join(precisions)}\n")
        f.flush()
        returncode, timed_out = run_logged(cmd, f, args.timeout, cwd=ROOT)
    if timed_out:
        return f"timed out after {args.timeout} s (killed)"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        return f"died by {sig}"
    if returncode != 0:
        return f"exited with code {returncode}"
    return None


def _log_tail(log, n=6):
    """The last ``n`` lines the latest subprocess printed (its native output included), without
    this script's own progress lines and Python warnings."""
    with open(log, errors="replace") as f:
        text = f.read()
    section = text.rsplit("\n===== ", 1)[-1].splitlines()[1:]
    # Paddle's abort handler prints "C++ Traceback ... Error Message Summary ..." after the reason
    cut = next((i for i, ln in enumerate(section) if "C++ Traceback" in ln), None)
    if cut is not None:
        section = section[:cut]
    keep = [ln.strip() for ln in section if ln.strip() and not re.match(r"^\[[a-z0-9_]+\] ", ln)
            and "Warning" not in ln and not set(ln.strip()) <= set("-")
            and not re.match(r"^(\d{4}-\d\d-\d\d [\d:,]+ \[INFO\]|[IW]\d{4} )", ln.strip())]
    keep = [ln for ln in keep if not ln.startswith(("warnings.warn", "You can set full_graph"))]
    return sanitize(" / ".join(keep[-n:]))[:1200]


def _code_state():
    """The commit the code ran at, and whether segqat/ differed from it."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            return None
    return {"commit": git("rev-parse", "--short", "HEAD"), "segqat_modified": bool(git("status", "--porcelain", "--", "segqat"))}


def sweep_one(args, name):
    work = os.path.join(ROOT, args.work_dir)
    mdir = os.path.join(work, name)
    os.makedirs(mdir, exist_ok=True)
    out, log = os.path.join(mdir, "result.partial.json"), os.path.join(mdir, "log.txt")
    if os.path.isfile(out):
        os.remove(out)  # an interrupted earlier run: redo the runs (exports are reused)
    code = _code_state()
    died = _spawn(args, name, out, log)
    res = read_json(out) if os.path.isfile(out) else {"model": name, "runs": {}}
    res["crashes"] = []
    res["code"] = code
    if died:
        stage = res.pop("stage", "startup")
        res["crashes"].append({"subprocess": "all runtimes", "stage": stage, "how": died})
        print(f"  {name}: subprocess {died} during '{stage}'", flush=True)
        if os.path.isfile(os.path.join(mdir, "prepare.json")):
            res.setdefault("export", read_json(os.path.join(mdir, "prepare.json")))
            for rt in RUNTIMES:
                for prec in PRECISIONS:
                    if prec in res["runs"].get(rt, {}):
                        continue
                    sub = os.path.join(mdir, f"result.{rt}.{prec}.json")
                    if os.path.isfile(sub):
                        os.remove(sub)
                    d = _spawn(args, name, sub, log, runtimes=(rt,), precisions=(prec,), verbose=True)
                    r = read_json(sub) if os.path.isfile(sub) else {}
                    got = r.get("runs", {}).get(rt, {}).get(prec)
                    if d or got is None:
                        why = d or "wrote no result"
                        tail = _log_tail(log)
                        res["crashes"].append({"subprocess": f"{rt} {prec} alone", "stage": r.get("stage", "startup"),
                                               "how": why, "output_tail": tail})
                        got = {"ok": False, "stage": r.get("stage", "startup"),
                               "error": f"subprocess {why} (run alone)",
                               "error_full": f"the subprocess running only {rt} {prec} {why} during "
                                             f"'{r.get('stage', 'startup')}' (in the subprocess running all "
                                             f"runtimes: {died} during '{stage}'); its last output "
                                             f"(native output shown): {tail or '(none)'}"}
                    else:
                        got["retried_alone"] = True
                    print(f"  {name}: {rt} {prec} alone: " + (got.get("error") if not got["ok"] else "ok"),
                          flush=True)
                    res["runs"].setdefault(rt, {})[prec] = got
        else:
            res["prepare_error"] = {"error": f"subprocess {died} during the export",
                                    "error_full": f"the subprocess {died} while exporting (stage '{stage}')"}
    res["config"] = f"configs/zoo/{name}.yml"
    end = _code_state()
    if end != code:
        res["code_end"] = end  # the code changed while this model ran
    write_json(os.path.join(work, f"{name}.json"), res)
    return res


def summary_line(res):
    if "prepare_error" in res:
        return "export failed: " + res["prepare_error"]["error"]
    cells = []
    for rt in RUNTIMES:
        for prec in PRECISIONS:
            r = res["runs"].get(rt, {}).get(prec)
            cells.append(f"{rt} {prec} " + ("ok" if r and r["ok"] else "FAIL"))
    return ", ".join(cells)


# ------------------------------------------------------------------ report

def _pct(a):
    """Agreement floored to 0.1%, to 0.01% from 99.9% on (never 100% unless every pixel agrees)."""
    if a is None:
        return "n/a"
    if a >= 1.0:
        return "100.0%"
    if a >= 0.999:
        return f"{int(a * 10000) / 100:.2f}%"
    return f"{int(a * 1000) / 10:.1f}%"


def _px(a, r):
    """'N of M pixels differ (agreement)' for a run record with its output shape."""
    total = 1
    for v in r.get("output_shape", [])[:1] + r.get("output_shape", [])[-2:]:
        total *= v
    if total <= 1:
        return _pct(a)
    return f"{round((1 - a) * total)} of {total} pixels differ ({_pct(a)})"


def cause_of(err, short=False):
    for pat, cell, label in CAUSES:
        m = re.search(pat, err, re.S)
        if m:
            return m.expand(cell if short else label)
    return None


def report(args):
    from segqat import bench
    from importlib import metadata
    work = os.path.join(ROOT, args.work_dir)
    names = zoo_models()
    models = {}
    for n in names:
        p = os.path.join(work, f"{n}.json")
        if os.path.isfile(p):
            models[n] = read_json(p)
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    shapes = sorted({tuple(m["export"]["input_shape"]) for m in models.values() if "export" in m})
    merged = {
        "what": "configs/zoo models x runtimes (paddle, openvino, onnxruntime) x FP32/INT8: export, "
                "load, run, INT8 kernel proof, label agreement with a reference; random weights, "
                "INT8 quantizers calibrated on random inputs. Nothing timed.",
        "command": COMMAND,
        "date": datetime.date.today().isoformat(),
        "machine": bench.machine(),
        "versions": versions,
        "threads": THREADS,
        "input_shapes_tried": [list(s) for s in SHAPES],
        "input_shapes_used": [list(s) for s in shapes],
        "calibration": f"{CALIB_BATCHES} random batches (numpy RandomState(0), uniform [-1, 1])",
        "check_batch": f"{CHECK_IMAGES} synthetic images (segqat.datagen), preprocessed by deploy.yaml's "
                       "transforms (onnx_export.check_batch), run one image at a time",
        "references": {"fp32": "labels of the Paddle Inference FP32 predictor (oneDNN)",
                       "int8": "labels of Paddle's executor running the quantized program as written "
                               "(fake quantization; onnx_export.paddle_outputs)"},
        "work_dir": args.work_dir,
        "code": sorted({json.dumps(m.get("code"), sort_keys=True) for m in models.values()}),
        "models_missing": [n for n in names if n not in models],
        "models": models,
    }
    merged["code"] = [json.loads(c) for c in merged["code"]]
    write_json(os.path.join(HERE, "runtimes_all.json"), merged)
    commits = sorted({c["commit"] for c in merged["code"] if c} | {m["code_end"]["commit"] for m in models.values()
                                                                    if m.get("code_end")})

    # ---- markdown
    notes, note_ids = [], {}

    def note(text):
        if text not in note_ids:
            notes.append(text)
            note_ids[text] = len(notes)
        return f"[^{note_ids[text]}]"

    failures = {}  # cause -> [(model, cell)]
    counts = {(rt, p): 0 for rt in RUNTIMES for p in PRECISIONS}
    surprises = []
    rows = []
    for n in names:
        m = models.get(n)
        if m is None:
            rows.append(f"| {n} | – | " + " | ".join(["not run"] * 6) + " |")
            continue
        shape = m.get("export", {}).get("input_shape")
        inp = f"{shape[2]}x{shape[3]}" if shape else "–"
        cells = []
        for rt in RUNTIMES:
            for p in PRECISIONS:
                r = m.get("runs", {}).get(rt, {}).get(p)
                col = f"{RUNTIME_NAMES[rt]} {p.upper()}"
                if r is None:
                    err = m.get("prepare_error", {}).get("error_full") or "not run"
                    short = cause_of(err, True) or ("export failed" if "prepare_error" in m else "not run")
                    cells.append(f"✗ {short}{note(err)}")
                    failures.setdefault(cause_of(err) or err.splitlines()[0][:160], []).append(f"{n} ({col})")
                    continue
                if r["ok"]:
                    counts[(rt, p)] += 1
                    if p == "int8":
                        k = r.get("int8_kernels", 0)
                        cells.append(f"✓ {k} INT8, {_pct(r.get('agreement'))}")
                        if not k:
                            surprises.append((n, f"{col} ran with 0 INT8 kernels"))
                    elif rt == "paddle":
                        ex = r.get("agreement_vs_executor")
                        cells.append("✓ ref." + (f" ({_pct(ex)} vs executor)" if ex is not None and ex < 1 else ""))
                        if ex is not None and ex < 1:
                            surprises.append((n, f"Paddle Inference FP32 vs Paddle's executor: "
                                                 f"{_px(ex, r)}"))
                    else:
                        a = r.get("agreement")
                        cells.append(f"✓ {_pct(a)}")
                        if a is not None and a < 1:
                            surprises.append((n, f"{col} vs Paddle Inference FP32: {_px(a, r)}"))
                    if r.get("retried_alone"):
                        cells[-1] += " (alone)"
                    continue
                err = r.get("error_full") or r.get("error", "?")
                short = cause_of(err, True) or r.get("error", "?").split(":")[0]
                cells.append(f"✗ {short}{note(err)}")
                failures.setdefault(cause_of(err) or r.get("error", "?")[:160], []).append(f"{n} ({col})")
        rows.append(f"| {n} | {inp} | " + " | ".join(cells) + " |")

    mach = merged["machine"]
    total = len(names)
    lines = [
        "# Zoo models on three CPU runtimes, FP32 and INT8 (random weights)", "",
        "Which configs/zoo model exports, loads and runs on Paddle Inference (oneDNN), OpenVINO "
        "(CPU plugin, Paddle frontend) and ONNX Runtime (CPU, model converted by "
        "segqat.deploy.onnx_export), in FP32 and INT8, and whether each INT8 run compiled real INT8 "
        "kernels. A compatibility check: nothing is timed.", "",
        f"Command (from the project root, alone on the machine; resumes from `{args.work_dir}/NAME.json`): "
        f"`{COMMAND}`; `{COMMAND} --report-only` rebuilds this table and runtimes_all.json from the "
        "per-model JSONs.", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, ISA {', '.join(mach['isa'])} "
        f"(VNNI: {'yes' if mach['vnni'] else 'no'}); {THREADS} threads per predictor. Packages: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + f". Date: {merged['date']}. "
        f"segqat at commit {', '.join(commits) or '?'}"
        + (" (segqat/ modified in the working tree for some models)"
           if any(c and c.get("segqat_modified") for c in merged["code"]) else "") + ".", "",
        "How: each model is built with **random weights** (paddle.seed(0)) and exported FP32 at "
        "1x3x256x512 (1x3x512x512 if that export fails; column *input*); a second build gets fake "
        "quantization (the config's quant_config, purpose export, no PACT), is calibrated on 4 random "
        "batches and exported INT8 (as slim/quant/bench_latency.py). Each runtime runs 2 synthetic "
        "images (segqat.datagen, preprocessed by deploy.yaml's transforms), one at a time. Each model "
        "runs in a subprocess of its own; a subprocess that died was followed by one subprocess per "
        "unfinished run (marked *(alone)*).", "",
        "Cells: FP32 `✓ agreement` = share of pixels whose label equals the Paddle Inference FP32 "
        "predictor's (the reference, `ref.`); INT8 `✓ N INT8, agreement` = N INT8 kernels in the "
        "runtime's compiled graph (`Predictor.int8_ops()`: oneDNN ops with mkldnn_data_type int8, "
        "OpenVINO u8/i8 Convolution/MatMul layers, ONNX Runtime QLinearConv/ConvInteger/"
        "MatMulInteger/QLinearMatMul nodes; every predictor refuses an INT8 model it compiled no INT8 "
        "kernel for) and the share of pixels whose label equals Paddle's executor running the "
        "quantized program as written (fake quantization); `ref. (x% vs executor)`: the Paddle Inference "
        "FP32 labels against Paddle's plain executor (no oneDNN passes), shown when below 100%. "
        "Agreements are floored to 0.1% (to 0.01% from 99.9% on). With "
        "random weights the logits of the classes are near ties, so INT8 agreement with fake "
        "quantization is only indicative (a trained model's is what counts); FP32 agreement should "
        "be 100% or very close. INT8 kernel counts differ between runtimes by design: Paddle's oneDNN INT8 "
        "op set is the convolutions (a convolution with a fused residual add may be left FP32), "
        "OpenVINO also counts INT8 FullyConnected/MatMul layers (SegFormer-B0: 44), ONNX Runtime "
        "counts QLinearConv/ConvInteger nodes. `✗` = failed, footnote = the error.", "",
    ]
    for rt in RUNTIMES:
        lines.append(f"- {RUNTIME_NAMES[rt]}: FP32 runs {counts[(rt, 'fp32')]}/{total}, "
                     f"INT8 runs {counts[(rt, 'int8')]}/{total}")
    lines += ["", "| model | input | Paddle FP32 | Paddle INT8 | OpenVINO FP32 | OpenVINO INT8 | "
              "ONNX Runtime FP32 | ONNX Runtime INT8 |", "|---|---|---|---|---|---|---|---|"] + rows
    lines += ["", "## Failure causes", ""]
    if not failures:
        lines.append("None.")
    for cause, where in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{cause}** ({len(where)}): {', '.join(where)}")
    crashes = [(n, c) for n, m in models.items() for c in m.get("crashes", [])]
    if crashes:
        lines += ["", "Subprocess deaths: " + "; ".join(
            f"{n}: {c['subprocess']} {c['how']} during '{c['stage']}'" for n, c in crashes) + "."]
    if surprises or REMARKS:
        lines += ["", "## Notes", "",
                  "FP32 runs whose labels are not all equal to the reference's (pixels differing of "
                  "all check pixels; with random weights many pixels are near ties between classes):", ""]
        by_model = {}
        for n, s in surprises:
            by_model.setdefault(n, []).append(s)
        lines += [f"- {n}: " + "; ".join(v) for n, v in by_model.items()]
        lines += [""] + [f"- {n}: {t}" for n, t in REMARKS.items() if n in models]
    lines += [""] + [f"[^{i}]: {t.replace(chr(10), ' ').replace('|', '/')}" for i, t in enumerate(notes, 1)]
    lines.append("")
    with open(os.path.join(HERE, "runtimes_all.md"), "w") as f:
        f.write("\n".join(lines))
    for rt in RUNTIMES:
        print(f"{RUNTIME_NAMES[rt]}: FP32 {counts[(rt, 'fp32')]}/{total}, INT8 {counts[(rt, 'int8')]}/{total}")
    print(f"wrote {rel(os.path.join(HERE, 'runtimes_all.json'))}, {rel(os.path.join(HERE, 'runtimes_all.md'))}")


# ------------------------------------------------------------------ main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="zoo names (default: all configs/zoo/*.yml)")
    p.add_argument("--work_dir", default="output/zoo_runtimes", help="per-model JSONs, exports, logs")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the JSONs")
    p.add_argument("--timeout", type=int, default=900, help="seconds per model subprocess")
    # internal: one model in this process
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    os.chdir(ROOT)
    if args.one:
        return child(args)
    if not args.report_only:
        names = zoo_models()
        todo = args.models or names
        unknown = [n for n in todo if n not in names]
        if unknown:
            raise SystemExit(f"--models: not in configs/zoo: {', '.join(unknown)}")
        os.makedirs(os.path.join(ROOT, args.work_dir), exist_ok=True)
        t0 = time.time()
        for i, n in enumerate(todo, 1):
            if os.path.isfile(os.path.join(ROOT, args.work_dir, f"{n}.json")):
                print(f"[{i}/{len(todo)}] {n}: done before, skipped", flush=True)
                continue
            t = time.time()
            print(f"[{i}/{len(todo)}] {n}: started {datetime.datetime.now().strftime('%H:%M:%S')}", flush=True)
            res = sweep_one(args, n)
            print(f"[{i}/{len(todo)}] {n}: {summary_line(res)} ({time.time() - t:.0f} s wall)", flush=True)
        print(f"sweep: {time.time() - t0:.0f} s wall", flush=True)
    report(args)


if __name__ == "__main__":
    main()
