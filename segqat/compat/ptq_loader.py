"""The calibration feed paddle's PostTrainingQuantization accepts, on paddle 2.6 and 3.x.

paddle 2.6.2's ``PostTrainingQuantization.__init__``
(paddle/static/quantization/post_training_quantization.py), which paddleslim
2.6's ``quant_post_static`` calls, refuses any ``data_loader`` that is not a
``paddle.io.DataLoader``:

    AssertionError: data_loader only accepts `paddle.io.DataLoader`.

(paddle 3.3.1 dropped the assert), and it ignores ``batch_generator`` /
``sample_generator`` there. Both versions only call the loader (``for data in
data_loader():``, also in AdaRound) and take its ``len()``. ``ptq_data_loader``
wraps a re-iterable source of ``{"x": batch}`` feeds (``calibration.Calibration``)
in a ``DataLoader`` subclass that does exactly that and nothing else; the same
feeds reach the executor on both versions.

Used by: ``segqat.ptq.quantize_static``.
"""
import paddle


class _Feeds(paddle.io.DataLoader):
    """A ``paddle.io.DataLoader`` by type only: calling it iterates ``source()``."""

    def __init__(self, source):  # no DataLoader.__init__: no dataset, workers or places
        self._source = source

    def __call__(self):
        return iter(self._source())

    def __iter__(self):
        return iter(self._source())

    def __len__(self):
        return len(self._source)


def ptq_data_loader(source):
    """``source`` (callable -> iterator of feed dicts, with ``len``) as the ``data_loader``
    of ``quant_post_static`` on paddle 2.6 and 3.x (see the module docstring)."""
    return _Feeds(source)
