"""softdist: softmax cross-entropy and pairwise distances, written once against the array API standard."""

from importlib import metadata as _metadata

from .distances import pairwise_distances, pairwise_sqdist
from .linear import linear_cross_entropy, linear_cross_entropy_and_grad
from .neighbors import knn
from .softmax import softmax_cross_entropy, softmax_cross_entropy_and_grad, softmax_loss

try:  # one place for the version: pyproject.toml, read from the installed metadata
    __version__ = _metadata.version("softdist")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, not installed
    __version__ = "0+unknown"
__all__ = [
    "KNeighborsClassifier",
    "SoftmaxClassifier",
    "__version__",
    "knn",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "pairwise_distances",
    "pairwise_sqdist",
    "softmax_cross_entropy",
    "softmax_cross_entropy_and_grad",
    "softmax_loss",
]


def __getattr__(name: str) -> object:
    # The scikit-learn estimators import scikit-learn: only when asked for.
    if name in ("KNeighborsClassifier", "SoftmaxClassifier"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'softdist' has no attribute {name!r}")
