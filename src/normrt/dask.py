"""Dask adapter: batch inference over a cluster and BatchNorm recalibration with merged moments.

    predict(model, inputs)                  dask array(s) in ─► one task per partition ─► dask array(s) out
    recalibrate_batch_norm(model, inputs)   per-partition PartialMoments ─► fixed tree of Chan merges

The work itself is normrt.scaleout's (scheduler-agnostic); this module only
builds Dask graphs. The model goes into the graph once, as one key holding a
ModelRef (the path and the file's sha256, or the bytes): each worker fetches
it at most once and builds its InferenceSession once per model per process
(normrt.scaleout.session_cache), never one per task.

Threads: a worker's sessions run with the worker's own thread count (its
`nthreads`), taken explicitly because Dask's nanny sets OMP_NUM_THREADS=1 in
its workers; tasks of one worker take turns on a session, so 2 workers × 1
thread on 2 cores run 2 kernel threads, not 4. `num_threads=` overrides it.

Needs the `dask` extra: pip install "normrt[dask]".
"""
import operator

import numpy as np

from .onnx._graph import np_dtype
from .onnx.loader import load_model
from .scaleout import recalibrate as _recal
from .scaleout.model_ref import ModelRef
from .scaleout.partition import merge_lists, moments_partition, predict_partition

__all__ = ["predict", "recalibrate_batch_norm"]


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as e:
        raise ImportError(f"normrt.dask needs dask[array] and distributed ({e}): "
                          f"install them with pip install 'normrt[dask]'") from None
    return dask, da


def _worker_threads(num_threads):
    """The thread count for this task's session: the argument, else the worker's own."""
    if num_threads is not None:
        return num_threads
    try:
        from distributed import get_worker
        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return None     # not on a distributed worker: normrt's default


def _predict_task(ref, input_names, output_names, num_threads, index, *arrays):
    return predict_partition(ref, input_names, output_names, _worker_threads(num_threads), index, *arrays)


def _moments_task(ref, input_names, stat_names, num_threads, index, *arrays):
    return moments_partition(ref, input_names, stat_names, _worker_threads(num_threads), index, *arrays)


# ---- the model as the client sees it ------------------------------------------

def _feedable_inputs(graph):
    inits = {t.name for t in graph.initializer}
    return [vi for vi in graph.input if vi.name not in inits]


def _declared_dims(vi):
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _check_threads(num_threads):
    if num_threads is None:
        return None
    from ._threads import _check
    return _check(num_threads)


