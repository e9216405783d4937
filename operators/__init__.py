"""The opmix operator catalog: every searchable block as a plain ``nn.Module``, one family per file.

``create_op(name, in_chs, out_chs, stride=1, **kwargs)`` builds a whole residual unit mapping
(N, in_chs, H, W) to (N, out_chs, ceil(H/stride), ceil(W/stride)) at any H, W >= 1; ``list_ops()`` names the
catalog; ``reparameterize_model(model)`` turns a trained network into its deploy form. Importing a family
module registers its operators; this package imports all of them.
"""

from __future__ import annotations

from . import acmix, attention_augmented, bot, convnext, mbconv, repvgg, resnet, swin, transformer, xvolution  # noqa: F401 (registers the operators)
from ._layers import reparameterize_model
from ._registry import OpSpec, create_op, get_spec, list_ops, register_op

__all__ = ["create_op", "list_ops", "get_spec", "register_op", "reparameterize_model", "OpSpec"]

