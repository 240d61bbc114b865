"""normrt: a CPU inference runtime for the normalization layers of neural networks."""
from ._kernels.openmp_info import openmp_enabled
from ._threads import get_num_threads, set_num_threads, threads
from .errors import ModelError
from .api.layer_norm import layer_norm, rms_norm
from .api.group_norm import group_norm, instance_norm, adain
# [batch_norm family] batch_norm, batch_norm_stats, spade, moments, mean_variance_norm
# [lp/lrn/weights family] lp_norm, lrn, fold_batch_norm, weight_norm, weight_standardize
# [onnx] InferenceSession, optimize (and the normrt.backend module)

__version__ = "0.1.0"