def _prepare_inputs(proto, inputs):
    """[(name, dask array)] in the model's input order, all chunked alike along axis 0 only."""
    _, da = _dask()
    graph_inputs = _feedable_inputs(proto.graph)
    names = [vi.name for vi in graph_inputs]
    if isinstance(inputs, dict):
        given = dict(inputs)
    elif len(names) == 1:
        given = {names[0]: inputs}
    else:
        raise TypeError(f"inputs must be a dict {{input name: dask array}} for a model with {len(names)} inputs "
                        f"{names}, got {type(inputs).__name__}")
    unknown = [k for k in given if k not in names]
    if unknown:
        raise ValueError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"missing input(s) {missing}; the model's inputs are {names}")
    arrays = []
    for vi in graph_inputs:
        x = given[vi.name]
        if not isinstance(x, da.Array):
            raise TypeError(f"input {vi.name!r} must be a dask array (dask.array.from_array(x, chunks=...)), "
                            f"got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError(f"input {vi.name!r} must have a batch axis 0, got a scalar")
        split = [ax for ax in range(1, x.ndim) if len(x.chunks[ax]) > 1]
        if split:
            ax = split[0]
            raise ValueError(f"input {vi.name!r} is chunked along axis {ax} (chunks {x.chunks[ax]}): partitions "
                             f"split the batch axis 0 only; rechunk it first, e.g. "
                             f"x.rechunk({{0: 'auto', {', '.join(f'{a}: -1' for a in range(1, x.ndim))}}})")
        if any(np.isnan(c) for c in x.chunks[0]):
            raise ValueError(f"input {vi.name!r} has unknown chunk sizes along axis 0: call "
                             f"x.compute_chunk_sizes() first")
        want = np_dtype(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else None
        if want is not None and want != object and x.dtype != want:
            raise ValueError(f"input {vi.name!r} must have dtype {want}, got {x.dtype} (use x.astype({want.name!r}))")
        dims = _declared_dims(vi)
        if dims is not None:
            if x.ndim != len(dims):
                raise ValueError(f"input {vi.name!r} must have rank {len(dims)} (shape {dims}), got shape {x.shape}")
            for i, (d, n) in enumerate(zip(dims, x.shape)):
                if i and isinstance(d, int) and d != n:
                    raise ValueError(f"input {vi.name!r} must have shape {dims}, got {x.shape} "
                                     f"(dimension {i} must be {d})")
        arrays.append((vi.name, x))
    first_name, first = arrays[0]
    for k, (name, x) in enumerate(arrays):
        if x.shape[0] != first.shape[0]:
            raise ValueError(f"input {name!r} has {x.shape[0]} rows on axis 0, input {first_name!r} has "
                             f"{first.shape[0]}: every input needs the same batch size")
        if x.chunks[0] != first.chunks[0]:
            arrays[k] = (name, x.rechunk({0: first.chunks[0]}))
    for i, (name, x) in enumerate(arrays):
        fixed = _declared_dims(proto.graph.input[[vi.name for vi in proto.graph.input].index(name)])
        if fixed and isinstance(fixed[0], int) and fixed[0] > 0 and any(c != fixed[0] for c in x.chunks[0]):
            raise ValueError(f"input {name!r} has a fixed batch size {fixed[0]} in the model: chunk it with "
                             f"x.rechunk({{0: {fixed[0]}}}) (chunks now {x.chunks[0]})")
    return arrays


def _output_infos(proto, output_names, arrays):
    """[(name, numpy dtype, [dim or None after the batch axis])] of the requested outputs."""
    outputs = {vi.name: vi for vi in proto.graph.output}
    if output_names is None:
        output_names = list(outputs)
    elif isinstance(output_names, str):
        raise TypeError("output_names must be a list of output names (or None for all), got a str")
    else:
        output_names = list(output_names)
        bad = [n for n in output_names if n not in outputs]
        if bad:
            raise ValueError(f"unknown output name(s) {bad}; the model's outputs are {list(outputs)}")
    infos, incomplete = [], False
    for n in output_names:
        vi = outputs[n]
        dtype = np_dtype(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else None
        dims = _declared_dims(vi)
        rest = None if dims is None else [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
        incomplete |= rest is None or None in rest
        infos.append([n, dtype, rest])
    if incomplete:
        inferred = _infer_output_dims(proto, {name: x.shape[1:] for name, x in arrays},
                                      int(arrays[0][1].chunks[0][0]))
        for info in infos:
            if info[0] in inferred and (info[2] is None or None in info[2]):
                info[2] = inferred[info[0]]
    return output_names, infos


def _infer_output_dims(proto, rest_shapes, batch):
    """Output dims after the batch axis by ONNX shape inference with concrete input shapes."""
    import onnx
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for vi in model.graph.input:
        if vi.name in rest_shapes:
            shape = (batch,) + tuple(rest_shapes[vi.name])
            del vi.type.tensor_type.shape.dim[:]
            for n in shape:
                vi.type.tensor_type.shape.dim.add().dim_value = int(n)
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:       # noqa: BLE001 - no inference: the dims stay unknown (NaN chunks)
        return {}
    out = {}
    for vi in model.graph.output:
        dims = _declared_dims(vi)
        if dims is not None:
            out[vi.name] = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    return out


def _model_key(ref):
    return f"normrt-model-{ref.digest[:32]}"


def _block_keys(arrays, i):
    return [(x.name, i) + (0,) * (x.ndim - 1) for _, x in arrays]


# ---- predict -----------------------------------------------------------------

def predict(model, inputs, *, output_names=None, num_threads=None):
    """The model's outputs over a dataset, lazily: dask arrays chunked like the inputs.

    `model` is a path (read by each worker: the path must be valid there), bytes or
    an onnx.ModelProto. `inputs` is a dask array (single-input model) or a dict
    {input name: dask array}, chunked along axis 0 only (the batch; rechunk
    otherwise); every input gets the first one's chunks. Returns one dask array,
    or a list for several outputs, each with the output's dtype and, where the
    model or ONNX shape inference says, its shape (unknown dims are NaN chunks).
    Partition i runs `InferenceSession.run` on the i-th block of every input, on
    the worker's cached session; an error names the partition and its input shapes.
    """
    dask, da = _dask()
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    num_threads = _check_threads(num_threads)
    ref = ModelRef.from_model(model)
    proto = load_model(ref.source())
    arrays = _prepare_inputs(proto, inputs)
    output_names, infos = _output_infos(proto, output_names, arrays)
    input_names = [n for n, _ in arrays]

    token = tokenize(ref.digest, [x.name for _, x in arrays], output_names, num_threads)
    run_name = f"normrt-predict-{token}"
    model_key = _model_key(ref)
    dsk = {model_key: ref}
    nparts = len(arrays[0][1].chunks[0])
    for i in range(nparts):
        dsk[(run_name, i)] = (_predict_task, model_key, input_names, output_names, num_threads, i,
                              *_block_keys(arrays, i))
    run_layer = HighLevelGraph.from_collections(run_name, dsk, dependencies=[x for _, x in arrays])

    results = []
    batch_chunks = arrays[0][1].chunks[0]
    for k, (name, dtype, rest) in enumerate(infos):
        out_name = f"normrt-output-{k}-{token}"
        rest = rest if rest is not None else []
        ndim = 1 + len(rest)
        layer = {(out_name, i) + (0,) * (ndim - 1): (operator.getitem, (run_name, i), k) for i in range(nparts)}
        graph = HighLevelGraph.merge(run_layer, HighLevelGraph.from_collections(out_name, layer, dependencies=[]))
        graph.dependencies[out_name] = {run_name}
        chunks = (batch_chunks,) + tuple((np.nan,) if d is None else (d,) for d in rest)
        meta = np.empty((0,) * ndim, dtype=dtype if dtype is not None and dtype != object else np.float32)
        results.append(da.Array(graph, out_name, chunks=chunks, meta=meta))
    return results[0] if len(results) == 1 else results


# ---- recalibration -----------------------------------------------------------

def _tree_merge(dsk, keys, name):
    """Add a fixed balanced tree of merge_lists tasks over `keys`; returns the root key."""
    level = 0
    while len(keys) > 1:
        nxt = []
        for j in range(0, len(keys) - 1, 2):
            key = (f"{name}-merge{level}", j // 2)
            dsk[key] = (merge_lists, keys[j], keys[j + 1])
            nxt.append(key)
        if len(keys) % 2:
            nxt.append(keys[-1])
        keys, level = nxt, level + 1
    return keys[0]


def _compute_with_progress(collection):
    """dask.compute with a progress bar: distributed's for an active Client, else dask's local one."""
    dask, _ = _dask()
    try:
        from distributed import default_client, progress
        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is None or dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        import sys

        from dask.diagnostics import ProgressBar
        with ProgressBar(out=sys.stderr):
            return dask.compute(collection)[0]
    future = client.compute(collection)
    progress(future)
    print(flush=True)
    return future.result()


def recalibrate_batch_norm(model, inputs, *, num_threads=None, progress=False):
    """normrt.recalibrate_batch_norm over dask arrays (the inputs `predict` takes).

    One Dask computation per topological pass (BNs feeding BNs need the
    earlier BNs' new statistics): every partition computes the PartialMoments
    of the pass's BN inputs, merged in a fixed tree by partition index, so the
    result depends on the chunking only (identical on 1 or N workers). Runs on
    the current Dask scheduler (a distributed.Client if one is active).
    Returns a new ModelProto. `progress=True` shows Dask's progress bar per pass.
    """
    dask, da = _dask()
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    num_threads = _check_threads(num_threads)
    proto = load_model(ModelRef.from_model(model).source())
    _recal.check_has_batch_norm(proto)
    arrays = _prepare_inputs(proto, inputs)
    input_names = [n for n, _ in arrays]
    nparts = len(arrays[0][1].chunks[0])
    if arrays[0][1].shape[0] == 0:
        raise ValueError("the inputs are empty: no data to estimate the statistics from")

    def run_pass(sub, stat_names):
        ref = ModelRef.from_model(sub)
        name = f"normrt-bn-moments-{tokenize(ref.digest, [x.name for _, x in arrays], num_threads)}"
        model_key = _model_key(ref)
        dsk = {model_key: ref}
        keys = []
        for i in range(nparts):
            dsk[(name, i)] = (_moments_task, model_key, input_names, stat_names, num_threads, i,
                              *_block_keys(arrays, i))
            keys.append((name, i))
        root = _tree_merge(dsk, keys, name)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x for _, x in arrays])
        result = Delayed(root, graph, layer=name)
        if progress:
            return _compute_with_progress(result)
        (merged,) = dask.compute(result)
        return merged

    return _recal.recalibrate_with(proto, run_pass)
