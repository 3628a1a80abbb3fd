#!/usr/bin/env python3
"""Static checks of deploy/docker/*.Dockerfile (no Docker daemon needed).

For each service: the Dockerfile exists with its .dockerignore (keeping
target/ and .venv/ out of the context), is multi-stage, builds that
service's binary, and its final stage runs it as a non-root numeric user
with the service's default ports exposed; only the libtorch stages carry
libtorch, and the OSA__ variables set in an image are keys every service
has. Prints `ERROR <file>: <what>` and exits 1 on any problem.
"""

import re
import sys
from pathlib import Path

DOCKER = Path(__file__).resolve().parent.parent / "docker"
SERVICES = {  # name: (gRPC port, metrics port, links libtorch)
    "gateway": (50051, 9091, False),
    "audio-encoder": (50052, 9092, True),
    "generator": (50053, 9093, True),
    "decoder": (50054, 9094, True),
}
COMMON_ENV = {"OSA__GRPC__LISTEN", "OSA__METRICS__LISTEN", "OSA__TELEMETRY__LOG_FORMAT"}


def instructions(text: str) -> list[tuple[str, str]]:
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def check(name: str, errors: list[str]) -> None:
    grpc, metrics, torch = SERVICES[name]
    path = DOCKER / f"{name}.Dockerfile"
    def err(msg):
        errors.append(f"ERROR {path.relative_to(DOCKER.parent.parent)}: {msg}")
    if not path.exists():
        err("missing")
        return
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    ignored = ignore.read_text().split() if ignore.exists() else []
    for must in ("target/", ".venv/", ".git/"):
        if must not in ignored:
            err(f"{ignore.name} does not exclude {must}")
    ins = instructions(path.read_text())
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if len(froms) < 2:
        err("not multi-stage")
        return
    final = ins[froms[-1]:]
    whole = " ".join(f"{w} {r}" for w, r in ins)  # comments left out
    if f"-p osa-{name} --bin osa-{name}" not in whole:
        err(f"does not build the osa-{name} binary")
    users = [r for w, r in final if w == "USER"]
    if not users:
        err("the final stage has no USER (it would run as root)")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            err(f"USER {users[-1]}: use a numeric non-root uid (runAsNonRoot checks it)")
    entry = [r for w, r in final if w == "ENTRYPOINT"]
    if not entry or f"osa-{name}" not in entry[-1]:
        err(f"the final stage's ENTRYPOINT is not osa-{name}")
    exposed = {p for w, r in final if w == "EXPOSE" for p in r.split()}
    for port in (grpc, metrics):
        if str(port) not in exposed:
            err(f"port {port} not exposed")
    has_torch = "torch" in " ".join(r for w, r in final if w == "COPY").lower()
    if torch and not has_torch:
        err("the final stage carries no libtorch")
    if not torch and "torch" in whole.lower():
        err("mentions torch, but this service links no libtorch")
    for w, r in final:
        if w == "ENV":
            for key in re.findall(r"(OSA__[A-Z_]+)=", r):
                if key not in COMMON_ENV:
                    err(f"ENV {key}: not one of the common keys {sorted(COMMON_ENV)}")
            for key, port in (("OSA__GRPC__LISTEN", grpc), ("OSA__METRICS__LISTEN", metrics)):
                m = re.search(key + r"=(\S+)", r)
                if m and m.group(1) != f"0.0.0.0:{port}":
                    err(f"{key}={m.group(1)}, expected 0.0.0.0:{port}")


def main() -> int:
    errors: list[str] = []
    for name in SERVICES:
        check(name, errors)
    for e in errors:
        print(e)
    print(f"      dockerfiles: {len(SERVICES)} checked, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
