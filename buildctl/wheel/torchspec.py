"""The `--torch` argument: which torch build a wheel is made for, and what that implies.

Pure: no I/O. `parse_torch("2.13.0+cpu")` gives a `TorchTarget`; from it come the pip index,
the wheel's local version label and its `Requires-Dist` pin.

Label convention (see `buildctl/wheel/README.md`): `+pt{major}{minor}{variant}`, e.g.
`0.1.0+pt213cpu`, `+pt211xpu`, `+pt214cu130`, `+pt214` for the default PyPI build. This is PyTorch
Geometric's scheme; the patch release is left out because PyTorch patch releases keep the C++
ABI of their minor series and because digits would run together (`pt2110` = 2.1.10 or 2.11.0?).
What the label does not say, `Requires-Dist` (the exact release) and `buildctl verify` (every
undefined symbol against one specific libtorch) do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from buildctl.errors import BadInput

PYPI_SIMPLE = "https://pypi.org/simple"
PYTORCH_WHL = "https://download.pytorch.org/whl"

# Variants PyTorch publishes as local labels: cpu, xpu, cuXYZ, rocmX.Y. Anything else is a typo.
_VARIANT_RE = re.compile(r"^(cpu|xpu|cu\d{2,3}|rocm\d+(?:\.\d+)*)$")
_FIX_SPEC = "write the full torch release and its build, e.g. 2.13.0+cpu, 2.11.0+xpu or 2.14.1"


@dataclass(frozen=True)
class TorchTarget:
    """One torch build: `release` "2.13.0", `variant` "cpu"/"xpu"/"cu130"/None, `spec` as given.

    `variant=None` is the default build on PyPI (on Linux: a CUDA build without a `+` label).
    """

    release: str
    variant: str | None
    spec: str
    prerelease: bool = False

    @property
    def version(self) -> Version:
        return Version(self.spec)

    @property
    def major_minor(self) -> tuple[int, int]:
        v = Version(self.release)
        return v.major, v.minor

    @property
    def pip_requirement(self) -> str:
        """What to give pip to install exactly this build (pip, unlike uv, handles `+cpu`)."""
        return f"torch=={self.spec}"


def parse_torch(spec: str, *, allow_prerelease: bool = False) -> TorchTarget:
    """Parse `2.13.0+cpu`, `2.11.0+xpu`, `2.14.1`; reject `2.11`, `banana`, unknown variants.

    Pre-releases and nightlies (`2.13.0.dev20260520+xpu`) need `allow_prerelease=True`: they are
    never what a user means by accident, and their C++ ABI changes from one night to the next.
    """
    text = (spec or "").strip()
    try:
        version = Version(text)
    except InvalidVersion:
        raise BadInput(f"--torch {spec!r} is not a torch version", _FIX_SPEC) from None
    if version.epoch or version.post is not None:
        raise BadInput(
            f"--torch {spec!r}: epochs and post releases are not torch builds", _FIX_SPEC
        )
    if len(version.release) != 3:
        raise BadInput(
            f"--torch {spec!r} is incomplete: a torch build needs major.minor.patch",
            _FIX_SPEC,
        )
    is_pre = version.is_prerelease or version.is_devrelease
    if is_pre and not allow_prerelease:
        raise BadInput(
            f"--torch {spec!r} is a pre-release or nightly",
            "pass --allow-prerelease to build against it on purpose, or use a release",
        )
    variant = version.local
    if variant is not None and not _VARIANT_RE.match(variant):
        raise BadInput(
            f"--torch {spec!r}: unknown build variant {variant!r}",
            "use +cpu, +xpu, +cuXYZ (e.g. +cu130) or +rocmX.Y, or no variant for PyPI's default",
        )
    release = ".".join(str(p) for p in version.release)
    if version.pre is not None:
        release += f"{version.pre[0]}{version.pre[1]}"
    if version.dev is not None:
        release += f".dev{version.dev}"
    return TorchTarget(release=release, variant=variant, spec=str(version), prerelease=is_pre)


def default_index_url(variant: str | None, *, nightly: bool = False) -> str:
    """The index PyTorch publishes a variant on; None means PyPI (the default build)."""
    if variant is None:
        if nightly:
            raise BadInput(
                "nightlies are published per variant only",
                "give a variant, e.g. 2.13.0.dev20260520+cpu",
            )
        return PYPI_SIMPLE
    if not _VARIANT_RE.match(variant):
        raise BadInput(f"unknown torch build variant {variant!r}", "use cpu, xpu, cuXYZ or rocmX.Y")
    return f"{PYTORCH_WHL}/nightly/{variant}" if nightly else f"{PYTORCH_WHL}/{variant}"


def local_label(target: TorchTarget) -> str:
    """`pt213cpu` for 2.13.0+cpu, `pt211xpu`, `pt214cu130`, `pt214` (PyPI default build).

    PEP 440 local segments are alphanumerics separated by dots; `rocm6.4` becomes `rocm6.4`
    (two segments), which pip and the index handle, and stays readable.
    """
    major, minor = target.major_minor
    label = f"pt{major}{minor}{target.variant or ''}"
    if target.prerelease:
        # A nightly's ABI is its own: carry the date so two nightlies never share a label.
        dev = Version(target.release).dev
        label += f"dev{dev}" if dev is not None else "pre"
    return label


def local_version(base_version: str, target: TorchTarget) -> str:
    """`0.1.0` + 2.13.0+cpu -> `0.1.0+pt213cpu`.

    Set it through the build's version provider, never by renaming the file (pip checks both).
    """
    try:
        base = Version(base_version)
    except InvalidVersion:
        raise BadInput(
            f"project version {base_version!r} is not PEP 440", "fix the project's version"
        ) from None
    if base.local is not None:
        raise BadInput(
            f"project version {base_version!r} already has a local label",
            "give the plain release; buildctl adds +pt<torch> itself",
        )
    return f"{base}+{local_label(target)}"


def requires_dist(target: TorchTarget, *, exact: bool = True) -> str:
    """The wheel's torch requirement: the release without the `+variant`.

    `torch==2.11.0+xpu` trips uv's default index strategy (vllm#43087), and `torch==2.11.0` is also
    satisfied by PyPI's CUDA build, so the variant is checked at import time instead
    (`import_guard_source`). `exact=False` allows the whole minor series (`>=2.13.0,<2.14`) for a
    wheel that was verified against more than one patch release.
    """
    if exact:
        return f"torch=={target.release}"
    major, minor = target.major_minor
    return f"torch>={target.release},<{major}.{minor + 1}"


def import_guard_source(target: TorchTarget, package: str) -> str:
    """Python source for a package's `__init__`: fail early, with a clear message, on a wrong torch.

    Checks major.minor (the ABI series) and the variant (`torch.version.xpu`/`.cuda`/`.hip`), since
    the requirement pin cannot carry the variant (see `requires_dist`).
    """
    major, minor = target.major_minor
    variant = target.variant
    if variant == "xpu":
        variant_check = "_torch.version.xpu is not None"
    elif variant is not None and variant.startswith("cu"):
        variant_check = "_torch.version.cuda is not None"
    elif variant is not None and variant.startswith("rocm"):
        variant_check = "_torch.version.hip is not None"
    elif variant == "cpu":
        variant_check = "_torch.version.cuda is None and _torch.version.xpu is None"
    else:
        variant_check = "True"
    return (
        "import torch as _torch\n"
        "_tv = tuple(int(p) for p in _torch.__version__.split('+')[0].split('.')[:2])\n"
        f"if _tv != ({major}, {minor}) or not ({variant_check}):\n"
        "    raise ImportError(\n"
        f"        '{package} was built for torch {target.spec}, but torch '\n"
        "        + _torch.__version__ + ' is installed; install the wheel built for it'\n"
        "    )\n"
    )
