"""Where the data buildctl ships lives, for every caller: kernel project manifests and the
bundled pagedattn project (`KERNELS_DIR`), patch series per project and ref (`PATCHES_DIR`) and
shipped profiles (`PROFILES_DIR`).

In the repository these are the top-level folders kernels/, patches/ and profiles/ (the layout of
shared/DESIGN.md, and the paths `cmake -S kernels/pagedattn` and the READMEs use). This package
holds a symlink to each. setuptools follows the links when it builds the wheel, so an installed
buildctl carries real copies here as package data; an editable install or a clone follows the
links back to the top-level folders. Paths are resolved, so messages and CMake caches show the
real location, never the link.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

KERNELS_DIR = (_HERE / "kernels").resolve()
PATCHES_DIR = (_HERE / "patches").resolve()
PROFILES_DIR = (_HERE / "profiles").resolve()
