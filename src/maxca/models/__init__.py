"""Registration networks assembled from :mod:`maxca.layers` and :mod:`maxca.spatial`.

Importing this package registers every model::

    >>> from maxca.models import create_model, list_models
    >>> list_models()
    ['corrmaxca', 'hybrid', 'pyramid', 'pyramid_small', 'unet']
    >>> model = create_model("pyramid_small", spatial_dims=3, attention="maxca")
    >>> out = model(fixed, moving)  # out.flow (B, 3, *S), out.warped (B, C, *S)
"""

from maxca.models._registry import (
    count_parameters,
    create_model,
    get_config_class,
    get_default_config,
    list_models,
    model_from_config,
    register_model,
)
from maxca.models.base import ModelConfig, RegistrationModel, RegistrationOutput
from maxca.models.corrmaxca import CorrMAXCAConfig, CorrMAXCANet
from maxca.models.heads import RegistrationHead
from maxca.models.hybrid import HybridConfig, HybridNet
from maxca.models.pyramid import PyramidConfig, PyramidNet
from maxca.models.unet import UNet, UNetConfig

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "get_config_class",
    "get_default_config",
    "model_from_config",
    "count_parameters",
    "ModelConfig",
    "RegistrationModel",
    "RegistrationOutput",
    "RegistrationHead",
    "PyramidConfig",
    "PyramidNet",
    "UNetConfig",
    "UNet",
    "HybridConfig",
    "HybridNet",
    "CorrMAXCAConfig",
    "CorrMAXCANet",
]
