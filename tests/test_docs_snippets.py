"""Every code snippet in ``docs/**/*.rst`` is run, so the docs cannot drift from the code.

What is extracted (from every ``.rst`` file under ``docs/``, in path order):

``.. code-block:: python`` (also ``code``/``sourcecode``, ``python3``/``py``, and ``.. testcode::``)
    Run in a fresh namespace (``__name__`` is ``"__snippet__"``, so an
    ``if __name__ == "__main__":`` block does not run). A snippet with a
    top-level ``await`` runs on the test's trio loop; any other runs in a
    worker thread, so it may call ``trio.run(main)`` itself. Afterwards, every
    top-level ``test_*`` function of the snippet that takes no arguments is
    called (and awaited if it is async). Each snippet has 30 seconds.
a block with ``:caption: path/to/file.ext``
    A *file* of the document's project: it is written to disk at that path in
    a temporary project directory that every later snippet of the project
    runs in (the directory is on ``sys.path`` and is the working directory),
    so ``from chat.consumers import ChatConsumer`` works after a
    ``chat/consumers.py`` block. A later block with the same caption replaces
    the file (a tutorial revises its code). A Python file is imported as its
    module; a ``test_*.py`` file is run with ``python -m pytest`` in the
    project directory instead.
``.. code-block:: toml`` / ``json``
    Parsed.
``.. code-block:: console`` (or ``shell``, ``sh``, ``bash``)
    Each ``$ trichannels ...`` command line (after any ``VAR=value``
    prefixes) is parsed by the real argument parser, so a renamed option
    fails here. Nothing is executed.

Markers, written as reST comments (invisible in the built docs):

``.. skip-test: <reason>``
    Just before a code block: do not run it. The reason is required. Use sparingly.
``.. snippet-setup:`` followed by an indented block of Python
    Code run before every later Python snippet of the same document, in its
    namespace (hidden imports or stand-ins for names a fragment uses).
``.. snippet-project: <name>``
    Documents naming the same project share their files, in path order (the
    tutorial is one project spread over several pages). By default each
    document is its own project.

Global state a snippet changes (configured channel layers, environment
variables, ``sys.path``, modules imported from the project directory, the
working directory, root logging handlers) is restored after it.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import io
import json
import logging
import os
import re
import shlex
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from trichannels.cli import build_parser
from trichannels.layers import InMemoryChannelLayer, channel_layers
from trichannels.testing import WebsocketCommunicator

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs"
SNIPPET_TIMEOUT: Final = 30.0

PYTHON_LANGUAGES: Final = frozenset({"python", "python3", "py"})
SHELL_LANGUAGES: Final = frozenset({"console", "shell", "sh", "bash", "shell-session"})

_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\.[ \t]+(?P<name>code-block|code|sourcecode|testcode)::[ \t]*(?P<lang>\S*)[ \t]*$"
)
_OPTION = re.compile(r"^[ \t]+:(?P<name>[\w-]+):[ \t]*(?P<value>.*)$")
_COMMENT = re.compile(
    r"^(?P<indent>[ \t]*)\.\.[ \t]+(?P<name>skip-test|snippet-setup|snippet-project):(?!:)[ \t]*(?P<rest>.*)$"
)
_FILE_CAPTION = re.compile(r"^[\w.-]+(/[\w.-]+)*\.\w+$")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


@dataclass
class Block:
    """One code block of one document."""

    doc: str
    """Path of the document relative to the repository root."""
    line: int
    """1-based line of the directive."""
    language: str
    code: str
    options: dict[str, str] = field(default_factory=dict)
    skip: str | None = None
    """The ``skip-test`` reason, ``""`` if the marker has none, None if not skipped."""
    setup: str = ""
    project: str = ""

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def file(self) -> str | None:
        """The path this block is a file at, if its caption is one."""
        caption = self.options.get("caption", "").strip()
        return caption if _FILE_CAPTION.match(caption) else None

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON_LANGUAGES


def _indented_body(
    lines: list[str], start: int, parent_indent: int
) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``parent_indent``; and where they end."""
    end = start
    while end < len(lines) and (
        not lines[end].strip() or _indent_of(lines[end]) > parent_indent
    ):
        end += 1
    body = lines[start:end]
    while body and not body[-1].strip():
        body.pop()
    return body, end


