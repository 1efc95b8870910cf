"""sigstream: Sigma detection for script-based and fileless Windows attacks.

Installed, the engine is `sigstream.stream` and the collectors and Kafka I/O are
`sigstream.connectors` (pyproject maps the repository's top-level `stream/` and
`connectors/` there). Run from a source checkout without installing, those
directories sit beside this package, so the parent directory joins the search
path of this package.
"""
from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "stream").is_dir() and (_checkout / "stream" / "engine.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
del _Path, _checkout
