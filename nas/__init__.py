"""nas: neural architecture search as a service.

`nas.search`, `nas.load` and `nas.Job` (`nas.job`) are the Python API, on top of `nas.api`;
`nas.cli` is the command line. Heavy dependencies (torch, ray, xgboost, optuna) are imported
where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Job", "load", "search"]


def __getattr__(name: str) -> object:
    """`nas.search`, `nas.load` and `nas.Job` (from `nas.job`), imported on first use so that
    `import nas` (and with it `nas --help`) stays cheap."""
    if name in __all__:
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
