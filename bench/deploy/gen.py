#!/usr/bin/env python3
"""Writes COUNT files of SIZE bytes of /dev/urandom data (os.urandom, i.e. getrandom(2): the
same source, without a process per file) into DIR, 100 files per sub-directory.
Incompressible, so zstd cannot make the release smaller than the tree.

usage: gen.py DIR COUNT SIZE
"""
import os
import sys

root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_dir = 100
for i in range(count):
    d = os.path.join(root, "d%04d" % (i // per_dir))
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d.bin" % i), "wb") as f:
        f.write(os.urandom(size))
