"""onnx.backend interface of normrt, for `onnx.backend.test.BackendTest(normrt.backend, __name__)`.

    rep = normrt.backend.prepare(model)      # an InferenceSession inside
    outputs = rep.run([x, ...])              # inputs in graph-input order (or a dict)
"""
import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from .onnx.session import InferenceSession


class NormrtRep(BackendRep):
    """A prepared model: runs it on inputs given as a list (graph-input order), a dict or one array."""

    def __init__(self, session):
        self.session = session

    def run(self, inputs, **kwargs):
        names = [a.name for a in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) > len(names):
                raise ValueError(f"got {len(inputs)} inputs, the model takes {len(names)}: {names}")
            feed = dict(zip(names, inputs))
        else:
            feed = {names[0]: inputs}
        outputs = self.session.run(None, feed)
        out_names = [a.name for a in self.session.get_outputs()]
        return namedtupledict("Outputs", out_names)(*outputs)


class NormrtBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device):
        try:
            return Device(device).type == DeviceType.CPU
        except Exception:  # noqa: BLE001 - an unknown device string is simply unsupported
            return False

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        if not cls.supports_device(device):
            raise RuntimeError(f"normrt runs on CPU only, not on {device!r}")
        return NormrtRep(InferenceSession(model, num_threads=kwargs.get("num_threads")))

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        """Run one node on `inputs` (arrays in the node's input order, or a dict by input name)."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        if isinstance(inputs, dict):
            feeds = inputs
        else:
            feeds = dict(zip([n for n in node.input if n], inputs))
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                      list(np.shape(v)))
                        for name, v in feeds.items()]
        outputs = []
        for i, name in enumerate(o for o in node.output if o):
            if outputs_info and i < len(outputs_info):
                dtype, shape = outputs_info[i]
                outputs.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape)))
            else:
                outputs.append(helper.make_empty_tensor_value_info(name))
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        domains = {node.domain or ""}
        opsets = [helper.make_opsetid(d, opset if d == "" else 1) for d in domains]
        if "" not in domains:
            opsets.append(helper.make_opsetid("", opset))
        graph = helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs, outputs)
        model = helper.make_model(graph, opset_imports=opsets)
        if not outputs_info:
            try:   # output types the checker wants, from shape inference
                model = onnx.shape_inference.infer_shapes(model)
            except Exception:  # noqa: BLE001 - the checker then says what is missing
                pass
        rep = cls.prepare(model, device)
        return rep.run(feeds)


is_compatible = NormrtBackend.is_compatible
prepare = NormrtBackend.prepare
run_model = NormrtBackend.run_model
run_node = NormrtBackend.run_node
supports_device = NormrtBackend.supports_device
