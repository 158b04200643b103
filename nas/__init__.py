"""nas: neural architecture search as a service.

`nas.api` is the Python API; `nas.cli` the command line. Heavy dependencies (torch, ray,
xgboost, optuna) are imported where they are used.
"""

__version__ = "0.1.0"
