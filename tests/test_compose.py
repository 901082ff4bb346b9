"""docker-compose.yml, its board override and the Dockerfile, checked without a Docker engine.

``docker-compose config`` (Debian package ``docker-compose``) parses, interpolates and
validates the files; the Dockerfile's install steps are compared with the Makefile's
base install, which ``make demo`` runs, so a change to one without the other fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
BOARD = ROOT / "docker-compose.board.yml"
DOCKER_VENV = "/opt/venv"

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose binary not installed (apt-get install docker-compose)",
)


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict:
    """``docker-compose config`` of ``files`` with a clean S2LOOP_/CLIENT_ environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S2LOOP_", "CLIENT_"))}
    clean.update(env or {})
    args = ["docker-compose", "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    proc = subprocess.run(
        [*args, "config"], capture_output=True, text=True, env=clean, cwd=ROOT, timeout=60
    )
    if proc.returncode != 0:
        raise AssertionError(f"docker-compose config failed:\n{proc.stderr}")
    return yaml.safe_load(proc.stdout)


@needs_compose
def test_compose_has_a_healthchecked_server_and_two_clients_waiting_for_it():
    cfg = compose_config(COMPOSE)
    services = cfg["services"]
    assert set(services) == {"server", "cartpole", "acrobot"}

    server = services["server"]
    assert server["command"] == ["s2loop", "serve"]
    env = server["environment"]
    assert env["S2LOOP_BACKEND"] == "emulator"
    assert env["S2LOOP_HOST"] == "0.0.0.0" and env["S2LOOP_PORT"] == "8000"
    assert env["S2LOOP_MODELS"] == "/app/models"
    assert any("/readyz" in part for part in server["healthcheck"]["test"])
    assert server["healthcheck"]["test"][0] == "CMD"
    assert any(p.startswith("127.0.0.1:8000:8000") for p in server["ports"])

    for name, env_id in [("cartpole", "CartPole-v1"), ("acrobot", "Acrobot-v1")]:
        client = services[name]
        assert client["depends_on"] == {"server": {"condition": "service_healthy"}}
        cmd = client["command"]
        assert cmd[:2] == ["s2loop", "run"]
        assert cmd[cmd.index("--env") + 1] == env_id
        assert cmd[cmd.index("--out") + 1] == f"/results/{name}"
        assert client["environment"]["S2LOOP_SERVER_URL"] == "http://server:8000"
        assert client["volumes"][0].startswith("results:/results")
        assert client["image"] == server["image"]
    assert "results" in cfg["volumes"]


@needs_compose
def test_compose_knobs_come_from_the_environment():
    cfg = compose_config(
        COMPOSE,
        env={"CLIENT_EPISODES": "3", "CLIENT_TRANSPORT": "ws", "S2LOOP_PUBLISH_PORT": "9000"},
    )
    cmd = cfg["services"]["acrobot"]["command"]
    assert cmd[cmd.index("--episodes") + 1] == "3"
    assert cmd[cmd.index("--transport") + 1] == "ws"
    assert any(p.startswith("127.0.0.1:9000:8000") for p in cfg["services"]["server"]["ports"])


@needs_compose
def test_board_override_points_the_server_at_the_board():
    cfg = compose_config(COMPOSE, BOARD, env={"S2LOOP_BOARD_ETH_IP": "192.168.1.17"})
    server = cfg["services"]["server"]
    assert server["environment"]["S2LOOP_BACKEND"] == "spinnaker2"
    assert server["environment"]["S2LOOP_BOARD_ETH_IP"] == "192.168.1.17"
    assert server["environment"]["S2LOOP_FALLBACK"] == "emulator"
    assert "gitlab.com/spinnaker2/py-spinnaker2" in server["build"]["args"]["SPINNAKER2_SDK"]
    assert server["image"] != cfg["services"]["cartpole"]["image"]  # SDK image kept apart
    assert cfg["services"]["cartpole"]["environment"]["S2LOOP_SERVER_URL"] == (
        "http://127.0.0.1:8000"
    )
    # the clients still wait for a healthy server
    assert cfg["services"]["acrobot"]["depends_on"]["server"]["condition"] == "service_healthy"


@needs_compose
def test_board_override_refuses_to_start_without_the_board_address():
    with pytest.raises(AssertionError, match="set S2LOOP_BOARD_ETH_IP"):
        compose_config(COMPOSE, BOARD)


