"""Fuzz target: mutated models fed to normrt.InferenceSession and run, each in a worker process.

    seed models (tests/data, src/normrt/examples)
        ─► mutate: protobuf level (dims, dtypes, tensor data, attributes, node wiring, op types, opsets)
                   or byte level (flips, splices, truncation of the serialized model)
        ─► Worker (a subprocess reused across cases: RLIMIT_AS cap, no core files)
             InferenceSession(bytes) ─► run on random feeds ─► outcome
        ─► outcome: "ok" | "error" (a Python exception: allowed)
                    | "crash" (the worker died: a signal) | "hang" (no answer in time)
                    | "memory" (peak RSS far beyond what the model declares) | "bug" (SystemError,
                      or normrt's own "(a bug)" RuntimeError)

The last four are findings. Randomness comes from a `Chooser`: `RandomChooser`
(random.Random, for long runs: scripts/fuzz.py) or `HypothesisChooser` (draws
from hypothesis strategies, which then shrinks a failing case:
tests/test_fuzz.py). Crashers are kept under tests/data/fuzz/ and replayed by
tests/test_fuzz.py.
"""
import os
import pickle
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_DIRS = (ROOT / "tests" / "data", ROOT / "src" / "normrt" / "examples")
CRASHERS = ROOT / "tests" / "data" / "fuzz"

INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 65535, 2**31 - 1, -2**31, 2**32, 2**40,
                    2**62, 2**63 - 1, -2**63)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"))
ATTRIBUTE_NAMES = ("axis", "axes", "group", "kernel_shape", "pads", "strides", "dilations", "epsilon",
                   "num_groups", "perm", "to", "keepdims", "transA", "transB", "alpha", "beta", "size",
                   "mode", "auto_pad", "output_padding", "split", "starts", "ends", "value", "training_mode",
                   "stash_type", "hidden_size", "direction", "p", "activation", "residual", "fmod", "noop_with_empty_axes")
OP_TYPES = ("Add", "Mul", "Relu", "Conv", "MatMul", "Gemm", "Reshape", "Transpose", "Concat", "Slice", "Gather",
            "ReduceMean", "Softmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
            "BatchNormalization", "Expand", "Tile", "ConstantOfShape", "Range", "Pad", "Resize", "Split",
            "Squeeze", "Unsqueeze", "Cast", "Where", "MaxPool", "AveragePool", "LRN", "Einsum", "TopK",
            "CumSum", "Identity", "Shape", "If", "Loop", "Sqrt", "Pow", "Div", "Erf")
NORMRT_OPS = ("LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "BatchNorm", "Conv", "MatMul", "Attention",
              "LpNorm", "LRN", "AdaIN", "MeanVarianceNorm")


# ---- randomness ------------------------------------------------------------------------------
class RandomChooser:
    """Choices from random.Random (fast; for long runs)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def chance(self, p):
        return self.rng.random() < p

    def blob(self, n):
        return bytes(self.rng.getrandbits(8) for _ in range(n))


class HypothesisChooser:
    """Choices drawn from hypothesis strategies (`st.data()`), so a failing case shrinks."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def integer(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def chance(self, p):
        return self.data.draw(self.st.floats(0, 1)) < p

    def blob(self, n):
        return self.data.draw(self.st.binary(min_size=n, max_size=n))


# ---- seeds -----------------------------------------------------------------------------------
def seed_models(max_bytes=None):
    """[(name, serialized model)] of the fixtures and bundled examples, smallest first."""
    out = []
    for d in SEED_DIRS:
        for p in sorted(d.glob("*.onnx")):
            if max_bytes is None or p.stat().st_size <= max_bytes:
                out.append((p.name, p.read_bytes()))
    out.sort(key=lambda item: len(item[1]))
    return out


# ---- mutations -------------------------------------------------------------------------------
def _interesting_int(ch):
    return ch.choice(INTERESTING_INTS) if ch.chance(0.6) else ch.integer(-8, 64)


def _all_tensors(model):
    import onnx
    out = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out.append(a.t)
    return out


def _value_infos(model):
    g = model.graph
    return list(g.input) + list(g.output) + list(g.value_info)


