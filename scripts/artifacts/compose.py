"""Static checks of docker-compose.yml (Docker itself does not run here).

  compose.py COMPOSE_FILE --proxy-bin BIN

- the file is valid YAML with services;
- every mounted YAML file parses;
- Prometheus: the bind mounts of its service are copied into a temporary directory laid
  out as the container sees them, and `promtool check config` runs on the configuration
  named by --config.file there (rule files and the token file resolve as in the container);
- Grafana: every dashboard provider's path is mounted and holds dashboards, every
  provisioned data source has a name, type and url;
- codex-proxy: every mounted TOML passes `codex-proxy check-config`, with the paths it
  names (secrets, mounts) resolved as the container sees them; its Dockerfile has a
  HEALTHCHECK, builds the dependencies in a layer of their own (Cargo.toml and Cargo.lock
  copied before the sources) and pins the Rust image to Cargo.toml's rust-version;
- every service has a health check, every depends_on waits for service_healthy, and no
  service wraps its command in a shell;
- Grafana's major version is the one of @grafana/schema in tests/npm/package.json, which
  the dashboard is checked against.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml


def bind_mounts(service, base):
    """(host path, container path) of the service's bind mounts (short syntax)."""
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith((".", "/")):
            yield os.path.normpath(os.path.join(base, parts[0])), parts[1]


def secret_mounts(service, secrets, base):
    """(host path, container path) of the service's compose secrets (file-based)."""
    for entry in service.get("secrets", []):
        name = entry if isinstance(entry, str) else entry["source"]
        target = name if isinstance(entry, str) else entry.get("target", name)
        inside = target if target.startswith("/") else f"/run/secrets/{target}"
        source = secrets.get(name, {}).get("file")
        if not source:
            sys.exit(f"secret {name} has no file")
        yield os.path.normpath(os.path.join(base, source)), inside


