import subprocess
import sys


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "clr_fused", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "cpu   torch   works" in out.stdout
    assert "cpu   auto -> torch" in out.stdout or "cpu   auto -> triton" in out.stdout
