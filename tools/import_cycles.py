"""Import cycles among cdnn's modules, counting imports inside functions too."""
import ast, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
mods = {}
for path in root.glob("cdnn/**/*.py"):
    name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + [node.module])
            deps.add(base)
            deps |= {f"{base}.{a.name}" for a in node.names}
    mods[name] = deps
graph = {m: {d for d in deps if d in mods and d != m and d != "cdnn"} for m, deps in mods.items()}
def cycle_from(start):
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt); stack.append((nxt, path + [nxt]))
found = {tuple(sorted(set(c))): c for m in graph if (c := cycle_from(m))}
for c in found.values():
    print(" -> ".join(c))
print(f"{len(found)} cycles")
