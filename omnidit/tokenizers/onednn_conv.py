"""Route a module's inference-time CPU Conv3d calls straight to oneDNN.

PyTorch's CPU conv3d chooses between oneDNN and its own im2col kernel by a size heuristic
(batch > 1, or N*C*D*H > 20480). A small VAE decoding one video (8-16 channels) falls on the
im2col side, which is ~10x slower than oneDNN on the same convolution; a decode of one
17-frame 64x64 video spent most of its time there.
"""

from __future__ import annotations

import torch


class OneDNNConv3d(torch.nn.Conv3d):
    """A Conv3d whose no-grad float32 CPU forward always takes oneDNN; otherwise unchanged."""

    @classmethod
    def sharing(cls, conv: torch.nn.Conv3d) -> OneDNNConv3d:
        """A new OneDNNConv3d with `conv`'s settings and `conv`'s own parameters (no copy of the
        weights; `conv` itself is left as it was)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new.train(conv.training)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def use_onednn_conv3d(module: torch.nn.Module) -> int:
    """Replace every plain `nn.Conv3d` below `module` by a `OneDNNConv3d` sharing its parameters
    (same state dict keys, outputs up to float rounding); returns how many were replaced.

    This rewires `module`'s children, so use it on a module tree you own: VideoVAE calls it on
    its own copy of the tree, never on the module it was given."""
    if not torch.backends.mkldnn.is_available():
        return 0
    targets = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Conv3d]
    for parent, name, child in targets:
        setattr(parent, name, OneDNNConv3d.sharing(child))
    return len(targets)
