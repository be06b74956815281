"""deploy/: the Dockerfile and the Kubernetes manifests hang together.

No YAML library is a dependency, so the manifests get a light structural reading: split
into documents at ``---``, the ``kind``/``name`` of each, and the block scalars that hold
the TOML files (``silo.toml: |``). The TOML itself is checked for real, with
``SiloConfig.from_dict`` / ``ClientConfig.from_dict``.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from trio_grains import ClientConfig, SiloConfig

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
DOCS = DEPLOY.parent / "docs"


def documents(path: Path) -> list[str]:
    """The YAML documents of *path* (comments and empty documents dropped)."""
    docs = re.split(r"(?m)^---\s*$", path.read_text(encoding="utf-8"))
    return [d for d in docs if re.search(r"(?m)^kind:", d)]


def kind_and_name(doc: str) -> tuple[str, str]:
    kind = re.search(r"(?m)^kind:\s*(\S+)", doc)
    name = re.search(r"(?m)^metadata:\n(?:  .*\n)*?  name:\s*(\S+)", doc)
    assert kind, doc[:200]
    assert name, doc[:200]
    return kind.group(1), name.group(1)


def block_scalar(doc: str, key: str) -> str:
    """The text of ``key: |`` in *doc*, de-indented."""
    match = re.search(rf"(?m)^( +){re.escape(key)}: \|\n", doc)
    assert match, f"no block scalar {key!r}"
    indent = len(match.group(1)) + 2
    lines = []
    for line in doc[match.end() :].splitlines():
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        lines.append(line[indent:])
    return "\n".join(lines).strip() + "\n"


def manifest(name: str) -> dict[tuple[str, str], str]:
    return {kind_and_name(d): d for d in documents(DEPLOY / "k8s" / name)}


def dockerfile_instruction(name: str) -> str:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    found = re.findall(rf"(?m)^{name}\s+(.+)$", text)
    assert len(found) == 1, f"the Dockerfile has {len(found)} {name} instructions"
    return str(found[0]).strip()


def test_the_manifests_have_what_the_deployment_page_describes() -> None:
    silo = manifest("silo.yaml")
    assert set(silo) == {
        ("ConfigMap", "orders-silo"),
        ("Secret", "orders-nats-credentials"),
        ("Deployment", "orders-silo"),
    }
    nats = manifest("nats.yaml")
    assert ("StatefulSet", "nats") in nats
    assert ("Service", "nats-headless") in nats
    statefulset = nats[("StatefulSet", "nats")]
    assert re.search(r"(?m)^  replicas: 3$", statefulset)
    assert "store_dir" in nats[("ConfigMap", "nats-config")]  # JetStream on

    deployment = silo[("Deployment", "orders-silo")]
    assert re.search(r"(?m)^  replicas: 2$", deployment)
    grace = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", deployment)
    assert grace
    assert int(grace.group(1)) >= 45  # above the ~29 s shutdown budget
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in deployment
    assert "trio-grains client --config /etc/trio-grains/client.toml" in deployment


def test_the_embedded_configs_parse() -> None:
    config_map = manifest("silo.yaml")[("ConfigMap", "orders-silo")]
    silo = SiloConfig.from_dict(tomllib.loads(block_scalar(config_map, "silo.toml")))
    client = ClientConfig.from_dict(tomllib.loads(block_scalar(config_map, "client.toml")))
    assert silo.cluster_id == client.cluster_id
    assert silo.clustering is not None
    assert silo.clustering.options == client.clustering.options
    assert silo.grains == tuple(
        f"trio_grains_orders.app:{g}" for g in ("OrderGrain", "CustomerGrain", "DeadLetterGrain")
    )
    # three replicas wherever JetStream keeps data (docs/deployment.md)
    providers = [silo.clustering, silo.storage["default"], silo.streams["default"]]
    assert [p.options.get("replicas") for p in providers] == [3, 3, 3]
    # the servers are the StatefulSet's pods, through the headless Service
    nats = manifest("nats.yaml")
    pods = [f"nats://nats-{i}.nats-headless:4222" for i in range(3)]
    assert all(list(p.options["servers"]) == pods for p in providers)
    assert all(
        f"nats://nats-{i}.nats-headless:6222" in nats[("ConfigMap", "nats-config")]
        for i in range(3)
    )


def test_the_config_and_credential_paths_are_mounted() -> None:
    cmd = json.loads(dockerfile_instruction("CMD"))
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["trio-grains"]
    assert cmd[:2] == ["silo", "--config"]
    config_path = PurePosixPath(cmd[2])
    deployment = manifest("silo.yaml")[("Deployment", "orders-silo")]
    mounts = dict(re.findall(r"- name: (\S+)\s*\n\s+mountPath: (\S+)", deployment))
    assert PurePosixPath(mounts["config"]) == config_path.parent
    assert "name: orders-silo" in deployment.split("volumes:")[-1]  # the ConfigMap
    config_map = manifest("silo.yaml")[("ConfigMap", "orders-silo")]
    assert re.search(rf"(?m)^  {re.escape(config_path.name)}: \|$", config_map)

    silo = SiloConfig.from_dict(tomllib.loads(block_scalar(config_map, "silo.toml")))
    seeds = {
        PurePosixPath(p.options["nkeys_seed"])
        for p in [silo.clustering, silo.storage["default"], silo.streams["default"]]
        if p is not None
    }
    assert len(seeds) == 1
    seed = seeds.pop()
    assert PurePosixPath(mounts["nats-credentials"]) == seed.parent
    secret = manifest("silo.yaml")[("Secret", "orders-nats-credentials")]
    assert f"{seed.name}:" in secret
    assert "secretName: orders-nats-credentials" in deployment


def test_the_dockerfile() -> None:
    assert dockerfile_instruction("FROM").startswith("python:3.12")
    assert dockerfile_instruction("STOPSIGNAL") == "SIGTERM"
    user = dockerfile_instruction("USER")
    assert not user.startswith(("root", "0"))
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for source in ("trio_grains", "plugins/nats", "examples/orders"):
        assert f"COPY {source}" in text
        assert (DEPLOY.parent / source).exists()


@pytest.mark.parametrize("page", ["deployment.md", "tutorial-orders.md"])
def test_the_pages_name_the_files(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    if page == "deployment.md":
        for name in ("deploy/Dockerfile", "deploy/k8s/nats.yaml", "deploy/k8s/silo.yaml"):
            assert name in text
            assert (DEPLOY.parent / name).exists()
        # the silo.toml shown on the page is the one the manifest ships
        shown = re.search(r"```toml\n(cluster_id = \"orders\".*?)```", text, re.S)
        assert shown
        config_map = manifest("silo.yaml")[("ConfigMap", "orders-silo")]
        assert tomllib.loads(shown.group(1)) == tomllib.loads(block_scalar(config_map, "silo.toml"))
    else:
        assert "deployment.md" in text
