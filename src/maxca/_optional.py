"""Optional dependencies: each belongs to one feature and one pip extra (see README, "Install").

=============  ==============  =========================================================
extra          package         feature
=============  ==============  =========================================================
``hd95``       ``monai``       HD95 (``maxca evaluate``, :func:`maxca.metrics.hd95`,
                               ``l2r_compat`` HD95)
``demo``       ``nilearn``     ``maxca demo`` and :mod:`maxca.data.template`
``tensorboard````tensorboard`` TensorBoard events of a training run (``tensorboard: true``)
=============  ==============  =========================================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

from maxca.errors import MissingDependencyError

__all__ = ["EXTRAS", "install_hint", "require"]

EXTRAS = {"hd95": "monai", "demo": "nilearn", "tensorboard": "tensorboard"}
_NAMES = {"monai": "MONAI", "nilearn": "nilearn", "tensorboard": "TensorBoard"}


def install_hint(extra: str) -> str:
    """``pip install "maxca[<extra>]"``."""
    return f'pip install "maxca[{extra}]"'


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (a module of the package of ``extra``) or fail naming the extra.

    Args:
        module: dotted module to import, e.g. ``"monai.metrics"``.
        extra: the pip extra that installs it (a key of :data:`EXTRAS`).
        feature: what needs it, for the message (e.g. ``"HD95"``).

    Returns:
        the imported module.

    Raises:
        MissingDependencyError: the package is not installed (one line naming the extra).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = EXTRAS[extra]
        raise MissingDependencyError(
            f"{feature} needs {_NAMES[package]}, which is not installed: {install_hint(extra)}"
        ) from exc
