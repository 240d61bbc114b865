"""Recurrent layers (numpy + kernels): LSTM, GRU and RNN.

torch's nn.LSTM / nn.GRU / nn.RNN export as these ops (speech and OCR models, time series,
often with a LayerNorm or BatchNorm beside them). onnx.reference runs them as numpy per time
step, 5-11x onnxruntime's time. Here every step's input projection is one GEMM on normrt's
kernel for all steps and both directions (X (S*B, I) times the packed W of every direction,
plus the biases that simply add), and the time loop runs on normrt._kernels.recurrent: a
bidirectional node's directions on two threads, one direction's hidden units split over the
threads at every step (_thread_policy.recurrent_step).

Implemented: every direction, layout 0 and 1, sequence_lens (steps past a row's length give
zeros, its final state the state at its length), initial_h / initial_c, peepholes, clip,
input_forget, GRU's linear_before_reset both ways, and the activations Sigmoid, Tanh and Relu
in any position. Refused (onnx.reference runs them): the other activations (those with
alpha/beta: Affine, LeakyRelu, HardSigmoid, ...; Elu, Softsign, Softplus).
"""
import numpy as np

from ..._kernels import recurrent as _krec
from ..._thread_policy import allowed_threads, recurrent_step
from ...api.gemm import matmul as _kernel_matmul
from . import _blas
from ._util import attr_str, compute_dtype, op

_ACTIVATIONS = {"sigmoid": _krec.SIGMOID, "tanh": _krec.TANH, "relu": _krec.RELU}
# the spec's defaults: gates f (and g, h)
_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_CELLS = {"LSTM": _krec.LSTM, "GRU": _krec.GRU, "RNN": _krec.RNN}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _activations(node):
    """The activation codes per direction (f[, g, h]), or None when one is not implemented."""
    names = node.attrs.get("activations")
    per_direction = len(_DEFAULTS[node.op_type])
    if names is None:
        names = list(_DEFAULTS[node.op_type]) * _DIRECTIONS.get(attr_str(node, "direction", "forward"), 1)
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    codes = [_ACTIVATIONS.get(n.lower()) for n in names]
    if None in codes or len(codes) % per_direction:
        return None
    return [codes[i:i + per_direction] for i in range(0, len(codes), per_direction)]


def _supported(node):
    if attr_str(node, "direction", "forward") not in _DIRECTIONS:
        return False
    if node.attrs.get("activation_alpha") or node.attrs.get("activation_beta"):
        return False
    return _activations(node) is not None


def _projection(x2d, w, bias):
    """x2d (S*B, I) @ W of every direction + bias, (S*B, D*G*H): one GEMM on the kernel, the bias
    added as it stores (float32; W packed once when constant), numpy's otherwise."""
    w2d = w.reshape(-1, w.shape[-1])
    if x2d.dtype == np.float32 and x2d.size and w2d.size:
        packed = _blas.packed_recurrent_weight(w) if not w.flags.writeable else np.ascontiguousarray(w2d.T)
        return _kernel_matmul(x2d, packed, bias=bias)
    out = x2d @ w2d.T
    return out if bias is None else out + bias


