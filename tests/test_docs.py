"""Every command in the docs runs: the code blocks of README.md and docs/*.md.

Which blocks run: a ```bash or ```python block whose opening fence has the line `<!-- tested -->`
directly above it. Keep those cheap (seconds: a few epochs on digits, the demo's cached results).
A block marked `<!-- file: NAME -->` instead (a sweep file, say) is not run but written to NAME, for
the tested blocks after it. Each document's blocks run in order in one fresh temporary folder (a
block may use what an earlier one of the same document made), which holds a copy of data/demo
(commands may cache results in run files), a link to data/cifar10-subset and a link `.venv` to the
environment running the tests, with its bin/ first on PATH, $ULVIZ_CACHE_DIR inside the folder and
this checkout first on PYTHONPATH. bash blocks run under `bash -euo pipefail`, python blocks with the
environment's python; each must exit 0.

Blocks that are not run (they train for long, open a server, need a GPU or files that are not
bundled) must still be right, as far as a check without running them can tell:
- every `ulviz COMMAND ...` names a command, and each of its --options appears in `ulviz COMMAND --help`;
- every script a command names under benchmarks/, docs/ or tests/ exists;
- every python block compiles, its imports from ulviz work and each `ulviz.NAME` it uses exists.
And every relative link or picture in the docs points to a file that exists (and to a heading
that exists, for a link with #anchor).
"""
import ast
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 600  # seconds, per block
FENCE = re.compile(r"^```(\w*)\s*$")
TESTED = "<!-- tested -->"
FILE_MARK = re.compile(r"^<!-- file: (\S+) -->$")
# pages linked before they are written (by another change); checked like any other once they exist
PENDING = {ROOT / "docs" / "architecture.md"}


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    tested: bool
    file: str | None  # `<!-- file: NAME -->`

    def where(self) -> str:
        doc = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc
        return f"{doc}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    found, lines, i = [], doc.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, above = i, lines[i - 1].strip() if i else ""
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        assert i < len(lines), f"{doc}:{start + 1}: code block never closed"
        mark = FILE_MARK.match(above)
        found.append(Block(doc, start + 1, m.group(1), "\n".join(lines[start + 1:i]) + "\n", above == TESTED,
                           mark.group(1) if mark else None))
        i += 1
    return found


def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def test_the_docs_have_tested_blocks():
    """The marker is spelt as this file reads it: a misspelt one would silently run nothing."""
    marked = [b for d in DOCS for b in blocks(d) if b.tested]
    assert {b.doc.name for b in marked} >= {"README.md", "cli.md", "sweeps.md"}, [b.where() for b in marked]
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.strip().startswith("<!--") and ("tested" in line or "file:" in line):
                assert line.strip() == TESTED or FILE_MARK.match(line.strip()), f"{doc}:{n}: {line!r}"
    for b in marked:
        assert b.lang in ("bash", "python"), f"{b.where()}: a tested block must be bash or python, not {b.lang!r}"


# -- running the tested blocks --------------------------------------------------------------------

def _folder(tmp_path: Path) -> dict:
    """The temporary folder a document's blocks run in; returns their environment."""
    shutil.copytree(ROOT / "data" / "demo", tmp_path / "data" / "demo")
    if (ROOT / "data" / "cifar10-subset").exists():
        (tmp_path / "data" / "cifar10-subset").symlink_to(ROOT / "data" / "cifar10-subset")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ULVIZ_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
               ULVIZ_CACHE_DIR=str(tmp_path / ".cache"))
    return env


def run_blocks(doc: Path, tmp_path: Path) -> list[str]:
    """Run `doc`'s tested blocks in order in `tmp_path`; the failures, each with its output."""
    env, failures = _folder(tmp_path), []
    for b in blocks(doc):
        if b.file:
            (tmp_path / b.file).write_text(b.text)
            continue
        if not b.tested:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", b.text] if b.lang == "bash" else [sys.executable, "-c", b.text]
        try:
            r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            failures.append(f"{b.where()}: still running after {TIMEOUT} s:\n{b.text}")
            continue
        if r.returncode != 0:
            failures.append(f"{b.where()}: exit {r.returncode}\n{b.text}--- stdout\n{r.stdout[-2000:]}"
                            f"--- stderr\n{r.stderr[-3000:]}")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.tested for b in blocks(d))], ids=_doc_id)
def test_tested_blocks_run(doc, tmp_path):
    failures = run_blocks(doc, tmp_path)
    assert not failures, "\n\n".join(failures)


