"""InferenceSession pickles as model bytes + options and is rebuilt on the other side."""
import multiprocessing
import pickle

import numpy as np

import normrt

from bn_models import conv_bn_model, multi_io_model, shifted_data


def test_roundtrip_same_outputs_and_options(tmp_path):
    model, _ = conv_bn_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = shifted_data(3)
    for src in (str(path), model, model.SerializeToString()):
        sess = normrt.InferenceSession(src, num_threads=1)
        clone = pickle.loads(pickle.dumps(sess))
        assert clone is not sess and clone._num_threads == 1
        np.testing.assert_array_equal(clone.run(None, {"x": x})[0], sess.run(None, {"x": x})[0])
        assert [i.name for i in clone.get_inputs()] == ["x"]


def _run_in_child(sess, feed, queue):
    queue.put(sess.run(None, feed))


def test_session_crosses_a_process_boundary():
    sess = normrt.InferenceSession(multi_io_model())
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    feed = {"a": a, "b": a + 1}
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_in_child, args=(sess, feed, q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    for g, want in zip(got, sess.run(None, feed)):
        np.testing.assert_array_equal(g, want)


def test_path_session_keeps_no_copy_and_refuses_a_changed_file(tmp_path):
    # a session loaded from a file re-reads it when pickled (no second copy of the
    # weights in memory), and will not pickle another model than the one it runs
    model, _ = conv_bn_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    sess = normrt.InferenceSession(str(path))
    assert sess._model_source.data is None
    assert pickle.loads(pickle.dumps(sess)).run(None, {"x": shifted_data(2)})[0].shape[0] == 2
    path.write_bytes(path.read_bytes() + b"\x00")
    try:
        pickle.dumps(sess)
    except TypeError as e:
        assert "changed since the session loaded it" in str(e)
    else:
        raise AssertionError("a changed model file was pickled")
