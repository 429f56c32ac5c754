"""The augmentation ops by name, for choosing a subset (the paper's Figure 5 ablations).

Plain Python, importable without torch (and without the rest of fastclr.augment), so that
config and command-line code can check names before anything heavy is imported.
"""

from __future__ import annotations

import difflib
from typing import Iterable

# Every op SimCLRAugment knows, in the order they are applied (crop and flip are one resampling;
# see fastclr/augment/extra.py for why rotate, applied last, is the same as right after flip).
#   crop      random resized crop (off: the whole image resized to the output side)
#   flip      horizontal flip                     jitter    colour jitter
#   gray      random grayscale                    sobel     Sobel gradient magnitude
#   blur      gaussian blur                       solarize  invert pixels >= 0.5
#   noise     additive gaussian noise             cutout    a zeroed square
#   rotate    90, 180 or 270 degrees
OPS = ("crop", "flip", "jitter", "gray", "sobel", "blur", "solarize", "noise", "cutout",
       "rotate")


def check_ops(ops: Iterable[str] | None) -> tuple[str, ...] | None:
    """`ops` as a tuple of known names in OPS order, without repeats; None stays None (all).

    Raises ValueError naming an unknown op (with the closest known name), TypeError for a
    bare string (a tuple of names is meant; "crop" would otherwise read as c, r, o, p).
    """
    if ops is None:
        return None
    if isinstance(ops, str):
        raise TypeError(f"ops is a tuple of op names such as ('crop', 'jitter'), got {ops!r}")
    names = tuple(ops)
    for name in names:
        if name not in OPS:
            close = difflib.get_close_matches(str(name), OPS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown augmentation op {name!r}{hint} (known: "
                             f"{', '.join(OPS)})")
    return tuple(op for op in OPS if op in names)
