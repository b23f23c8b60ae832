"""Docker test helpers: is an engine there (else a skip reason), a busybox image imported from the host's
/bin/busybox, and the project's image built offline on .ci/build-base-image's local base. Real engine only;
images are made locally (no registry). Does I/O (docker CLI, subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("GRPO_OPS_BASE_IMAGE", "grpo-ops/base:bookworm-py311")
PROJECT_IMAGE = os.environ.get("GRPO_OPS_TEST_IMAGE", "grpo-ops:test")
BUSYBOX_IMAGE = "grpo-ops-test/busybox:local"
TEST_LABEL = "grpo-ops-test"          # every container a test makes itself carries it (for the teardown)


def engine_problem() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker
        docker.from_env().ping()
        return None
    except Exception as err:  # any failure means "no engine": the tests skip with the reason
        return f"no Docker engine answers ({type(err).__name__}: {err}); start dockerd to run the docker tests"


def require_engine():
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    import docker
    return docker.from_env()


def has_image(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def busybox_image() -> str:
    """A 2 MB image with sh, sleep, dd: /bin/busybox of the host (busybox-static) + its applet links."""
    if has_image(BUSYBOX_IMAGE):
        return BUSYBOX_IMAGE
    src = shutil.which("busybox") or "/bin/busybox"
    if not Path(src).exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(src, arcname="bin/busybox")
            for applet in ("sh", "sleep", "dd", "echo", "cat", "env", "ls", "true", "false", "kill", "ps"):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
            for d in ("tmp", "proc", "sys", "dev", "etc"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
                tar.addfile(info)
        subprocess.run(["docker", "import", "--change", "ENV PATH=/bin", str(tar_path), BUSYBOX_IMAGE],
                       check=True, capture_output=True, timeout=120)
    return BUSYBOX_IMAGE


def project_image() -> str:
    """grpo-ops' own Dockerfile built on the local base image (made by .ci/build-base-image when missing:
    about 4 minutes once, cached after). Docker's layer cache makes a rebuild of unchanged sources quick."""
    if not has_image(BASE_IMAGE):
        subprocess.run([str(REPO / ".ci" / "build-base-image")], check=True, timeout=1500, cwd=REPO)
    subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                    "--build-arg", "PIP_INSTALL_ARGS=--no-index --no-build-isolation", "-t", PROJECT_IMAGE, "."],
                   check=True, capture_output=True, timeout=900, cwd=REPO)
    return PROJECT_IMAGE


def remove_labeled(client, key: str, value: str | None = None) -> None:
    """Remove containers carrying label key (=value): only ones the tests made."""
    flt = f"{key}={value}" if value is not None else key
    for c in client.containers.list(all=True, filters={"label": flt}):
        try:
            c.remove(force=True)
        except Exception:
            pass
