"""Pretraining: the loop, the step, stopping on signals, and the run folder.

    from fastclr.train import train
    run_dir = train(config)          # a fastclr.config.Config
"""

from fastclr.train.loop import train
from fastclr.train.signals import Stopped

__all__ = ["Stopped", "train"]
