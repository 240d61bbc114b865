"""Registry of the executor's own (numpy) op implementations.

An implementation is registered for an (op_type, domain) with the range of
opset versions whose semantics it implements, and an optional `supports`
check that refuses a node form it does not handle (the executor then falls
back to onnx.reference for that node):

    @register("Relu", since=6)
    def relu(node, x):
        return np.maximum(x, 0, dtype=x.dtype)

`node` is an `OpNode` (attributes already decoded to Python values).
Inputs arrive positionally as numpy arrays (an omitted optional input is
None); the function returns one array or a tuple/list of arrays, one per
node output.

An implementation registered with `inplace=True` also takes a keyword
`dead`: the positions of the inputs nothing reads after this node (the
executor knows from the plan), whose memory it may write its result into
(`np.maximum(x, 0, out=x)`). `dead` is only given when non-empty.

A float16/bfloat16 input reaches an implementation only if it is registered
with `half_native=True` (it moves or selects elements whatever their type, or
converts explicitly, as Cast does); every other op gets its half inputs widened
to float32 and its float32 results rounded back (`_half.run_in_float32`).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OpNode:
    name: str
    op_type: str
    domain: str
    version: int           # the opset version in force for this node's domain
    attrs: dict = field(default_factory=dict)
    n_outputs: int = 1
    present_inputs: tuple = ()   # per input position: whether the node gives it (not omitted)


@dataclass(frozen=True)
class OpImpl:
    fn: object
    since: int
    until: int              # inclusive upper bound of opset versions handled
    supports: object = None  # node -> bool; None means "every node"
    inplace: bool = False    # fn takes `dead=` (input positions it may overwrite)
    gemm: bool = False       # runs GEMMs (the executor loads the GEMM library at load, not mid-run)
    half_native: bool = False  # takes float16/bfloat16 arrays as they are (else: widened to float32)


_REGISTRY = {}


def register(op_type, *, domain="", since=1, until=10_000, supports=None, inplace=False, gemm=False,
             half_native=False):
    def deco(fn):
        _REGISTRY.setdefault((domain, op_type), []).append(
            OpImpl(fn, since, until, supports, inplace, gemm, half_native))
        return fn
    return deco


def lookup(node):
    """The implementation for an OpNode, or None (the caller falls back)."""
    for impl in _REGISTRY.get((node.domain, node.op_type), ()):
        if impl.since <= node.version <= impl.until and (impl.supports is None or impl.supports(node)):
            return impl
    return None


def registered_ops():
    return sorted(_REGISTRY)
