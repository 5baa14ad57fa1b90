#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into corpus/<target>/ from the repository's
fixtures (tests/fixtures/{apply,parity}) and hand-encoded protobuf messages. Run once before the
first campaign; `cargo fuzz cmin` then keeps what adds coverage."""

import hashlib
import io
import os
import pathlib
import tarfile

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"


def put(target, data):
    out = HERE / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def fixture_trees():
    for group in ("apply", "parity"):
        base = FIXTURES / group
        dirs = [base] if group == "apply" else sorted(p for p in base.iterdir() if p.is_dir())
        for d in dirs:
            yield d


def files_of(root, prefix=""):
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out.append((prefix + str(p.relative_to(root)), p.read_text(errors="replace")))
    return out


def framed(files):
    return "\0".join(f"{path}\n{text}" for path, text in files).encode()


def tar_of(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(value))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = value
                tar.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
    return buf.getvalue()


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)


def sls_and_pillar():
    for d in fixture_trees():
        states = files_of(d / "salt")
        pillar = files_of(d / "pillar", "pillar/")
        if states:
            put("sls_render", framed(states + pillar))
        if pillar:
            put("pillar_compile", framed(pillar))
    put("pillar_compile", framed([("top.sls", "base:\n  '*':\n    - a\n"), ("a.sls", "a: &x [1, 2]\nb: *x\n"),
                                  ("PILLAR.sample", "app:\n  port: 1\n")]))


def archives():
    for d in fixture_trees():
        salt = d / "salt"
        if not salt.is_dir():
            continue
        entries = [(".salt", "dir", None)]
        for path, text in files_of(salt):
            entries.append((f".salt/{path}", "file", text.encode()))
        entries.append(("README", "file", b"project\n"))
        put("archive_unpack", b"\0" + tar_of(entries))
    links = [
        (".salt", "dir", None), (".salt/top.sls", "file", b"base: {}\n"),
        ("a", "symlink", "."), ("b", "symlink", "a/a/../x"), ("c", "hardlink", ".salt/top.sls"),
        ("d/e", "file", b"e"), ("d/f", "symlink", "../d/e"),
    ]
    put("archive_unpack", b"\0" + tar_of(links))
    put("archive_unpack", b"\0" + tar_of(links, tarfile.PAX_FORMAT))
    release = [
        ("corpus-release.json", "file", b'{"project":"app","deploy_id":"x"}'),
        ("tree", "dir", None), ("tree/bin/run", "file", b"#!/bin/sh\n"),
        ("tree/current", "symlink", "bin"),
    ]
    put("archive_unpack", b"\1" + tar_of(release))


def protos():
    grains = msg((1, "web1"), (2, "web1.example"), (3, "Debian"), (4, "Linux"), (5, 4),
                 (6, 8 << 30), (7, "10.0.0.1"), (7, "fe80::1"), (8, 2), (10, "0.1.0"),
                 (11, "/srv/corpus"), (12, "landlock"))
    finished = msg((1, "job-1"), (2, 2), (3, "build"), (5, "done"), (6, "d1"), (8, 1200))
    hello = msg((1, grains), (2, finished), (3, "job-2"))
    event = msg((1, "job-1"), (2, 7), (3, "build"), (4, "web_root"), (5, 1),
                (6, b'{"diff":"+x"}'), (7, "created"), (8, 12), (9, 1700000000000))
    agent = [
        msg((1, hello)), msg((2, msg((1, 3), (2, "job-2")))), msg((3, event)), msg((4, finished)),
        msg((5, msg((1, "0f1e"), (2, "app"), (3, 4096)))),
        msg((40, msg((1, "run-1"), (2, 1), (3, b'{"ret": true}'), (5, 1), (6, 2)))),
    ]
    for m in agent:
        put("proto_agent_decode", b"\0" + m)
    put("proto_agent_decode", b"\1" + msg((1, "web1"), (2, "-----BEGIN CERTIFICATE REQUEST-----\n"), (3, "tok")))
    put("proto_agent_decode", b"\2" + msg((1, "sha256:ab"), (2, "0f1e")))
    put("proto_agent_decode", b"\3" + msg((1, msg((1, "0f1e"), (2, "app"), (3, "job-1"), (4, "ab"), (5, 10), (6, b"{}")))))
    put("proto_agent_decode", b"\3" + msg((2, b"chunk")))
    put("proto_agent_decode", b"\4" + msg((1, "-----BEGIN CERTIFICATE REQUEST-----\n")))
    header = msg((1, "0f1e"), (2, "app"), (3, "abc123"), (4, msg((1, "app.sls"), (2, "port: 1\n"))),
                 (6, 10240), (7, "sha256:00"))
    client = [
        (0, msg((1, "alice"), (2, "secret"))), (1, b""), (2, msg((1, "dev"), (2, "web1"), (3, "shared"))),
        (3, msg((1, "0f1e"), (2, "app"))), (4, msg((1, header))), (4, msg((2, b"tar bytes"))),
        (5, msg((1, "0f1e"), (2, "app"), (3, "d1"))), (6, msg((1, "0f1e"), (2, "app"))),
        (7, msg((1, "0f1e"), (2, "app"))), (8, msg((1, "0f1e"), (2, "app"), (3, 1 << 20))),
        (9, msg((1, "0f1e"), (2, "job-1"), (3, "app"), (4, 3))),
    ]
    for kind, m in client:
        put("proto_client_decode", bytes([kind]) + m)


if __name__ == "__main__":
    os.chdir(HERE)
    sls_and_pillar()
    archives()
    protos()
