"""The reports' self-hosted assets: pinned downloads, and the DVC plots template."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks import web_assets
from tasks.web_assets import PACKAGES, Package, fetch, self_host, write_plots_template


def tarball(files: dict[str, bytes]) -> bytes:
    """An npm-style tarball: every entry under package/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def registry(monkeypatch):
    """A package registry on 127.0.0.1 serving the tarballs put in the dict it yields."""
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(web_assets, "REGISTRY", f"http://127.0.0.1:{server.server_port}")
    yield served
    server.shutdown()
    server.server_close()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_a_package_is_kept_with_the_files_named_and_its_folders(registry, tmp_path):
    data = tarball({"dist/a.min.js": b"ok();", "dist/other.js": b"", "fonts/f.woff2": b"\0"})
    registry["/demo/-/demo-1.0.0.tgz"] = data
    package = Package("demo", "1.0.0", integrity(data), {"dist/a.min.js": ("https://x/a",)},
                      folders=("fonts",))
    fetch(tmp_path, (package,))
    kept = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert kept == ["demo@1.0.0/dist/a.min.js", "demo@1.0.0/fonts/f.woff2"]


def test_a_download_that_does_not_match_its_pinned_hash_is_refused_and_not_kept(registry,
                                                                                tmp_path):
    registry["/demo/-/demo-1.0.0.tgz"] = tarball({"dist/a.min.js": b"tampered();"})
    package = Package("demo", "1.0.0", integrity(b"what was pinned"),
                      {"dist/a.min.js": ("https://x/a",)})
    with pytest.raises(ValueError, match="does not match its pinned integrity hash"):
        fetch(tmp_path, (package,))
    assert list(tmp_path.iterdir()) == []


def test_an_entry_that_climbs_out_of_its_folder_is_refused(registry, tmp_path):
    data = tarball({"fonts/../../escaped.txt": b"x", "dist/a.min.js": b"ok();"})
    registry["/demo/-/demo-1.0.0.tgz"] = data
    package = Package("demo", "1.0.0", integrity(data), {"dist/a.min.js": ("https://x/a",)},
                      folders=("fonts",))
    with pytest.raises(ValueError, match="outside its folder"):
        fetch(tmp_path / "assets", (package,))
    assert not (tmp_path / "escaped.txt").exists()


def fake_assets(folder):
    """Every package's kept files, each holding a line that names it."""
    for package in PACKAGES:
        for file in package.files:
            path = folder / package.folder / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"/* {package.name} {file} */")
    return folder


def test_a_data_docs_site_points_at_its_own_copies(tmp_path):
    """Every CDN address GE writes, at any depth, becomes a relative path to a copy inside
    the site; integrity attributes (which a page opened from disk cannot satisfy) go."""
    assets = fake_assets(tmp_path / "assets")
    site = tmp_path / "site"
    (site / "static" / "images").mkdir(parents=True)
    (site / "static" / "images" / "logo-long.png").write_bytes(b"GE's own copy")
    cdn = {url for package in PACKAGES for urls in package.files.values() for url in urls}
    tags = "".join(f'<script src="{url}" integrity="sha384-x" crossorigin="anonymous"></script>'
                   for url in sorted(cdn))
    logo = ("https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png"
            "?d=20261126T020007Z")
    for page in (site / "index.html", site / "validations" / "a" / "b" / "page.html"):
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f'<html>{tags}<img src="{logo}"></html>')
    assert self_host(site, assets)
    for page in (site / "index.html", site / "validations" / "a" / "b" / "page.html"):
        text = page.read_text()
        assert "https://" not in text and "integrity=" not in text and "crossorigin" not in text
        sources = re.findall(r'src="([^"]+)"', text)
        assert len(sources) == len(cdn) + 1
        assert all((page.parent / source).is_file() for source in sources), sources


def test_the_plots_template_carries_vega_inline_or_falls_back_to_dvcs_scripts(tmp_path):
    assets = fake_assets(tmp_path / "assets")
    inline = write_plots_template(tmp_path / "inline.html", assets).read_text()
    assert "{plot_divs}" in inline and "{scripts}" not in inline  # DVC adds no CDN tags
    assert inline.index("vega build/vega.min.js") < inline.index("vega-embed build/")
    assert "<script src=" not in inline
    fallback = write_plots_template(tmp_path / "cdn.html",
                                    assets=tmp_path / "never-fetched").read_text()
    assert "{plot_divs}" in fallback and "{scripts}" in fallback
