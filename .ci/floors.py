"""Print the lowest versions ``pyproject.toml`` allows for the package's dependencies, as pip
constraints (``name==floor``): the minimum-versions job installs exactly these."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
extras = sys.argv[1:]  # optional extras whose floors are pinned too
requirements = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", requirement)
    if match is None:
        sys.exit(f"{requirement!r}: every dependency needs a floor (name>=version)")
    print(f"{match.group(1)}=={match.group(3)}")
