"""`python -m nes_mpi export CKPT -o policy.pt|policy.onnx`: a checkpoint's policy as a standalone file.

Both formats take raw float32 observations of shape (batch, obs_dim) and hold
the observation normalisation and clipping, so a deployment needs no nes_mpi:
  .pt / .pth  TorchScript (torch.jit.load), compiled from `load_policy(...).torch_module()`
  .onnx       ONNX (onnxruntime etc.), written node by node from the checkpoint's numbers with the
              `onnx` package (the `export` extra); input "obs", output "action"
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .config import ConfigError
from .trained_policy import TrainedPolicy, load_policy

TORCHSCRIPT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIX = ".onnx"
ONNX_OPSET = 17
# The activations' ONNX operators; SELU's constants are the ones policy.py and torch use.
_ONNX_ACT = {"tanh": ("Tanh", {}), "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "elu": ("Elu", {"alpha": 1.0}),
             "selu": ("Selu", {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805})}


def run_export(args) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (*TORCHSCRIPT_SUFFIXES, ONNX_SUFFIX):
        raise ConfigError(f"-o {out}: unknown format {repr(suffix) if suffix else '(no suffix)'}; "
                          f"use a name ending in {', '.join(TORCHSCRIPT_SUFFIXES)} (TorchScript) or {ONNX_SUFFIX}")
    try:
        policy = load_policy(args.checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ONNX_SUFFIX:
        write_onnx(policy, out)
    else:
        write_torchscript(policy, out)
    kind = "discrete" if policy.spec.discrete else "continuous"
    print(f"{out}: {'ONNX' if suffix == ONNX_SUFFIX else 'TorchScript'} policy, observations (batch, "
          f"{policy.spec.obs_dim}) float32 -> {kind} actions ({policy.spec.act_dim}), "
          f"normalisation included; from {args.checkpoint} ({policy.env_id})")
    return 0


def write_torchscript(policy: TrainedPolicy, path: Path) -> None:
    import torch

    torch.jit.script(policy.torch_module().eval()).save(str(path))


def write_onnx(policy: TrainedPolicy, path: Path) -> None:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'nes_mpi[export]' "
                          "(or pip install onnx)") from None
    spec = policy.spec
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def node(op, inputs, **attrs):
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    # the normalisation of rollout(): (obs - mean) * (1 / std), clipped
    x = node("Sub", ["obs", const("obs_mean", policy.obs_mean)])
    x = node("Mul", [x, const("obs_inv_std", policy.obs_inv_std)])
    x = node("Clip", [x, const("obs_lo", -policy.obs_clip), const("obs_hi", policy.obs_clip)])
    sizes, pos = spec.layer_sizes, 0
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        w = policy.params[pos : pos + n_in * n_out].reshape(n_out, n_in)
        pos += n_in * n_out
        b = policy.params[pos : pos + n_out]
        pos += n_out
        x = node("Add", [node("MatMul", [x, const(f"w{i}", w.T)]), const(f"b{i}", b)])
        if i < len(sizes) - 2:
            op, attrs = _ONNX_ACT[spec.activation]
            x = node(op, [x], **attrs)
    forward = policy.batch_forward
    if spec.discrete:
        x = node("ArgMax", [x], axis=1, keepdims=0)
        out_type = TensorProto.INT64
    elif forward.squash:  # low + (tanh(h) + 1) * (high - low) / 2
        x = node("Mul", [node("Add", [node("Tanh", [x]), const("one", 1.0)]), const("half_range", forward.half_range)])
        x = node("Add", [x, const("act_low", forward.low)])
        out_type = TensorProto.FLOAT
    else:
        if spec.clip_actions:
            x = node("Min", [node("Max", [x, const("act_low", forward.low)]), const("act_high", forward.high)])
        out_type = TensorProto.FLOAT
    nodes.append(helper.make_node("Identity", [x], ["action"]))
    graph = helper.make_graph(
        nodes, "nes_mpi_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", spec.obs_dim])],
        [helper.make_tensor_value_info("action", out_type, ["batch"] if spec.discrete else ["batch", spec.act_dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="nes_mpi")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

