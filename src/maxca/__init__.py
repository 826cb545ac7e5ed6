"""maxca: deformable medical image registration with Multi-Axis Cross-covariance Attention.

Short, explicit public API::

    maxca.MAXCA, maxca.make_attention, maxca.ATTENTION_KINDS      # blocks
    maxca.create_model, maxca.list_models, maxca.count_parameters  # networks
    maxca.warp, maxca.integrate_velocity, maxca.compose            # geometry
    maxca.load_checkpoint, maxca.save_checkpoint                   # models on disk
    maxca.load_pretrained("brain"), maxca.list_pretrained()        # packaged models
"""

from maxca._version import __version__
from maxca.errors import MaxcaError, MaxcaInputError
from maxca.layers import ATTENTION_KINDS, MAXCA, make_attention
from maxca.models import RegistrationOutput, count_parameters, create_model, list_models
from maxca.models.checkpoint import load_checkpoint, save_checkpoint
from maxca.pretrained import list_pretrained, load_pretrained
from maxca.spatial import compose, integrate_velocity, resize_flow, warp

__all__ = [
    "ATTENTION_KINDS",
    "MAXCA",
    "MaxcaError",
    "MaxcaInputError",
    "RegistrationOutput",
    "__version__",
    "compose",
    "count_parameters",
    "create_model",
    "integrate_velocity",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_pretrained",
    "make_attention",
    "resize_flow",
    "save_checkpoint",
    "warp",
]