def _value_names(model):
    g = model.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(o for o in n.output if o)
    return names


def _m_dims(model, ch):
    tensors = _all_tensors(model)
    if tensors:
        t = ch.choice(tensors)
        if len(t.dims) and ch.chance(0.7):
            t.dims[ch.integer(0, len(t.dims) - 1)] = _interesting_int(ch)
        elif ch.chance(0.5) and len(t.dims):
            del t.dims[ch.integer(0, len(t.dims) - 1)]
        else:
            t.dims.append(_interesting_int(ch))
        _refit_data(t, ch)
        return f"dims of tensor {t.name!r} -> {list(t.dims)}"
    return None


def _refit_data(t, ch):
    """Often give a re-shaped tensor data of its new size, so the model gets past the loader's checks
    and the odd shape reaches the passes and kernels."""
    import numpy as np
    if not ch.chance(0.6) or not t.HasField("raw_data") or any(d < 0 for d in t.dims):
        return
    n = int(np.prod([float(d) for d in t.dims]))
    try:
        itemsize = np.dtype(__import__("onnx").helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # noqa: BLE001 - odd types keep their data
        return
    if n * itemsize <= 1 << 20:
        if t.data_type == 7:        # int64: shapes and axes, small values
            t.raw_data = np.array([ch.integer(-2, 8) for _ in range(min(n, 64))] + [1] * max(n - 64, 0),
                                  np.int64).tobytes()
        else:
            t.raw_data = (np.arange(n) % 7).astype(np.uint8).repeat(itemsize).tobytes()


def _m_value_info(model, ch):
    vis = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    if not vis:
        return None
    v = ch.choice(vis)
    tt = v.type.tensor_type
    if ch.chance(0.3):
        tt.elem_type = ch.integer(0, 25)
        return f"elem_type of {v.name!r} -> {tt.elem_type}"
    dims = tt.shape.dim
    if len(dims) and ch.chance(0.7):
        d = dims[ch.integer(0, len(dims) - 1)]
        if ch.chance(0.3):
            d.dim_param = ch.choice(("N", "batch", "S", ""))
        else:
            d.dim_value = _interesting_int(ch)
    elif len(dims) and ch.chance(0.5):
        del dims[ch.integer(0, len(dims) - 1)]
    else:
        tt.shape.dim.add().dim_value = ch.integer(0, 8)
    return f"shape of {v.name!r}"


def _m_dtype(model, ch):
    tensors = _all_tensors(model)
    if not tensors:
        return None
    t = ch.choice(tensors)
    t.data_type = ch.integer(0, 25)
    return f"data_type of tensor {t.name!r} -> {t.data_type}"


def _m_data(model, ch):
    import numpy as np
    tensors = [t for t in _all_tensors(model) if t.HasField("raw_data")]
    if not tensors:
        return None
    t = ch.choice(tensors)
    raw = t.raw_data
    how = ch.integer(0, 3)
    if how == 0 and raw:
        t.raw_data = raw[:ch.integer(0, len(raw) - 1)]
    elif how == 1:
        t.raw_data = raw + ch.blob(ch.integer(1, 16))
    elif how == 2 and t.data_type == 7 and len(raw) % 8 == 0 and raw:      # int64: shapes, axes, indices
        vals = np.frombuffer(raw, np.int64).copy()
        vals[ch.integer(0, len(vals) - 1)] = _interesting_int(ch)
        t.raw_data = vals.tobytes()
    elif how == 3 and t.data_type == 1 and len(raw) % 4 == 0 and raw:      # float: weights, eps
        vals = np.frombuffer(raw, np.float32).copy()
        vals[ch.integer(0, len(vals) - 1)] = ch.choice(INTERESTING_FLOATS)
        t.raw_data = vals.tobytes()
    else:
        return None
    return f"data of tensor {t.name!r} ({how})"


def _m_attribute(model, ch):
    import onnx
    nodes = list(model.graph.node)
    if not nodes:
        return None
    node = ch.choice(nodes)
    A = onnx.AttributeProto
    if not len(node.attribute) or ch.chance(0.25):
        name = ch.choice(ATTRIBUTE_NAMES)
        kind = ch.integer(0, 3)
        value = [_interesting_int(ch), ch.choice(INTERESTING_FLOATS), [_interesting_int(ch) for _ in range(ch.integer(0, 6))],
                 ch.choice(("NOTSET", "SAME_UPPER", "VALID", "linear", "gelu", ""))][kind]
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                break
        node.attribute.append(onnx.helper.make_attribute(name, value, attr_type=A.INTS if kind == 2 else None))
        return f"attribute {name}={value!r} on {node.name!r}"
    a = node.attribute[ch.integer(0, len(node.attribute) - 1)]
    if ch.chance(0.1):
        node.attribute.remove(a)
        return f"removed attribute {a.name} of {node.name!r}"
    if a.type == A.INT:
        a.i = _interesting_int(ch)
    elif a.type == A.FLOAT:
        a.f = ch.choice(INTERESTING_FLOATS)
    elif a.type == A.INTS:
        vals = list(a.ints)
        if vals and ch.chance(0.6):
            vals[ch.integer(0, len(vals) - 1)] = _interesting_int(ch)
        elif vals and ch.chance(0.5):
            vals.pop(ch.integer(0, len(vals) - 1))
        else:
            vals.append(_interesting_int(ch))
        del a.ints[:]
        a.ints.extend(v if -2**63 <= v < 2**63 else 0 for v in vals)
    elif a.type == A.STRING:
        a.s = ch.choice((b"", b"gelu", b"SAME_LOWER", b"bidirectional", b"\xff\xfe", b"x" * 100))
    elif a.type == A.TENSOR:
        return _m_dims(model, ch)
    elif a.type == A.GRAPH:
        g = a.g
        if len(g.node):
            sub = g.node[ch.integer(0, len(g.node) - 1)]
            if len(sub.input):
                sub.input[ch.integer(0, len(sub.input) - 1)] = ch.choice(_value_names(model) + [""])
        return f"subgraph wiring of {node.name!r}"
    else:
        return None
    return f"attribute {a.name} of {node.name!r}"


def _m_wiring(model, ch):
    nodes = model.graph.node
    if not len(nodes):
        return None
    node = nodes[ch.integer(0, len(nodes) - 1)]
    names = _value_names(model)
    how = ch.integer(0, 6)
    if how == 6:
        nodes.add().CopyFrom(node)          # a second producer of the same outputs
    elif how == 0 and len(node.input):
        node.input[ch.integer(0, len(node.input) - 1)] = ch.choice(names + ["", "nowhere"])
    elif how == 1:
        node.input.append(ch.choice(names))
    elif how == 2 and len(node.input):
        del node.input[ch.integer(0, len(node.input) - 1)]
    elif how == 3 and len(node.output):
        node.output[ch.integer(0, len(node.output) - 1)] = ch.choice(names)     # duplicates, cycles
    elif how == 4 and len(nodes) > 1:
        del nodes[ch.integer(0, len(nodes) - 1)]
    elif how == 5 and len(node.input) > 1:
        i = ch.integer(0, len(node.input) - 2)
        node.input[i], node.input[i + 1] = node.input[i + 1], node.input[i]
    else:
        return None
    return f"wiring of {node.name!r} ({how})"


def _m_op(model, ch):
    nodes = model.graph.node
    if not len(nodes):
        return None
    node = nodes[ch.integer(0, len(nodes) - 1)]
    if ch.chance(0.25):
        node.domain = "normrt"
        node.op_type = ch.choice(NORMRT_OPS)
        if not any(o.domain == "normrt" for o in model.opset_import):
            model.opset_import.add(domain="normrt", version=1)
    else:
        node.op_type = ch.choice(OP_TYPES)
    return f"op of {node.name!r} -> {node.domain}::{node.op_type}"


def _m_opset(model, ch):
    if not len(model.opset_import):
        return None
    o = model.opset_import[ch.integer(0, len(model.opset_import) - 1)]
    o.version = ch.choice((1, 6, 7, 9, 11, 13, 17, 18, 21, 23, 24, 10**6, -1))
    if ch.chance(0.2):
        model.ir_version = ch.choice((1, 3, 4, 7, 10, 11, 99))
    return f"opset {o.domain!r} -> {o.version}"


def _m_outputs(model, ch):
    g = model.graph
    names = _value_names(model)
    if ch.chance(0.5) and len(g.output) > 1:
        del g.output[ch.integer(0, len(g.output) - 1)]
    else:
        vi = g.output.add()
        vi.name = ch.choice(names)
    return "graph outputs"


PROTO_MUTATIONS = (_m_dims, _m_value_info, _m_dtype, _m_data, _m_attribute, _m_wiring, _m_op, _m_opset,
                   _m_outputs)


def mutate_proto(data, ch, n_mutations=None):
    """(mutated serialized model, what was done) for a serialized seed model."""
    import onnx
    model = onnx.ModelProto()
    model.ParseFromString(data)
    done = []
    for _ in range(n_mutations or ch.integer(1, 4)):
        what = ch.choice(PROTO_MUTATIONS)(model, ch)
        if what:
            done.append(what)
    return model.SerializeToString(), done


def mutate_bytes(data, ch):
    """(mutated bytes, what was done): bit flips, overwrites, splices, truncation."""
    buf = bytearray(data)
    done = []
    for _ in range(ch.integer(1, 8)):
        if not buf:
            break
        how = ch.integer(0, 4)
        pos = ch.integer(0, len(buf) - 1)
        if how == 0:
            buf[pos] ^= 1 << ch.integer(0, 7)
        elif how == 1:
            buf[pos] = ch.choice((0, 0xFF, 0x7F, 0x80, 0x01, 0x08, 0x12, 0x1A))
        elif how == 2:
            n = ch.integer(1, 64)
            src = ch.integer(0, len(buf) - 1)
            buf[pos:pos] = buf[src:src + n]
        elif how == 3:
            del buf[pos:pos + ch.integer(1, 32)]
        else:
            del buf[pos:]
        done.append(f"bytes {('flip', 'set', 'splice', 'delete', 'truncate')[how]} @{pos}")
    return bytes(buf), done


@dataclass
class Case:
    seed: str
    data: bytes
    mutations: list
    threads: int = 1


def make_case(seeds, ch, byte_level_share=0.25):
    name, data = ch.choice(seeds)
    if ch.chance(byte_level_share):
        mutated, done = mutate_bytes(data, ch)
    else:
        mutated, done = mutate_proto(data, ch)
    return Case(name, mutated, done, threads=ch.integer(1, 2))


# ---- the worker ------------------------------------------------------------------------------
MAX_FEED_ELEMENTS = 1 << 20


def _feeds(sess, rng):
    """Random inputs for a session's declared inputs; None when one cannot be built (then: load only)."""
    import numpy as np
    feeds = {}
    for arg in sess.get_inputs():
        if not arg.type.startswith("tensor("):
            return None
        want = _dtype_of(arg.type)
        if want is None:
            return None
        shape = [d if isinstance(d, int) and d >= 0 else rng.integers(1, 4) for d in arg.shape]
        if int(np.prod(shape, dtype=np.float64)) > MAX_FEED_ELEMENTS:
            return None
        if want.kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(want)
        elif want.kind in "iu":
            feeds[arg.name] = rng.integers(0, 3, shape).astype(want)
        elif want.kind == "b":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            return None
    return feeds


def _dtype_of(type_string):
    import numpy as np
    table = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64,
             "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16,
             "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_}
    inner = type_string[len("tensor("):-1]
    return np.dtype(table[inner]) if inner in table else None


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) // 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_in_process(case_data, threads, seed=0):
    """The outcome of one case in this process: ("ok" | "error" | "bug", detail)."""
    import warnings
    import numpy as np
    import normrt
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            sess = normrt.InferenceSession(case_data, num_threads=threads)
            feeds = _feeds(sess, np.random.default_rng(seed))
            if feeds is not None:
                sess.run(None, feeds)
            return "ok", "ran" if feeds is not None else "loaded"
        except SystemError as e:      # a C extension misused the C API
            return "bug", f"SystemError: {e}"
        except RuntimeError as e:
            if "(a bug)" in str(e):
                return "bug", f"RuntimeError: {e}"
            return "error", f"RuntimeError: {str(e)[:200]}"
        except RecursionError as e:
            return "error", f"RecursionError: {str(e)[:200]}"
        except Exception as e:  # noqa: BLE001 - a Python exception is an allowed outcome
            return "error", f"{type(e).__name__}: {str(e)[:200]}"


