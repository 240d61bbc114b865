"""Shared helpers of the ONNX tests: half-precision op DAGs with their float64 numpy reference
(test_half_regions.py), and onnxruntime's CPU run of a model."""
import ml_dtypes
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

HALF_ELEM = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}
LN_EPS = 1e-5


def _round(a, dtype):
    """float64 `a` rounded to `dtype` (nearest even) and back: what a half value holds."""
    return np.asarray(a, np.float64).astype(dtype).astype(np.float64)


class HalfDag:
    """A DAG of half-precision ops on one (1, C, S, S) input, and what it means in float64.

    `steps` is a list of (op, k) with op one of conv, matmul, add, mul, sigmoid, softmax, norm
    (LayerNormalization), transpose, reshape, cast (the model's own Cast(FLOAT) -> Mul(3) ->
    Cast(half)) and k an int choosing the second operand of
    add/mul (an earlier value, or a per-channel constant when k % 3 == 0). The ONNX model computes
    in `dtype`; `reference` evaluates the same DAG in float64 numpy, rounding to `dtype` only where
    the model itself asks for it (its Cast to half) and at the outputs -- what a run that keeps
    values in float32 between ops approximates, up to float32 arithmetic.
    """

    def __init__(self, steps, dtype, channels=4, size=6, seed=0, extra_output=False):
        self.dtype = np.dtype(dtype)
        self.elem = HALF_ELEM[self.dtype]
        self.C, self.S = channels, size
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((1, channels, size, size)).astype(self.dtype)
        self.inits = {}
        self.nodes = []
        self.refs = []                     # float64 reference value per graph value
        self.names = []
        self.cast_nodes = []               # names of the model's own Cast nodes
        self._add_value("x", self.x.astype(np.float64))
        for i, (op, k) in enumerate(steps):
            getattr(self, "_" + op)(i, k, rng)
        outputs = [self.names[-1]]
        if extra_output and len(self.names) > 2:
            outputs.insert(0, self.names[len(self.names) // 2])   # a value also read inside
        self.outputs = list(dict.fromkeys(outputs))
        self.expected = [_round(self.refs[self.names.index(o)], self.dtype) for o in self.outputs]

    # -- building ---------------------------------------------------------------
    def _add_value(self, name, ref):
        self.names.append(name)
        self.refs.append(ref)

    def _const(self, name, a):
        a = np.asarray(a, np.float64).astype(self.dtype)
        self.inits[name] = a
        return name, a.astype(np.float64)

    def _last(self):
        return self.names[-1], self.refs[-1]

    def _other(self, k):
        j = k % len(self.names)
        return self.names[j], self.refs[j]

    def _conv(self, i, k, rng):
        a, r = self._last()
        w, wr = self._const(f"w{i}", rng.standard_normal((self.C, self.C, 3, 3)) / np.sqrt(9 * self.C))
        b, br = self._const(f"b{i}", rng.standard_normal(self.C) * 0.1)
        self.nodes.append(helper.make_node("Conv", [a, w, b], [f"v{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        win = sliding_window_view(np.pad(r, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
        self._add_value(f"v{i}", np.einsum("nchwij,mcij->nmhw", win, wr) + br[None, :, None, None])

    def _matmul(self, i, k, rng):
        a, r = self._last()
        w, wr = self._const(f"w{i}", rng.standard_normal((self.S, self.S)) / np.sqrt(self.S))
        self.nodes.append(helper.make_node("MatMul", [a, w], [f"v{i}"], name=f"matmul{i}"))
        self._add_value(f"v{i}", r @ wr)

    def _binary(self, op, i, k, rng, fn):
        a, r = self._last()
        if k % 3 == 0:
            b, br = self._const(f"c{i}", rng.standard_normal((self.C, 1, 1)))
        else:
            b, br = self._other(k)
        self.nodes.append(helper.make_node(op, [a, b], [f"v{i}"], name=f"{op.lower()}{i}"))
        self._add_value(f"v{i}", fn(r, br))

    def _add(self, i, k, rng):
        self._binary("Add", i, k, rng, np.add)

    def _mul(self, i, k, rng):
        self._binary("Mul", i, k, rng, np.multiply)

    def _sigmoid(self, i, k, rng):
        a, r = self._last()
        self.nodes.append(helper.make_node("Sigmoid", [a], [f"v{i}"], name=f"sigmoid{i}"))
        self._add_value(f"v{i}", 1 / (1 + np.exp(-r)))

    def _softmax(self, i, k, rng):
        a, r = self._last()
        self.nodes.append(helper.make_node("Softmax", [a], [f"v{i}"], name=f"softmax{i}", axis=-1))
        e = np.exp(r - r.max(axis=-1, keepdims=True))
        self._add_value(f"v{i}", e / e.sum(axis=-1, keepdims=True))

    def _norm(self, i, k, rng):
        a, r = self._last()
        s, sr = self._const(f"s{i}", 1 + 0.2 * rng.standard_normal(self.S))
        b, br = self._const(f"b{i}", 0.1 * rng.standard_normal(self.S))
        self.nodes.append(helper.make_node("LayerNormalization", [a, s, b], [f"v{i}"], name=f"norm{i}",
                                           axis=-1, epsilon=LN_EPS))
        mean = r.mean(axis=-1, keepdims=True)
        var = ((r - mean) ** 2).mean(axis=-1, keepdims=True)
        self._add_value(f"v{i}", (r - mean) / np.sqrt(var + LN_EPS) * sr + br)

    def _transpose(self, i, k, rng):
        a, r = self._last()
        self.nodes.append(helper.make_node("Transpose", [a], [f"v{i}"], name=f"transpose{i}", perm=[0, 1, 3, 2]))
        self._add_value(f"v{i}", r.transpose(0, 1, 3, 2))

    def _reshape(self, i, k, rng):
        a, r = self._last()
        flat = f"shape{i}_flat"
        back = f"shape{i}_back"
        self.inits[flat] = np.array([1, self.C * self.S, self.S], np.int64)
        self.inits[back] = np.array([1, self.C, self.S, self.S], np.int64)
        self.nodes.append(helper.make_node("Reshape", [a, flat], [f"v{i}_flat"], name=f"reshape{i}"))
        self.nodes.append(helper.make_node("Reshape", [f"v{i}_flat", back], [f"v{i}"], name=f"reshape{i}_back"))
        self._add_value(f"v{i}", r.copy())

    def _cast(self, i, k, rng):
        a, r = self._last()
        three = f"three{i}"
        self.inits[three] = np.array(3.0, np.float32)
        self.nodes += [helper.make_node("Cast", [a], [f"v{i}_up"], name=f"cast{i}_up", to=TensorProto.FLOAT),
                       helper.make_node("Mul", [f"v{i}_up", three], [f"v{i}_f"], name=f"mul{i}_f32"),
                       helper.make_node("Cast", [f"v{i}_f"], [f"v{i}"], name=f"cast{i}_down", to=self.elem)]
        self.cast_nodes += [f"cast{i}_up", f"cast{i}_down"]
        # the model rounds its value to half at its Cast up's input (a half value) and at the Cast down
        self._add_value(f"v{i}", _round(_round(r, self.dtype) * 3, self.dtype))

    # -- the model ------------------------------------------------------------------
    def model(self, opset=18):
        graph = helper.make_graph(
            self.nodes, "half_dag", [helper.make_tensor_value_info("x", self.elem, list(self.x.shape))],
            [helper.make_tensor_value_info(o, self.elem, list(self.x.shape)) for o in self.outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    def feeds(self):
        return {"x": self.x}

    def uses_model_casts(self):
        return bool(self.cast_nodes)


@pytest.fixture(scope="session")
def half_dag():
    """HalfDag: build a half-precision op DAG and its float64 reference."""
    return HalfDag


@pytest.fixture(scope="session")
def ort_cpu_run():
    """run(model bytes, feeds) -> onnxruntime's CPU outputs, on one thread."""
    ort = pytest.importorskip("onnxruntime")

    def run(model_bytes, feeds):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    return run
