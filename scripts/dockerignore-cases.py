#!/usr/bin/env python3
"""Builds every `.dockerignore` case of src/checkout/dockerignore.rs with the docker CLI and
says where the CLI differs from the table.

For each `Case` it writes the files (empty), the `.dockerignore` and a Dockerfile
`FROM deploybot-local/static:latest` + `COPY . /ctx` into a fresh directory, runs
`DOCKER_BUILDKIT=0 docker build`, lists `/ctx` in the image with `find`, and prints the
listing next to the case's `sent`. Each `REFUSED` text must make the build fail.

Usage: scripts/dockerignore-cases.py [--print]   (--print: print every listing as Rust)
Needs a running engine with the image deploybot-local/static:latest (scripts/build-base-images.sh).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

TABLE = os.path.join(os.path.dirname(__file__), "..", "src", "checkout", "dockerignore.rs")
BASE = "deploybot-local/static:latest"
TAG = "deploybot-dockerignore-case"
STRING = r'"((?:[^"\\]|\\.)*)"'


def rust_str(text):
    """The value of a Rust string literal's body (the escapes the table uses)."""
    text = re.sub(r"\\u\{([0-9a-fA-F]+)\}", lambda m: "\\u%04x" % int(m.group(1), 16), text)
    return json.loads('"' + text + '"')


def strings(block, field):
    match = re.search(field + r": &\[(.*?)\]", block, re.S)
    return [rust_str(s) for s in re.findall(STRING, match.group(1))]


def field(block, name):
    return rust_str(re.search(name + ": " + STRING, block).group(1))


def cases(source):
    for block in re.findall(r"Case \{(.*?)\n        \},", source, re.S):
        yield {
            "name": field(block, "name"),
            "dockerignore": field(block, "dockerignore"),
            "dockerfile": field(block, "dockerfile"),
            "files": strings(block, "files"),
            "sent": strings(block, "sent"),
        }


def refused(source):
    table = re.search(r"const REFUSED.*?= &\[(.*?)\n    \];", source, re.S).group(1)
    for text, _ in re.findall(r"\(\s*" + STRING + r",\s*" + STRING + r",?\s*\)", table):
        yield rust_str(text)


def write(root, path, text=""):
    path = os.path.join(root, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def build(root, dockerfile):
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    command = ["docker", "build", "-q", "-t", TAG, "-f", dockerfile, "."]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def listing(case):
    with tempfile.TemporaryDirectory() as root:
        for path in case["files"]:
            write(root, path)
        write(root, ".dockerignore", case["dockerignore"])
        write(root, case["dockerfile"], "FROM %s\nCOPY . /ctx\n" % BASE)
        built = build(root, case["dockerfile"])
        if built.returncode != 0:
            return "build failed: " + built.stderr.strip()
    found = subprocess.run(["docker", "run", "--rm", TAG, "find", "/ctx"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    paths = (line[len("/ctx/"):] for line in found if line.startswith("/ctx/"))
    return sorted(p for p in paths if p not in (case["dockerfile"], ".dockerignore"))


def refuses(text):
    with tempfile.TemporaryDirectory() as root:
        write(root, "a")
        write(root, ".dockerignore", text)
        write(root, "Dockerfile", "FROM %s\nCOPY . /ctx\n" % BASE)
        built = build(root, "Dockerfile")
        return built.returncode != 0, built.stderr.strip().splitlines()[-1:]


def main():
    with open(TABLE, encoding="utf-8") as f:
        source = f.read()
    version = subprocess.run(["docker", "version", "--format",
                              "CLI {{.Client.Version}}, engine {{.Server.Version}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print("docker", version)
    differences = 0
    for case in cases(source):
        got = listing(case)
        same = got == case["sent"]
        differences += not same
        print("%-4s %s" % ("ok" if same else "DIFF", case["name"]))
        if not same or "--print" in sys.argv:
            print("     table: %s\n     cli:   %s" % (case["sent"], json.dumps(got)))
    for text in refused(source):
        failed, why = refuses(text)
        differences += not failed
        print("%-4s refused %r %s" % ("ok" if failed else "DIFF", text, why))
    subprocess.run(["docker", "image", "rm", "-f", TAG], capture_output=True)
    print("%d difference(s)" % differences)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
