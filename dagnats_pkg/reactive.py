"""``dagnats.reactive``: reactive rule workflows (see ``dagnats.domain.reactive``)."""

from dagnats.domain.reactive import *  # noqa: F403
from dagnats.domain.reactive import __all__  # noqa: F401
