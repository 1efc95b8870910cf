"""The wheel built from the repository works outside the source tree.

Built with `pip wheel`, installed into a fresh venv (dependencies come from this
interpreter's site-packages, the wheel itself with --no-deps), and run from an empty
directory: demo, hunt, check and test use the bundled rule pack and samples.
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the venv must see its own install, not a source tree named on PYTHONPATH
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(work / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("sigstream-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies come from this interpreter's site-packages, named in a .pth file: its
    # directories join sys.path, but their own .pth files (the editable install's import
    # hook for the source tree) are not run.
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    deps = {p for p in sys.path if p.endswith("site-packages")}
    Path(site_dir, "system-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True, env=CLEAN_ENV)
    empty = work / "empty"
    empty.mkdir()
    return wheel, python, empty


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "sigstream", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=CLEAN_ENV)


def test_wheel_installs_only_the_sigstream_import_name(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"sigstream"}
    for data in ("sigstream/sigma_rules/", "sigstream/samples/fileless-intrusion.jsonl",
                 "sigstream/schemas/alert.schema.json"):
        assert any(n.startswith(data) for n in names), data


def test_installed_package_is_the_wheel_not_the_source_tree(installed):
    _, python, empty = installed
    out = subprocess.run([str(python), "-c", "import sigstream.stream.engine as e; print(e.__file__)"],
                         cwd=empty, capture_output=True, text=True, check=True, env=CLEAN_ENV).stdout
    assert str(REPO) not in out and "site-packages" in out


def test_demo_hunt_check_test_from_an_empty_directory(installed):
    _, python, empty = installed
    demo = run(python, empty, "demo")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "alerts on" in demo.stdout and "Traceback" not in demo.stderr
    assert " 0 alerts" not in demo.stdout

    samples = subprocess.run([str(python), "-c", "from sigstream.resources import samples_dir; "
                              "print(samples_dir())"], cwd=empty, capture_output=True, text=True,
                             check=True, env=CLEAN_ENV).stdout.strip()
    hunt = run(python, empty, "hunt", "-f", "jsonl", samples)
    assert hunt.returncode == 0, hunt.stderr[-2000:]
    assert hunt.stdout.count('"alert_id"') > 0

    check = run(python, empty, "check")
    assert check.returncode == 0, check.stdout[-2000:]
    assert "0 error(s)" in check.stdout

    tests = run(python, empty, "test")
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert " passed, 0 failed" in tests.stdout
