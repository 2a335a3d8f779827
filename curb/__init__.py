"""curb: the open benchmark suite for continual user-representation learning.

`curb.run(...)` and `curb.load(run_dir)` (docs/python-api.md) are imported on first use, so
`import curb` stays cheap: torch is loaded only when `curb.run` runs cells.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load", "run"]


def __getattr__(name: str):
    if name in ("load", "run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'curb' has no attribute {name!r}")
