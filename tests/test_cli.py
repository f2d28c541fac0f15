import subprocess
import sys


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "clr_fused", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "cpu   torch   works" in out.stdout
    from clr_fused import _ext

    expected = "cpu" if _ext.load() is not None else "torch"
    assert f"cpu   auto -> {expected}" in out.stdout
    assert f"a CPU user gets backend {expected!r}" in out.stdout
