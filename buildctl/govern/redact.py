"""Keeping credentials out of what users attach to bug reports (crash repros, stall bundles).

Two nets: environment variables whose *name* says they hold a secret are left out entirely, and
every recorded string (other variables' values, argv, output tails) has secret-looking *values*
masked: URL userinfo, bearer/basic credentials, and token formats with a known prefix (GitHub,
GitLab, PyPI, npm, Slack, AWS access key ids). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MASK = "***"

# Names: *_TOKEN, *_KEY, *_SECRET, *PASSWORD*, *CREDENTIALS* and their usual relatives.
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|COOKIE|SESSION|AUTH"
    r"|(?:^|_)(?:API_?)?KEYS?(?:_|$)|APIKEY|(?:^|_)PAT(?:_|$)|(?:^|_)PWD$",
    re.IGNORECASE,
)
# `PWD` is the working directory, not a password; `*_KEY*` names that are not keys.
_NOT_SECRET_NAME = re.compile(r"^(PWD|OLDPWD|SSH_AUTH_SOCK|.*_KEYMAP|KEYTIMEOUT)$")

# scheme://user[:password]@host -> scheme://***@host (any scheme: https, postgres, redis...).
# Greedy up to the authority's last '@': a password may hold an unencoded '@'.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"]+@")
# key=value credentials in query strings and DSNs: `?access_token=...`, `password=...`.
_KEY_VALUE = re.compile(
    r"(?P<key>(?:^|[?&;\s])(?:access_token|token|password|passwd|pwd|secret|api_?key)=)"
    r"[^&;\s'\"]+",
    re.IGNORECASE,
)
_VALUE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Authorization schemes: "Bearer <token>", "Basic <base64>", "token <pat>".
    re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"(?<=\bBasic )[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?<=[Aa]uthorization: token )[A-Za-z0-9_]{8,}"),
    # GitHub: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained PATs.
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),  # GitLab
    re.compile(r"\bpypi-[A-Za-z0-9_-]{40,}"),  # PyPI upload tokens
    re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    # AWS access key ids: long-term (AKIA) and temporary (ASIA), and the other principal ids.
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"),
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.match(name)


def redact_text(text: str) -> str:
    """`text` with every secret-looking value replaced by `***` (the rest is left as it is)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{MASK}", text)
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(MASK, text)
    return text


def redact_argv(argv: list[str]) -> list[str]:
    return [redact_text(arg) for arg in argv]


def redact_env(
    env: Mapping[str, str], drop: re.Pattern[str] | None = None
) -> tuple[dict[str, str], list[str], list[str]]:
    """(environment safe to record, names left out, names whose values were masked).

    Names that say they hold a secret are left out whole; every other value is kept with its
    secret-looking parts masked. `drop` names variables to leave out silently (not secrets,
    just meaningless outside this build).
    """
    kept: dict[str, str] = {}
    left_out: list[str] = []
    masked: list[str] = []
    for name in sorted(env):
        if drop is not None and drop.match(name):
            continue
        if is_secret_name(name):
            left_out.append(name)
            continue
        value = env[name]
        clean = redact_text(value)
        if clean != value:
            masked.append(name)
        kept[name] = clean
    return kept, left_out, masked
