#!/usr/bin/env python3
"""Checks that no crate of the workspace declares a `rust-version` below what its locked
dependencies require.

For each workspace member, and for each feature set listed in FEATURE_SETS, it asks cargo which
packages that selection compiles (`cargo tree`, normal and build dependencies, the locked
versions) and takes the highest `rust-version` among them. A feature that needs a newer Rust
than the crate's default features must say so in its docs; FEATURE_SETS names those floors.

Standard library only, so it runs with any python3. Usage: scripts/check-rust-version.py
"""

import json
import subprocess
import sys

# (package, features, the floor its docs and the README state for that selection).
# A selection with no entry here must fit the package's own `rust-version`.
FEATURE_SETS = [
    ("immut", "aws", "1.94.1"),
    ("immut", "gcp", "1.91"),
    ("immut", "azure", "1.88"),
]


def version_key(v):
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def cargo(*args):
    out = subprocess.run(["cargo", *args], check=True, capture_output=True, text=True)
    return out.stdout


def main():
    meta = json.loads(cargo("metadata", "--format-version", "1", "--locked"))
    members = [p for p in meta["packages"] if p["id"] in meta["workspace_members"]]
    # The members' own rust-version is what is checked, so only their dependencies count.
    own = {m["name"] for m in members}
    rust_version = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"] if p["name"] not in own}

    def needed(package, features):
        args = ["tree", "--locked", "-p", package, "-e", "normal,build", "--prefix", "none", "--format", "{p}"]
        if features:
            args += ["--features", features]
        worst = ("0", "(none)")
        for line in cargo(*args).splitlines():
            fields = line.replace("(*)", "").split()
            if len(fields) < 2:
                continue
            name, version = fields[0], fields[1].lstrip("v")
            declared = rust_version.get((name, version))
            if declared and version_key(declared) > version_key(worst[0]):
                worst = (declared, f"{name} {version}")
        return worst

    failures = []
    for member in members:
        declared = member.get("rust_version") or "0"
        floor, culprit = needed(member["name"], None)
        status = "ok" if version_key(floor) <= version_key(declared) else "TOO LOW"
        print(f"{member['name']:<12} default features   declares {declared:<7} needs {floor:<7} ({culprit}) {status}")
        if status != "ok":
            failures.append(f"{member['name']} declares rust-version {declared} but {culprit} needs {floor}")
    for package, features, stated in FEATURE_SETS:
        floor, culprit = needed(package, features)
        status = "ok" if version_key(floor) <= version_key(stated) else "TOO LOW"
        print(f"{package:<12} features {features:<9} states   {stated:<7} needs {floor:<7} ({culprit}) {status}")
        if status != "ok":
            failures.append(f"{package} with features {features} is documented as Rust {stated} but {culprit} needs {floor}")
    if failures:
        print("\n".join(["rust-version check failed:"] + failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
