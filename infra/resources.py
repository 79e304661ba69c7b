"""Stream and bucket names and subject builders, under the import path scripts outside
this repository use (``from dagnats.infra.resources import HISTORY_STREAM``); the
contract itself lives in ``dagnats.infra.wire``."""

from .wire.names import *  # noqa: F401,F403
from .wire.subjects import *  # noqa: F401,F403
