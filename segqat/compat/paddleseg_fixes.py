"""PaddleSeg 2.8 classes that fail on paddle 3.x, as fixed subclasses for the registries.

paddleseg 2.8 was written for paddle 2.4/2.5; paddle 3.x no longer promotes
an int tensor in arithmetic with a float one: ``Type promotion only support
calculations between floating-point numbers and between complex and real
numbers. But got different data type x: float32, y: int64``. Each class here
is paddleseg's with the int operand cast (same algorithm, layers, parameter
names and initialisation):

* ``CrossEntropyLoss``: ``_post_process_loss`` multiplies the float loss by
  an int64 mask;
* ``OhemCrossEntropyLoss``: adds an int64 mask to float probabilities;
* ``SFNet``: its AlignedModules' ``flow_warp`` divides a float32 flow by an
  int64 size.

``loss_overrides()`` and ``model_overrides()`` map the registry names to
them; ``segqat.builder`` builds components through these maps first.
"""
import functools

import paddle
import paddle.nn.functional as F


# ---------------------------------------------------------------- losses

def _fixed_cross_entropy():
    from paddleseg.models.losses import CrossEntropyLoss

    class CrossEntropyLossFixed(CrossEntropyLoss):
        """paddleseg 2.8 CrossEntropyLoss with the mask cast to the loss dtype."""

        def _post_process_loss(self, logit, label, semantic_weights, loss):
            mask = label != self.ignore_index
            mask = paddle.cast(mask, loss.dtype)
            label.stop_gradient = True
            mask.stop_gradient = True
            if loss.ndim > mask.ndim:
                loss = paddle.squeeze(loss, axis=-1)
            loss = loss * mask
            if semantic_weights is not None:
                loss = loss * semantic_weights
            if self.weight is not None:
                _one_hot = F.one_hot(label * paddle.cast(mask, label.dtype), logit.shape[-1])
                coef = paddle.sum(_one_hot * self.weight, axis=-1)
            else:
                coef = paddle.ones_like(label, dtype=loss.dtype)
            if self.top_k_percent_pixels == 1.0:
                return paddle.mean(loss) / (paddle.mean(mask * coef) + self.EPS)
            loss = loss.reshape((-1,))
            top_k_pixels = int(self.top_k_percent_pixels * loss.numel())
            loss, indices = paddle.topk(loss, top_k_pixels)
            coef = coef.reshape((-1,))
            coef = paddle.gather(coef, indices)
            coef.stop_gradient = True
            coef = coef.astype("float32")
            return loss.mean() / (paddle.mean(coef) + self.EPS)

    CrossEntropyLossFixed.__name__ = "CrossEntropyLoss"
    return CrossEntropyLossFixed


def _fixed_ohem_cross_entropy():
    from paddleseg.models.losses import OhemCrossEntropyLoss

    class OhemCrossEntropyLossFixed(OhemCrossEntropyLoss):
        """paddleseg 2.8 OhemCrossEntropyLoss with ``prob + (1 - valid_mask)`` in float.

        The original adds an int64 mask to float probabilities, which paddle 3.x
        rejects ("Type promotion only support calculations between
        floating-point numbers ... float32, int64"). Same algorithm otherwise.
        """

        def forward(self, logit, label):
            if len(label.shape) != len(logit.shape):
                label = paddle.unsqueeze(label, 1)
            n, c, h, w = logit.shape
            label = label.reshape((-1,)).astype("int64")
            valid_mask = (label != self.ignore_index).astype("int64")
            num_valid = valid_mask.sum()
            label = label * valid_mask
            prob = F.softmax(logit, axis=1)
            prob = prob.transpose((1, 0, 2, 3)).reshape((c, -1))
            if self.min_kept < num_valid and num_valid > 0:
                prob = prob + (1 - valid_mask).astype(prob.dtype)  # ignored pixels: prob > 1
                label_onehot = F.one_hot(label, c).transpose((1, 0))
                prob = paddle.sum(prob * label_onehot, axis=0)
                threshold = self.thresh
                if self.min_kept > 0:
                    index = prob.argsort()
                    threshold_index = int(index[min(len(index), self.min_kept) - 1].item())
                    if prob[threshold_index] > self.thresh:
                        threshold = prob[threshold_index]
                    kept_mask = (prob < threshold).astype("int64")
                    label = label * kept_mask
                    valid_mask = valid_mask * kept_mask
            label = label + (1 - valid_mask) * self.ignore_index
            label = label.reshape((n, 1, h, w))
            valid_mask = valid_mask.reshape((n, 1, h, w)).astype("float32")
            loss = F.softmax_with_cross_entropy(logit, label, ignore_index=self.ignore_index, axis=1)
            loss = loss * valid_mask
            label.stop_gradient = True
            valid_mask.stop_gradient = True
            return paddle.mean(loss) / (paddle.mean(valid_mask) + self.EPS)

    OhemCrossEntropyLossFixed.__name__ = "OhemCrossEntropyLoss"
    return OhemCrossEntropyLossFixed


@functools.lru_cache(maxsize=None)
def loss_overrides():
    """Loss classes that replace paddleseg's registry entries on this Paddle (made once)."""
    return {"CrossEntropyLoss": _fixed_cross_entropy(),
            "OhemCrossEntropyLoss": _fixed_ohem_cross_entropy()}


# ---------------------------------------------------------------- models

def _fixed_sfnet():
    import inspect
    from paddleseg.models import sfnet

    class AlignedModuleFixed(sfnet.AlignedModule):
        """paddleseg 2.8 AlignedModule with the flow divided by a float size.

        ``flow_warp`` divides the float32 flow by ``paddle.shape(x)[2:]``, an int64
        tensor, which paddle 3.x rejects: ``Type promotion only support calculations
        between floating-point numbers and between complex and real numbers. But got
        different data type x: float32, y: int64``. The same code with the size cast
        to the flow's dtype (paddleseg/models/sfnet.py, flow_warp).
        """

        def flow_warp(self, input, flow, size):
            input_shape = paddle.shape(input)
            norm = size[::-1].reshape([1, 1, 1, -1]).astype(flow.dtype)  # the fix
            norm.stop_gradient = True
            h_grid = paddle.linspace(-1.0, 1.0, size[0]).reshape([-1, 1])
            h_grid = h_grid.tile([size[1]])
            w_grid = paddle.linspace(-1.0, 1.0, size[1]).reshape([-1, 1])
            w_grid = w_grid.tile([size[0]]).transpose([1, 0])
            grid = paddle.concat([w_grid.unsqueeze(2), h_grid.unsqueeze(2)], axis=2)
            grid.unsqueeze(0).tile([input_shape[0], 1, 1, 1])  # unused, as in paddleseg
            grid = grid + paddle.transpose(flow, (0, 2, 3, 1)) / norm
            return F.grid_sample(input, grid)

    class SFNetFixed(sfnet.SFNet):
        """paddleseg 2.8 SFNet whose AlignedModules warp with ``AlignedModuleFixed``.

        Same layers, parameter names and initialisation: only the class of the
        built AlignedModules changes (a subclass that overrides ``flow_warp``).
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for layer in self.sublayers():
                if type(layer) is sfnet.AlignedModule:
                    layer.__class__ = AlignedModuleFixed

    SFNetFixed.__init__.__signature__ = inspect.signature(sfnet.SFNet.__init__)  # arg checks
    SFNetFixed.__name__ = "SFNet"
    return SFNetFixed


@functools.lru_cache(maxsize=None)
def model_overrides():
    """Model classes that replace paddleseg's registry entries on this Paddle (made once)."""
    return {"SFNet": _fixed_sfnet()}

