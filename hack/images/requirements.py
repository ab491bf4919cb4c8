"""Print the requirements of kubetune (core + the given extras) from pyproject.toml, one per line.

The Dockerfile installs these in a layer of their own, before it copies the source: that layer (torch,
Ray: gigabytes) is rebuilt only when pyproject.toml changes. `kubetune[x]` references are expanded.
Standard library only: it runs in the bare base image.

    python requirements.py pyproject.toml tune trials
"""

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    wanted, seen, out = list(extras), set(), list(project.get("dependencies", []))
    while wanted:
        extra = wanted.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            sys.exit(f"requirements.py: no extra {extra!r} in pyproject.toml (there are: {', '.join(optional)})")
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
            if own:
                wanted += own.group(1).split(",")
            else:
                out.append(req)
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        print("\n".join(requirements(tomllib.load(fh), sys.argv[2:])))
