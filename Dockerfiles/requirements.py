"""Write setup.py's requirements as pip requirement files: base.txt, onnx.txt, tensorrt.txt.

The images install their dependencies from these files in a layer that then depends on the
requirements alone, not on the rest of setup.py (its test and docs extras change far more often
than what the images install). Runs in the Dockerfiles' first stage, with nothing installed:
setup.py is run with a stand-in for setuptools that only records what `setup()` is given.

    python requirements.py SETUP_PY OUT_DIR
"""

import runpy
import sys
import types
from pathlib import Path

EXTRAS = ('onnx', 'tensorrt')


def setup_arguments(setup_py: Path) -> dict:
    """The keyword arguments setup.py passes to setuptools.setup()."""
    found: dict = {}
    stand_in = types.ModuleType('setuptools')
    stand_in.setup = found.update
    stand_in.find_packages = lambda **_: []
    real = sys.modules.get('setuptools')
    sys.modules['setuptools'] = stand_in
    try:
        runpy.run_path(str(setup_py), run_name='__main__')
    finally:
        if real is None:
            del sys.modules['setuptools']
        else:
            sys.modules['setuptools'] = real
    return found


def main(setup_py: str, out_dir: str) -> None:
    arguments = setup_arguments(Path(setup_py))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lists = {'base': arguments['install_requires']}
    lists.update({extra: arguments['extras_require'][extra] for extra in EXTRAS})
    for name, requirements in lists.items():
        (out / f'{name}.txt').write_text(''.join(f'{line}\n' for line in requirements))


if __name__ == '__main__':
    main(*sys.argv[1:])
