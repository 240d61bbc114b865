"""Spectral ops (numpy's pocketfft): DFT (17, 20) and STFT (17).

What torch.fft.* and torch.stft export to: FNet's token mixing (two DFTs per layer, dynamo's
`_fft_c2c`), spectrogram front-ends of speech models, Autoformer's autocorrelation. They ran on
onnx.reference, and a node there keeps the whole model off the specialized plan (FNet: every
run through the generic plan).

The ONNX layout: the last axis holds a value's real part, or its real and imaginary parts
(size 1 or 2); DFT's `axis` counts in that layout (opset 17: an attribute, default 1; opset
20: an input, default -2, negative counting from the back). `inverse` divides by the length,
as numpy's ifft; a forward `onesided` DFT keeps the length // 2 + 1 first frequencies (real
input: numpy's rfft, half the work), an inverse one reads those and returns the real signal
(irfft). `dft_length` pads with zeros or truncates. STFT frames the signal (batch, length,
1 | 2) every `frame_step` samples for `frame_length` (the window's length when not given),
multiplies each frame by the window and transforms it: (batch, frames, bins, 2). Results
are in the input's type; numpy computes float32 in float32 (single-precision pocketfft).
"""
import numpy as np

from ._util import ints_of, op


def _complex(x):
    """The signal the ONNX layout holds (real, or complex from interleaved parts), last axis gone."""
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] != 2:
        raise ValueError(f"DFT / STFT: the last axis must hold 1 (real) or 2 (real, imaginary) values, "
                         f"got {x.shape[-1]}")
    return x[..., 0] + 1j * x[..., 1]


def _layout(y, dtype):
    """A numpy (complex or real) result in the ONNX layout, in `dtype`."""
    if np.iscomplexobj(y):
        out = np.empty(y.shape + (2,), dtype)
        out[..., 0] = y.real
        out[..., 1] = y.imag
        return out
    return y[..., np.newaxis].astype(dtype, copy=False)


def _scalar_int(v, what):
    vals = ints_of(v)
    if vals is None or len(vals) != 1:
        raise ValueError(f"{what} must be one integer, got {None if v is None else np.asarray(v).shape}")
    return vals[0]


def dft(x, length, axis, inverse, onesided):
    """x in the ONNX layout, axis a non-negative signal axis (< x.ndim - 1)."""
    if not 0 <= axis < x.ndim - 1:
        raise ValueError(f"DFT: axis {axis} is not a signal axis of an input of rank {x.ndim}")
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    if length < 1:
        raise ValueError(f"DFT: dft_length must be >= 1, got {length}")
    if not x.size:
        raise ValueError("DFT: the input is empty")
    if inverse:
        s = _complex(x)
        y = np.fft.irfft(s, n=length, axis=axis) if onesided else np.fft.ifft(s, n=length, axis=axis)
    elif x.shape[-1] == 1:
        s = x[..., 0]
        y = np.fft.rfft(s, n=length, axis=axis) if onesided else np.fft.fft(s, n=length, axis=axis)
    else:
        y = np.fft.fft(_complex(x), n=length, axis=axis)
        if onesided:
            y = y[(slice(None),) * axis + (slice(0, length // 2 + 1),)]
    return _layout(y, x.dtype)


@op("DFT", since=17, until=19)
def dft_17(node, x, dft_length=None):
    axis = int(node.attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    length = None if dft_length is None else _scalar_int(dft_length, "DFT: dft_length")
    return dft(x, length, axis, bool(node.attrs.get("inverse", 0)), bool(node.attrs.get("onesided", 0)))


@op("DFT", since=20)
def dft_20(node, x, dft_length=None, axis=None):
    a = -2 if axis is None else _scalar_int(axis, "DFT: axis")
    a = a + x.ndim if a < 0 else a
    length = None if dft_length is None else _scalar_int(dft_length, "DFT: dft_length")
    return dft(x, length, a, bool(node.attrs.get("inverse", 0)), bool(node.attrs.get("onesided", 0)))


@op("STFT", since=17)
def stft(node, signal, frame_step, window=None, frame_length=None):
    if signal.ndim != 3:
        raise ValueError(f"STFT: signal must be (batch, length, 1 | 2), got shape {signal.shape}")
    step = _scalar_int(frame_step, "STFT: frame_step")
    if window is not None and window.ndim != 1:
        raise ValueError(f"STFT: window must be 1-D, got shape {window.shape}")
    if frame_length is not None:
        n = _scalar_int(frame_length, "STFT: frame_length")
    else:
        n = window.shape[0] if window is not None else signal.shape[1]
    if window is not None and window.shape[0] != n:
        raise ValueError(f"STFT: window of length {window.shape[0]} for frame_length {n}")
    if step < 1 or n < 1 or n > signal.shape[1]:
        raise ValueError(f"STFT: frame_step {step} and frame_length {n} for a signal of length {signal.shape[1]}")
    frames = 1 + (signal.shape[1] - n) // step
    s = _complex(signal)                                       # (batch, length)
    # (batch, frames, n) as a strided view, then one batched transform
    framed = np.lib.stride_tricks.sliding_window_view(s, n, axis=1)[:, ::step][:, :frames]
    if window is not None:
        framed = framed * window.astype(s.real.dtype, copy=False)
    onesided = bool(node.attrs.get("onesided", 1))
    if onesided and not np.iscomplexobj(framed):
        y = np.fft.rfft(framed, n=n, axis=-1)
    else:
        y = np.fft.fft(framed, n=n, axis=-1)
        if onesided:
            y = y[..., :n // 2 + 1]
    return _layout(y, signal.dtype)
