"""Built-in methods, one per file; each registers itself on import (installed as `curb.methods`)."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
