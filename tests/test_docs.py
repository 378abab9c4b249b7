"""The README and docs/*.md: short README, the two commands first, links that resolve.

Checks: README.md has at most 250 lines and its first section (up to the second heading)
holds `make demo` and `make test`; every relative link (and image) in README.md and
docs/*.md names a file inside the repository, and its `#anchor`, if any, a heading of that
file; no page contains an http(s) address or any other link out of the repository; the
README links every docs page; `README.md#anchor` references elsewhere still resolve.
"""

import functools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DOCS = os.path.join(ROOT, 'docs')
MAX_README_LINES = 250

_FENCE = re.compile(r'^\s*(```|~~~)')
_HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')
_CODE_SPAN = re.compile(r'(`+)(.+?)\1')
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
_SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')


def _docs_pages() -> list[str]:
    return sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith('.md'))


def _pages() -> list[str]:
    return [README, *_docs_pages()]


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _prose_lines(path: str) -> list[tuple[int, str]]:
    """`(line number, line)` outside fenced code blocks, inline code spans removed."""
    out, fenced = [], False
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            if _FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                out.append((number, _CODE_SPAN.sub('', line.rstrip('\n'))))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, punctuation dropped, spaces to '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'[^\w\- ]', '', text.lower())
    return text.replace(' ', '-')


@functools.cache
def _anchors(path: str) -> frozenset[str]:
    """Every heading anchor of a Markdown file (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    with open(path, encoding='utf-8') as f:
        for line in f:
            if _FENCE.match(line):
                fenced = not fenced
                continue
            match = None if fenced else _HEADING.match(line)
            if match:
                slug = _slug(match.group(2))
                count = seen.get(slug, 0)
                seen[slug] = count + 1
                anchors.add(slug if count == 0 else f'{slug}-{count}')
    return frozenset(anchors)


def _links(path: str) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in _prose_lines(path) for m in _LINK.finditer(line)]


def test_readme_is_short():
    with open(README, encoding='utf-8') as f:
        count = sum(1 for _ in f)
    assert count <= MAX_README_LINES, f'README.md has {count} lines (at most {MAX_README_LINES})'


def test_readme_starts_with_the_two_commands():
    with open(README, encoding='utf-8') as f:
        lines = f.read().splitlines()
    fenced, headings, first = False, 0, []
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _HEADING.match(line):
            headings += 1
            if headings == 2:
                break
        first.append(line)
    section = '\n'.join(first)
    assert lines and lines[0].startswith('# '), 'README.md must start with its title'
    for command in ('make demo', 'make test'):
        assert command in section, f'{command!r} is not in the first section of README.md'


@pytest.mark.parametrize('path', _pages(), ids=_rel)
def test_no_address_outside_the_repository(path):
    with open(path, encoding='utf-8') as f:
        text = f.read()
    found = re.findall(r'https?://\S*', text)
    assert not found, f'{_rel(path)} contains web addresses: {found}'


@pytest.mark.parametrize('path', _pages(), ids=_rel)
def test_relative_links_resolve(path):
    problems = []
    for number, target in _links(path):
        where = f'{_rel(path)}:{number}: {target!r}'
        if not target:
            problems.append(f'{where} is empty')
            continue
        if _SCHEME.match(target) or target.startswith('//'):
            problems.append(f'{where} links outside the repository')
            continue
        file_part, _, anchor = target.partition('#')
        dest = path
        if file_part:
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if os.path.commonpath([ROOT, dest]) != ROOT:
            problems.append(f'{where} points outside the repository')
        elif not os.path.exists(dest):
            problems.append(f'{where} names a file that does not exist')
        elif anchor and dest.endswith('.md') and anchor not in _anchors(dest):
            problems.append(f'{where} names no heading of {_rel(dest)}')
    assert not problems, '\n'.join(problems)


def test_readme_links_every_docs_page():
    linked = set()
    for _, target in _links(README):
        file_part = target.partition('#')[0]
        if file_part:
            linked.add(os.path.normpath(os.path.join(ROOT, file_part)))
    missing = [_rel(p) for p in _docs_pages() if p not in linked]
    assert not missing, f'README.md does not link: {missing}'


def test_readme_anchors_used_elsewhere_exist():
    problems = []
    for folder in ('notebooks', 'configs', 'launch', 'tldmi_jax', 'tests'):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if not name.endswith(('.py', '.ipynb', '.md')):
                    continue
                path = os.path.join(dirpath, name)
                if path == os.path.abspath(__file__):
                    continue
                with open(path, encoding='utf-8') as f:
                    text = f.read()
                for anchor in re.findall(r'README\.md#([\w-]+)', text):
                    if anchor not in _anchors(README):
                        problems.append(f'{_rel(path)}: README.md#{anchor}')
    assert not problems, 'anchors missing from README.md:\n' + '\n'.join(problems)
