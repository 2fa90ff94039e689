"""The docs cannot rot: every ```python block in docs/*.md runs, every ```toml block parses.

Blocks of one page run in order in one namespace (a page reads like a script), in a
fresh temporary folder. A block whose first line is ``# name.py`` is also written to
that file, so later blocks and TOML configs can import it. A TOML block that names a
``model`` is loaded with the CLI's config loader, so it is checked against the real
factory, selectors and plugins, not just for syntax.

A block is skipped only when the line right above its opening fence is
``<!-- skip: reason -->`` with a non-empty reason.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
# The README is a page too: its example must run like the rest.
PAGES = sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]

_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!--\s*skip:\s*(.*?)\s*-->$")
_FILE_HEADER = re.compile(r"^#\s*([\w.]+\.py)\s*$")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None


def extract_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, with their language and skip marker."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page.name}:{start + 1}: code fence is never closed")
        skip = None
        if start > 0 and (m := _SKIP.match(lines[start - 1].strip())):
            skip = m.group(1)
            if not skip:
                raise AssertionError(f"{page.name}:{start}: a skip marker needs a reason")
        blocks.append(Block(page, start + 1, opening.group(1), "\n".join(body) + "\n", skip))
        i += 1
    return blocks


def test_docs_exist_and_have_runnable_code():
    names = {p.name for p in PAGES}
    for expected in ("index.md", "sketched-layers.md", "autotuner.md", "cli.md", "plugins.md",
                     "benchmarks.md"):
        assert expected in names
    blocks = [b for p in PAGES for b in extract_blocks(p)]
    python = [b for b in blocks if b.lang == "python"]
    assert len(python) >= 15
    skipped = [b for b in python if b.skip_reason]
    assert len(skipped) <= 2, [f"{b.page.name}:{b.line}" for b in skipped]


def test_relative_links_point_to_existing_files():
    link = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
    root = DOCS.parent
    for page in PAGES:
        for target, _anchor in link.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists() or (root / target).exists(), (
                f"{page.name} links to missing {target}"
            )


def test_skip_marker_parsing(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- skip: needs GPU -->\n```python\nraise SystemExit\n```\n\n```toml\na = 1\n```\n")
    blocks = extract_blocks(page)
    assert [(b.lang, b.skip_reason, b.line) for b in blocks] == [("python", "needs GPU", 2), ("toml", None, 6)]
    page.write_text("```python\nx = 1\n")
    with pytest.raises(AssertionError, match="never closed"):
        extract_blocks(page)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    import torch

    from panther.cli import load_tune_config
    from panther.tuner import plugins

    monkeypatch.chdir(tmp_path)
    # One thread: the pages do tiny products, where threads on a shared machine only cost.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plugins_before = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    monkeypatch.syspath_prepend(str(tmp_path))
    modules_before = set(sys.modules)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    try:
        for block in extract_blocks(page):
            where = f"{page.name}:{block.line}"
            if block.skip_reason:
                continue
            if block.lang == "python":
                first = block.code.splitlines()[0] if block.code.strip() else ""
                if m := _FILE_HEADER.match(first):
                    (tmp_path / m.group(1)).write_text(block.code)
                try:
                    exec(compile(block.code, where, "exec"), namespace)
                except Exception as exc:
                    raise AssertionError(f"python block at {where} failed: {exc!r}") from exc
            elif block.lang == "toml":
                try:
                    data = tomllib.loads(block.code)
                except tomllib.TOMLDecodeError as exc:
                    raise AssertionError(f"toml block at {where} does not parse: {exc}") from exc
                if "model" in data:
                    config = tmp_path / f"block_{block.line}.toml"
                    config.write_text(block.code)
                    load_tune_config(config)  # raises ConfigError naming the key
    finally:
        torch.set_num_threads(threads)
        # A page that registers plugins must not leave them behind for other tests.
        for name, _ in plugins.get_plugin_manager().list_name_plugin():
            if name not in plugins_before:
                plugins.unregister_plugin(name)
        # Modules written by the page (e.g. my_models.py) must not leak into other pages.
        for name in set(sys.modules) - modules_before:
            module = sys.modules.get(name)
            if module is not None and str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
                del sys.modules[name]
        import matplotlib.pyplot as plt

        plt.close("all")
