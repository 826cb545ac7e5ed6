"""Pictures of registrations (matplotlib, Agg canvas: no display needed)."""

from maxca.viz.figures import COLUMNS, figure_pixel_size, registration_figure

__all__ = ["COLUMNS", "figure_pixel_size", "registration_figure"]
