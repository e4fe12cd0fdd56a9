"""The example plugin, tested the way any third-party plugin would be: through real discovery
and the core's contract classes."""

import subprocess
import sys

from cellnet_core.testing.contracts import DatasetContract, EncoderContract


class TestGreetings(DatasetContract):
    name = "greetings"


class TestCharNgram(EncoderContract):
    name = "char-ngram"
    config = {"dim": 64}


def test_listed_by_cellnet_plugins():
    out = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0
    line = next(line for line in out.stdout.splitlines() if line.startswith("example"))
    assert "cellnet-example-plugin" in line and "0.1.0" in line and "dataset:greetings" in line