def test_a_broken_block_fails(tmp_path):
    """The runner notices a failing command, a failing line in the middle of a block, and python."""
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- tested -->\n```bash\nulviz list\n```\n\n<!-- tested -->\n```bash\n"
                   "ulviz list --no-such-option\necho after\n```\n\n<!-- tested -->\n```python\n"
                   "import ulviz\nulviz.no_such_function()\n```\n\n```bash\nexit 1   # not marked: not run\n```\n")
    (tmp_path / "run").mkdir()
    failures = run_blocks(doc, tmp_path / "run")
    assert len(failures) == 2, failures
    assert "no-such-option" in failures[0] and "no_such_function" in failures[1], failures


# -- checks of every block, run or not ------------------------------------------------------------

_HELP: dict[str, str] = {}


def cli_help(command: str | None) -> str | None:
    """`ulviz COMMAND --help` (`ulviz --help` for None), in this process; None for no such command."""
    if command not in _HELP:
        from importlib.metadata import entry_points

        main = next(iter(entry_points(group="console_scripts", name="ulviz"))).load()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([command, "--help"] if command else ["--help"])
            except SystemExit as e:  # argparse's --help
                code = e.code
        _HELP[command] = out.getvalue() if code in (0, None) else None
    return _HELP[command]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a bash block, as word lists (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", text)
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", text, flags=re.S)  # here-documents
    found = []
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        words = []
        for tok in [*lex, ";"]:
            if tok and set(tok) <= set("();<>|&"):
                while words and re.match(r"^\w+=", words[0]):  # VAR=value before a command
                    words.pop(0)
                if words:
                    found.append(words)
                words = []
            else:
                words.append(tok)
    return found


def check_bash(b: Block) -> list[str]:
    problems = []
    for words in commands(b.text):
        for w in words:
            if re.match(r"^(benchmarks|docs|tests)/[\w./-]+\.(py|sh)$", w) and not (ROOT / w).exists():
                problems.append(f"{b.where()}: {w} does not exist")
        if Path(words[0]).name != "ulviz":
            continue
        command = words[1] if len(words) > 1 and not words[1].startswith("-") else None
        text = cli_help(command)
        if text is None:
            problems.append(f"{b.where()}: `ulviz {command}` is no command")
            continue
        for w in words[1:]:
            option = w.split("=", 1)[0]
            if option.startswith("--") and option != "--help" and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                problems.append(f"{b.where()}: `ulviz {command or ''}` has no option {option}")
    return problems


def check_python(b: Block) -> list[str]:
    import ulviz

    try:
        tree = ast.parse(b.text, filename=b.where())
    except SyntaxError as e:
        return [f"{b.where()}: {e}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n == "ulviz" or n.startswith("ulviz.") for n in names):
                try:
                    exec(compile(ast.Module([node], []), b.where(), "exec"), {})
                except ImportError as e:
                    problems.append(f"{b.where()}: {ast.unparse(node)}: {e}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ulviz":
            if not hasattr(ulviz, node.attr):
                problems.append(f"{b.where()}: ulviz has no {node.attr}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_block_is_well_formed(doc):
    problems = []
    for b in blocks(doc):
        if b.lang in ("bash", "sh", "shell"):
            problems += check_bash(b)
        elif b.lang == "python":
            problems += check_python(b)
    assert not problems, "\n".join(problems)


def test_the_option_check_notices_a_wrong_option():
    b = Block(ROOT / "README.md", 1, "bash", "ulviz train --epochs 3 --no-such-flag 1 \\\n  --out x.h5\n"
              "ulviz nosuchcommand\nFOO=1 ulviz list && .venv/bin/python benchmarks/nope.py\n", False, None)
    problems = check_bash(b)
    assert len(problems) == 3 and "--no-such-flag" in problems[0] and "nosuchcommand" in problems[1] \
        and "benchmarks/nope.py" in problems[2], problems
    bad = Block(ROOT / "README.md", 1, "python", "import ulviz\nfrom ulviz import no_such\nulviz.nope()\n", False, None)
    assert len(check_python(bad)) == 2, check_python(bad)


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors of `doc`."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in doc.read_text().splitlines():
        if FENCE.match(line) or line.strip() == "```":
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_links_point_to_files_that_exist(doc):
    problems = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists() and file not in PENDING:
            problems.append(f"{_doc_id(doc)}: {target}: no such file")
        elif anchor and file.exists() and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{_doc_id(doc)}: {target}: no such heading")
    assert not problems, "\n".join(problems)
