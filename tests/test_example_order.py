"""`host_pipeline.IndexStream` computes tf.data's example order on a thread ahead of `take`: the same order as
computing it in `take`, the thread really runs ahead, stops with its stream, and its errors reach the caller."""
import time

import numpy as np
import pytest

from sbs_jax.data.input_pipeline import host_pipeline


def _wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("num_epochs", [1, 3, None])
@pytest.mark.parametrize("shuffle", [True, False])
def test_order_computed_ahead_equals_order_computed_in_take(monkeypatch, num_epochs, shuffle):
    monkeypatch.setattr(host_pipeline, "_ORDER_CHUNK", 100)  # many chunks, so the queue wraps around often
    kw = dict(shuffle=shuffle, buffer_size=300, seed=11, num_epochs=num_epochs)
    inline = host_pipeline.IndexStream(1000, ahead=0, **kw)
    ahead = host_pipeline.IndexStream(1000, ahead=2, **kw)
    sizes = [1, 64, 99, 100, 101, 257, 7] * 20  # 18k indices: past the end of the finite streams
    seen = 0
    for i, n in enumerate(sizes):
        want, got = inline.take(n, partial=i % 2 == 0), ahead.take(n, partial=i % 2 == 0)
        if want is None:
            assert got is None, i
            assert num_epochs is not None
            break
        np.testing.assert_array_equal(got, want, err_msg=f"take {i}")
        seen += len(want)
    if num_epochs is None:
        assert seen == sum(sizes)
    else:  # a whole take that found too few left returned None and kept them: the rest, then nothing
        rest = inline.take(10 ** 6, partial=True)
        np.testing.assert_array_equal(ahead.take(10 ** 6, partial=True), rest)
        assert seen + (0 if rest is None else len(rest)) == 1000 * num_epochs
        assert ahead.take(1, partial=True) is None
    ahead.close()


def test_the_thread_runs_ahead_of_take(monkeypatch):
    monkeypatch.setattr(host_pipeline, "_ORDER_CHUNK", 50)
    stream = host_pipeline.IndexStream(10_000, shuffle=True, buffer_size=1000, seed=0, num_epochs=None, ahead=3)
    # Nothing was taken, yet `ahead` chunks wait: the order is computed off the caller's path.
    assert _wait_until(lambda: stream._ahead._queue.full())  # noqa: SLF001
    assert stream.take(150).shape == (150,)
    assert _wait_until(lambda: stream._ahead._queue.full())  # noqa: SLF001 - refilled
    stream.close()


def test_closing_or_dropping_a_stream_stops_its_thread():
    stream = host_pipeline.IndexStream(5000, shuffle=True, buffer_size=100, seed=0, num_epochs=None)
    stream.take(10)
    thread = stream._ahead._thread  # noqa: SLF001
    assert thread.is_alive() and thread.name == "sbs-example-order"
    stream.close()
    assert not thread.is_alive()
    stream = host_pipeline.IndexStream(5000, shuffle=True, buffer_size=100, seed=0, num_epochs=None)
    stream.take(10)
    thread = stream._ahead._thread  # noqa: SLF001
    del stream
    assert _wait_until(lambda: not thread.is_alive())


def test_a_finished_finite_stream_leaves_no_thread():
    stream = host_pipeline.IndexStream(300, shuffle=True, buffer_size=50, seed=0, num_epochs=2)
    assert stream.take(10_000, partial=True).shape == (600,)
    assert stream.take(1, partial=True) is None
    assert _wait_until(lambda: not stream._ahead._thread.is_alive())  # noqa: SLF001


def test_an_error_computing_the_order_is_raised_by_take():
    def chunks():
        yield np.arange(4)
        raise ValueError("tf.data broke")

    ahead = host_pipeline._ChunksAhead(chunks(), depth=2)  # noqa: SLF001
    np.testing.assert_array_equal(ahead.get(), np.arange(4))
    with pytest.raises(RuntimeError, match="computing the example order failed") as info:
        ahead.get()
    assert isinstance(info.value.__cause__, ValueError)
    assert ahead.get() is None  # done: no hang on a later call


def test_a_thread_that_ends_without_a_result_is_an_error(monkeypatch):
    monkeypatch.setattr(host_pipeline._ChunksAhead, "_fill", staticmethod(lambda chunks, out, stop: None))  # noqa: SLF001
    ahead = host_pipeline._ChunksAhead(iter([np.arange(3)]), depth=2)  # noqa: SLF001
    with pytest.raises(RuntimeError, match="ended without a result"):
        ahead.get()


def test_ahead_must_not_be_negative():
    with pytest.raises(ValueError, match="ahead=-1"):
        host_pipeline.IndexStream(10, shuffle=False, buffer_size=None, seed=None, num_epochs=1, ahead=-1)
