"""download-atlas against a real HTTP server on 127.0.0.1 that serves ATLAS-shaped zips (real mdtraj PDB + xtc).

The server implements Range itself and can be told to fail: cut the body mid-file, answer 503 a few times, ignore
Range, or serve a corrupt or malicious archive.
"""

from __future__ import annotations

import io
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mdtraj
import numpy as np
import pytest
from tqdm import tqdm

from starmd.__main__ import main as starmd_main
from starmd.data.atlas import AtlasArchiveError, AtlasConfig, atlas_url, download_atlas, expected_members
from starmd.data.download import DownloadError, NotFoundError

NAME = "6o2v_A"
N_FRAMES = 5


@dataclass
class Behaviour:
    """What the test server does; `requests` records (path, Range header) of every GET."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_first_at: int | None = None  # first GET: announce the full length, send this many bytes, drop the connection
    errors_first: int = 0  # answer the first n GETs with 503
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            behaviour.requests.append((self.path, self.headers.get("Range")))
            if len(behaviour.requests) <= behaviour.errors_first:
                self.send_error(503, "busy")
                return
            body = behaviour.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if m and not behaviour.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Content-Type", "application/zip")
            self.end_headers()
            if behaviour.cut_first_at is not None and len(behaviour.requests) == 1:
                self.wfile.write(body[:behaviour.cut_first_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture
def server():
    behaviour = Behaviour()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def atlas_files(tmp_path_factory) -> dict[str, bytes]:
    """`{name}.pdb` + three replica xtcs of a two-residue peptide, written by mdtraj (5 frames each)."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    for resname in ("ALA", "GLY"):
        res = top.add_residue(resname, chain)
        for atom in ("N", "CA", "C", "O") + (("CB",) if resname == "ALA" else ()):
            top.add_atom(atom, mdtraj.element.get_by_symbol(atom[0]), res)
    rng = np.random.default_rng(0)
    base = rng.normal(scale=0.3, size=(top.n_atoms, 3))
    d = tmp_path_factory.mktemp("atlas_src")
    mdtraj.Trajectory(base[None], top).save_pdb(str(d / f"{NAME}.pdb"))
    for k in (1, 2, 3):
        xyz = base[None] + rng.normal(scale=0.01, size=(N_FRAMES, top.n_atoms, 3))
        traj = mdtraj.Trajectory(xyz, top, time=np.arange(N_FRAMES) * 10.0)
        traj.save_xtc(str(d / f"{NAME}_prod_R{k}_fit.xtc"))
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def url_path(name: str = NAME) -> str:
    return atlas_url("", name)


def cfg(base_url: str, **kw) -> AtlasConfig:
    return AtlasConfig(base_url=base_url, backoff_base_s=0.01, timeout_s=10.0, **kw)


