"""What an exported program holds: FP32 or INT8, read from the program itself.

    facts = program_precision("out/qat_infer/model.pdmodel")   # or model.json, model.onnx
    facts.precision        # "int8": it has quantize/dequantize ops or quantized weights
    facts.describe()       # "142 dequantize_linear, 94 quantize_linear op(s), 48 quantized weight(s)"

``deploy.yaml`` says what precision an export is (``precision:``), but a file
can say anything: an INT8 export whose deploy.yaml says ``fp32``, or whose
``model:`` names another export's program, would run as "FP32" and be reported
as such. ``check_claimed_precision`` compares the claim with the program and
refuses a mismatch; ``check_export_is`` does the same for a flag that says what
an export is (benchmark.py ``--fp32`` / ``--int8``). Reading is cheap: the
program is parsed once (protobuf or JSON), no parameter is loaded and no
predictor is built.

The evidence, by format:

- old-IR Paddle program (``.pdmodel``): ops whose type contains ``quantize``
  (``quantize_linear``, ``dequantize_linear``, PaddleSlim's ``fake_quantize_*`` /
  ``fake_dequantize_*``, oneDNN's ``quantize`` / ``dequantize`` / ``requantize``)
  and stored weights that are int8 or read by a dequantize op;
- new-IR Paddle program (``.json``): the same op names (``pd_op.quantize_linear``
  is written ``1.quantize_linear``) and int8 parameters;
- ONNX (``.onnx``): QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
  QLinear* and *Integer nodes, and int8/uint8 initializers.
"""
import dataclasses
import json
import os
from collections import Counter

from .contract import DeployError

ONNX_QUANT_NODES = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclasses.dataclass
class ProgramFacts:
    path: str
    quant_ops: Counter  # {op or node type: count} of the quantization ops
    quantized_weights: int   # stored weights that are int8 or dequantized by the program

    @property
    def precision(self):
        return "int8" if self.quant_ops or self.quantized_weights else "fp32"

    def describe(self):
        if self.precision == "fp32":
            return "no quantize/dequantize op and no quantized weight"
        parts = [", ".join(f"{n} {t}" for t, n in sorted(self.quant_ops.items())) + " op(s)"
                 ] if self.quant_ops else []
        if self.quantized_weights:
            parts.append(f"{self.quantized_weights} quantized weight(s)")
        return ", ".join(parts)


def _is_quant_op(op_type):
    return "quantize" in op_type


def _pdmodel_facts(path):
    from paddle.base import core
    with open(path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    ops, weights = Counter(), set()
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        for i in range(blk.op_size()):
            op = blk.op(i)
            if not _is_quant_op(op.type()):
                continue
            ops[op.type()] += 1
            x = op.input("X") if "X" in op.input_names() else []
            if "dequantize" in op.type() and x:  # a stored weight, dequantized
                v = blk.find_var_recursive(x[0].encode())
                if v is not None and v.persistable():
                    weights.add(x[0])
        for v in blk.all_vars():
            try:
                if v.persistable() and v.dtype() == core.VarDesc.VarType.INT8:
                    weights.add(v.name())
            except Exception:  # feed/fetch lists and readers have no dtype
                continue
    return ops, len(weights)


def _pir_ops(regions):
    for region in regions:
        for block in region.get("blocks", []):
            for op in block.get("ops", []):
                yield op
                yield from _pir_ops(op.get("regions", []))  # control flow


def _pir_param_dtype(op):
    try:
        return op["O"]["TT"]["D"][0]["#"]
    except (KeyError, IndexError, TypeError):
        return None


def _json_facts(path):
    """New-IR (PIR) JSON: ops are dicts {"#": "<dialect>.<name>", ...} in regions/blocks;
    parameters are ops named "p" whose output type names the dtype ("0.t_i8")."""
    with open(path) as f:
        prog = json.load(f)
    if not isinstance(prog, dict) or "program" not in prog:
        raise ValueError("not a Paddle new-IR program (no 'program' key)")
    ops, int8 = Counter(), 0
    for op in _pir_ops(prog["program"].get("regions", [])):
        name = str(op.get("#", ""))
        short = name.split(".", 1)[-1]
        if _is_quant_op(short):
            ops[short] += 1
        elif name == "p" and _pir_param_dtype(op) == "0.t_i8":
            int8 += 1
    return ops, int8


def _onnx_facts(path):
    import onnx
    model = onnx.load(path, load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node
                  if n.op_type in ONNX_QUANT_NODES or n.op_type.startswith("QLinear")
                  or n.op_type.endswith("Integer"))
    int8 = sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               for t in model.graph.initializer)
    return ops, int8


def program_precision(model_file):
    """``ProgramFacts`` of a Paddle program (``.pdmodel``, ``.json``) or an ONNX model."""
    path = str(model_file)
    reader = (_onnx_facts if path.endswith(".onnx") else _json_facts if path.endswith(".json")
              else _pdmodel_facts)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DeployError(f"{path} is empty (0 bytes): an interrupted or failed write? Re-export it")
    try:
        ops, int8 = reader(path)
    except Exception as e:  # protobuf / JSON / onnx decode errors of a damaged file
        kind = {"_onnx_facts": "an ONNX model", "_json_facts": "a Paddle new-IR program"}.get(
            reader.__name__, "a Paddle program")
        raise DeployError(f"{path} cannot be read as {kind} ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'no detail'}); "
                          "re-export it") from None
    return ProgramFacts(path, ops, int(int8))


def check_claimed_precision(dep):
    """Refuse a deploy.yaml whose ``precision:`` is not what its model file holds (an INT8
    program claimed fp32/fp16, or an FP32 program claimed int8)."""
    facts = program_precision(dep["model_file"])
    claim = dep["precision"]
    if (claim == "int8") == (facts.precision == "int8"):
        return facts
    truth = "an INT8 (quantized)" if facts.precision == "int8" else "an FP32 (not quantized)"
    fix = ("set precision: int8 if it is a quantized export, or point model/params at the FP32 "
           "export's files" if facts.precision == "int8" else
           "set precision: fp32, or point model/params at the quantized export's files")
    raise DeployError(f"{dep['path']}: Deploy.precision is {claim} but {dep['model']} holds "
                      f"{truth} program ({facts.describe()}); {fix}")


def check_export_is(dep, expected, flag):
    """Refuse an export given as ``flag`` (e.g. ``--fp32``) whose program is not ``expected``
    ("fp32" or "int8"); ``dep`` from ``load_deploy_config`` (its claim already checked)."""
    facts = program_precision(dep["model_file"])
    if facts.precision == expected:
        return facts
    what = "an INT8 (quantized)" if facts.precision == "int8" else "an FP32 (not quantized)"
    want = ("an FP32 export (tools/export.py)" if expected == "fp32" else
            "an INT8 export (slim/quant/qat_export.py or slim/quant/ptq.py)")
    raise DeployError(f"{flag} {os.path.dirname(dep['path'])} holds {what} model "
                      f"({os.path.basename(dep['model_file'])}: {facts.describe()}); {flag} takes {want}")
