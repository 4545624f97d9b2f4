"""softdist: softmax cross-entropy and pairwise distances, written once against the array API standard."""

from .distances import pairwise_distances, pairwise_sqdist

__version__ = "0.1.0"
__all__ = ["__version__", "pairwise_distances", "pairwise_sqdist"]
