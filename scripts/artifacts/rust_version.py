"""Cargo.toml's rust-version is the true minimum of the locked dependency tree.

  cargo metadata --format-version 1 --locked | rust_version.py Cargo.toml

The minimum is the highest `rust-version` any locked package declares (what the locked
tree needs); the crate's own code is held to it by clippy's `incompatible_msrv` lint,
which reads the same key. Fails when Cargo.toml states another version.
"""

import json
import re
import sys


def main():
    metadata = json.load(sys.stdin)
    with open(sys.argv[1], encoding="utf-8") as f:
        stated = re.search(r'^rust-version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)
    locked = {node["id"] for node in metadata["resolve"]["nodes"]}
    roots = set(metadata.get("workspace_members", []))
    needs = [
        (tuple(int(x) for x in p["rust_version"].split(".")), p["name"], p["version"])
        for p in metadata["packages"]
        if p["id"] in locked and p["id"] not in roots and p.get("rust_version")
    ]
    version, name, at = max(needs)
    minimum = ".".join(str(x) for x in version)
    stated_key = tuple(int(x) for x in stated.split("."))
    if stated_key != version[: len(stated_key)] or len(stated_key) < 2:
        sys.exit(f"Cargo.toml says rust-version = \"{stated}\", but the locked tree needs {minimum} ({name} {at})")
    print(f"rust-version {stated}: the highest of the locked tree ({name} {at} needs {minimum})")


if __name__ == "__main__":
    main()
