"""One helper of the GPU scripts: run limo with its output echoed as it comes."""

import subprocess
import sys


def run_streamed(cmd, env):
    """(exit status, stdout and stderr together) of `cmd`; every line is also written to our
    stderr as it arrives, so that a run killed at check.sh's stage deadline still leaves what it
    printed in the stage's log (subprocess.run(capture_output=True) would lose it all)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stderr.write(line)
        sys.stderr.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)
