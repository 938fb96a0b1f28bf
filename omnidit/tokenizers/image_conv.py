"""One-frame inputs through the causal video VAE's convolutions as 2D convolutions.

A causal conv pads time by repeating the first frame kernel_t - 1 times, so on a one-frame
input (an image: every frame of an image's decode) its 3D kernel sees kernel_t copies of the
same frame: the result is a 2D convolution with the kernel summed over time, a third of the
work and no padded copies. Same numbers up to float rounding (tested against the 3D path).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _time_summed(module: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """weight [C', C, kt, kh, kw] -> [C', C, kh, kw], kept on `module` until the weight changes
    (replaced, moved, cast or updated in place)."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    cached = module.__dict__.get("_time_summed")
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().sum(2).contiguous())
        module.__dict__["_time_summed"] = cached
    return cached[1]


@functools.cache
def _classes():
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    class ImageFoldingCausalConv3d(HunyuanVideoCausalConv3d):
        """Inference on one frame: a 2D conv with the time-summed kernel; else the library's path."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            conv = self.conv
            if (x.shape[2] != 1 or torch.is_grad_enabled() or self.pad_mode != "replicate"
                    or conv.dilation != (1, 1, 1) or conv.padding != (0, 0, 0) or conv.groups != 1):
                return super().forward(x)
            pw, _, ph, _, _, _ = self.time_causal_padding
            x2 = F.pad(x[:, :, 0], (pw, pw, ph, ph), mode="replicate")  # [B, C, H + 2ph, W + 2pw]
            w = _time_summed(self, conv.weight)  # [C', C, kh, kw]
            if x2.device.type == "cpu" and x2.dtype == torch.float32 and torch.backends.mkldnn.is_available():
                # PyTorch's own heuristic sends these small convs to a ~2.5x slower im2col kernel.
                y = torch.mkldnn_convolution(x2.contiguous(), w, conv.bias, (0, 0), conv.stride[1:], (1, 1), 1)
            else:
                y = F.conv2d(x2, w, conv.bias, stride=conv.stride[1:])  # [B, C', H', W']
            return y.unsqueeze(2)  # [B, C', 1, H', W']

    return HunyuanVideoCausalConv3d, ImageFoldingCausalConv3d


def use_image_conv(module: torch.nn.Module) -> int:
    """Give every causal conv in `module` (diffusers' HunyuanVideoCausalConv3d) the one-frame 2D
    path in place; parameters, state dict and other inputs are untouched. Returns the count."""
    base, fast = _classes()
    switched = 0
    for m in module.modules():
        if type(m) is base:
            m.__class__ = fast
            switched += 1
    return switched
