"""Route a module's inference-time CPU Conv3d calls straight to oneDNN.

PyTorch's CPU conv3d chooses between oneDNN and its own im2col kernel by a size heuristic
(batch > 1, or N*C*D*H > 20480). A small VAE decoding one video (8-16 channels) falls on the
im2col side, which is ~10x slower than oneDNN on the same convolution; a decode of one
17-frame 64x64 video spent most of its time there.
"""

from __future__ import annotations

import torch


class _OneDNNConv3d(torch.nn.Conv3d):
    """A Conv3d whose no-grad float32 CPU forward always takes oneDNN; otherwise unchanged."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def use_onednn_conv3d(module: torch.nn.Module) -> int:
    """Switch every plain `nn.Conv3d` in `module` to the oneDNN path in place (same parameters,
    state dict and outputs up to float rounding); returns how many were switched."""
    if not torch.backends.mkldnn.is_available():
        return 0
    switched = 0
    for m in module.modules():
        if type(m) is torch.nn.Conv3d:
            m.__class__ = _OneDNNConv3d
            switched += 1
    return switched
