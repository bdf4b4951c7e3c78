"""Functions longer than 80 lines and modules longer than 700 in src/ and cdnn/."""
import re, sys, pathlib
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
for path in sorted(list(root.glob("src/*.p*")) + list(root.glob("cdnn/**/*.py"))):
    lines = path.read_text().splitlines()
    if len(lines) > 700:
        print(f"MODULE {path}: {len(lines)} lines")
    starts = [(i, len(l) - len(l.lstrip()), l.strip()) for i, l in enumerate(lines)
              if re.match(r"\s*(async def|def|cdef|cpdef)\s+\S.*\(", l) and "cdef class" not in l]
    for i, indent, text in starts:
        end = i + 1
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        if end - i > 80:
            print(f"{path}:{i+1}: {end - i} lines: {text[:60]}")
