"""A constant attention mask that is the causal one -> the attention's is_causal flag.

    M = constant, every (Sq, Skv) slice with Sq == Skv:     [[0, m, m],
        (m = -inf, the dtype's lowest finite value;           [0, 0, m],
         a boolean mask: True below/on the diagonal)          [0, 0, 0]]

    Q, K, V, M ──► Attention(is_causal=0)            (ONNX Attention-23/24: M its attn_mask;
                   normrt::Attention(is_causal=0)     normrt::Attention: M its bias)
  ==>
    Q, K, V ──► the same node with is_causal=1 and no mask

Decoder exports trace the causal mask into the graph (torch's triu-of-ones masks, HF's
`_prepare_4d_causal_attention_mask`, sdpa's `is_causal` written as a mask); with a static
sequence length constant folding turns it into a constant. The kernel with is_causal skips the
key blocks past the diagonal and adds no bias (llama128's (1, 4, 128, 64) attention with 2 kv
heads: 226 -> 167 us on one thread).

The same result: both spellings are top-left aligned (query i sees keys j <= i), a masked
score's weight is exactly 0 either way (exp(-inf) = 0; with the lowest finite value, exp of
a score some 3.4e38 below the row's max underflows to 0 for any finite scores that do not
themselves overflow), and no row is fully masked (the diagonal is visible), so the running
max and sum see the same values.

Refused (left as it is, not reported: the node runs with its mask): a mask that is not a
constant, not float or bool, whose last two axes are not equal (a rectangular mask: a KV cache,
or bottom-right alignment), any slice that differs from the pattern anywhere (a sliding window,
padding, an offset diagonal, finite penalties), an attention node with inputs after the mask
(past_key / past_value: a kv cache). A mask constant that other nodes read stays for them.
"""
import numpy as np
from onnx import helper

from . import GraphPass
from ._queries import is_normrt, is_op
from .._masks import causal_pattern_reason

MASK_INPUT = 3            # attn_mask of ONNX Attention, bias of normrt::Attention


def _is_attention(node):
    return is_op(node, "Attention") or is_normrt(node, "Attention")


class CausalMask(GraphPass):
    name = "causal_mask"
    report_refusals = False      # a node refused keeps its mask and runs as it is

    def matches(self, ctx):
        for node in ctx.nodes:
            if _is_attention(node) and len(node.input) > MASK_INPUT and node.input[MASK_INPUT]:
                yield node

    def check(self, ctx, node):
        if any(node.input[MASK_INPUT + 1:]):
            return "a kv cache or other inputs after the mask"
        mask = ctx.constants.get(node.input[MASK_INPUT])
        if mask is None:
            return "the mask is not a constant"
        return causal_pattern_reason(np.asarray(mask))

    def rewrite(self, ctx, node):
        new = type(node)()
        new.CopyFrom(node)
        del new.input[MASK_INPUT:]
        for a in list(new.attribute):
            if a.name == "is_causal":
                new.attribute.remove(a)
        new.attribute.append(helper.make_attribute("is_causal", 1))
        ctx.replace_nodes([node], [new])