def parse_rst(text: str, doc: str) -> list[Block]:
    """The code blocks of one reST document, with their markers applied."""
    lines = text.expandtabs(8).splitlines()
    blocks: list[Block] = []
    setup: list[str] = []
    project = doc
    i = 0
    while i < len(lines):
        line = lines[i]
        comment = _COMMENT.match(line)
        if comment:
            indent = len(comment["indent"])
            body, end = _indented_body(lines, i + 1, indent)
            if comment["name"] == "snippet-setup":
                code = textwrap.dedent("\n".join(body))
                if comment["rest"].strip():
                    code = comment["rest"].strip() + "\n" + code
                setup.append(code)
            elif comment["name"] == "snippet-project":
                project = "project:" + comment["rest"].strip()
            i = end
            continue
        directive = _DIRECTIVE.match(line)
        if not directive:
            i += 1
            continue
        indent = len(directive["indent"])
        language = (
            "python" if directive["name"] == "testcode" else directive["lang"].lower()
        )
        j = i + 1
        options: dict[str, str] = {}
        while j < len(lines) and (option := _OPTION.match(lines[j])):
            options[option["name"]] = option["value"]
            j += 1
        body, end = _indented_body(lines, j, indent)
        skip = None
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if (
            k >= 0
            and (marker := _COMMENT.match(lines[k]))
            and marker["name"] == "skip-test"
        ):
            skip = marker["rest"].strip()
        blocks.append(
            Block(
                doc=doc,
                line=i + 1,
                language=language,
                code=textwrap.dedent("\n".join(body)).strip("\n") + "\n",
                options=options,
                skip=skip,
                setup="\n".join(setup),
            )
        )
        i = end
    for block in blocks:
        block.project = project
    return blocks


