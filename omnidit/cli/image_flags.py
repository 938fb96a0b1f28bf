"""`--image START.png` for `generate`: the start image of an image-to-video generation, read before the
model loads (omnidit/tokenizers/image_input.load_image) and checked against the model after."""

from __future__ import annotations

import argparse

from omnidit.cli.common import UserError

FLAG = "--image"
HELP = (
    "start image (png, jpeg, webp, ...) of an image-to-video generation: the video's first frame, fitted "
    "to the output size (scaled to cover, centre-cropped); needs --frames > 1"
)


def add_image_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(FLAG, default=None, metavar="START.png", help=HELP)


def read_image(path: str | None):
    """The file as an RGB PIL image (None: no --image); a UserError naming --image if it cannot be read."""
    if path is None:
        return None
    from omnidit.request import RequestError
    from omnidit.tokenizers.image_input import load_image

    try:
        return load_image(path, field=FLAG)
    except RequestError as e:
        raise UserError(str(e)) from None


def check_image(pipe, image, frames: int):
    """The start image as `pipe` takes it; a UserError naming --image if the model or --frames cannot take it."""
    if image is None:
        return None
    from omnidit import pipeline_image
    from omnidit.request import RequestError

    try:
        checked = pipe.check_image(image)
        pipeline_image.check_request(checked, frames, 1)
    except RequestError as e:
        raise UserError(f"{FLAG}: {e}") from None
    return checked
