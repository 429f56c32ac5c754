"""fastclr: SimCLR (Chen et al., ICML 2020) as a package, a command line and a small library."""

__version__ = "0.1.0"


def pretrained(name: str = "fashion-mnist", device="cpu"):
    """A SimCLR encoder shipped with fastclr, in eval mode: [0, 1] images (N, C, H, W) -> h.

    No download: the file is inside the package, its sha256 checked at load. `name`: one of
    fastclr.zoo.names() (the model cards are fastclr/pretrained/NAME.md).
    """
    from fastclr.zoo import load_pretrained
    return load_pretrained(name, device)
