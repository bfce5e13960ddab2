"""paris: decentralized text-to-image diffusion training (arXiv 2510.03434)."""

__version__ = "0.1.0"
