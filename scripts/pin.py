"""Print the pinned requirement for a package, read from setup.py's PINS (the one place pins live)."""

import ast
import sys
from pathlib import Path

tree = ast.parse((Path(__file__).resolve().parent.parent / "setup.py").read_text())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PINS" for t in node.targets):
        print(ast.literal_eval(node.value)[sys.argv[1]])
        break
else:
    sys.exit("setup.py has no PINS")
