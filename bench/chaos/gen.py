#!/usr/bin/env python3
"""The chaos project's steps (see README.md).

  gen.py build VERSION_FILE RUN COUNT   writes COUNT files holding the version into RUN/gen, over a
                                        few seconds, and copies itself and VERSION_FILE into RUN
  gen.py data VERSION_FILE DIR          writes the version into DIR/marker (through a temporary file)
"""
import os
import shutil
import sys
import time

what, version_file = sys.argv[1], sys.argv[2]
with open(version_file) as f:
    version = f.read().strip()
if what == "build":
    run, count = sys.argv[3], int(sys.argv[4])
    root = os.path.join(run, "gen")
    for i in range(count):
        d = os.path.join(root, "d%03d" % (i // 100))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "f%05d" % i), "w") as f:
            f.write(version + "\n")
        if i % 100 == 99:
            time.sleep(0.1)
    shutil.copy(version_file, os.path.join(run, "VERSION"))
    shutil.copy(os.path.abspath(__file__), os.path.join(run, "gen.py"))
else:
    marker = os.path.join(sys.argv[3], "marker")
    with open(marker + ".tmp", "w") as f:
        f.write(version + "\n")
    time.sleep(0.5)
    os.rename(marker + ".tmp", marker)
