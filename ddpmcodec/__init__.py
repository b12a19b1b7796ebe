"""ddpmcodec: progressive lossy-to-lossless image coding with a DDPM (Ho, Jain, Abbeel 2020)."""

__version__ = "0.6.0"
