"""Pretraining: the loop, the step, stopping on signals, and the run folder.

    from fastclr.train import train
    run_dir = train(config)          # a fastclr.config.Config

Imported lazily: the command line names `Stopped` (signals.py) without importing torch.
"""

__all__ = ["Stopped", "train"]


def __getattr__(name: str):
    if name == "train":
        from fastclr.train.loop import train
        return train
    if name == "Stopped":
        from fastclr.train.signals import Stopped
        return Stopped
    raise AttributeError(f"module 'fastclr.train' has no attribute {name!r}")