def container_tree(service, base, root, secrets=None):
    """Copies the service's bind mounts and secrets under root, at their container paths;
    returns the container paths."""
    mounts = list(bind_mounts(service, base)) + list(secret_mounts(service, secrets or {}, base))
    for host, inside in mounts:
        dest = os.path.join(root, inside.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(host):
            shutil.copytree(host, dest)
        else:
            shutil.copy(host, dest)
    return [inside for _, inside in mounts]


def rewrite_paths(path, root, insides):
    """Makes the container paths named in the file at `path` point into `root`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for inside in sorted(insides, key=len, reverse=True):
        text = re.sub(r'(?<=["\s:])' + re.escape(inside), root + inside, text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def flag(service, name):
    for arg in service.get("command", []):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def check_prometheus(name, service, base, secrets):
    config = flag(service, "--config.file")
    if not config:
        sys.exit(f"service {name}: no --config.file in its command")
    with tempfile.TemporaryDirectory() as root:
        insides = container_tree(service, base, root, secrets)
        path = os.path.join(root, config.lstrip("/"))
        rewrite_paths(path, root, insides)
        print(run(["promtool", "check", "config", path]).strip())


def check_grafana(name, service, base):
    with tempfile.TemporaryDirectory() as root:
        container_tree(service, base, root)
        provisioning = os.path.join(root, "etc/grafana/provisioning")
        providers = load_yaml(os.path.join(provisioning, "dashboards/dashboards.yml"))["providers"]
        for provider in providers:
            path = os.path.join(root, provider["options"]["path"].lstrip("/"))
            dashboards = [f for f in os.listdir(path) if f.endswith(".json")] if os.path.isdir(path) else []
            if not dashboards:
                sys.exit(f"service {name}: dashboard provider path {provider['options']['path']} is not mounted or holds no dashboard")
        sources = load_yaml(os.path.join(provisioning, "datasources/datasources.yml"))["datasources"]
        for source in sources:
            missing = {"name", "type", "url"} - source.keys()
            if missing:
                sys.exit(f"service {name}: data source {source} lacks {sorted(missing)}")
        print(f"service {name}: {len(providers)} dashboard provider(s), {len(sources)} data source(s) provisioned")


def check_proxy(name, service, base, proxy_bin, secrets):
    with tempfile.TemporaryDirectory() as root:
        insides = container_tree(service, base, root, secrets)
        for host, inside in bind_mounts(service, base):
            if host.endswith(".toml"):
                path = os.path.join(root, inside.lstrip("/"))
                rewrite_paths(path, root, insides)
                run([proxy_bin, "check-config", "--config", path])
                print(f"service {name}: {os.path.relpath(host, base)} passes check-config as mounted")
    if "entrypoint" in service:
        sys.exit(f"service {name}: overrides the image's entrypoint; the binary reads its secrets itself")
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    check_dockerfile(os.path.join(base, context, dockerfile), os.path.join(base, context, "Cargo.toml"))


def check_dockerfile(path, cargo_toml):
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    instructions = [l.split()[0].upper() for l in lines]
    if "HEALTHCHECK" not in instructions:
        sys.exit(f"{path}: no HEALTHCHECK")
    healthcheck = next(l for l in lines if l.upper().startswith("HEALTHCHECK"))
    if "NONE" in healthcheck.upper().split():
        sys.exit(f"{path}: HEALTHCHECK NONE")
    copies = [l for l in lines if l.upper().startswith("COPY") and "--from" not in l]
    manifest = next((i for i, l in enumerate(copies) if "Cargo.toml" in l and "Cargo.lock" in l), None)
    everything = next((i for i, l in enumerate(copies) if l.split()[1:2] == ["."]), None)
    if manifest is None or everything is None or manifest > everything:
        sys.exit(f"{path}: Cargo.toml and Cargo.lock are not copied (and built) before the sources")
    with open(cargo_toml, encoding="utf-8") as f:
        rust_version = re.search(r'^rust-version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)
    image = next(l.split()[1] for l in lines if l.upper().startswith("FROM") and l.split()[1].startswith("rust:"))
    tag = image.split(":", 1)[1]
    if not (tag == rust_version or tag.startswith(rust_version + "-") or tag.startswith(rust_version + ".")):
        sys.exit(f"{path}: builds with {image}, but Cargo.toml's rust-version is {rust_version}")
    print(f"{os.path.basename(path)}: HEALTHCHECK, dependencies in their own layer, {image} = rust-version {rust_version}")


def check_health(name, service, services):
    test = service.get("healthcheck", {}).get("test")
    if not test or test == ["NONE"] or service["healthcheck"].get("disable"):
        sys.exit(f"service {name}: no health check")
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        sys.exit(f"service {name}: depends_on {depends} does not wait until they are healthy")
    for other, how in depends.items():
        if how.get("condition") != "service_healthy":
            sys.exit(f"service {name}: depends_on {other} without condition: service_healthy")
        if other not in services:
            sys.exit(f"service {name}: depends_on unknown service {other}")
    for key in ("entrypoint", "command"):
        value = service.get(key)
        words = value if isinstance(value, list) else str(value or "").split()
        if words[:1] and os.path.basename(words[0]) in ("sh", "bash") and "-c" in words:
            sys.exit(f"service {name}: {key} wraps the program in a shell")


def check_grafana_schema(name, service, package_json):
    with open(package_json, encoding="utf-8") as f:
        schema = json.load(f)["dependencies"]["@grafana/schema"]
    version = service["image"].split(":", 1)[1]
    if schema.split(".")[0] != version.split(".")[0]:
        sys.exit(f"service {name}: runs Grafana {version}, but the dashboard is checked against @grafana/schema {schema}")
    print(f"service {name}: Grafana {version}, dashboard checked against @grafana/schema {schema} (same major)")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("compose")
    p.add_argument("--proxy-bin", required=True)
    args = p.parse_args()
    base = os.path.dirname(os.path.abspath(args.compose))
    compose = load_yaml(args.compose)
    services = compose["services"]
    secrets = compose.get("secrets", {})
    for name, service in services.items():
        check_health(name, service, services)
        for host, _ in bind_mounts(service, base):
            if host.endswith((".yml", ".yaml")):
                load_yaml(host)
        image = service.get("image", "")
        if image.startswith("prom/prometheus"):
            check_prometheus(name, service, base, secrets)
        elif image.startswith("grafana/grafana"):
            check_grafana(name, service, base)
            check_grafana_schema(name, service, os.path.join(base, "tests/npm/package.json"))
        elif "build" in service:
            check_proxy(name, service, base, args.proxy_bin, secrets)
    print(f"{args.compose}: {len(services)} services checked: each has a health check, dependencies wait for health")


if __name__ == "__main__":
    main()
