"""Einsum -> the MatMul (and Transposes, Reshapes, ReduceSums) it computes.

Models written with `torch.einsum` (XLNet, Funnel, Transformer-XL relative attention,
hand-written attention and mixers) export each call as one Einsum node, which runs as
numpy's einsum: 32 us for XLNet's (24, 1, 4, 16) head products, none of the GEMM
kernels, epilogues or attention fusions. A two-operand equation is a batched matrix
product once its letters are sorted by role:

    A[letters_a], B[letters_b] ─► Einsum("a,b->c") ─► Y[letters_c]

    batch    b: in A, B and C          m: in A and C only
    n: in B and C only                 k: in A and B, not C (summed)
    (a letter in one operand only and not in C is summed over that operand first)

    ==>  A ─► [ReduceSum] ─► Transpose(b.. m.. k..) ─► [Reshape (b.., M, K)] ──┐
         B ─► [ReduceSum] ─► Transpose(b.. k.. n..) ─► [Reshape (b.., K, N)] ──┴► MatMul
             ─► [Reshape (b.., m.., n..)] ─► [Transpose to c] ─► Y

    (a single operand: [ReduceSum] ─► [Transpose]). With no batch letters the m letters
    stay A's leading dims (MatMul broadcasts a 2-D B over them), so no M size is needed.
    A constant operand is transposed and reshaped here, once; nodes that change nothing
    are left out.

What it computes: the same sums of products. MatMul sums each output's K terms in its
own order where numpy's einsum uses its own: float rounding differs, as between any
two GEMMs (tests compare with np.einsum to float32 tolerance). The MatMul then takes
the GEMM kernels, and its bias / activation epilogues and the attention fusions apply
to it as to an exporter's MatMul.

Refused (the Einsum then runs as written, on numpy): three or more operands; a letter
repeated within one operand (a diagonal); an ellipsis whose operand's rank is unknown;
a non-float type; a merged group (M, K or N of several letters) whose sizes are unknown
in more than one place (Reshape infers one dim); a constant operand whose dims contradict
the other operand's.
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from . import GraphPass
from ._queries import constant, is_op, present

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass
class Match:
    node: object
    plan: object = None


@dataclass
class Plan:
    operands: list      # per input: letters (ellipsis expanded)
    output: str         # letters of the result
    sizes: dict         # letter -> static size, where known


def parse(equation, ranks):
    """(operand letter strings, output letters) with any ellipsis replaced by letters of its
    own (right-aligned across operands, as numpy broadcasts them), or a reason string."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return f"equation has {len(terms)} operands for {len(ranks)} inputs"
    widest = 0
    for term, rank in zip(terms, ranks):
        if "..." in term:
            if rank is None:
                return "an ellipsis operand of unknown rank"
            widest = max(widest, rank - len(term.replace("...", "")))
    # the ellipsis' dims get letters the equation does not use
    free = [c for c in _LETTERS if c not in eq]
    if widest > len(free):
        return f"an ellipsis of {widest} dims and too few free letters"
    fill = "".join(free[:widest])
    operands = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            n = rank - len(term.replace("...", ""))
            if n < 0:
                return f"term {term!r} longer than its operand's rank {rank}"
            term = term.replace("...", fill[widest - n:])
        elif rank is not None and len(term) != rank:
            return f"term {term!r} for an operand of rank {rank}"
        if term and not term.isalpha():      # ('' is a scalar operand)
            return f"term {term!r} is not letters"
        operands.append(term)
    if arrow:
        out = rhs.replace("...", fill)
    else:      # implicit output: the ellipsis, then the letters seen once, sorted
        counts = {}
        for t in operands:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = fill + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in fill))
    if not out.isalpha() and out:
        return f"output {out!r} is not letters"
    if any(len(set(t)) != len(t) for t in operands):
        return "a letter repeated within one operand (a diagonal)"
    if len(set(out)) != len(out) or set(out) - set("".join(operands)):
        return f"output {out!r} repeats a letter or names one no operand has"
    return operands, out


def _prod(sizes):
    return int(np.prod(sizes, dtype=np.int64)) if sizes else 1