def assert_extracted(out_dir: Path, atlas_files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(expected_members(NAME))
    for name, data in atlas_files.items():
        assert (out_dir / name).read_bytes() == data
    traj = mdtraj.load(str(out_dir / f"{NAME}_prod_R2_fit.xtc"), top=str(out_dir / f"{NAME}.pdb"))
    assert traj.n_frames == N_FRAMES and traj.n_residues == 2


def no_debris(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_cli_download_extracts_verifies_and_reports_progress(server, atlas_files, tmp_path, capsys):
    base, behaviour = server
    behaviour.files[url_path()] = make_zip(atlas_files)
    out = tmp_path / "atlas" / NAME
    rc = starmd_main(["download-atlas", "--name", NAME, "--out-dir", str(out),
                      "--config-json", f'{{"base_url": "{base}", "backoff_base_s": 0.01}}'])
    assert rc == 0
    assert_extracted(out, atlas_files)
    assert behaviour.requests == [(url_path(), None)]
    assert not list((tmp_path / "atlas").glob("*.zip*")) and not no_debris(tmp_path / "atlas")  # keep_zip: false
    err = capsys.readouterr().err
    size = tqdm.format_sizeof(len(behaviour.files[url_path()]), "", 1024)  # as tqdm prints it, e.g. 2.45k
    assert NAME in err and "100%" in err and f"{size}/{size}" in err  # tqdm byte progress for this chain


def test_dropped_connection_resumes_with_range(server, atlas_files, tmp_path):
    base, behaviour = server
    body = make_zip(atlas_files)
    behaviour.files[url_path()] = body
    behaviour.cut_first_at = len(body) // 2
    out = tmp_path / NAME
    download_atlas(NAME, out, cfg(base, keep_zip=True, chunk_bytes=64))
    assert len(behaviour.requests) == 2 and behaviour.requests[0][1] is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", behaviour.requests[1][1]).group(1))
    assert 0 < resumed_at <= len(body) // 2  # only the missing tail was fetched again
    assert (tmp_path / f"{NAME}_protein.zip").read_bytes() == body
    assert_extracted(out, atlas_files)


def test_kept_zip_is_reused_without_a_request(server, atlas_files, tmp_path):
    base, behaviour = server
    behaviour.files[url_path()] = make_zip(atlas_files)
    download_atlas(NAME, tmp_path / NAME, cfg(base, keep_zip=True))
    behaviour.files.clear()  # the server no longer has it: only the kept zip can satisfy the second call
    (tmp_path / NAME / f"{NAME}.pdb").unlink()
    download_atlas(NAME, tmp_path / NAME, cfg(base, keep_zip=False))
    assert len(behaviour.requests) == 1
    assert_extracted(tmp_path / NAME, atlas_files)
    assert not (tmp_path / f"{NAME}_protein.zip").exists()


def test_server_ignoring_range_restarts_the_file(server, atlas_files, tmp_path):
    base, behaviour = server
    body = make_zip(atlas_files)
    behaviour.files[url_path()] = body
    behaviour.ignore_range = True
    (tmp_path / f"{NAME}_protein.zip.part").write_bytes(b"stale bytes from another run")
    download_atlas(NAME, tmp_path / NAME, cfg(base, keep_zip=True))
    assert behaviour.requests[0][1] == "bytes=28-"  # asked to resume, got a 200 full body instead
    assert (tmp_path / f"{NAME}_protein.zip").read_bytes() == body
    assert_extracted(tmp_path / NAME, atlas_files)


def test_complete_part_file_is_finished_by_416(server, atlas_files, tmp_path):
    base, behaviour = server
    body = make_zip(atlas_files)
    behaviour.files[url_path()] = body
    (tmp_path / f"{NAME}_protein.zip.part").write_bytes(body)  # killed after the last byte, before the rename
    download_atlas(NAME, tmp_path / NAME, cfg(base))
    assert behaviour.requests == [(url_path(), f"bytes={len(body)}-")]
    assert_extracted(tmp_path / NAME, atlas_files)


@pytest.mark.parametrize("corruption", ["flipped_byte", "not_a_zip"])
def test_corrupt_archive_fails_clearly_and_keeps_existing_output(server, atlas_files, tmp_path, corruption):
    base, behaviour = server
    body = bytearray(make_zip(atlas_files))
    if corruption == "flipped_byte":
        body[100] ^= 0xFF  # inside the first member's (the pdb's) compressed data
    else:
        body = bytearray(b"<html>maintenance</html>")
    behaviour.files[url_path()] = bytes(body)
    out = tmp_path / NAME
    out.mkdir()
    (out / "previous.txt").write_text("good output from an earlier run")
    with pytest.raises(AtlasArchiveError, match=rf"{NAME}.*(corrupt download|not a valid zip).*deleted"):
        download_atlas(NAME, out, cfg(base, keep_zip=True))
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [NAME]  # no zip, no .part, no temp dirs

    fresh = tmp_path / "fresh" / NAME
    with pytest.raises(AtlasArchiveError):
        download_atlas(NAME, fresh, cfg(base))
    assert not fresh.exists() and not no_debris(fresh.parent)


def test_404_names_protein_and_url(server, tmp_path, capsys):
    base, behaviour = server
    with pytest.raises(NotFoundError) as e:
        download_atlas("9xyz_B", tmp_path / "9xyz_B", cfg(base))
    assert "9xyz_B" in str(e.value) and atlas_url(base, "9xyz_B") in str(e.value)
    assert len(behaviour.requests) == 1  # a 404 is final: no retries
    rc = starmd_main(["download-atlas", "--name", "9xyz_B", "--out-dir", str(tmp_path / "9xyz_B"),
                      "--config-json", f'{{"base_url": "{base}"}}'])
    assert rc == 1 and atlas_url(base, "9xyz_B") in capsys.readouterr().err
    assert not (tmp_path / "9xyz_B").exists()


def test_503_is_retried_with_backoff(server, atlas_files, tmp_path):
    base, behaviour = server
    behaviour.files[url_path()] = make_zip(atlas_files)
    behaviour.errors_first = 2
    download_atlas(NAME, tmp_path / NAME, cfg(base, max_retries=2))
    assert len(behaviour.requests) == 3
    assert_extracted(tmp_path / NAME, atlas_files)

    behaviour.requests.clear()
    with pytest.raises(DownloadError, match=r"giving up after 2 failed attempts.*503"):
        download_atlas(NAME, tmp_path / "again" / NAME, cfg(base, max_retries=1))
    assert len(behaviour.requests) == 2 and not (tmp_path / "again" / NAME).exists()


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/escaped.txt", f"{NAME}/../../escaped.txt"])
def test_zip_slip_member_is_refused(server, atlas_files, tmp_path, evil):
    base, behaviour = server
    behaviour.files[url_path()] = make_zip(atlas_files | {evil: b"owned"})
    out = tmp_path / "atlas" / NAME
    with pytest.raises(AtlasArchiveError, match=re.escape(f"refusing archive member {evil!r}")):
        download_atlas(NAME, out, cfg(base))
    assert not out.exists() and not list(tmp_path.rglob("escaped.txt"))
    assert not Path("/tmp/escaped.txt").exists()


def test_nested_layout_is_flattened_and_missing_member_named(server, atlas_files, tmp_path):
    base, behaviour = server
    nested = {f"{NAME}/{k}": v for k, v in atlas_files.items()} | {"__MACOSX/._junk": b"x"}
    behaviour.files[url_path()] = make_zip(nested)
    download_atlas(NAME, tmp_path / NAME, cfg(base))
    assert_extracted(tmp_path / NAME, atlas_files)

    partial = {k: v for k, v in atlas_files.items() if "R3" not in k}
    behaviour.files[url_path()] = make_zip(partial)
    with pytest.raises(AtlasArchiveError, match=f"{NAME}_prod_R3_fit.xtc"):
        download_atlas(NAME, tmp_path / "b" / NAME, cfg(base))


def test_bad_config_and_name_are_clear_errors():
    with pytest.raises(ValueError, match=r"atlas: unknown key\(s\) \['retries'\]"):
        AtlasConfig.from_dict({"retries": 3})
    with pytest.raises(ValueError, match=r"atlas.keep_zip: expected bool"):
        AtlasConfig.from_dict({"keep_zip": "yes"})
    with pytest.raises(ValueError, match="not an ATLAS chain name"):
        download_atlas("../6o2v_A", Path("unused"), AtlasConfig())


def test_schema_fragment_matches_config(repo_root):
    import yaml
    from dataclasses import asdict

    schema = yaml.safe_load((repo_root / "schemas" / "atlas.schema.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert {k: v["default"] for k, v in schema["properties"].items()} == asdict(AtlasConfig())
