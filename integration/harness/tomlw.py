"""A tiny TOML writer: enough for router.toml and users.toml.

Top-level keys whose value is a dict become `[table]`; a list of dicts becomes
`[[array-of-tables]]`; scalars, lists of scalars and inline dicts are written
as values. `raw_lines` lets a test append text verbatim (e.g. deliberate errors).
"""
from __future__ import annotations

import json


def _key(k: str) -> str:
    if k and all(c.isalnum() or c in "_-" for c in k):
        return k
    return json.dumps(k)


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes for what we write.
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(doc: dict) -> str:
    out: list[str] = []
    scalars = {k: v for k, v in doc.items()
               if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    for k, v in scalars.items():
        out.append(f"{_key(k)} = {value(v)}")
    for k, v in doc.items():
        if k in scalars:
            continue
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{_key(k)}]")
            for kk, vv in v.items():
                out.append(f"{_key(kk)} = {value(vv)}")
        else:
            for item in v:
                out.append("")
                out.append(f"[[{_key(k)}]]")
                for kk, vv in item.items():
                    out.append(f"{_key(kk)} = {value(vv)}")
    return "\n".join(out).lstrip("\n") + "\n"
