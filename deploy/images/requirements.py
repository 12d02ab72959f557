"""Prints the requirements of the project's dependency groups (pyproject.toml), one a line, for an image build.

`python3 requirements.py gateway router` gives the base dependencies and those of both groups, with the
project's own extras (`spiral[head]`) expanded, so an image installs what its role needs and nothing else
(with `pip install -c constraints.txt -r -`). Standard library only: it runs before anything is installed.
"""

import sys
import tomllib
from pathlib import Path


def requirements(project: dict, groups: list[str]) -> list[str]:
    extras = project["optional-dependencies"]
    wanted, seen = list(groups), set()
    found = list(project["dependencies"])
    while wanted:
        group = wanted.pop()
        if group in seen:
            continue
        seen.add(group)
        for requirement in extras[group]:
            if requirement.startswith(f"{project['name']}["):
                wanted += requirement[requirement.index("[") + 1 : requirement.index("]")].split(",")
            else:
                found.append(requirement)
    return sorted(set(found))


if __name__ == "__main__":
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if len(sys.argv) > 2 and sys.argv[1] == "--pyproject":
        pyproject, sys.argv[1:] = Path(sys.argv[2]), sys.argv[3:]
    print("\n".join(requirements(tomllib.loads(pyproject.read_text())["project"], sys.argv[1:])))
