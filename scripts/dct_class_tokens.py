"""The webui's entry point for this repository (it loads extensions/<name>/scripts/*.py): the "Class Tokens" tab,
the always-on "Class guidance (DATE)" script and the /dct/v1 API. Everything lives in the dct_webui package; the
webui finds the Script subclass in this module's namespace."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # forks that do not put the extension's folder on sys.path
    sys.path.insert(0, _ROOT)

from dct_webui.date_script import ClassGuidanceScript  # noqa: E402,F401
from dct_webui.entry import register  # noqa: E402

register()
