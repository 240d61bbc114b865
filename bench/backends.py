"""How each implementation runs a benchmark case.

    make_runner(impl, case, arrays, threads) -> Runner

impl is one of ALL_IMPLS:
  normrt  the kernel under test, writing into a preallocated `out=`
  copy    np.copyto(dst, x): the same bytes copied once, the memory-traffic floor
          (numpy's copy is single threaded whatever `threads` says)
  ort     onnxruntime, CPU provider, a single-node model (plus Sigmoid*Mul for a
          fused silu), parameters as initializers, input and output bound once
          with io_binding to preallocated numpy buffers, so a timed call is one
          run_with_iobinding with no allocation or copy on either side
  ort-unfused
          the same with the decomposed graph (see onnx_model(fused=False)), for the
          cases that have one; on this ORT the fused op is sometimes the slower
  torch   torch.nn.functional under torch.inference_mode; F has no `out=`, so
          torch's time includes allocating its output (silu runs in place)

Every implementation runs with `threads` intra-op threads (normrt.threads,
SessionOptions.intra_op_num_threads, torch.set_num_threads). A Runner whose
implementation or kernel is missing is never built: make_runner raises
Unavailable, which the suite turns into a skip and the report into a blank.
"""
import contextlib
import functools

import numpy as np

from .cases import EPS

IMPLS = ("normrt", "copy", "ort", "torch")
# onnxruntime's other form of a case, where there is one (see has_unfused_form):
# both are timed and comparisons use the faster, so normrt is not measured
# against a slow path ORT would not be asked to take
ORT_UNFUSED = "ort-unfused"
ALL_IMPLS = IMPLS + (ORT_UNFUSED,)


class Unavailable(Exception):
    """This implementation cannot run this case here (not installed, kernel not there yet)."""


class Runner:
    """One implementation bound to one case's arrays.

    fn       the timed call (no arguments)
    context  a context manager to hold while calling fn (thread count, inference mode)
    output   the array fn writes, or a function returning fn's result as numpy
    note     how the case was expressed (e.g. which ONNX form), for the report
    """

    def __init__(self, impl, fn, context=contextlib.nullcontext, output=None, note=""):
        self.impl = impl
        self.fn = fn
        self.context = context
        self._output = output
        self.note = note

    def result(self):
        """Run fn once and return its result as a numpy array (None for the copy floor)."""
        with self.context():
            value = self.fn()
        if self.impl == "copy":
            return None
        if isinstance(self._output, np.ndarray):
            return self._output
        return self._output(value)


def make_runner(impl, case, arrays, threads):
    try:
        builder = _BUILDERS[impl]
    except KeyError:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {ALL_IMPLS}") from None
    return builder(case, arrays, threads)


# ---------------------------------------------------------------- normrt / copy

def normrt_call(case, a, out):
    """normrt's call for the case as a no-argument function; out=None lets normrt allocate."""
    import normrt

    kernel = getattr(normrt, case.kernel, None)
    if kernel is None:
        raise Unavailable(f"normrt.{case.kernel} is not available yet")
    x = a["x"]
    k = case.kernel
    if k == "batch_norm":
        return functools.partial(kernel, x, a["scale"], a["bias"], a["mean"], a["var"], eps=EPS,
                                 activation=case.activation, out=out)
    if k == "layer_norm":
        return functools.partial(kernel, x, a["scale"], a["bias"], axis=case.axis, eps=EPS,
                                 residual=a.get("residual"), activation=case.activation, out=out)
    if k == "rms_norm":
        if case.activation:
            raise Unavailable("normrt.rms_norm has no fused activation")
        return functools.partial(kernel, x, a["scale"], axis=case.axis, eps=EPS,
                                 residual=a.get("residual"), out=out)
    if k == "layer_norm_2d":
        return functools.partial(kernel, x, a["scale"], a["bias"], eps=EPS, activation=case.activation, out=out)
    if k == "rms_norm_2d":
        return functools.partial(kernel, x, a["scale"], eps=EPS, activation=case.activation, out=out)
    if k == "group_norm":
        return functools.partial(kernel, x, case.num_groups, a["scale"], a["bias"], eps=EPS,
                                 activation=case.activation, out=out)
    if k == "instance_norm":
        return functools.partial(kernel, x, a["scale"], a["bias"], eps=EPS,
                                 activation=case.activation, out=out)
    if k == "attention":
        return functools.partial(kernel, x, a["k"], a["v"], out=out)
    raise ValueError(f"unknown kernel {k!r}")