def _collect() -> list[Block]:
    blocks: list[Block] = []
    for path in sorted(DOCS.rglob("*.rst")):
        if "_build" in path.parts:
            continue
        blocks.extend(
            parse_rst(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        )
    return blocks


BLOCKS: Final = _collect()
PYTHON_BLOCKS: Final = [b for b in BLOCKS if b.is_python]
DATA_BLOCKS: Final = [b for b in BLOCKS if b.language in ("toml", "json")]
SHELL_BLOCKS: Final = [
    b for b in BLOCKS if b.language in SHELL_LANGUAGES and "trichannels" in b.code
]


def _params(blocks: list[Block]) -> list[Any]:
    params = [
        pytest.param(
            b,
            id=b.id,
            # A test file is run by pytest in a subprocess: seconds, not milliseconds.
            marks=[pytest.mark.slow]
            if b.file and Path(b.file).name.startswith("test_")
            else [],
        )
        for b in blocks
    ]
    return params or [
        pytest.param(None, id="none", marks=pytest.mark.skip("no such blocks"))
    ]


# -- the project directory a snippet runs in ----------------------------------------------------


def project_files(upto: Block | None, project: str) -> dict[str, str]:
    """The files of ``project`` as they stand just after ``upto`` (the end if None)."""
    files: dict[str, str] = {}
    for block in BLOCKS:
        if block.project != project:
            continue
        if block.file is not None:
            files[block.file] = block.code
        if block is upto:
            break
    return files


def write_project(directory: Path, files: dict[str, str]) -> None:
    for rel, code in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")


def _under(path: object, directory: Path) -> bool:
    if not isinstance(path, str):
        return False
    try:
        return Path(path).resolve().is_relative_to(directory)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def isolated(directory: Path) -> Iterator[None]:
    """Run in ``directory`` (cwd and ``sys.path``) and undo what a snippet changes globally."""
    directory = directory.resolve()
    saved_layers = {
        key: copy.copy(value) for key, value in vars(channel_layers).items()
    }
    saved_environ = dict(os.environ)
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    saved_cwd = Path.cwd()
    root_logger = logging.getLogger()
    saved_handlers, saved_level = list(root_logger.handlers), root_logger.level
    os.environ.pop("TRICHANNELS_LAYERS", None)
    sys.path.insert(0, str(directory))
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            module = sys.modules[name]
            locations = [
                getattr(module, "__file__", None),
                *getattr(module, "__path__", []),
            ]
            if any(_under(location, directory) for location in locations):
                del sys.modules[name]
        os.environ.clear()
        os.environ.update(saved_environ)
        vars(channel_layers).clear()
        vars(channel_layers).update(saved_layers)
        root_logger.handlers[:] = saved_handlers
        root_logger.setLevel(saved_level)


def _module_name(rel: str) -> str:
    parts = list(Path(rel).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# -- running a snippet ----------------------------------------------------------------------------


async def _call_tests(namespace: dict[str, Any]) -> None:
    for name, obj in list(namespace.items()):
        if not (name.startswith("test_") and inspect.isfunction(obj)):
            continue
        params = inspect.signature(obj).parameters.values()
        if any(
            p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in params
        ):
            continue
        if inspect.iscoroutinefunction(obj):
            await obj()
        else:
            await trio.to_thread.run_sync(obj, abandon_on_cancel=True)


async def run_python(code: str, filename: str, namespace: dict[str, Any]) -> None:
    """Run ``code`` (top-level ``await`` allowed) in ``namespace``; then its ``test_*`` functions."""
    compiled = compile(
        code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    if compiled.co_flags & inspect.CO_COROUTINE:
        await eval(compiled, namespace)
    else:
        await trio.to_thread.run_sync(exec, compiled, namespace, abandon_on_cancel=True)
    await _call_tests(namespace)


async def run_pytest(directory: Path, rel: str) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TRICHANNELS_LAYERS", None)
    env.pop("PYTEST_ADDOPTS", None)
    result = await trio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", rel],
        cwd=directory,
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"pytest {rel} failed in the docs project:\n{output}"
    assert " passed" in output, output


@pytest.mark.parametrize("block", _params(PYTHON_BLOCKS))
async def test_python_snippet(block: Block, tmp_path: Path) -> None:
    """The Python snippet runs (a file snippet imports, a test file's tests pass)."""
    if block.skip is not None:
        assert block.skip, f"{block.id}: '.. skip-test:' needs a reason"
        pytest.skip(f"{block.id}: {block.skip}")
    write_project(tmp_path, project_files(block, block.project))
    filename = f"{DOCS.parent / block.doc}:{block.line}"
    with isolated(tmp_path), trio.fail_after(SNIPPET_TIMEOUT):
        if block.file is not None and Path(block.file).name.startswith("test_"):
            await run_pytest(tmp_path, block.file)
            return
        namespace: dict[str, Any] = {"__name__": "__snippet__"}
        if block.setup:
            await run_python(block.setup, f"{filename} (snippet-setup)", namespace)
        if block.file is not None:
            # Imported as its module, as the application will import it.
            module_name = _module_name(block.file)
            await trio.to_thread.run_sync(__import__, module_name)
            module = sys.modules[module_name]
            await _call_tests(vars(module))
        else:
            await run_python(block.code, filename, namespace)


@pytest.mark.parametrize("block", _params(DATA_BLOCKS))
def test_data_snippet(block: Block) -> None:
    """TOML and JSON blocks parse."""
    if block.skip is not None:
        assert block.skip, f"{block.id}: '.. skip-test:' needs a reason"
        pytest.skip(f"{block.id}: {block.skip}")
    if block.language == "toml":
        tomllib.loads(block.code)
    else:
        json.loads(block.code)


def _commands(code: str) -> Iterator[list[str]]:
    """The argument lists of ``$ trichannels ...`` lines (continuations joined)."""
    logical: list[str] = []
    current = ""
    for raw in code.splitlines():
        if not current and not raw.startswith("$ "):
            continue
        line = raw.removeprefix("$ ") if not current else raw
        current += line.rstrip("\\").rstrip() + " "
        if not raw.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    for line in logical:
        words = shlex.split(line, comments=True)
        while words and _ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        for sep in ("&&", ";", "|", "&"):
            if sep in words:
                words = words[: words.index(sep)]
        if words and words[0] == "trichannels":
            yield words[1:]


@pytest.mark.parametrize("block", _params(SHELL_BLOCKS))
def test_shell_snippet_commands_parse(block: Block) -> None:
    """Every ``trichannels`` command shown in the docs is accepted by the real argument parser."""
    commands = list(_commands(block.code))
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        status: object = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version exit 0; errors exit 2
            status = exc.code
        assert status == 0, (
            f"{block.id}: `trichannels {shlex.join(argv)}`: {err.getvalue()}"
        )


# -- the extractor itself ---------------------------------------------------------------------------


def test_every_python_block_is_found() -> None:
    """No Python block escapes the extractor (a grep count matches what it parsed)."""
    pattern = re.compile(
        r"^\s*\.\.\s+(?:(?:code-block|code|sourcecode)::\s*(?:python|python3|py)\s*|testcode::\s*)$",
        re.MULTILINE,
    )
    total = 0
    for path in sorted(DOCS.rglob("*.rst")):
        if "_build" not in path.parts:
            total += len(pattern.findall(path.read_text(encoding="utf-8")))
    assert len(PYTHON_BLOCKS) == total
    assert total > 0


_SAMPLE = """\
Title
=====

.. snippet-project: demo

.. snippet-setup:
   HIDDEN = 1

* A list item with a nested block:

  .. code-block:: python
     :caption: pkg/mod.py

     def f():

         return HIDDEN

* After it.

.. skip-test: needs a GPU

.. code-block:: python

   import gpu

.. note::

   .. code:: py

      x = 1
   Text inside the note.

.. skip-test:

.. testcode::

   y = 2

::

    not a snippet

.. code-block:: console

   $ TRICHANNELS_LAYERS=memory:// trichannels serve app:application \\
       --bind 0.0.0.0:8000  # comment
   $ hypercorn --worker-class trio app:application
   $ trichannels demo && echo done
"""


def test_parse_rst_sample() -> None:
    """Options, nesting, markers, continuation lines: the extractor reads them as documented."""
    blocks = parse_rst(_SAMPLE, "sample.rst")
    assert [(b.language, b.line) for b in blocks] == [
        ("python", 11),
        ("python", 22),
        ("py", 28),
        ("python", 35),
        ("console", 43),
    ]
    first, gpu, note, unreasoned, console = blocks
    assert first.file == "pkg/mod.py"
    assert first.code == "def f():\n\n    return HIDDEN\n"
    assert first.setup == "HIDDEN = 1"
    assert {b.project for b in blocks} == {"project:demo"}
    assert (first.skip, gpu.skip, note.skip, unreasoned.skip) == (
        None,
        "needs a GPU",
        None,
        "",
    )
    assert note.code == "x = 1\n"
    assert list(_commands(console.code)) == [
        ["serve", "app:application", "--bind", "0.0.0.0:8000"],
        ["demo"],
    ]


def test_module_names() -> None:
    """File captions map to the module names they are imported as."""
    assert _module_name("chat/consumers.py") == "chat.consumers"
    assert _module_name("chat/__init__.py") == "chat"


# -- the tutorial's final code, exercised -------------------------------------------------------------


TUTORIAL: Final = "project:tutorial"


@pytest.fixture
async def tutorial_application(tmp_path: Path) -> Any:
    """``chat.asgi.application`` as the tutorial leaves it, with an in-memory layer."""
    files = project_files(None, TUTORIAL)
    assert "chat/asgi.py" in files, sorted(files)
    write_project(tmp_path, files)
    with isolated(tmp_path):
        from chat.asgi import application  # type: ignore[import-not-found]

        async with InMemoryChannelLayer() as layer:
            channel_layers.set("default", layer)
            try:
                yield application
            finally:
                channel_layers.set("default", None)


async def test_tutorial_final_code_chats(tutorial_application: Any) -> None:
    """The tutorial's chat: a message reaches the whole room and only that room."""
    app = tutorial_application
    with trio.fail_after(10):
        async with (
            WebsocketCommunicator(app, "/ws/chat/lobby/") as ada,
            WebsocketCommunicator(app, "/ws/chat/lobby/") as bob,
            WebsocketCommunicator(app, "/ws/chat/kitchen/") as cy,
        ):
            for client in (ada, bob, cy):
                assert (await client.connect())[0]
            await ada.send_json_to({"nick": "ada", "text": "hello"})
            expected = {"room": "lobby", "nick": "ada", "text": "hello"}
            assert await ada.receive_json_from() == expected
            assert await bob.receive_json_from() == expected
            assert await cy.receive_nothing()

            await bob.send_json_to({"text": "no nick"})
            error = await bob.receive_json_from()
            assert set(error) == {"error"}
            assert await ada.receive_nothing()

            await bob.disconnect()
            await cy.send_json_to({"nick": "cy", "text": "anyone?"})
            assert (await cy.receive_json_from())["text"] == "anyone?"
            assert await ada.receive_nothing()


async def test_tutorial_final_code_refuses_unknown_paths(
    tutorial_application: Any,
) -> None:
    """A path the tutorial's router does not know is refused."""
    with trio.fail_after(10), pytest.raises(ValueError, match="No route found"):
        async with WebsocketCommunicator(tutorial_application, "/nowhere/") as client:
            await client.connect()
