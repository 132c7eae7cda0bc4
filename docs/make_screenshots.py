"""Regenerate docs/images/<page>.png, the dashboard pictures of README.md and docs/dashboard.md.

    .venv/bin/python docs/make_screenshots.py                  # from the repository root; a few minutes
    .venv/bin/python docs/make_screenshots.py --from artifacts/screenshots   # reuse a walk `make test` made

The pictures come from the browser test's page walk (tests/test_browser.py::test_every_page_in_chromium):
it serves the bundled demo (data/demo) with `streamlit run app.py` as `make app` does, clicks through
every page in headless Chromium, checks it and screenshots it into $ULVIZ_SCREENSHOTS, here a
temporary folder. Each screenshot is then scaled to WIDTH pixels, cut at MAX_HEIGHT (the top of a
long page) and stored as a 256-colour PNG, so the folder stays a few MB. A page added to pages/ gets
its picture without editing this file. Needs /usr/bin/chromium and playwright (the test extra).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
WIDTH = 1000  # the walk's window is 1400 wide
MAX_HEIGHT = 2400  # after scaling


def shrink(src: Path, dst: Path) -> None:
    with Image.open(src) as img:
        img = img.convert("RGB")
        height = round(img.height * WIDTH / img.width)
        img = img.resize((WIDTH, height), Image.Resampling.LANCZOS)
        if height > MAX_HEIGHT:
            img = img.crop((0, 0, WIDTH, MAX_HEIGHT))
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dst, optimize=True)


def store(pngs: list[Path]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):  # a page renamed or removed leaves no stale picture
        old.unlink()
    for src in pngs:
        shrink(src, OUT / src.name)
        print(f"{OUT / src.name}: {(OUT / src.name).stat().st_size / 1e3:.0f} kB")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from"] and len(argv) == 2:
        pngs = sorted(Path(argv[1]).glob("*.png"))
        if not pngs:
            print(f"make_screenshots: no screenshots in {argv[1]}", file=sys.stderr)
            return 1
        store(pngs)
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as shots:
        env = {**os.environ, "ULVIZ_SCREENSHOTS": shots}
        walk = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/test_browser.py::test_every_page_in_chromium"]
        r = subprocess.run(walk, cwd=ROOT, env=env)
        pngs = sorted(Path(shots).glob("*.png"))
        if r.returncode != 0 or not pngs:
            print(f"make_screenshots: the page walk failed or was skipped (exit {r.returncode}); "
                  "docs/images left as it was", file=sys.stderr)
            return 1
        store(pngs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
