"""fastclr: SimCLR (Chen et al., ICML 2020) as a package, a command line and a small library."""

__version__ = "0.1.0"
