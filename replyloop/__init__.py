"""replyloop: keep a customer-service LLM consistent with what its supervisors approve."""

import os as _os

__version__ = "0.1.0"

# The wheel installs bot/, training/, evaluation/ and policies/ inside this package (pyproject
# package-dir). In a source checkout they sit beside replyloop/; extend the package path to find them.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "bot")) and _os.path.isfile(_os.path.join(_root, "bot", "__init__.py")):
    __path__.append(_root)  # noqa: F821 (the package's own __path__)
