"""Self-hosted copies of the scripts, styles and fonts that Great Expectations' Data Docs and
DVC's plots load from CDNs, so that both open without a network.

`make setup` runs `python -m tasks.web_assets`: each npm package below is downloaded once,
checked against the integrity hash pinned here (as a package-lock.json would), and the files
the reports use are kept under .web-assets/. Then:
- `self_host(site)` copies them into a Data Docs site and points its pages at the copies;
- `.dvc/offline-plots.html`, a template for `dvc plots show` that carries Vega inline (so the
  plots page is one self-contained file), is named in `.dvc/config.local`, this checkout's.
Without the copies (no registry at setup) both keep their CDN links and work online; the
next `make setup` tries again.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dvc_render.html import PAGE_HTML

from gpt.files import atomic_directory

log = logging.getLogger("tinygpt")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".web-assets"
COMPLETE = ".complete"  # written once every package is kept: the Makefile's target
PLOTS_TEMPLATE = ROOT / ".dvc" / "offline-plots.html"
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Package:
    """An npm package: the files kept from it, each with the CDN addresses it stands in for."""

    name: str
    version: str
    integrity: str
    files: dict[str, tuple[str, ...]]
    folders: tuple[str, ...] = field(default=())  # kept whole (the fonts a stylesheet loads)

    @property
    def folder(self) -> str:
        return f"{self.name.replace('/', '+')}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"


_UNPKG_TABLE = "https://unpkg.com/bootstrap-table@1.19.1/dist/"
_FILTER_CONTROL = "extensions/filter-control/bootstrap-table-filter-control"
PACKAGES = (
    Package("bootstrap", "4.3.1",
            "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
            {"dist/css/bootstrap.min.css":
                 ("https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css",),
             "dist/js/bootstrap.min.js":
                 ("https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",)}),
    Package("jquery", "3.7.1",
            "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
            {"dist/jquery.min.js": ("https://code.jquery.com/jquery-3.7.1.min.js",)}),
    Package("popper.js", "1.12.9",
            "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
            {"dist/umd/popper.min.js":
                 ("https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js",)}),
    Package("@fortawesome/fontawesome-free", "6.6.0",
            "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
            {"css/all.min.css":
                 ("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css",)},
            folders=("webfonts",)),
    Package("bootstrap-table", "1.19.1",
            "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
            {"dist/bootstrap-table.min.css": (_UNPKG_TABLE + "bootstrap-table.min.css",),
             "dist/bootstrap-table.min.js": (_UNPKG_TABLE + "bootstrap-table.min.js",),
             f"dist/{_FILTER_CONTROL}.min.js": (f"{_UNPKG_TABLE}{_FILTER_CONTROL}.min.js",),
             # GE also asks for 1.19.0's stylesheet of the extension: the same file but for
             # its version banner, so 1.19.1's stands in for it.
             f"dist/{_FILTER_CONTROL}.css": (
                 f"https://unpkg.com/bootstrap-table@1.19.0/dist/{_FILTER_CONTROL}.css",),
             f"dist/{_FILTER_CONTROL}.min.css": (
                 f"https://unpkg.com/bootstrap-table@1.19.0/dist/{_FILTER_CONTROL}.min.css",)}),
    Package("bootstrap-datepicker", "1.9.0",
            "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
            {"dist/css/bootstrap-datepicker.min.css": (
                "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
                "bootstrap-datepicker.min.css",),
             "dist/js/bootstrap-datepicker.min.js": (
                 "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
                 "bootstrap-datepicker.min.js",)}),
    Package("@forevolve/bootstrap-dark", "1.1.0",
            "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
            {"dist/css/bootstrap-prefers-dark.css": (
                "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
                "bootstrap-prefers-dark.css",)}),
    # Vega draws GE's charts and DVC's plots; GE asks for the newest of each major version.
    Package("vega", "5.33.1",
            "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
            {"build/vega.min.js": ("https://cdn.jsdelivr.net/npm/vega@5",)}),
    Package("vega-lite", "5.23.0",
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
            {"build/vega-lite.min.js": ("https://cdn.jsdelivr.net/npm/vega-lite@5",)}),
    Package("vega-embed", "6.29.0",
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
            {"build/vega-embed.min.js": ("https://cdn.jsdelivr.net/npm/vega-embed@6",)}),
)
VEGA_SCRIPTS = ("vega", "vega-lite", "vega-embed")  # in load order

# A CDN tag's Subresource Integrity check needs a CORS fetch, which a page opened from disk
# cannot make; the copies were checked against their packages' pinned hashes instead.
_INTEGRITY = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
_VENDOR_TAG = re.compile(r"<(?:script|link)\b[^>]*static/vendor/[^>]*>")
# GE's logo comes from its S3 bucket; the site holds its own copy.
_GE_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
                      r"[\w.-]+\.png(\?[^\"')]*)?")


def fetched(assets: Path = ASSETS) -> bool:
    """Whether every package is kept under assets."""
    return all((assets / package.folder).is_dir() for package in PACKAGES)


def fetch(assets: Path = ASSETS, packages: tuple[Package, ...] = PACKAGES) -> None:
    """Download and verify every package not yet kept under assets."""
    for package in packages:
        if not (assets / package.folder).is_dir():
            log.info("fetching %s@%s", package.name, package.version)
            atomic_directory(assets / package.folder,
                             lambda tmp, p=package: _unpack(p, _download(p), tmp))


def _download(package: Package) -> bytes:
    with urllib.request.urlopen(package.tarball, timeout=120) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != package.integrity:
        raise ValueError(f"{package.tarball} does not match its pinned integrity hash")
    return data


def _unpack(package: Package, data: bytes, target: Path) -> None:
    """Keep the named files and folders of the tarball (its entries are under package/)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            path = member.name.removeprefix("package/")
            wanted = path in package.files or path.split("/")[0] in package.folders
            if not (member.isfile() and wanted):
                continue
            destination = (target / path).resolve()
            if not destination.is_relative_to(target.resolve()):
                raise ValueError(f"{package.tarball} has an entry outside its folder: {path}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(tar.extractfile(member).read())
    missing = [f for f in (*package.files, *package.folders) if not (target / f).exists()]
    if missing:
        raise ValueError(f"{package.tarball} lacks {', '.join(missing)}")


def self_host(site: Path, assets: Path = ASSETS) -> bool:
    """Copy the assets into a Data Docs site (static/vendor/) and point every page at them.
    Returns False, leaving the CDN links, when the assets were never fetched."""
    if not fetched(assets):
        log.warning("Data Docs load their styles from CDNs: `python -m tasks.web_assets` "
                    "(part of `make setup`) fetches local copies")
        return False
    vendor = site / "static" / "vendor"
    for package in PACKAGES:
        shutil.copytree(assets / package.folder, vendor / package.folder, dirs_exist_ok=True)
    local = {url: vendor / package.folder / file for package in PACKAGES
             for file, urls in package.files.items() for url in urls}
    quoted = re.compile(r"(?<=[\"'])(" + "|".join(map(re.escape, local)) + r")(?=[\"'])")
    logo = site / "static" / "images" / "logo-long.png"
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        text = quoted.sub(lambda url, here=page.parent: os.path.relpath(local[url.group()], here),
                          text)
        text = _VENDOR_TAG.sub(lambda tag: _INTEGRITY.sub("", tag.group()), text)
        text = _GE_LOGO.sub(os.path.relpath(logo, page.parent), text)
        page.write_text(text, encoding="utf-8")
    return True


def write_plots_template(path: Path = PLOTS_TEMPLATE, assets: Path = ASSETS) -> Path:
    """DVC's own page for `dvc plots show`, with Vega inline where it was fetched (else DVC
    puts its CDN script tags in the {scripts} placeholder)."""
    page = PAGE_HTML
    if fetched(assets):
        by_name = {package.name: package for package in PACKAGES}
        scripts = (assets / p.folder / next(f for f in p.files if f.endswith(".min.js"))
                   for p in map(by_name.get, VEGA_SCRIPTS))
        page = page.replace("{scripts}", "\n".join(
            f"<script>{script.read_text(encoding='utf-8')}</script>" for script in scripts))
    path.write_text(page, encoding="utf-8")
    return path


def use_plots_template(path: Path = PLOTS_TEMPLATE) -> None:
    """Name the template in .dvc/config.local (this checkout's, not committed)."""
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template",
                    path.name], cwd=path.parent.parent, check=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fetch()
        (ASSETS / COMPLETE).touch()
    except (OSError, ValueError, http.client.HTTPException, tarfile.TarError) as error:
        print(f"warning: report assets not fetched ({error}); Data Docs and DVC plots will "
              "load them from CDNs until the next `make setup`", file=sys.stderr)
    if PLOTS_TEMPLATE.parent.is_dir():  # a DVC checkout (the service's image is not one)
        use_plots_template(write_plots_template())
        print(f"DVC plots template: {PLOTS_TEMPLATE}")


if __name__ == "__main__":
    main()