def _recurrent(node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    kind = node.op_type
    gates = _GATES[kind]
    direction = attr_str(node, "direction", "forward")
    dirs = _DIRECTIONS[direction]
    hidden = r.shape[-1]
    layout = int(node.attrs.get("layout", 0))
    if x.ndim != 3 or w.ndim != 3 or r.ndim != 3:
        raise ValueError(f"{kind}: X, W and R must be 3-D, got shapes {x.shape}, {w.shape}, {r.shape}")
    if layout == 1:
        x = x.transpose(1, 0, 2)                    # (batch, seq, input) -> (seq, batch, input)
    seq, batch, inputs = x.shape
    hs = node.attrs.get("hidden_size")
    if (hs is not None and int(hs) != hidden) or w.shape != (dirs, gates * hidden, inputs) \
            or r.shape != (dirs, gates * hidden, hidden):
        raise ValueError(f"{kind}: W {w.shape} and R {r.shape} do not fit direction {direction!r}, "
                         f"input size {inputs} and hidden size {hs if hs is not None else hidden} "
                         f"(expected ({dirs}, {gates}*hidden, input) and ({dirs}, {gates}*hidden, hidden))")
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype, copy=False)
    rbh = np.zeros((dirs, 0), dtype)
    bias = None
    if b is not None:
        if b.shape != (dirs, 2 * gates * hidden):
            raise ValueError(f"{kind}: B must be ({dirs}, {2 * gates * hidden}), got {b.shape}")
        wb, rb = b[:, :gates * hidden].astype(dtype), b[:, gates * hidden:].astype(dtype)
        bias = wb + rb
        if kind == "GRU" and node.attrs.get("linear_before_reset", 0):
            bias[:, 2 * hidden:] = wb[:, 2 * hidden:]   # Rbh stays inside r * (Rh h + Rbh)
            rbh = np.ascontiguousarray(rb[:, 2 * hidden:])
        bias = bias.reshape(-1)
    if kind == "GRU" and rbh.shape[1] == 0:
        rbh = np.zeros((dirs, hidden), dtype)
    # (S, B, D, G*H): every direction's projections of a step side by side, as the GEMM wrote them
    xw = _projection(np.ascontiguousarray(x).reshape(seq * batch, inputs), w.astype(dtype, copy=False), bias)
    xw = xw.reshape(seq, batch, dirs, gates * hidden)
    if lens is None:
        lens = np.full(batch, seq, np.int32)
    else:
        lens = np.ascontiguousarray(lens, dtype=np.int32).reshape(-1)
        if lens.shape != (batch,) or (lens < 0).any() or (lens > seq).any():
            raise ValueError(f"{kind}: sequence_lens must hold {batch} lengths in 0..{seq}, got {lens.tolist()}")

    def state(v, name):
        if v is None:
            return np.zeros((dirs, batch, hidden), dtype)
        v = v.transpose(1, 0, 2) if layout == 1 else v
        if v.shape != (dirs, batch, hidden):
            raise ValueError(f"{kind}: {name} must be {(dirs, batch, hidden)} (layout {layout}), got {v.shape}")
        return np.array(v, dtype=dtype, order="C")

    h = state(h0, "initial_h")
    c = state(c0, "initial_c") if kind == "LSTM" else np.zeros((dirs, 0, 0), dtype)
    peep = np.zeros((dirs, 0), dtype)
    if p is not None:
        if p.shape != (dirs, 3 * hidden):
            raise ValueError(f"{kind}: P must be ({dirs}, {3 * hidden}), got {p.shape}")
        peep = np.ascontiguousarray(p, dtype=dtype)
    acts = _activations(node)
    if len(acts) != dirs:
        raise ValueError(f"{kind}: {len(acts) * len(acts[0])} activations for {dirs} direction(s)")
    if dirs == 2 and acts[0] != acts[1]:
        return _per_direction(node, kind, xw, r, peep, rbh, h, c, lens, acts, layout, direction, dtype)
    acts = acts[0] + [0] * (3 - len(acts[0]))
    y = np.zeros((dirs, seq, batch, hidden), dtype)
    clip = float(node.attrs.get("clip", 0.0) or 0.0)
    _krec.run(_CELLS[kind], xw, np.ascontiguousarray(r, dtype=dtype), peep, rbh, h, c, y, lens,
              direction == "reverse", clip, acts[0], acts[1], acts[2],
              bool(node.attrs.get("input_forget", 0)), bool(node.attrs.get("linear_before_reset", 0)),
              allowed_threads() if dirs == 2 else recurrent_step(2 * gates * hidden * hidden * batch))
    return _outputs(node, kind, y, h, c, layout, dtype)


def _per_direction(node, kind, xw, r, peep, rbh, h, c, lens, acts, layout, direction, dtype):
    """A bidirectional node whose directions have different activations: one call each."""
    y = np.zeros((2,) + xw.shape[:2] + (r.shape[-1],), dtype)
    clip = float(node.attrs.get("clip", 0.0) or 0.0)
    for d in range(2):
        a = acts[d] + [0] * (3 - len(acts[d]))
        hd = np.ascontiguousarray(h[d:d + 1])
        cd = np.ascontiguousarray(c[d:d + 1]) if kind == "LSTM" else c[:1]
        yd = np.ascontiguousarray(y[d:d + 1])
        _krec.run(_CELLS[kind], np.ascontiguousarray(xw[:, :, d:d + 1]), np.ascontiguousarray(r[d:d + 1], dtype=dtype),
                  np.ascontiguousarray(peep[d:d + 1]), np.ascontiguousarray(rbh[d:d + 1]), hd, cd, yd, lens,
                  d == 1, clip, a[0], a[1], a[2], bool(node.attrs.get("input_forget", 0)),
                  bool(node.attrs.get("linear_before_reset", 0)), 1)
        y[d], h[d] = yd[0], hd[0]
        if kind == "LSTM":
            c[d] = cd[0]
    return _outputs(node, kind, y, h, c, layout, dtype)


def _outputs(node, kind, y, h, c, layout, dtype):
    """(Y, Y_h[, Y_c]) in the node's layout: Y (S, D, B, H) or (B, S, D, H)."""
    y = y.transpose(2, 1, 0, 3) if layout == 1 else y.transpose(1, 0, 2, 3)
    h = h.transpose(1, 0, 2) if layout == 1 else h
    outs = [np.ascontiguousarray(y), np.ascontiguousarray(h)]
    if kind == "LSTM":
        outs.append(np.ascontiguousarray(c.transpose(1, 0, 2) if layout == 1 else c))
    return tuple(o.astype(dtype, copy=False) for o in outs[:node.n_outputs])


@op("LSTM", since=7, supports=_supported, gemm=True)
def lstm(node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    return _recurrent(node, x, w, r, b, lens, h0, c0, p)


@op("GRU", since=7, supports=_supported, gemm=True)
def gru(node, x, w, r, b=None, lens=None, h0=None):
    return _recurrent(node, x, w, r, b, lens, h0)


@op("RNN", since=7, supports=_supported, gemm=True)
def rnn(node, x, w, r, b=None, lens=None, h0=None):
    return _recurrent(node, x, w, r, b, lens, h0)
