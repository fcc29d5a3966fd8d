"""What of CMake's configure output a person must see (pure)."""

from __future__ import annotations

WARNING_HEADS = ("CMake Warning", "CMake Deprecation Warning")


def cmake_warnings(output: str) -> list[str]:
    """Each `CMake Warning ...` block (its header and indented body) as one text."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(WARNING_HEADS):
            if current:
                blocks.append("\n".join(current).rstrip())
            current = [line]
        elif current is not None and (not line.strip() or line.startswith((" ", "\t"))):
            current.append(line)
        elif current is not None:
            blocks.append("\n".join(current).rstrip())
            current = None
    if current:
        blocks.append("\n".join(current).rstrip())
    return blocks
