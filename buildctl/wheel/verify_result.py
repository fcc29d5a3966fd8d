"""What `buildctl verify` found (schema `buildctl.verify/1`): per extension, the symbols and
libraries that did not resolve or were not checked, and the verdict; with its terminal rendering
and the failure a wheel build raises. The search that fills it is in `verify.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from buildctl.errors import BuildFailed


class SymbolReport(BaseModel):
    symbol: str
    demangled: str
    version: str | None = None
    note: str = ""


class ExtensionReport(BaseModel):
    path: str
    soname: str | None = None
    needed: list[str] = Field(default_factory=list)
    missing_needed: list[str] = Field(default_factory=list)
    external_needed: list[str] = Field(default_factory=list)  # external, no runtime given for it
    # Runtime libraries in the DT_NEEDED closure: soname -> source ("intel-sycl-rt 2025.3.2").
    runtime_libs: dict[str, str] = Field(default_factory=dict)
    undefined_total: int = 0
    python_symbols: int = 0
    unresolved: list[SymbolReport] = Field(default_factory=list)
    unchecked: list[SymbolReport] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    ok: bool = True


class VerifyResult(BaseModel):
    schema_: Literal["buildctl.verify/1"] = Field("buildctl.verify/1", alias="schema")
    wheel: str
    torch: str
    torch_version: str | None = None
    runtime: list[str] = Field(default_factory=list)  # runtime sources given, in search order
    extensions: list[ExtensionReport] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    ok: bool = True
    elapsed_s: float = 0.0

    model_config = {"populate_by_name": True}

    def unresolved_demangled(self) -> list[str]:
        return [s.demangled for e in self.extensions for s in e.unresolved]

    def against(self) -> str:
        return self.torch + (f" + runtime {', '.join(self.runtime)}" if self.runtime else "")

    def render(self, *, max_symbols: int = 50) -> str:
        """Plain text for the terminal and logs, grouped per extension."""
        verdict = "PASS" if self.ok else "FAIL"
        lines = [f"verify {Path(self.wheel).name} against {self.against()}: {verdict}"]
        for ext in self.extensions:
            state = "ok" if ext.ok else "FAIL"
            lines.append(
                f"  {ext.path}: {state} ({ext.undefined_total} undefined, "
                f"{len(ext.unresolved)} unresolved, {len(ext.unchecked)} unchecked)"
            )
            for problem in ext.problems:
                lines.append(f"    ! {problem}")
            if ext.runtime_libs:
                libs = ", ".join(f"{n} ({src})" for n, src in ext.runtime_libs.items())
                lines.append(f"    runtime: {libs}")
            for sym in ext.unresolved[:max_symbols]:
                ver = f"@{sym.version}" if sym.version else ""
                lines.append(f"    unresolved: {sym.demangled}{ver}")
                lines.append(f"        {sym.symbol}" + (f"  ({sym.note})" if sym.note else ""))
            if len(ext.unresolved) > max_symbols:
                lines.append(f"    ... {len(ext.unresolved) - max_symbols} more unresolved")
            if ext.unchecked:
                lines.append(
                    f"    {len(ext.unchecked)} symbol(s) not checked: {ext.unchecked[0].note}"
                )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        if not self.ok:
            first = self.unresolved_demangled()[:3]
            problems = [p for e in self.extensions for p in e.problems]
            detail = f": unresolved {', '.join(first)}" if first else ""
            if not detail and problems:
                detail = f": {problems[0]}"
            raise BuildFailed(
                f"{Path(self.wheel).name} does not link against {self.against()}{detail}",
                "rebuild against that torch and runtime (buildctl wheel --torch ...) "
                "or pin the torch and runtime it was built for",
            )
