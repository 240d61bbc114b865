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
from ..._kernels.gemm import workspace_size as _workspace_size
from ..._kernels.prepared_gemm import PreparedGemm as _PreparedGemm
from ..._thread_policy import allowed_threads, product, recurrent_step
from ...api.gemm import PackedMatmulWeight
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


_NO_PACK = np.zeros((0, 0), np.float32)


def _packed_r(r):
    """float32 R in the packed form of the kernel's outer products (_krec.pack_r; once per
    read-only R: a constant), or an empty array: float64 keeps the dot-product form."""
    if r.dtype != np.float32 or r.size == 0:
        return _NO_PACK
    return _blas.packed_recurrent_r(r)


class Recurrent:
    """One LSTM/GRU/RNN node's weights, checked and laid out for the kernel: W packed for the input
    projection (once per read-only W), the biases that add to it folded, R packed (_packed_r),
    the activations, clip and flags decoded. Built per call by the generic op, once by a
    specialized plan's prepared step (fast_steps), which then calls it each run: the same calls
    on the same operands, so the same bits."""

    def __init__(self, node, w, r, b, p, dtype):
        kind = self.kind = node.op_type
        gates = _GATES[kind]
        direction = self.direction = attr_str(node, "direction", "forward")
        dirs = self.dirs = _DIRECTIONS[direction]
        hidden = self.hidden = r.shape[-1]
        self.node, self.layout = node, int(node.attrs.get("layout", 0))
        if w.ndim != 3 or r.ndim != 3:
            raise ValueError(f"{kind}: W and R must be 3-D, got shapes {w.shape}, {r.shape}")
        hs = node.attrs.get("hidden_size")
        if (hs is not None and int(hs) != hidden) or w.shape[:2] != (dirs, gates * hidden) \
                or r.shape != (dirs, gates * hidden, hidden):
            raise ValueError(f"{kind}: W {w.shape} and R {r.shape} do not fit direction {direction!r} "
                             f"and hidden size {hs if hs is not None else hidden} "
                             f"(expected ({dirs}, {gates}*hidden, input) and ({dirs}, {gates}*hidden, hidden))")
        self.dtype = dtype = compute_dtype(dtype)
        self.inputs = w.shape[2]
        self.rbh = np.zeros((dirs, 0), dtype)
        self.bias = None
        if b is not None:
            if b.shape != (dirs, 2 * gates * hidden):
                raise ValueError(f"{kind}: B must be ({dirs}, {2 * gates * hidden}), got {b.shape}")
            wb, rb = b[:, :gates * hidden].astype(dtype), b[:, gates * hidden:].astype(dtype)
            bias = wb + rb
            if kind == "GRU" and node.attrs.get("linear_before_reset", 0):
                bias[:, 2 * hidden:] = wb[:, 2 * hidden:]   # Rbh stays inside r * (Rh h + Rbh)
                self.rbh = np.ascontiguousarray(rb[:, 2 * hidden:])
            self.bias = bias.reshape(-1)
        if kind == "GRU" and self.rbh.shape[1] == 0:
            self.rbh = np.zeros((dirs, hidden), dtype)
        self.w = w.astype(dtype, copy=False)
        self.packed_w = None
        if dtype == np.float32 and w.size:
            self.packed_w = _blas.packed_recurrent_weight(self.w) if not self.w.flags.writeable \
                else np.ascontiguousarray(self.w.reshape(-1, self.inputs).T)
        self.r = np.ascontiguousarray(r, dtype=dtype)
        self.peep = np.zeros((dirs, 0), dtype)
        if p is not None:
            if p.shape != (dirs, 3 * hidden):
                raise ValueError(f"{kind}: P must be ({dirs}, {3 * hidden}), got {p.shape}")
            self.peep = np.ascontiguousarray(p, dtype=dtype)
        acts = _activations(node)
        if len(acts) != dirs:
            raise ValueError(f"{kind}: {len(acts) * len(acts[0])} activations for {dirs} direction(s)")
        self.acts = [a + [0] * (3 - len(a)) for a in acts]
        self.clip = float(node.attrs.get("clip", 0.0) or 0.0)
        self.input_forget = bool(node.attrs.get("input_forget", 0))
        self.lbr = bool(node.attrs.get("linear_before_reset", 0))
        self.rp = _packed_r(self.r)
        # directions with their own activations run one call each (R packed per direction: a row
        # of the whole R's packed form)
        self.parts = None if dirs == 1 or self.acts[0] == self.acts[1] else [
            (self.r[d:d + 1], self.rp[d:d + 1] if self.rp.size else self.rp, self.peep[d:d + 1], self.rbh[d:d + 1])
            for d in range(2)]
        self.projection = None

    def prepare(self, x_shape, n_threads):
        """Bind the input projection's GEMM for X of this shape (a specialized plan's prepared step):
        pyx/prepared_gemm's call, the same product as the API's matmul without its per-call checks."""
        seq, batch, inputs = x_shape if self.layout == 0 else (x_shape[1], x_shape[0], x_shape[2])
        m, n = seq * batch, self.dirs * self.r.shape[1]
        if not isinstance(self.packed_w, PackedMatmulWeight) or m == 0 or inputs != self.inputs:
            return self
        nt = min(n_threads, product(m, inputs, n))
        gemm = _PreparedGemm(self.packed_w.data, m, n, inputs, self.bias, 0, nt)
        work = np.empty(_workspace_size(nt), np.float32)
        self.projection = (m, n, gemm, work)
        return self

    def __call__(self, x, lens=None, h0=None, c0=None):
        kind, dirs, hidden, layout, dtype = self.kind, self.dirs, self.hidden, self.layout, self.dtype
        if x.ndim != 3:
            raise ValueError(f"{kind}: X must be 3-D, got shape {x.shape}")
        if layout == 1:
            x = x.transpose(1, 0, 2)                    # (batch, seq, input) -> (seq, batch, input)
        seq, batch, inputs = x.shape
        if inputs != self.inputs:
            raise ValueError(f"{kind}: W {self.w.shape} does not fit input size {inputs}")
        x2d = np.ascontiguousarray(x.astype(dtype, copy=False)).reshape(seq * batch, inputs)
        # (S, B, D, G*H): every direction's projections of a step side by side, as the GEMM wrote them
        if self.projection is not None and self.projection[0] == seq * batch:
            m, n, gemm, work = self.projection
            xw = np.empty((m, n), np.float32)
            gemm(x2d, xw, work)
        elif self.packed_w is not None and x2d.size:
            xw = _kernel_matmul(x2d, self.packed_w, bias=self.bias)
        else:
            xw = x2d @ self.w.reshape(-1, inputs).T
            xw = xw if self.bias is None else xw + self.bias
        xw = xw.reshape(seq, batch, dirs, -1)
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
        y = np.zeros((dirs, seq, batch, hidden), dtype)
        if self.parts is None:
            a = self.acts[0]
            _krec.run(_CELLS[kind], xw, self.r, self.rp, self.peep, self.rbh, h, c, y, lens,
                      self.direction == "reverse", self.clip, a[0], a[1], a[2], self.input_forget, self.lbr,
                      allowed_threads() if dirs == 2 else recurrent_step(2 * self.r.shape[1] * hidden * batch))
        else:
            self._per_direction(xw, h, c, y, lens)
        return _outputs(self.node, kind, y, h, c, layout, dtype)

    def _per_direction(self, xw, h, c, y, lens):
        """A bidirectional node whose directions have different activations: one call each."""
        for d, (rd, rpd, pd, bd) in enumerate(self.parts):
            a = self.acts[d]
            hd = np.ascontiguousarray(h[d:d + 1])
            cd = np.ascontiguousarray(c[d:d + 1]) if self.kind == "LSTM" else c[:1]
            yd = np.ascontiguousarray(y[d:d + 1])
            _krec.run(_CELLS[self.kind], np.ascontiguousarray(xw[:, :, d:d + 1]), rd, rpd, pd, bd, hd, cd, yd,
                      lens, d == 1, self.clip, a[0], a[1], a[2], self.input_forget, self.lbr, 1)
            y[d], h[d] = yd[0], hd[0]
            if self.kind == "LSTM":
                c[d] = cd[0]


def _recurrent(node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    if x.ndim != 3 or w.ndim != 3 or r.ndim != 3:
        raise ValueError(f"{node.op_type}: X, W and R must be 3-D, got shapes {x.shape}, {w.shape}, {r.shape}")
    return Recurrent(node, w, r, b, p, x.dtype)(x, lens, h0, c0)


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