class EinsumProducts(GraphPass):
    name = "einsum_products"
    report_refusals = False        # a refused Einsum still runs, on numpy

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_op(node, "Einsum") and node.output and node.output[0] and 1 <= len(node.input) <= 2:
                yield Match(node)

    def describe(self, m):
        return "Einsum", [m.node.name]

    def check(self, ctx, m):
        if not present(ctx, [m.node]):
            return "already rewritten"
        node = m.node
        if any(ctx.elem_type(i) not in _FLOATS for i in node.input):
            return "not a float Einsum"
        eq = next((a.s.decode() for a in node.attribute if a.name == "equation"), None)
        if eq is None:
            return "no equation"
        shapes = [ctx.shape(i) for i in node.input]
        parsed = parse(eq, [None if s is None else len(s) for s in shapes])
        if isinstance(parsed, str):
            return parsed
        operands, out = parsed
        sizes = {}
        for term, shape in zip(operands, shapes):
            for c, d in zip(term, shape or ()):
                if isinstance(d, int) and d != 1:
                    sizes[c] = d            # (a 1 may be a broadcast ellipsis dim)
                elif isinstance(d, int):
                    sizes.setdefault(c, 1)
        m.plan = Plan(operands, out, sizes)
        try:
            _Lowering(ctx, m.node, m.plan, dry_run=True).run()
        except _Refused as e:
            return str(e)
        except ValueError as e:         # a constant operand whose dims contradict the other's
            return f"operand sizes do not fit the equation: {e}"
        return None

    def rewrite(self, ctx, m):
        nodes = _Lowering(ctx, m.node, m.plan).run()
        ctx.replace_nodes([m.node], nodes)


class _Refused(Exception):
    pass


