"""Build fleetwatch-exporter.pyz: the exporter and its dependencies in one file, run by any python3 >= 3.11.

    python scripts/build_exporter_zipapp.py build/fleetwatch-exporter.pyz   (what `make exporter-zipapp` runs)

pip installs ./exporter with its dependencies' wheels into a staging folder (from
the configured index: PyPI or a mirror), which becomes the archive. Pure Python
runs from inside the zip. psutil's C extension cannot be imported from a zip:
the archive's __main__ copies psutil out to a cache folder on first start (see
ZIPAPP_MAIN). psutil's wheel is abi3 (any CPython 3.6+) for the build machine's
architecture and glibc (manylinux); build on an x86_64 machine for x86_64 hosts,
or the .pyz falls back to the distro's python3-psutil.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ZIPAPP_MAIN = '''\
"""fleetwatch-exporter as one file: psutil's native code copied out of the archive, then the exporter's CLI."""

import hashlib
import os
import sys
import tempfile
import zipfile

NATIVE = "psutil/"


def _cache_dirs():
    # systemd's CacheDirectory=, the user's cache, then /tmp (PrivateTmp= under the unit's ProtectHome=).
    for base in (os.environ.get("CACHE_DIRECTORY"), os.environ.get("XDG_CACHE_HOME"), "~/.cache"):
        if base:
            yield os.path.join(os.path.expanduser(base), "fleetwatch-exporter")
    yield os.path.join(tempfile.gettempdir(), f"fleetwatch-exporter-{os.getuid()}")


def _extract_native(archive):
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if m.filename.startswith(NATIVE)]
        digest = hashlib.sha256(repr([(m.filename, m.CRC) for m in members]).encode()).hexdigest()[:16]
        for cache in _cache_dirs():
            target = os.path.join(cache, digest)
            if os.path.isdir(target):
                return target
            try:
                os.makedirs(cache, mode=0o700, exist_ok=True)
                staging = tempfile.mkdtemp(dir=cache)
                z.extractall(staging, members)
                os.rename(staging, target)  # atomic: a concurrent start finds all of it or nothing
                return target
            except FileExistsError:
                return target
            except OSError:
                continue
    return None


native = _extract_native(os.path.dirname(os.path.abspath(__file__)))
if native:
    sys.path.insert(0, native)
try:
    import psutil  # noqa: F401 - the copied-out one, or else the distro's python3-psutil
except ImportError:
    if native:
        sys.path.remove(native)
        sys.modules.pop("psutil", None)

from exporter.cli import main

sys.exit(main())
'''


def build(output: Path) -> Path:
    """Stage ./exporter and its dependencies, drop what cannot run from a zip, write ``output``."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site)]
        subprocess.run([*pip, "--only-binary", ":all:", str(ROOT / "exporter")], check=True)
        shutil.rmtree(site / "bin", ignore_errors=True)
        (site / "example.py").unlink(missing_ok=True)  # nvidia-ml-py's sample script, installed top-level
        for native in site.rglob("*.so"):
            # PyYAML's optional C loader is for one Python version: its pure-Python code serves every one.
            if native.relative_to(site).parts[0] != "psutil":
                native.unlink()
        (site / "__main__.py").write_text(ZIPAPP_MAIN)
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(site, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


if __name__ == "__main__":
    out = build(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "fleetwatch-exporter.pyz"))
    print(f"{out} ({out.stat().st_size // 1024} KiB)")
