"""The bundled Flow YAMLs, wherever the package is installed: the CLI serves them by name, and the
benchmark, the export tool and the tests read them from here rather than from the CLI's `__main__`."""

from importlib.resources import files
from importlib.resources.abc import Traversable

BUNDLED_FLOWS = ('torch-flow.yml', 'onnx-flow.yml', 'tensorrt-flow.yml', 'openvino-flow.yml', 'search-flow.yml')


def bundled_flow(name: str) -> Traversable:
    """The package's own copy of a bundled Flow YAML."""
    return files(__name__) / name
