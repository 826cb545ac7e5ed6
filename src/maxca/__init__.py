"""maxca: deformable medical image registration with Multi-Axis Cross-covariance Attention."""

__version__ = "0.1.0"
