"""Static checks of docker-compose.yml (Docker itself does not run here).

  compose.py COMPOSE_FILE --proxy-bin BIN

- the file is valid YAML with services;
- every mounted YAML file parses;
- Prometheus: the bind mounts of its service are copied into a temporary directory laid
  out as the container sees them, and `promtool check config` runs on the configuration
  named by --config.file there (rule files and the token file resolve as in the container);
- Grafana: every dashboard provider's path is mounted and holds dashboards, every
  provisioned data source has a name, type and url;
- codex-proxy: every mounted TOML passes `codex-proxy check-config`.
"""

import argparse
import os
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


def container_tree(service, base, root):
    """Copies the service's bind mounts under root, at their container paths."""
    for host, inside in bind_mounts(service, base):
        dest = os.path.join(root, inside.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(host):
            shutil.copytree(host, dest)
        else:
            shutil.copy(host, dest)


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


def check_prometheus(name, service, base):
    config = flag(service, "--config.file")
    if not config:
        sys.exit(f"service {name}: no --config.file in its command")
    with tempfile.TemporaryDirectory() as root:
        container_tree(service, base, root)
        print(run(["promtool", "check", "config", os.path.join(root, config.lstrip("/"))]).strip())


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


def check_proxy(name, service, base, proxy_bin):
    for host, _ in bind_mounts(service, base):
        if host.endswith(".toml"):
            run([proxy_bin, "check-config", "--config", host])
            print(f"service {name}: {os.path.relpath(host, base)} passes check-config")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("compose")
    p.add_argument("--proxy-bin", required=True)
    args = p.parse_args()
    base = os.path.dirname(os.path.abspath(args.compose))
    services = load_yaml(args.compose)["services"]
    for name, service in services.items():
        for host, _ in bind_mounts(service, base):
            if host.endswith((".yml", ".yaml")):
                load_yaml(host)
        image = service.get("image", "")
        if image.startswith("prom/prometheus"):
            check_prometheus(name, service, base)
        elif image.startswith("grafana/grafana"):
            check_grafana(name, service, base)
        elif "build" in service:
            check_proxy(name, service, base, args.proxy_bin)
    print(f"{args.compose}: {len(services)} services checked")


if __name__ == "__main__":
    main()
