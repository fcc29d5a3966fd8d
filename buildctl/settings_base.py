"""The pieces every settings model is made of: the value types (sizes, durations), the field
helpers that declare a setting's flag, environment variable and config key, and the frozen
`Settings` base that remembers where each value came from. The models of the commands and the
layers that fill them are in `settings.py`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from buildctl import host
from buildctl.errors import BadInput

DEFAULT = "default"


# --- value types ------------------------------------------------------------------------------


def _to_bytes(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return host.parse_size(value)
        except BadInput as exc:
            raise ValueError(f"{exc.what} ({exc.fix})") from None
    return value


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `1h` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):  # "nan" would never compare, and so never end a wait
        raise BadInput(
            f"cannot read duration {text!r}", "write seconds or a unit, e.g. 90s, 10m, 1h"
        )
    return seconds


def _to_seconds(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except BadInput as exc:
            raise ValueError(f"{exc.what} ({exc.fix})") from None
    return value


SizeBytes = Annotated[int, BeforeValidator(_to_bytes)]
Seconds = Annotated[float, BeforeValidator(_to_seconds)]


def setting(default: Any = ..., *, env: str | None = None, layered: bool = True,
            flag: str | None = None, help: str = "") -> Any:
    """A field that flags set and, when `layered`, env var `env` and config files set too."""
    extra: dict[str, Any] = {"layered": layered}
    if env:
        extra["env"] = env
    if flag:
        extra["flag"] = flag
    return Field(default, description=help, json_schema_extra=extra)


def flag_only(default: Any = ..., *, flag: str | None = None, help: str = "") -> Any:
    return setting(default, layered=False, flag=flag, help=help)


class Settings(BaseModel):
    """Base: frozen, no unknown fields, and where every value came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    origins: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def option_fields(cls) -> dict[str, Any]:
        return {n: f for n, f in cls.model_fields.items() if n != "origins"
                and not _is_settings(f.annotation)}

    def where(self, name: str) -> str:
        """How the user set `name`, e.g. `--jobs 0`, `BUILDCTL_JOBS=0`, `jobs = 0 in FILE`."""
        origin = self.origins.get(name, DEFAULT)
        value = _show(getattr(self, name), type(self).model_fields[name])
        if origin.startswith("--"):
            return f"{origin} {value}"
        if _is_env(origin):
            return f"{origin}={value}"
        if origin.startswith("/") or origin.startswith("~"):
            return f"{name.replace('_', '-')} = {value} in {origin}"
        return f"{name.replace('_', '-')} {value} ({origin})"

    def rows(self, prefix: str = "") -> list[tuple[str, str, str]]:
        """(name, value, origin) of every value, nested settings included (for --show-settings)."""
        out: list[tuple[str, str, str]] = []
        for name, field in type(self).model_fields.items():
            if name == "origins":
                continue
            value = getattr(self, name)
            if isinstance(value, Settings):
                out.extend(value.rows(prefix))
                continue
            out.append((prefix + name.replace("_", "-"), _show(value, field),
                        self.origins.get(name, DEFAULT)))
        return out


def _is_env(origin: str) -> bool:
    """An environment variable's name (BUILDCTL_JOBS, MAX_JOBS), not a file or a default."""
    return origin.replace("_", "").isalnum() and origin.isupper()


def _is_settings(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Settings)


def _is_size(field: Any) -> bool:
    return _has(field.annotation, SizeBytes) or any(
        getattr(m, "func", None) is _to_bytes for m in field.metadata)


def _is_duration(field: Any) -> bool:
    return _has(field.annotation, Seconds) or any(
        getattr(m, "func", None) is _to_seconds for m in field.metadata)


def _show(value: Any, field: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and _is_size(field):
        return host.format_size(value)
    if isinstance(value, float) and _is_duration(field):
        return f"{value:g}s"  # what --hang-after 600 means: seconds
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "-"
    return str(value)


def _has(annotation: Any, wanted: Any) -> bool:
    return annotation == wanted or any(_has(a, wanted) for a in get_args(annotation))


def _extra(field: Any, key: str, default: Any = None) -> Any:
    return (field.json_schema_extra or {}).get(key, default)


def flag_name(name: str, field: Any) -> str:
    return _extra(field, "flag") or "--" + name.replace("_", "-")