class _Lowering:
    """The nodes an Einsum becomes (`dry_run`: only whether it can, raising _Refused)."""

    def __init__(self, ctx, node, plan, dry_run=False):
        self.ctx, self.node, self.plan, self.dry = ctx, node, plan, dry_run
        self.nodes = []
        self.opset = ctx.opsets.get("", 13)

    # -- emitting ------------------------------------------------------------
    def _name(self, what):
        return self.ctx.new_name(f"{self.node.name}_{what}") if not self.dry else what

    def _emit(self, op, inputs, what, out=None, **attrs):
        out = out or self._name(f"{what}_out")
        if not self.dry:
            self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(what), **attrs))
        return out

    def _int64(self, what, values):
        if self.dry:
            return what
        return self.ctx.add_constant(f"{self.node.name}_{what}", np.asarray(values, dtype=np.int64))

    # -- steps on one operand: (value name, its letters, constant value or None) ---------------
    def _reduce(self, operand, letters, keep):
        name, have, value = operand
        axes = [i for i, c in enumerate(have) if c not in keep]
        if not axes:
            return operand
        rest = "".join(c for c in have if c in keep)
        if value is not None:
            return (None, rest, value.sum(axis=tuple(axes), dtype=value.dtype))
        if self.opset >= 13:
            out = self._emit("ReduceSum", [name, self._int64("axes", axes)], "reduce", keepdims=0)
        else:
            out = self._emit("ReduceSum", [name], "reduce", keepdims=0, axes=axes)
        return (out, rest, None)

    def _transpose(self, operand, order):
        name, have, value = operand
        if have == order:
            return operand
        perm = [have.index(c) for c in order]
        if value is not None:
            return (None, order, np.ascontiguousarray(value.transpose(perm)))
        return (self._emit("Transpose", [name], "transpose", perm=perm), order, None)

    def _reshape(self, operand, groups, what):
        """`operand` (one letter per dim) reshaped to one dim per group of letters (an empty group
        a dim of 1); a dim that is the same letter at the same place is copied (0), so leading
        batch dims need no known size."""
        name, have, value = operand
        if [tuple(c) for c in have] == [tuple(g) for g in groups]:
            return operand
        sizes = self.plan.sizes
        target, unknown = [], 0
        for i, g in enumerate(groups):
            if i < len(have) and len(g) == 1 and have[i] == g[0] and value is None:
                target.append(0)
            elif all(c in sizes for c in g):
                target.append(_prod([sizes[c] for c in g]))
            else:
                target.append(-1)
                unknown += 1
        if unknown > 1:
            raise _Refused(f"sizes of {groups} unknown in more than one place")
        letters = "".join("".join(g) for g in groups)
        if value is not None:
            shape = [value.shape[i] if t == 0 else t for i, t in enumerate(target)]
            return (None, letters, value.reshape(shape))
        return (self._emit("Reshape", [name, self._int64("shape", target)], what), letters, None)

    def _materialize(self, operand, what):
        name, have, value = operand
        if value is None:
            return name
        return self.ctx.add_constant(f"{self.node.name}_{what}", value) if not self.dry else what

    # -- the lowering --------------------------------------------------------------------------
    def run(self):
        ctx, p = self.ctx, self.plan
        ins = []
        for name in self.node.input:
            value = constant(ctx, name)
            ins.append((name, None, np.asarray(value) if value is not None else None))
        ins = [(name, letters, value) for (name, _, value), letters in zip(ins, p.operands)]
        out_name = self.node.output[0]
        if len(ins) == 1:
            a = self._transpose(self._reduce(ins[0], ins[0][1], p.output), p.output)
            self._finish(a, out_name)
            return self.nodes
        a, b = ins
        la, lb, lc = a[1], b[1], p.output
        # summed over one operand alone: first, on that operand
        a = self._reduce(a, la, set(lb) | set(lc))
        b = self._reduce(b, lb, set(la) | set(lc))
        la, lb = a[1], b[1]
        batch = [c for c in lc if c in la and c in lb]
        ms = [c for c in lc if c in la and c not in lb]
        ns = [c for c in lc if c in lb and c not in la]
        ks = [c for c in la if c in lb and c not in lc]
        a = self._transpose(a, "".join(batch + ms + ks))
        b = self._transpose(b, "".join(batch + ks + ns))
        if batch:
            a = self._reshape(a, [(c,) for c in batch] + [tuple(ms), tuple(ks)], "reshape_a")
            b = self._reshape(b, [(c,) for c in batch] + [tuple(ks), tuple(ns)], "reshape_b")
            y_groups = [(c,) for c in batch] + [tuple(ms), tuple(ns)]
        else:
            # m letters stay A's leading dims; MatMul broadcasts the 2-D B over them
            a = self._reshape(a, [(c,) for c in ms] + [tuple(ks)], "reshape_a")
            b = self._reshape(b, [tuple(ks), tuple(ns)], "reshape_b")
            y_groups = [(c,) for c in ms] + [tuple(ns)]
        an, bn = self._materialize(a, "a"), self._materialize(b, "b")
        y_letters = "".join("".join(g) for g in y_groups)
        y = (self._emit("MatMul", [an, bn], "matmul"), y_letters, None)
        # the MatMul's result as one dim per letter: its dims are the groups' (copied where single)
        y = self._split(y, y_groups, batch + ms + ns)
        self._finish(self._transpose(y, lc), out_name)
        return self.nodes

    def _split(self, y, groups, letters):
        name = y[0]
        if all(len(g) == 1 for g in groups):
            return (name, "".join(letters), None)
        sizes = self.plan.sizes
        target, unknown = [], 0
        for i, c in enumerate(letters):
            if i < len(groups) and groups[i] == (c,):
                target.append(0)          # the same dim at the same place
            elif c in sizes:
                target.append(sizes[c])
            else:
                target.append(-1)
                unknown += 1
        if unknown > 1:
            raise _Refused(f"sizes of {letters} unknown in more than one place")
        out = self._emit("Reshape", [name, self._int64("shape", target)], "reshape_y")
        return (out, "".join(letters), None)

    def _finish(self, operand, out_name):
        """Write `operand` as the Einsum's output (an Identity when no node made it: a constant or an input)."""
        name, _, value = operand
        if value is not None:
            name = self._materialize(operand, "value")
        if self.nodes and self.nodes[-1].output[0] == name:
            self.nodes[-1].output[0] = out_name
        elif not self.dry:
            self.nodes.append(helper.make_node("Identity", [name], [out_name], name=self._name("identity")))
