"""Fail unless each ``name==version`` constraint (a file of them, the first argument) is what is
installed: the minimum-versions job must really run on the floors."""

import re
import sys
from importlib.metadata import version
from pathlib import Path


def release(text: str) -> tuple[int, ...]:
    """``(2, 13, 0)`` of ``"2.13.0+cpu"``, trailing zeros dropped."""
    numbers = [int(x) for x in re.match(r"\d+(?:\.\d+)*", text).group(0).split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


floors = dict(line.split("==") for line in Path(sys.argv[1]).read_text().split())
wrong = [
    f"{name}: {version(name)} installed, floor {floor}"
    for name, floor in floors.items()
    if release(version(name)) != release(floor)
]
if wrong:
    sys.exit("not at the floor: " + "; ".join(wrong))
print("installed at the floors:", ", ".join(f"{name} {version(name)}" for name in floors))
