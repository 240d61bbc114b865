"""ModelRef: what a task needs to find (or build) its process's session for a model.

A reference is small to ship when the model is a path (the path and the
client's digest of the file: the worker reads the file itself, so a model on
shared storage never travels through the scheduler) and holds the bytes
otherwise. Schedulers should put one ModelRef in the task graph once and make
every partition task depend on it (Dask: one key), not embed it in each task.
"""
import hashlib
import os

import onnx

from ..errors import ModelError


class ModelRef:
    """A model as a path or bytes, with the sha256 `digest` of its bytes (the cache key)."""

    __slots__ = ("digest", "path", "data")

    def __init__(self, digest, path=None, data=None):
        if (path is None) == (data is None):
            raise ValueError("a ModelRef holds exactly one of path and data")
        self.digest, self.path, self.data = digest, path, data

    @classmethod
    def from_model(cls, model):
        """A reference to `model` (a path, bytes or onnx.ModelProto)."""
        if isinstance(model, onnx.ModelProto):
            try:
                data = model.SerializeToString()
            except ValueError:
                raise ModelError("the ModelProto is over protobuf's 2 GiB limit: save it with external "
                                 "data and pass its path") from None
            return cls(_digest(data), data=data)
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            return cls(_digest(data), data=data)
        if isinstance(model, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(model))
            try:
                with open(path, "rb") as f:
                    digest = _digest(f.read())
            except OSError as e:
                raise ModelError(f"cannot read model file {path!r}: {e.strerror or e}") from None
            return cls(digest, path=path)
        raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")

    def source(self):
        """What InferenceSession takes: the path (external data next to it) or the bytes."""
        return self.path if self.path is not None else self.data

    def check_file(self):
        """On a worker: the path's file must be readable and be the client's model."""
        try:
            with open(self.path, "rb") as f:
                digest = _digest(f.read())
        except OSError as e:
            raise ModelError(f"this worker cannot read the model file {self.path!r}: {e.strerror or e} "
                             f"(give every worker the same path, or pass the model as bytes)") from None
        if digest != self.digest:
            raise ModelError(f"the model file {self.path!r} on this worker differs from the client's "
                             f"(sha256 {digest[:12]} != {self.digest[:12]})")

    def __reduce__(self):
        return (ModelRef, (self.digest, self.path, self.data))

    def __repr__(self):
        where = repr(self.path) if self.path is not None else f"{len(self.data)} bytes"
        return f"ModelRef({where}, sha256={self.digest[:12]})"


def _digest(data):
    return hashlib.sha256(data).hexdigest()