def _normrt_runner(case, a, threads, out=True):
    import normrt

    y = np.empty_like(a["x"]) if out else None
    fn = normrt_call(case, a, y)
    return Runner("normrt", fn, lambda: normrt.threads(threads),
                  output=y if out else np.asarray, note="out=" if out else "allocating")


def _copy_runner(case, a, threads):
    x = a["x"]
    dst = np.empty_like(x)
    return Runner("copy", functools.partial(np.copyto, dst, x), note="np.copyto, 1 thread")


# ---------------------------------------------------------------- onnxruntime

def onnx_model(case, arrays, fused=True):
    """A single-node ONNX model for the case (plus Sigmoid*Mul for silu).

    Graph inputs: x (and residual); the parameters in `arrays` (make_inputs)
    become initializers; output: y.
    fused=False writes the decomposed form exporters emit for older opsets
    (RMSNormalization as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul at opset 18,
    GroupNormalization as Reshape/InstanceNormalization/Reshape/Mul/Add,
    the skip connection as Add before LayerNormalization).
    Returns (model, note) with note naming the form.
    """
    from onnx import helper, numpy_helper

    a = arrays
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(case.dtype))
    nodes, inits, opset, domains = [], [], 17, []

    def init(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    inputs = [helper.make_tensor_value_info("x", elem, list(case.shape))]
    if case.residual:
        inputs.append(helper.make_tensor_value_info("residual", elem, list(case.shape)))
    if case.kernel == "attention":
        inputs += [helper.make_tensor_value_info(n, elem, list(case.shape)) for n in ("k", "v")]
    norm_out = "h" if case.activation else "y"
    k = case.kernel

    if k == "batch_norm":
        names = [init(n, a[n]) for n in ("scale", "bias", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", ["x", *names], [norm_out],
                                      epsilon=EPS))
        note = "BatchNormalization"
    elif k == "layer_norm":
        init("scale", a["scale"])
        init("bias", a["bias"])
        if case.residual and fused:
            if case.axis not in (-1, len(case.shape) - 1):
                raise ValueError("SkipLayerNormalization normalizes the last axis only")
            nodes.append(helper.make_node("SkipLayerNormalization",
                                          ["x", "residual", "scale", "bias"], [norm_out],
                                          domain="com.microsoft", epsilon=EPS))
            domains.append("com.microsoft")
            note = "com.microsoft.SkipLayerNormalization"
        else:
            src = "x"
            note = "LayerNormalization-17"
            if case.residual:
                nodes.append(helper.make_node("Add", ["x", "residual"], ["sum"]))
                src = "sum"
                note = "Add + LayerNormalization-17"
            nodes.append(helper.make_node("LayerNormalization", [src, "scale", "bias"],
                                          [norm_out], axis=case.axis, epsilon=EPS))
    elif k == "rms_norm":
        init("scale", a["scale"])
        src = "x"
        if case.residual:
            nodes.append(helper.make_node("Add", ["x", "residual"], ["sum"]))
            src = "sum"
        if fused:
            opset = 23
            nodes.append(helper.make_node("RMSNormalization", [src, "scale"], [norm_out],
                                          axis=case.axis, epsilon=EPS))
            note = "RMSNormalization-23"
        else:
            opset = 18
            rank = len(case.shape)
            first = case.axis % rank
            init("two", np.array(2.0, case.dtype))
            init("eps", np.array(EPS, case.dtype))
            init("axes", np.arange(first, rank, dtype=np.int64))
            nodes += [
                helper.make_node("Pow", [src, "two"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
                helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
                helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
                helper.make_node("Reciprocal", ["rms"], ["inv_rms"]),
                helper.make_node("Mul", [src, "inv_rms"], ["normed"]),
                helper.make_node("Mul", ["normed", "scale"], [norm_out]),
            ]
            note = "RMSNorm decomposed (opset 18)"
    elif k in ("layer_norm_2d", "rms_norm_2d"):
        # no ONNX op normalizes the channel axis: the hand-written form the exporters emit
        opset = 18
        bshape = (case.shape[1],) + (1,) * (len(case.shape) - 2)
        init("scale", a["scale"].reshape(bshape))
        init("two", np.array(2.0, case.dtype))
        init("eps", np.array(EPS, case.dtype))
        init("axes", np.array([1], np.int64))
        src = "x"
        if k == "layer_norm_2d":
            nodes += [helper.make_node("ReduceMean", ["x", "axes"], ["u"]),
                      helper.make_node("Sub", ["x", "u"], ["d"])]
            src = "d"
        nodes += [
            helper.make_node("Pow", [src, "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
            helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
            helper.make_node("Sqrt", ["ms_eps"], ["std"]),
            helper.make_node("Div", [src, "std"], ["normed"]),
        ]
        if k == "layer_norm_2d":
            init("bias", a["bias"].reshape(bshape))
            nodes += [helper.make_node("Mul", ["normed", "scale"], ["scaled"]),
                      helper.make_node("Add", ["scaled", "bias"], [norm_out])]
        else:
            nodes.append(helper.make_node("Mul", ["normed", "scale"], [norm_out]))
        note = "channel-axis statistics decomposed (opset 18)"
    elif k == "group_norm":
        N, C = case.shape[:2]
        G = case.num_groups
        if fused:
            opset = 21
            init("scale", a["scale"])
            init("bias", a["bias"])
            nodes.append(helper.make_node("GroupNormalization", ["x", "scale", "bias"],
                                          [norm_out], num_groups=G, epsilon=EPS))
            note = "GroupNormalization-21"
        else:
            # the torch exporter's form: per-group InstanceNorm with unit affine,
            # then the per-channel affine broadcast over the spatial axes
            bshape = (C,) + (1,) * (len(case.shape) - 2)
            init("scale", a["scale"].reshape(bshape))
            init("bias", a["bias"].reshape(bshape))
            init("grouped_shape", np.array([N, G, -1], np.int64))
            init("ones", np.ones(G, case.dtype))
            init("zeros", np.zeros(G, case.dtype))
            nodes += [
                helper.make_node("Shape", ["x"], ["x_shape"]),
                helper.make_node("Reshape", ["x", "grouped_shape"], ["grouped"]),
                helper.make_node("InstanceNormalization", ["grouped", "ones", "zeros"],
                                 ["grouped_normed"], epsilon=EPS),
                helper.make_node("Reshape", ["grouped_normed", "x_shape"], ["normed"]),
                helper.make_node("Mul", ["normed", "scale"], ["scaled"]),
                helper.make_node("Add", ["scaled", "bias"], [norm_out]),
            ]
            note = "Reshape/InstanceNormalization/Reshape/Mul/Add"
    elif k == "instance_norm":
        init("scale", a["scale"])
        init("bias", a["bias"])
        nodes.append(helper.make_node("InstanceNormalization", ["x", "scale", "bias"],
                                      [norm_out], epsilon=EPS))
        note = "InstanceNormalization"
    elif k == "attention":
        if fused:
            opset = 23
            nodes.append(helper.make_node("Attention", ["x", "k", "v"], [norm_out]))
            note = "Attention-23"
        else:
            # what the exporters emit for attention before opset 23 (diffusers' UNet/VAE,
            # torch's SDPA decomposition): ORT runs it as two MLAS GEMMs around a Softmax
            opset = 18
            init("scale", np.array(1.0 / np.sqrt(case.shape[-1]), case.dtype))
            nodes += [
                helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                helper.make_node("MatMul", ["x", "kt"], ["qk"]),
                helper.make_node("Mul", ["qk", "scale"], ["scores"]),
                helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
                helper.make_node("MatMul", ["probs", "v"], [norm_out]),
            ]
            note = "Transpose/MatMul/Mul/Softmax/MatMul (opset 18)"
    else:
        raise ValueError(f"unknown kernel {k!r}")

    if case.activation == "silu":
        nodes += [helper.make_node("Sigmoid", [norm_out], ["gate"]),
                  helper.make_node("Mul", [norm_out, "gate"], ["y"])]
        note += " + Sigmoid*Mul"
    elif case.activation:
        raise ValueError(f"no ONNX form for activation {case.activation!r} here")

    output = helper.make_tensor_value_info("y", elem, list(case.shape))
    graph = helper.make_graph(nodes, f"bench_{case.id}", inputs, [output], initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="normrt-bench")
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return model, note


def has_unfused_form(case):
    """Whether onnx_model(case, fused=False) differs from the fused single op."""
    return case.residual or case.kernel in ("rms_norm", "group_norm", "attention")


def _ort_unfused_runner(case, a, threads):
    if not has_unfused_form(case):
        raise Unavailable(f"{case.label} has a single ONNX form")
    runner = _ort_runner(case, a, threads, fused=False)
    runner.impl = ORT_UNFUSED
    return runner


def _ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_runner(case, a, threads, fused=True):
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed") from None

    session = None
    errors = []
    # the fused single op first; the decomposed form where this ORT lacks it
    for use_fused in ((True, False) if fused else (False,)):
        model, note = onnx_model(case, a, fused=use_fused)
        try:
            session = _ort_session(model, threads)
            break
        except Exception as exc:  # NOT_IMPLEMENTED / INVALID_GRAPH from an older ORT
            errors.append(f"{note}: {exc}")
    if session is None:
        raise Unavailable("onnxruntime cannot run this case: " + "; ".join(errors))

    x = a["x"]
    y = np.empty_like(x)
    try:
        runner = _bind(ort, session, case, a, x, y, note)
    except Exception as exc:  # e.g. no OrtValue from a bfloat16 numpy array
        raise Unavailable(f"onnxruntime cannot bind {case.dtype} buffers: {exc}") from None
    return runner


def _bind(ort, session, case, a, x, y, note):
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    if case.residual:
        binding.bind_ortvalue_input("residual", ort.OrtValue.ortvalue_from_numpy(a["residual"]))
    if case.kernel == "attention":
        for name in ("k", "v"):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a[name]))
    out_value = ort.OrtValue.ortvalue_from_numpy(y)
    binding.bind_ortvalue_output("y", out_value)
    fn = functools.partial(session.run_with_iobinding, binding)
    runner = Runner("ort", fn, output=y, note=note)
    # keep the session and bound values alive as long as the runner
    runner._keep = (session, binding, out_value)
    return runner


# ---------------------------------------------------------------- torch

def _torch_runner(case, a, threads):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise Unavailable("torch is not installed") from None

    t = {k: _torch_tensor(torch, v) for k, v in a.items()}  # shares memory, no copy
    x = t["x"]
    k = case.kernel
    if k == "batch_norm":
        norm = functools.partial(F.batch_norm, x, t["mean"], t["var"], t["scale"], t["bias"],
                                 False, 0.0, EPS)
        note = "F.batch_norm"
    elif k == "layer_norm":
        shape = tuple(case.shape[case.axis:])
        if case.residual:
            r = t["residual"]

            def norm():
                return F.layer_norm(x + r, shape, t["scale"], t["bias"], EPS)
            note = "x + residual, F.layer_norm"
        else:
            norm = functools.partial(F.layer_norm, x, shape, t["scale"], t["bias"], EPS)
            note = "F.layer_norm"
    elif k == "rms_norm":
        shape = tuple(case.shape[case.axis:])
        if case.residual:
            r = t["residual"]

            def norm():
                return F.rms_norm(x + r, shape, t["scale"], EPS)
        else:
            norm = functools.partial(F.rms_norm, x, shape, t["scale"], EPS)
        note = "F.rms_norm"
    elif k in ("layer_norm_2d", "rms_norm_2d"):
        # channels moved last for F.layer_norm / F.rms_norm, then back to a contiguous NCHW
        # tensor (what the next Conv reads); faster here than the hand-written ConvNeXt form
        perm = (0,) + tuple(range(2, x.dim())) + (1,)
        back = (0, x.dim() - 1) + tuple(range(1, x.dim() - 1))
        C = case.shape[1]

        def norm():
            h = x.permute(perm)
            if k == "layer_norm_2d":
                h = F.layer_norm(h, (C,), t["scale"], t["bias"], EPS)
            else:
                h = F.rms_norm(h, (C,), t["scale"], EPS)
            return h.permute(back).contiguous()
        note = "permute, F.%s, permute + contiguous" % ("layer_norm" if k == "layer_norm_2d" else "rms_norm")
    elif k == "group_norm":
        norm = functools.partial(F.group_norm, x, case.num_groups, t["scale"], t["bias"], EPS)
        note = "F.group_norm"
    elif k == "instance_norm":
        norm = functools.partial(F.instance_norm, x, weight=t["scale"], bias=t["bias"], eps=EPS)
        note = "F.instance_norm"
    elif k == "attention":
        norm = functools.partial(F.scaled_dot_product_attention, x, t["k"], t["v"])
        note = "F.scaled_dot_product_attention"
    else:
        raise ValueError(f"unknown kernel {k!r}")

    if case.activation == "silu":
        def fn():
            return F.silu(norm(), inplace=True)
        note += " + F.silu(inplace)"
    elif case.activation:
        raise ValueError(f"no torch form for activation {case.activation!r} here")
    else:
        fn = norm

    @contextlib.contextmanager
    def context():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(old)

    return Runner("torch", fn, context, output=_torch_to_numpy, note=note)


def _torch_tensor(torch, a):
    """torch.from_numpy, also for ml_dtypes' bfloat16 (through its 16-bit words)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch_to_numpy(value):
    import torch

    if value.dtype == torch.bfloat16:
        import ml_dtypes
        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


_BUILDERS = {
    "normrt": _normrt_runner,
    "copy": _copy_runner,
    "ort": _ort_runner,
    "torch": _torch_runner,
    ORT_UNFUSED: _ort_unfused_runner,
}
