"""Old home of :mod:`maxca.models.checkpoint`, kept so that ``maxca.training.checkpoint`` imports
keep working: this name is the same module object as :mod:`maxca.models.checkpoint`."""

import sys

from maxca.models import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint
