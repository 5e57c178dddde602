"""The on-disk compile cache (cute_moe.kernels.compile): a second process loads the kernel the
first one compiled instead of compiling it; corrupt files are recompiled; ``off`` disables it.
Runs without a GPU (kernels compile for sm_90a)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.compile

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = """
import json, time
from cute_moe.kernels import compile as c
from cute_moe.kernels.quantize import compiled_quantize_kernel
t = time.perf_counter()
compiled_quantize_kernel(256, True, True, True, False, "sm_90a")
print(json.dumps(dict(c.cache_info(), seconds=time.perf_counter() - t)))
"""


def _run(cache_dir, **extra_env):
    env = dict(os.environ, CUTE_MOE_CACHE_DIR=str(cache_dir), CUTE_DSL_ARCH="sm_90a",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               **extra_env)
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_second_process_loads_from_disk(tmp_path):
    first, _ = _run(tmp_path)
    assert first["compiled"] == 1 and first["disk_hits"] == 0
    files = list(tmp_path.glob("*.o"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    second, _ = _run(tmp_path)
    assert second["compiled"] == 0 and second["disk_hits"] == 1
    assert second["seconds"] < first["seconds"]


def test_corrupt_file_is_recompiled(tmp_path):
    _run(tmp_path)
    (f,) = tmp_path.glob("*.o")
    f.write_bytes(b"not an object file")
    again, err = _run(tmp_path)
    assert again["compiled"] == 1 and "ignoring unreadable compile cache file" in err
    assert f.stat().st_size > 100  # rewritten


def test_off_writes_nothing(tmp_path):
    info, _ = _run("off", HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert info["compiled"] == 1
    assert not list(tmp_path.rglob("*.o"))
