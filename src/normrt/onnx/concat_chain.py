"""Concat chains along channels written into one growing buffer (DenseNet's blocks).

A dense block concatenates every new layer's output onto the block tensor:

    x0 ──► Concat ──► x1 ──► Concat ──► x2 ──► … ──► Concat ──► xL
             ▲                  ▲                       ▲
             y1                 y2                      yL       (32 channels each)

np.concatenate copies x(i-1) again at every step: O(L²) bytes for L layers.
Here a chain's first Concat allocates a buffer with room for the whole chain
(its own channels plus, per Concat after it, as many as it added) and returns
the view buffer[:, :C1]; a later Concat whose first input is that view
copies only its other inputs into the next channels and returns the longer
prefix. Batch 1 only: a channel prefix of an NCHW buffer is then a
contiguous array, which every consumer takes as is.

Safety: of each buffer, only the view handed out last (its tail, which ends
at the last channel written) may be extended, and only once: a Concat whose
first input is that very array takes the tail, so no existing array views
the channels it writes; a second Concat extending the same x (a branch), or
any other array over the buffer, gets a fresh buffer. The plan already
treats a Concat's output as aliasing its inputs (executor.aliasing), so no
in-place op overwrites a block tensor while a longer view of its buffer is
still read. Anything else (another axis, batch > 1, mixed dtypes or sizes,
too little room) runs the plain Concat.
"""
import weakref

import numpy as np

from ._graph import canonical_domain


def concat_chains(nodes):
    """{node index: how many Concats follow it down its chain (the longest, if it
    branches)} for each Concat in a chain: its output is another Concat's first
    input, or its first input is a Concat's output."""
    first_input_of = {}
    concat_outputs = set()
    for i, node in enumerate(nodes):
        if _is_concat(node):
            concat_outputs.update(node.output)
            if node.input and node.input[0]:
                first_input_of.setdefault(node.input[0], []).append(i)
    after = {}

    def follow(i):
        if i not in after:
            nexts = [j for o in nodes[i].output for j in first_input_of.get(o, ())]
            after[i] = max((1 + follow(j) for j in nexts), default=0)
        return after[i]

    for i in reversed(range(len(nodes))):      # consumers first: no deep recursion
        if _is_concat(nodes[i]):
            follow(i)
    return {i: n for i, n in after.items() if n or (nodes[i].input and nodes[i].input[0] in concat_outputs)}


def _is_concat(node):
    return node.op_type == "Concat" and not canonical_domain(node.domain)


class _Tails:
    """The growable views: for each buffer this module allocated, the one array that
    ends at its claim (weakly held: the entry goes when the view does)."""

    def __init__(self):
        self.tail = {}               # id(view) -> (weakref to the view, its buffer)

    def register(self, view, buf):
        key = id(view)
        self.tail[key] = (weakref.ref(view, lambda _, key=key: self.tail.pop(key, None)), buf)

    def take(self, x, total):
        """x's buffer when x is a tail with room up to `total` channels, else None.
        Either way x stops being a tail (dict.pop is atomic: two callers never both get it)."""
        entry = self.tail.pop(id(x), None)
        if entry is None or entry[0]() is not x or entry[1].shape[1] < total:
            return None
        return entry[1]


_tails = _Tails()


class GrowingConcat:
    """A bound Concat node (executor NumpyNode) that grows channel buffers, for `after`
    more Concats down its chain; anything it does not handle runs `inner`."""

    def __init__(self, inner, after):
        self.inner = inner
        self.after = after
        self.axis = inner.opnode.attrs.get("axis", 1)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, args, values):
        xs = [a for a in args if a is not None]
        if not self._fits(xs):
            return self.inner(args, values)
        first = xs[0]
        start = first.shape[1]
        total = start + sum(x.shape[1] for x in xs[1:])
        buf = _tails.take(first, total)
        if buf is None:
            buf = np.empty((1, total + self.after * (total - start)) + first.shape[2:], first.dtype)
            buf[:, :start] = first
        for x in xs[1:]:
            c = x.shape[1]
            buf[:, start:start + c] = x
            start += c
        out = buf[:, :total]
        if self.after:
            _tails.register(out, buf)
        return [out]

    def _fits(self, xs):
        first = xs[0]
        if not isinstance(first, np.ndarray) or first.ndim != 4 or first.shape[0] != 1 \
                or self.axis not in (1, -3) or first.dtype.isbuiltin != 1:
            return False
        for x in xs[1:]:
            if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != first.dtype \
                    or x.shape[0] != 1 or x.shape[2:] != first.shape[2:]:
                return False
        return True
