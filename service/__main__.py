"""``python -m service``: serve with settings from the environment (``SEEN_*``) and ``SEEN_CONFIG_FILE``."""

import sys

from service.config import Settings
from service.server import serve

sys.exit(serve(Settings()))
