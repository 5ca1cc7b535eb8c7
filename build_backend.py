"""setuptools' build backend, able to see the torch installed in the target environment.

salt_fast._C must compile against the torch it will run with. pip builds in an isolated
environment that hides the target's site-packages; this backend appends them (after the
isolated build requirements), so a plain `pip install -e .` compiles against the installed
torch instead of downloading a second one.
"""

import site
import sys

# The target environment's site-packages (a venv's, plus the base ones when the venv includes
# them): isolation removed them from sys.path, but not from site's prefixes.
for _path in site.getsitepackages():
    if _path not in sys.path:
        sys.path.append(_path)

from setuptools.build_meta import *  # noqa: E402,F401,F403
