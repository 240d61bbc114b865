"""Scale-out core, independent of any scheduler: the per-partition functions, the
per-process session cache keyed by the model's hash, and mergeable moments.

    ModelRef ──(one graph key per model)──► partition task ─► cached_session(ref, threads)
    predict_partition(ref, inputs, outputs, threads, index, *arrays) -> tuple of outputs
    moments_partition(...) -> [PartialMoments] ─► PartialMoments.merge_all (Chan, fixed tree)
    recalibrate_with(model, run_pass) -> ModelProto     (BNs in topological passes)

normrt.dask is the Dask adapter; a Ray adapter would map the same functions.
"""
from .model_ref import ModelRef
from .moments import PartialMoments
from .partition import PartitionError, merge_lists, moments_partition, predict_partition
from .recalibrate import recalibrate_batch_norm, recalibrate_with
from .session_cache import cached_session

__all__ = ["ModelRef", "PartialMoments", "PartitionError", "cached_session", "merge_lists",
           "moments_partition", "predict_partition", "recalibrate_batch_norm", "recalibrate_with"]
