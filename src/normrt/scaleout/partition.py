"""The per-partition functions a scheduler runs: predict, and BatchNorm-input moments.

Each takes a ModelRef (resolved to this process's cached session), the input
names, the partition's index and its arrays (one per input, batch on axis 0).
An exception becomes a PartitionError naming the partition and its input
shapes, chained to the original; it is raised, not swallowed, so the
scheduler's retries and error reporting work as usual.
"""
import numpy as np

from .moments import PartialMoments
from .session_cache import cached_session


class PartitionError(RuntimeError):
    """A partition failed: the message names its index and input shapes, the cause is chained."""


def _describe(input_names, arrays):
    return ", ".join(f"{n}: {getattr(a, 'dtype', '?')} {tuple(getattr(a, 'shape', ()))}"
                     for n, a in zip(input_names, arrays))


def _run(ref, input_names, output_names, num_threads, arrays):
    sess, lock = cached_session(ref, num_threads)
    wanted = {i.name for i in sess.get_inputs()}
    feed = {n: np.asarray(a) for n, a in zip(input_names, arrays) if n in wanted}
    with lock:
        return sess.run(output_names, feed)


def predict_partition(ref, input_names, output_names, num_threads, index, *arrays):
    """The model's outputs `output_names` on one partition, as a tuple of arrays whose
    first axis is the partition's batch."""
    try:
        outputs = _run(ref, input_names, output_names, num_threads, arrays)
        batch = len(arrays[0])
        for name, y in zip(output_names, outputs):
            if np.ndim(y) == 0 or len(y) != batch:
                raise ValueError(f"output {name!r} has shape {tuple(np.shape(y))}: its first axis is not "
                                 f"the batch ({batch}), so partitions cannot be concatenated")
        return tuple(outputs)
    except Exception as e:
        raise PartitionError(f"partition {index} (inputs {_describe(input_names, arrays)}): "
                             f"{type(e).__name__}: {e}") from e


def moments_partition(ref, input_names, stat_names, num_threads, index, *arrays):
    """[PartialMoments.from_batch of each output in `stat_names`] on one partition
    (the inputs of the BatchNorms of a recalibration pass)."""
    try:
        values = _run(ref, input_names, stat_names, num_threads, arrays)
        parts = []
        for v in values:
            v = np.asarray(v)
            if v.dtype not in (np.float32, np.float64):
                v = v.astype(np.float64)    # e.g. float16 activations: statistics in float64 anyway
            parts.append(PartialMoments.from_batch(v))
        return parts
    except Exception as e:
        raise PartitionError(f"partition {index} (inputs {_describe(input_names, arrays)}): "
                             f"{type(e).__name__}: {e}") from e


def merge_lists(*lists):
    """Element-wise merge of lists of PartialMoments, in the order given."""
    return [PartialMoments.merge_all(group) for group in zip(*lists)]
