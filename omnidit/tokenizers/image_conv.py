"""One-frame inputs through the causal video VAE's convolutions as 2D convolutions.

A causal conv pads time by repeating the first frame kernel_t - 1 times, so on a one-frame
input (an image: every frame of an image's decode) its 3D kernel sees kernel_t copies of the
same frame: the result is a 2D convolution with the kernel summed over time, a third of the
work and no padded copies. Same numbers up to float rounding (tested against the 3D path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _causal_conv_class() -> type[torch.nn.Module]:
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    return HunyuanVideoCausalConv3d


class ImageFoldingCausalConv3d(torch.nn.Module):
    """Wraps one diffusers `HunyuanVideoCausalConv3d`: inference on one frame runs as a 2D conv with
    the time-summed kernel; every other input goes through the wrapped module's own forward.

    Its one child is the wrapped module's `conv` (the same object), so parameters and state dict
    keys are the library's; the wrapped module is held beside it, unregistered, for its forward."""

    def __init__(self, causal: torch.nn.Module):
        super().__init__()
        self.conv = causal.conv  # the same nn.Conv3d: `.to()`, state dicts and optimizers see one set
        self.__dict__["wrapped"] = causal  # not a registered child, so its parameters are not listed twice
        self._time_summed: tuple | None = None

    def extra_repr(self) -> str:
        return f"wraps {type(self.wrapped).__name__}"

    def _summed_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """weight [C', C, kt, kh, kw] -> [C', C, kh, kw], kept until the weight changes
        (replaced, moved, cast or updated in place)."""
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._time_summed is None or self._time_summed[0] != key:
            self._time_summed = (key, weight.detach().sum(2).contiguous())
        return self._time_summed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        causal, conv = self.wrapped, self.conv
        if (x.shape[2] != 1 or torch.is_grad_enabled() or causal.pad_mode != "replicate"
                or conv.dilation != (1, 1, 1) or conv.padding != (0, 0, 0) or conv.groups != 1):
            return causal(x)  # the library's path (and its backward)
        pw, _, ph, _, _, _ = causal.time_causal_padding
        x2 = F.pad(x[:, :, 0], (pw, pw, ph, ph), mode="replicate")  # [B, C, H + 2ph, W + 2pw]
        w = self._summed_weight(conv.weight)  # [C', C, kh, kw]
        if x2.device.type == "cpu" and x2.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            # PyTorch's own heuristic sends these small convs to a ~2.5x slower im2col kernel.
            y = torch.mkldnn_convolution(x2.contiguous(), w, conv.bias, (0, 0), conv.stride[1:], (1, 1), 1)
        else:
            y = F.conv2d(x2, w, conv.bias, stride=conv.stride[1:])  # [B, C', H', W']
        return y.unsqueeze(2)  # [B, C', 1, H', W']


def use_image_conv(module: torch.nn.Module) -> int:
    """Wrap every causal conv below `module` (diffusers' HunyuanVideoCausalConv3d) in an
    `ImageFoldingCausalConv3d`; parameters and state dict keys are unchanged. Returns the count.

    This rewires `module`'s children, so use it on a module tree you own: VideoVAE calls it on
    its own copy of the tree, never on the module it was given."""
    base = _causal_conv_class()
    targets = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is base]
    for parent, name, child in targets:
        setattr(parent, name, ImageFoldingCausalConv3d(child))
    return len(targets)