@needs_compose
def test_the_healthcheck_command_passes_only_when_readyz_says_ready(models_dir, tmp_path):
    from clients.demo import ServerProcess

    test = compose_config(COMPOSE)["services"]["server"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    empty = tmp_path / "empty"
    empty.mkdir()
    codes = {}
    for name, models in (("ready", models_dir), ("not ready", empty)):
        with ServerProcess(models, log_path=tmp_path / f"{name}.log") as server:
            if name == "ready":
                server.wait_ready(180)
            else:  # up, but /readyz answers 503 (no models)
                import httpx

                end = time.monotonic() + 60
                while time.monotonic() < end:
                    try:
                        httpx.get(server.url + "/healthz")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
            env = dict(os.environ, S2LOOP_PORT=str(server.port))
            codes[name] = subprocess.run([sys.executable, *test[2:]], env=env, capture_output=True)
    assert codes["ready"].returncode == 0, codes["ready"].stderr
    assert codes["not ready"].returncode != 0 and b"503" in codes["not ready"].stderr


# --- Dockerfile vs Makefile -------------------------------------------------------------------


def make_variables(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^([A-Za-z_]+)\s*(?:\?=|:=|=)\s*(.*?)\s*$", text, re.M):
        out[m.group(1)] = m.group(2)
    return out


def make_rules(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines) for a simple Makefile."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t"):
            if current is not None:
                rules[current][1].append(line.strip())
            continue
        m = re.match(r"^([^\s#.:=][^:=]*?):(?!=)\s*(.*)$", line)
        current = m.group(1).strip() if m else None
        if m:
            rules[current] = (m.group(2).replace("|", " ").split(), [])
    return rules


def expand(value: str, variables: dict[str, str]) -> str:
    for _ in range(10):
        new = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), value)
        if new == value:
            break
        value = new
    return value


def make_install_commands(target: str = "install") -> list[str]:
    """The shell commands ``make <target>`` runs on a fresh tree, VENV=/opt/venv, in order
    (stamp-file ``touch`` lines left out)."""
    text = (ROOT / "Makefile").read_text()
    variables = make_variables(text)
    variables.update(VENV=DOCKER_VENV, PYTHON="python3")
    rules = make_rules(text)
    done: list[str] = []
    commands: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        done.append(name)
        key = next((t for t in rules if expand(t, variables) == expand(name, variables)), None)
        if key is None:
            return  # a file such as pyproject.toml
        prereqs, recipe = rules[key]
        for p in prereqs:
            visit(p)
        for line in recipe:
            cmd = expand(line, variables)
            if not cmd.startswith("touch "):
                commands.append(normalise(cmd))

    visit(target)
    return commands


def normalise(cmd: str) -> str:
    return " ".join(shlex.split(cmd))


def dockerfile_install_commands() -> list[str]:
    """The unconditional RUN commands of the Dockerfile that install Python things."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    env = {"VENV": DOCKER_VENV}
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("RUN "):
            continue
        body = line[4:].strip()
        if body.startswith("if "):  # optional steps (the board SDK build arg)
            continue
        for part in body.split("&&"):
            part = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), part)
            if "pip" in part or "venv" in part:
                commands.append(normalise(part))
    return commands


def test_dockerfile_installs_exactly_what_make_install_does():
    make_cmds = make_install_commands("install")
    # the parser found the venv and the package install (not an empty list == empty list)
    assert make_cmds[0] == "python3 -m venv /opt/venv"
    assert "/opt/venv/bin/python -m pip install -e ." in make_cmds
    assert dockerfile_install_commands() == make_cmds


def test_demo_target_uses_the_same_base_install():
    # make demo = the base install, then the demo: the image's install is what it runs
    assert make_install_commands("demo")[:-1] == make_install_commands("install")
    assert make_install_commands("demo")[-1] == "/opt/venv/bin/s2loop demo"


def test_image_has_no_torch_and_serves_by_default():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    runs = re.sub(r"\\\n", " ", text)
    assert not [ln for ln in runs.splitlines() if ln.startswith("RUN") and "torch" in ln]
    assert not [ln for ln in runs.splitlines() if ln.startswith("RUN") and "[train" in ln]
    assert 'CMD ["s2loop", "serve"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)


FLEET = ROOT / "docker-compose.fleet.yml"


@needs_compose
def test_fleet_compose_puts_replicas_behind_haproxy_with_the_shared_config():
    cfg = compose_config(FLEET)
    services = cfg["services"]
    assert services["s2loop"]["deploy"]["replicas"] == 3
    assert services["s2loop"]["environment"]["S2LOOP_DEGRADED_STATUS"] == "503"
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    mount = str(lb["volumes"][0])
    assert "deploy/haproxy/haproxy.cfg" in mount
    assert services["cartpole"]["environment"]["S2LOOP_SERVER_URL"] == "http://lb:8000"
    text = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "server-template replica 1-3 s2loop:8000 check" in text  # the compose service
    assert "option httpchk GET /readyz" in text