def _selftest(what):
    """Misbehaviour on request, so the tests can see the harness catch it."""
    if what == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "hang":
        time.sleep(3600)
    if what == "grow":
        import numpy as np
        block = np.ones(1 << 26)                  # 512 MiB touched, then freed: a peak, not a leak
        return "ok", f"grew {block.nbytes >> 20} MB"
    if what == "alloc":
        import numpy as np
        try:
            np.ones(1 << 40)
        except MemoryError as e:
            return "error", f"MemoryError: {e}"
    return "ok", "selftest"


def worker_main():
    """Loop: read a case from stdin, run it, write the outcome (length-prefixed pickles)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr        # stray prints must not corrupt the protocol
    import normrt  # noqa: F401 - import once, before the first case
    stdout.write(b"R")
    stdout.flush()
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack("<I", head)
        msg = pickle.loads(stdin.read(n))
        before = _status("VmRSS")
        _reset_peak()
        if msg.get("selftest"):
            kind, detail = _selftest(msg["selftest"])
        else:
            kind, detail = run_in_process(msg["data"], msg["threads"], msg.get("seed", 0))
        growth = max(0, _status("VmHWM") - before)
        out = pickle.dumps({"kind": kind, "detail": detail, "rss_growth_mb": growth})
        stdout.write(struct.pack("<I", len(out)) + out)
        stdout.flush()


def _limit_worker(address_space_bytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    return limit


@dataclass
class Outcome:
    kind: str                 # ok | error | crash | hang | memory | bug
    detail: str = ""
    rss_growth_mb: int = 0
    seconds: float = 0.0

    @property
    def is_finding(self):
        return self.kind in ("crash", "hang", "memory", "bug")


class Worker:
    """A subprocess running cases one after another; restarted after a crash or hang.

    `address_space_bytes` caps its virtual memory (RLIMIT_AS): an allocation
    past it is a MemoryError inside the case, not the machine's OOM killer.
    A case whose peak RSS grows more than `memory_factor` x (model bytes) +
    `memory_slack_mb` is a "memory" finding: far beyond what the model declares.
    """

    def __init__(self, timeout=20.0, address_space_bytes=3 << 30, memory_factor=64, memory_slack_mb=768,
                 threads_env=None):
        self.timeout = timeout
        self.address_space_bytes = address_space_bytes
        self.memory_factor = memory_factor
        self.memory_slack_mb = memory_slack_mb
        self.proc = None
        self.cases_run = 0

    def start(self):
        env = dict(os.environ)
        from reliability_models import normrt_import_root     # the same normrt build as this process
        env["PYTHONPATH"] = os.pathsep.join([normrt_import_root(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "2")
        import tempfile
        self.stderr = tempfile.TemporaryFile()     # faulthandler's traceback of a crash lands here
        self.proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c",
                                      f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
                                      "import fuzz_target; fuzz_target.worker_main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, preexec_fn=_limit_worker(self.address_space_bytes))
        ready = self._read(60.0, 1)
        if ready != b"R":
            self.stop()
            raise RuntimeError("fuzz worker failed to start")
        self.cases_run = 0

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None
        stderr = getattr(self, "stderr", None)
        if stderr is not None:
            stderr.close()
            self.stderr = None

    def _read(self, timeout, n):
        buf = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return b""      # EOF: the worker died
            buf += chunk
        return buf

    def run(self, case, seed=0, timeout=None, selftest=None):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        msg = pickle.dumps({"data": case.data, "threads": case.threads, "seed": seed, "selftest": selftest})
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(struct.pack("<I", len(msg)) + msg)
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(t0)
        head = self._read(timeout or self.timeout, 4)
        if head is None:
            self.stop()
            return Outcome("hang", f"no answer in {timeout or self.timeout:.0f} s", seconds=time.monotonic() - t0)
        if len(head) < 4:
            return self._died(t0)
        (n,) = struct.unpack("<I", head)
        body = self._read(60.0, n)
        if not body or len(body) < n:
            return self._died(t0)
        res = pickle.loads(body)
        self.cases_run += 1
        out = Outcome(res["kind"], res["detail"], res["rss_growth_mb"], time.monotonic() - t0)
        budget = self.memory_factor * len(case.data) / 2**20 + self.memory_slack_mb
        if out.kind == "ok" and out.rss_growth_mb > budget:
            out = Outcome("memory", f"peak RSS grew {out.rss_growth_mb} MB for a {len(case.data)}-byte model "
                                    f"(> {budget:.0f} MB)", out.rss_growth_mb, out.seconds)
        if "MemoryError" in out.detail:
            self.stop()        # start the next case from a clean heap
        return out

    def _died(self, t0):
        self.proc.wait()
        code = self.proc.returncode
        frame = self._crash_frame()
        self.stop()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return Outcome("crash", f"worker died: {how} at {frame}", seconds=time.monotonic() - t0)

    def _crash_frame(self):
        """'<file>:<line> in <function>' of the innermost Python frame faulthandler printed."""
        try:
            self.stderr.seek(0)
            lines = self.stderr.read().decode(errors="replace").splitlines()
        except (OSError, ValueError, AttributeError):
            return "?"
        return _first_frame(lines)

    def confirm(self, case, outcome, seed=0):
        """Re-run a hang (with 3x the time, in a fresh worker) so a slow, loaded machine is no finding."""
        if outcome.kind != "hang":
            return outcome
        self.stop()
        again = self.run(case, seed, timeout=3 * self.timeout)
        return again if again.kind != "hang" else Outcome("hang", f"no answer in {3 * self.timeout:.0f} s "
                                                                  f"(twice)", seconds=again.seconds)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _first_frame(lines):
    """The innermost frame of the last faulthandler traceback (it lists the innermost first)."""
    start = max((i for i, ln in enumerate(lines) if "most recent call first" in ln), default=None)
    if start is None:
        return "?"
    for ln in lines[start + 1:]:
        ln = ln.strip()
        if ln.startswith("File "):
            path, _, rest = ln[5:].partition(", line ")
            return f"{Path(path.strip(chr(34))).name}:{rest}"
    return "?"


def save_crasher(case, outcome, directory=CRASHERS):
    """Keep a finding's model as tests/data/fuzz/<kind>-<hash>.onnx (with a .txt saying what it was)."""
    import hashlib
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(case.data).hexdigest()[:12]
    path = directory / f"{outcome.kind}-{digest}.onnx"
    path.write_bytes(case.data)
    path.with_suffix(".txt").write_text(f"seed: {case.seed}\nthreads: {case.threads}\noutcome: {outcome.kind}: "
                                        f"{outcome.detail}\nmutations:\n" + "".join(f"  {m}\n" for m in case.mutations))
    return path


def fuzz(seconds, seed=0, max_seed_bytes=None, timeout=20.0, on_case=None, byte_level_share=0.25):
    """Run random cases for `seconds`; (counts by outcome kind, [(case, outcome) findings], error types)."""
    seeds = seed_models(max_seed_bytes)
    ch = RandomChooser(seed)
    counts, findings, errors = {}, [], {}
    end = time.monotonic() + seconds
    i = 0
    with Worker(timeout=timeout) as worker:
        while time.monotonic() < end:
            case = make_case(seeds, ch, byte_level_share)
            out = worker.confirm(case, worker.run(case, seed=i), seed=i)
            counts[out.kind] = counts.get(out.kind, 0) + 1
            if out.kind == "error":
                etype = out.detail.split(":", 1)[0]
                errors[etype] = errors.get(etype, 0) + 1
            if out.is_finding:
                findings.append((case, out))
            if on_case is not None:
                on_case(i, case, out)
            i += 1
    return counts, findings, errors


if __name__ == "__main__":
    worker_main()
