"""torchvision's classification models, without importing the torchvision package.

The torchvision wheels on the package index are CUDA builds: beside the CPU torch, ``import
torchvision`` fails while registering its C++ operators ("operator torchvision::nms does not
exist"). The model definitions are pure Python, so this loads ``torchvision.models`` from the
installed files under a bare package object that skips ``torchvision/__init__.py`` (the only
place that touches the C extension), takes the model builders, and removes every
``torchvision`` entry from ``sys.modules`` again so no other code sees the half-loaded package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable

from torch import nn

ZOO = ("resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "squeezenet1_1", "shufflenet_v2_x0_5",
       "efficientnet_b0", "densenet121")


def torchvision_builders(names: tuple = ZOO) -> dict[str, Callable[..., nn.Module]]:
    """{name: builder} for the models `names` (default ZOO); ImportError if torchvision is not installed."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed (pip install -e '.[test]' installs it)")
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torchvision"] = package
    try:
        models = importlib.import_module("torchvision.models")
        return {name: getattr(models, name) for name in names}
    finally:
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        sys.modules.update(saved)
