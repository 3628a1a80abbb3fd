#!/usr/bin/env python3
"""Checks one rendered kustomize overlay (a multi-document YAML file), offline.

Run by scripts/validate-deploy.sh with the project's venv python. Every
problem is printed as `ERROR <overlay>: <what>`; the exit status is 1 when
there is any.

1. Schemas. Every built-in object goes through `kubernetes-validate --strict`
   (unknown fields are errors). KEDA ScaledObjects are checked against
   deploy/schemas/keda.sh_v1alpha1_scaledobject.json (written from KEDA's
   published CRD). Any other kind is an error: nothing passes unchecked.
2. References. Selectors match a workload; Service target ports, volumes,
   ConfigMaps, Secrets (and their keys) and PVCs that pods use exist in the
   same render; autoscalers point at a Deployment, one autoscaler each.
3. osa's contract (the `osa-*` containers): the listen addresses in the
   environment match the declared ports and bind 0.0.0.0; readiness,
   liveness and startup probes are gRPC probes on the gRPC port (the health
   service is NOT_SERVING until warm); terminationGracePeriodSeconds exceeds
   preStop + grpc.drain_timeout + the 2 s hard-stop grace; liveness outlasts
   the drain; OSA_CONFIG names a mounted file; CPU and memory have requests
   and limits; a GPU request comes with the GPU taint tolerated.
4. Settings. With --binaries DIR, each osa container's mounted TOML and its
   OSA_* environment (Secret references resolved from the render) are given
   to the service's own binary with --print-config: a key the committed code
   does not know stops it with exit status 2, and so fails here. The
   effective grpc.drain_timeout comes from that output.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE.parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda.sh_v1alpha1_scaledobject.json",
}
HARD_STOP_GRACE_S = 2.0  # crates/runtime/src/serve.rs HARD_STOP_GRACE
DEFAULT_DRAIN_S = 25.0  # crates/runtime/src/settings.rs GrpcSettings::default
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
TRIGGER_METADATA = {
    "prometheus": {"serverAddress", "query", "threshold"},
    "cpu": {"value"},
    "memory": {"value"},
    "redis-streams": {"stream", "consumerGroup"},
    "redis": {"listName"},
}


class Checker:
    def __init__(self, overlay: str, kube_version: str, binaries: Path | None):
        self.overlay = overlay
        self.kube_version = kube_version
        self.binaries = binaries
        self.errors: list[str] = []
        self.notes: list[str] = []

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        print(f"ERROR {self.overlay}: {msg}")

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        print(f"note  {self.overlay}: {msg}")

    # ------------------------------------------------------------ schemas
    def schemas(self, objs: list[dict]) -> None:
        builtin, crds = [], []
        for o in objs:
            key = (o.get("apiVersion"), o.get("kind"))
            (crds if key in CRD_SCHEMAS else builtin).append(o)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(builtin, f, sort_keys=False)
            path = f.name
        try:
            exe = Path(sys.executable).parent / "kubernetes-validate"
            cmd = [str(exe) if exe.exists() else "kubernetes-validate",
                   "--strict", "-k", self.kube_version, path]
            r = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            os.unlink(path)
        lines = (r.stdout + r.stderr).splitlines()
        passed = sum(1 for line in lines if line.startswith("INFO") and " passed " in line)
        for line in lines:
            if not line.startswith("INFO"):
                # WARN = no schema for the kind: an unchecked object fails too.
                self.error("kubernetes-validate: " + line.replace(path, "<render>"))
        if r.returncode != 0 and not any(not x.startswith("INFO") for x in lines):
            self.error(f"kubernetes-validate exited {r.returncode}")
        if passed != len(builtin):
            self.error(f"kubernetes-validate passed {passed} of {len(builtin)} built-in objects")
        for o in crds:
            schema = json.loads(CRD_SCHEMAS[(o["apiVersion"], o["kind"])].read_text())
            v = jsonschema.Draft202012Validator(schema)
            for e in sorted(v.iter_errors(o), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in e.path)
                self.error(f"{kn(o)}: {where}: {e.message}")
        print(f"      {self.overlay}: {passed} built-in objects pass kubernetes-validate --strict "
              f"(Kubernetes {self.kube_version}); {len(crds)} CRD objects checked against "
              f"deploy/schemas")

    # ------------------------------------------------------------ references
    def references(self, objs: list[dict]) -> None:
        by_kind: dict[str, dict[str, dict]] = {}
        for o in objs:
            name = o.get("metadata", {}).get("name", "?")
            if name in by_kind.setdefault(o["kind"], {}):
                self.error(f"{kn(o)} appears twice")
            by_kind[o["kind"]][name] = o
        workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]

        def pods_matching(selector: dict) -> list[dict]:
            return [w for w in workloads
                    if selector and all(pod_labels(w).get(k) == v for k, v in selector.items())]

        for w in workloads:
            sel = w["spec"].get("selector", {}).get("matchLabels", {})
            if not sel or any(pod_labels(w).get(k) != v for k, v in sel.items()):
                self.error(f"{kn(w)}: selector {sel} does not match its pod labels")
            self.pod_refs(w, by_kind)
        for s in by_kind.get("Service", {}).values():
            if s["spec"].get("type") == "ExternalName":
                continue
            matched = pods_matching(s["spec"].get("selector", {}))
            if not matched:
                self.error(f"{kn(s)}: selector {s['spec'].get('selector')} matches no workload")
                continue
            for p in s["spec"].get("ports", []):
                tp = p.get("targetPort", p.get("port"))
                names = {cp.get("name") for w in matched for c in containers(w)
                         for cp in c.get("ports", [])}
                nums = {cp.get("containerPort") for w in matched for c in containers(w)
                        for cp in c.get("ports", [])}
                if tp not in names and tp not in nums:
                    self.error(f"{kn(s)}: targetPort {tp} is no port of {kn(matched[0])}")
        for p in by_kind.get("PodDisruptionBudget", {}).values():
            if not pods_matching(p["spec"].get("selector", {}).get("matchLabels", {})):
                self.error(f"{kn(p)}: selector matches no workload")
        targets: dict[str, str] = {}
        for o in list(by_kind.get("ScaledObject", {}).values()) + list(
                by_kind.get("HorizontalPodAutoscaler", {}).values()):
            ref = o["spec"]["scaleTargetRef"]
            kind = ref.get("kind", "Deployment")
            if ref["name"] not in by_kind.get(kind, {}):
                self.error(f"{kn(o)}: scaleTargetRef {kind}/{ref['name']} is not in the render")
            if ref["name"] in targets:
                self.error(f"{kn(o)}: {ref['name']} is already scaled by {targets[ref['name']]}")
            targets[ref["name"]] = kn(o)
            if o["kind"] == "ScaledObject":
                self.scaled_object(o)
            else:
                lo, hi = o["spec"].get("minReplicas", 1), o["spec"]["maxReplicas"]
                if lo > hi:
                    self.error(f"{kn(o)}: minReplicas {lo} > maxReplicas {hi}")
        for name in targets:
            d = by_kind.get("Deployment", {}).get(name)
            if d is not None and "replicas" in d["spec"]:
                self.error(f"deployment/{name} sets spec.replicas but is autoscaled "
                           f"(every apply would reset the autoscaler's count)")

    def scaled_object(self, o: dict) -> None:
        spec = o["spec"]
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if lo > hi:
            self.error(f"{kn(o)}: minReplicaCount {lo} > maxReplicaCount {hi}")
        for i, t in enumerate(spec.get("triggers", [])):
            need = TRIGGER_METADATA.get(t["type"])
            if need is None:
                self.note(f"{kn(o)}: trigger {i} type {t['type']!r}: metadata not checked")
                continue
            missing = need - set(t.get("metadata", {}))
            if missing:
                self.error(f"{kn(o)}: trigger {i} ({t['type']}) lacks {sorted(missing)}")
            if t["type"] in ("cpu", "memory") and t.get("metricType") not in (
                    "Utilization", "AverageValue"):
                self.error(f"{kn(o)}: trigger {i} ({t['type']}) needs metricType "
                           f"Utilization or AverageValue")
            if t["type"] == "prometheus":
                try:
                    float(t["metadata"].get("threshold", "x"))
                except ValueError:
                    self.error(f"{kn(o)}: trigger {i}: threshold is not a number")

    def pod_refs(self, w: dict, by_kind: dict) -> None:
        spec = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = set()
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                self.error(f"{kn(w)}: volume {v['name']}: configmap/{v['configMap']['name']} "
                           f"is not in the render")
            if "secret" in v and v["secret"]["secretName"] not in by_kind.get("Secret", {}):
                self.error(f"{kn(w)}: volume {v['name']}: secret/{v['secret']['secretName']} "
                           f"is not in the render")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if claim not in by_kind.get("PersistentVolumeClaim", {}):
                    self.error(f"{kn(w)}: volume {v['name']}: pvc/{claim} is not in the render")
            src = v.get("configMap") or v.get("secret")
            if src and "items" in src:
                obj = by_kind.get("ConfigMap" if "configMap" in v else "Secret", {}).get(
                    src.get("name") or src.get("secretName"))
                if obj:
                    keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
                    for it in src["items"]:
                        if it["key"] not in keys:
                            self.error(f"{kn(w)}: volume {v['name']}: key {it['key']} missing")
        for c in containers(w) + spec.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                mounted.add(m["name"])
                if m["name"] not in volumes:
                    self.error(f"{kn(w)}: container {c['name']} mounts unknown volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref:
                        obj = by_kind.get(kind, {}).get(ref[key]["name"])
                        if obj is None:
                            self.error(f"{kn(w)}: env {e['name']}: {kind.lower()}/"
                                       f"{ref[key]['name']} is not in the render")
                        elif ref[key]["key"] not in obj.get("data", {}):
                            self.error(f"{kn(w)}: env {e['name']}: key {ref[key]['key']} is "
                                       f"not in {kind.lower()}/{ref[key]['name']}")
        for name in volumes:
            if name not in mounted:
                self.error(f"{kn(w)}: volume {name} is never mounted")

    # ------------------------------------------------------------ osa contract
    def osa(self, objs: list[dict]) -> None:
        by_kind: dict[str, dict[str, dict]] = {}
        for o in objs:
            by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
        seen = 0
        for w in by_kind.get("Deployment", {}).values():
            spec = w["spec"]["template"]["spec"]
            for c in containers(w):
                if not c["name"].startswith("osa-"):
                    continue
                seen += 1
                self.osa_container(w, spec, c, by_kind)
        if seen != 4:
            self.error(f"expected the 4 osa services, found {seen} osa-* containers")

    def osa_container(self, w: dict, spec: dict, c: dict, by_kind: dict) -> None:
        where = f"{kn(w)} container {c['name']}"
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif "secretKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["secretKeyRef"]
                data = by_kind.get("Secret", {}).get(ref["name"], {}).get("data", {})
                if ref["key"] in data:
                    env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["configMapKeyRef"]
                data = by_kind.get("ConfigMap", {}).get(ref["name"], {}).get("data", {})
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]]
        if c.get("envFrom"):
            self.error(f"{where}: envFrom can smuggle unknown OSA__ keys; list variables")
        for key, port_name in (("OSA__GRPC__LISTEN", "grpc"), ("OSA__METRICS__LISTEN", "metrics")):
            addr = env.get(key)
            if addr is None:
                self.error(f"{where}: {key} is not set (the default listens on loopback only)")
                continue
            host, _, port = addr.rpartition(":")
            if host not in ("0.0.0.0", "[::]"):
                self.error(f"{where}: {key}={addr} does not listen on every interface")
            if port_name not in ports:
                self.error(f"{where}: no container port named {port_name}")
            elif str(ports[port_name]) != port:
                self.error(f"{where}: {key}={addr} but port {port_name} is {ports[port_name]}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if p is None:
                self.error(f"{where}: no {probe}")
            elif "grpc" not in p:
                self.error(f"{where}: {probe} is not a gRPC probe (health = warm)")
            elif p["grpc"].get("port") != ports.get("grpc"):
                self.error(f"{where}: {probe} checks port {p['grpc'].get('port')}, "
                           f"not the gRPC port {ports.get('grpc')}")
            elif p["grpc"].get("service"):
                self.error(f"{where}: {probe} names service {p['grpc']['service']!r}; "
                           f"the whole server is \"\"")
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in c.get("resources", {}).get(kind, {}):
                    self.error(f"{where}: no {r} {kind}")
        gpu = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpu is not None and not any(t.get("key") == "nvidia.com/gpu"
                                       for t in spec.get("tolerations", [])):
            self.error(f"{where}: requests nvidia.com/gpu without tolerating the GPU taint")
        # The settings file.
        conf_path = env.get("OSA_CONFIG")
        toml_text = None
        if conf_path is None:
            self.error(f"{where}: OSA_CONFIG is not set")
        else:
            toml_text = self.mounted_file(w, spec, c, conf_path, by_kind)
            if toml_text is None:
                self.error(f"{where}: OSA_CONFIG={conf_path} is no file mounted from a ConfigMap")
        drain = DEFAULT_DRAIN_S
        if toml_text is not None:
            try:
                parsed = tomllib.loads(toml_text)
                drain = duration(parsed.get("grpc", {}).get("drain_timeout", "25s"))
            except (tomllib.TOMLDecodeError, ValueError) as e:
                self.error(f"{where}: {conf_path}: {e}")
        if "OSA__GRPC__DRAIN_TIMEOUT" in env:
            drain = duration(env["OSA__GRPC__DRAIN_TIMEOUT"])
        if toml_text is not None and self.binaries is not None:
            effective = self.print_config(where, c["name"], toml_text, env)
            if effective is not None:
                drain = duration(effective.get("grpc", {}).get("drain_timeout", "25s"))
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= pre + drain + HARD_STOP_GRACE_S:
            self.error(f"{where}: terminationGracePeriodSeconds {grace} <= preStop {pre} s + "
                       f"drain_timeout {drain:g} s + {HARD_STOP_GRACE_S:g} s")
        live = c.get("livenessProbe")
        if live:
            tolerated = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
            if tolerated <= drain + pre:
                self.error(f"{where}: liveness gives up after {tolerated} s of NOT_SERVING, "
                           f"inside the drain ({pre} + {drain:g} s): draining pods get killed")

    def mounted_file(self, w, spec, c, path, by_kind) -> str | None:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            if "configMap" not in v:
                continue
            cm = by_kind.get("ConfigMap", {}).get(v["configMap"]["name"], {})
            data = cm.get("data", {})
            if m.get("subPath"):
                if m["mountPath"] == path:
                    return data.get(m["subPath"])
            elif path.startswith(m["mountPath"].rstrip("/") + "/"):
                return data.get(path[len(m["mountPath"].rstrip("/")) + 1:])
        return None

    def print_config(self, where, binary, toml_text, env) -> dict | None:
        exe = self.binaries / binary
        if not exe.exists():
            self.error(f"{where}: no binary {exe} to check the settings with")
            return None
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(toml_text)
            path = f.name
        run_env = {k: v for k, v in os.environ.items()
                   if k in ("PATH", "LD_LIBRARY_PATH", "HOME")}
        run_env.update({k: v for k, v in env.items() if k.startswith("OSA")})
        run_env["OSA_CONFIG"] = path
        try:
            r = subprocess.run([str(exe), "--print-config"], env=run_env,
                               capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(path)
        if r.returncode != 0:
            self.error(f"{where}: {binary} rejects its settings (exit {r.returncode}): "
                       f"{r.stderr.strip()}")
            return None
        return tomllib.loads(r.stdout)


def kn(o: dict) -> str:
    return f"{o.get('kind', '?').lower()}/{o.get('metadata', {}).get('name', '?')}"


def pod_labels(w: dict) -> dict:
    return w["spec"]["template"].get("metadata", {}).get("labels", {})


def containers(w: dict) -> list[dict]:
    return w["spec"]["template"]["spec"].get("containers", [])


def duration(text: str) -> float:
    """Seconds in a humantime duration as osa writes them ("25s", "1m 30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(text))
    if not parts or re.sub(r"[\d.\sa-z]", "", str(text)):
        raise ValueError(f"cannot read duration {text!r}")
    total = 0.0
    for n, u in parts:
        if u not in units:
            raise ValueError(f"unknown unit {u!r} in {text!r}")
        total += float(n) * units[u]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--name", required=True, help="overlay name, for messages")
    ap.add_argument("--kubernetes-version", default="1.33.0")
    ap.add_argument("--binaries", type=Path,
                    help="folder with osa-gateway, osa-audio-encoder, osa-generator, osa-decoder")
    args = ap.parse_args()
    try:
        objs = [o for o in yaml.safe_load_all(args.rendered.read_text()) if o]
    except yaml.YAMLError as e:
        print(f"ERROR {args.name}: {e}")
        return 1
    ck = Checker(args.name, args.kubernetes_version, args.binaries)
    for o in objs:
        if not isinstance(o, dict) or not o.get("kind") or not o.get("metadata", {}).get("name"):
            ck.error(f"an object without kind or metadata.name: {str(o)[:80]}")
            return 1
    ck.schemas(objs)
    ck.references(objs)
    ck.osa(objs)
    if args.binaries is None:
        ck.note("settings not checked against the binaries (no --binaries)")
    print(f"      {args.name}: {len(objs)} objects, {len(ck.errors)} errors")
    return 1 if ck.errors else 0


if __name__ == "__main__":
    sys.exit(main())
