"""The docs cannot rot silently: every flag they write exists on its command, every path they name exists.

A command line in a code block (or an inline code span that is a command) is checked against that
command's own ``--help``; a flag in prose or in a comment is checked against the commands of the
same block or page. ``--config.a.b`` overrides are checked against the config the line names.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from tests.helpers.paths import ROOT

# Flags the docs quote from other tools, with whose they are.
FOREIGN_FLAGS = {
    "--enable_deepcache": "LatentSync's inference script",
    "--no-deps": "pip",
    "--upgrade": "pip",
    "--gpus": "docker run",
    "--durations": "pytest",
    "--dist": "pytest-xdist",
    "--strict": "mkdocs build",
}
# Our commands that run a Beam pipeline: Beam's own options pass through them.
BEAM_COMMANDS = ("-m data_prep", "-m lipsync_jax.batch", "lipsync-batch", "lipsync-data-prep")
# Commands that are not ours; their flags are not checked.
FOREIGN_COMMANDS = ("pip", "docker", "cog", "gcloud", "ffmpeg", "mkdocs", "ruff", "git", "apt-get", "curl")


def doc_files() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                               recursive=True))]


def console_scripts() -> dict[str, str]:
    """``lipsync-infer`` -> ``lipsync_jax.serving.infer_cli:entry`` (pyproject's [project.scripts])."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


@dataclasses.dataclass(frozen=True)
class Command:
    """One of our commands: how to ask it for its flags."""

    key: str                 # "infer.py", "-m lipsync_jax.convert unet", "lipsync-infer"
    help_argv: tuple[str, ...]


@dataclasses.dataclass
class Use:
    """A command line, or a flag in prose, found in a doc."""

    doc: str
    line: int
    command: Command | None       # None: a prose/comment flag, checked against the page's commands
    flags: list[str]
    config: str | None = None     # the --config file the line names


def parse_command(tokens: list[str]) -> tuple[Command | None, list[str]]:
    """The command of a shell word list (env assignments and wrappers skipped) and its remaining words."""
    scripts = console_scripts()
    i = 0
    while i < len(tokens) and (re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[i]) or tokens[i] in ("timeout", "nohup", "env")
                               or re.fullmatch(r"\d+[smh]?", tokens[i])):
        i += 1
    if i >= len(tokens):
        return None, []
    head, rest = tokens[i], tokens[i + 1:]
    if head in scripts:
        module, func = scripts[head].split(":")
        code = f"import sys; sys.argv[0] = {head!r}; from {module} import {func}; sys.exit({func}())"
        return Command(head, (sys.executable, "-c", code)), rest
    if head not in ("python", "python3") or not rest:
        return None, []
    if rest[0] == "-m" and len(rest) > 1:
        module, rest = rest[1], rest[2:]
        if module in ("pytest", "venv", "pip"):
            return None, []
        argv = ("-m", module)
        return Command(" ".join(argv), (sys.executable, *argv)), rest
    if rest[0].endswith(".py"):
        return Command(rest[0], (sys.executable, rest[0])), rest[1:]
    return None, []


FLAG = re.compile(r"(?<![\w=-])--[a-zA-Z][\w.-]*")


def flags_in(words: list[str] | str) -> list[str]:
    text = " ".join(words) if isinstance(words, list) else words
    return [m.group(0).split("=")[0].rstrip(".,;:") for m in FLAG.finditer(text)]


def config_in(words: list[str]) -> str | None:
    for j, word in enumerate(words):
        if word.startswith("--config="):
            return word.split("=", 1)[1]
        if word == "--config" and j + 1 < len(words):
            return words[j + 1]
    return None


def split_shell(line: str) -> list[list[str]]:
    """Shell segments of a line (split at &&, ||, ;, |), each as words."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    segments, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    return [s for s in segments if s]


def uses_in(doc: str, text: str) -> list[Use]:
    """Every command line and prose flag of one document."""
    uses: list[Use] = []
    lines = text.splitlines()
    in_block, block_lang, last_command, last_config = False, "", None, None
    variables: dict[str, str] = {}  # NAME=value lines of the current code block
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        if line.lstrip().startswith("```"):
            in_block = not in_block
            block_lang = line.strip()[3:] if in_block else ""
            last_command, last_config = None, None
            variables = {}
            i += 1
            continue
        if in_block and block_lang in ("", "bash", "sh", "shell", "console"):
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continued command lines
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            code, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line)
            code = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m, known=variables: known.get(m.group(1), m.group(0)),
                          code)
            for segment in split_shell(code):
                assignment = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", segment[0], re.S)
                if assignment and len(segment) == 1:  # NAME=value: used as $NAME further down the block
                    variables[assignment.group(1)] = assignment.group(2)
                    continue
                command, rest = parse_command(segment)
                if command is not None:
                    last_command, last_config = command, config_in(rest)
                    uses.append(Use(doc, lineno, command, flags_in(rest), last_config))
                elif segment and segment[0] not in FOREIGN_COMMANDS and flags_in(segment):
                    # a continuation such as "[--steps 20 ...]" belongs to the block's last command
                    uses.append(Use(doc, lineno, last_command, flags_in(segment), last_config))
            if flags_in(comment):  # a comment is prose: it may name any of our commands' flags
                uses.append(Use(doc, lineno, None, flags_in(comment)))
        elif not in_block:
            for span in re.findall(r"`([^`]+)`", line):
                segments = split_shell(span)
                command, rest = parse_command(segments[0]) if segments else (None, [])
                if command is not None:
                    uses.append(Use(doc, lineno, command, flags_in(rest), config_in(rest)))
                elif segments and segments[0][0] not in FOREIGN_COMMANDS and flags_in(span):
                    uses.append(Use(doc, lineno, None, flags_in(span)))
        i += 1
    return uses


HELP_FLAG = re.compile(r"^\s+(?:-\w,\s+)?--(\[no\])?([\w.-]+)")


def help_output(command: Command, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command.help_argv, flag], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@functools.cache
def beam_options() -> frozenset[str]:
    """The flags of Beam's pipeline options (``--runner``, ``--project``, ...), which the Beam
    commands pass on to Beam."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return frozenset("--" + name for name in PipelineOptions([]).get_all_options())


@functools.cache
def command_flags(command: Command) -> frozenset[str]:
    """The flags a command's --help lists (absl's ``--[no]x`` gives ``--x`` and ``--nox``)."""
    proc = help_output(command, "--help")
    if "--helpfull" in proc.stdout:  # absl lists the key flags; --helpfull also those of the modules it uses
        proc = help_output(command, "--helpfull")
    names = set()  # (absl's --help exits 1, argparse's 0: the listing is what counts)
    for line in proc.stdout.splitlines():
        m = HELP_FLAG.match(line)
        if m:
            names.add("--" + m.group(2))
            if m.group(1):
                names.add("--no" + m.group(2))
    if not names:
        raise AssertionError(f"{command.key} --help lists no flags:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if command.key in BEAM_COMMANDS:
        names |= beam_options()
    return frozenset(names | {"--help", "--helpfull"})


def listed_or_none(command: Command) -> frozenset[str] | None:
    """command_flags, with a failure left for unknown_flags to report."""
    try:
        return command_flags(command)
    except AssertionError:
        return None


@functools.cache
def config_fields(path: str) -> frozenset[str]:
    """Every dotted field of a config file (``run.max_vram_gb``)."""
    from lipsync_jax.config_utils import load_config

    fields = set()

    def walk(node, prefix):
        for key, value in node.items():
            fields.add(prefix + key)
            if hasattr(value, "items"):
                walk(value, prefix + key + ".")

    walk(load_config(os.path.join(ROOT, path)), "")  # "configs/syncnet/tiny.py:256" passes its argument on
    return frozenset(fields)


def unknown_flags(uses: list[Use], flags_of) -> list[str]:
    """Problems, one line each: a flag its command does not have, an override its config does not have."""
    problems = []
    page_commands: dict[str, set[Command]] = {}
    for use in uses:
        if use.command is not None:
            page_commands.setdefault(use.doc, set()).add(use.command)
    all_commands = {c for cs in page_commands.values() for c in cs}
    broken = set()
    for command in sorted(all_commands, key=lambda c: c.key):
        try:
            flags_of(command)
        except AssertionError as e:
            broken.add(command)
            first = next(u for u in uses if u.command == command)
            problems.append(f"{os.path.relpath(first.doc, ROOT)}:{first.line}: {e}".splitlines()[0])
    for use in uses:
        if use.command in broken:
            continue
        # prose may name the flags of any of our commands ("infer.py's `--faces`")
        candidates = [use.command] if use.command is not None else sorted(all_commands - broken, key=lambda c: c.key)
        known = set().union(*(flags_of(c) for c in candidates)) if candidates else set()
        where = f"{os.path.relpath(use.doc, ROOT)}:{use.line}"
        for flag in use.flags:
            if flag in FOREIGN_FLAGS:
                continue
            if flag.startswith("--config."):
                field = flag[len("--config."):]
                configs = [use.config] if use.config else ["configs/unet/stage2.py"]
                if not any(field in config_fields(c) for c in configs):
                    problems.append(f"{where}: {flag}: no field {field!r} in {configs[0]}")
                continue
            if flag not in known:
                named = use.command.key if use.command else "any command the docs run"
                problems.append(f"{where}: {flag} is not a flag of {named}")
    return problems


PATH = re.compile(r"(?<![\w./-])((?:lipsync_jax|configs|bench|tests|eval|data_prep|docs|notebooks|\.ci)/[\w./-]*\w"
                  r"|(?:infer|app|train|predict)\.py|requirements[\w-]*\.txt|Dockerfile(?![\w.])|cog\.yaml|mkdocs\.yml)")


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_paths(doc: str, text: str) -> list[str]:
    """Repository paths (scripts, modules, configs) a doc names that do not exist."""
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in PATH.finditer(line):
            path = m.group(1).rstrip(".")
            if line[m.end():m.end() + 1] == "*" or re.search(r"LatentSync's `?$", line[:m.start()]):
                continue  # a pattern (tests/pipeline/test_engine*.py) or the original repository's file
            if path.startswith("configs/") and path.endswith((".yaml", ".json")):
                continue  # LatentSync's own config files, which ours mirror
            path = path.split(":")[0]  # configs/unet/tiny.py:256 (a config argument)
            if not os.path.exists(os.path.join(ROOT, path)):
                problems.append(f"{os.path.relpath(doc, ROOT)}:{lineno}: {path} does not exist")
        for module in re.findall(r"python3? -m ([\w.]+)", line):
            if module.split(".")[0] in ("lipsync_jax", "data_prep") and not module_exists(module):
                problems.append(f"{os.path.relpath(doc, ROOT)}:{lineno}: no module {module}")
    return problems


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- the parser and the checker, in-process


@pytest.mark.integration
def test_command_lines_and_their_flags_are_found():
    text = """
Run `python infer.py --video a.mp4 --steps 4` or see `--max_vram`.

```bash
XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py --config=configs/unet/tiny.py \\
  --workdir=/tmp/x --config.run.max_train_steps=3   # add --sweep_index=2 for a sweep
python -m lipsync_jax.convert unet --src a.pt --dst b && pip install --no-deps -e .
  [--steps 20 --guidance 1.5]
```
"""
    uses = uses_in("doc.md", text)
    by_command = [(u.command.key if u.command else None, u.flags) for u in uses]
    assert ("infer.py", ["--video", "--steps"]) in by_command
    assert (None, ["--max_vram"]) in by_command
    assert ("train.py", ["--config", "--workdir", "--config.run.max_train_steps"]) in by_command
    assert ("-m lipsync_jax.convert", ["--src", "--dst"]) in by_command
    comment = [u for u in uses if u.flags == ["--sweep_index"]]
    assert comment and comment[0].command is None  # a comment is prose
    assert all("--xla_force_host_platform_device_count" not in u.flags for u in uses)  # XLA's, in XLA_FLAGS
    continuation = [u for u in uses if u.flags == ["--steps", "--guidance"]]
    assert continuation and continuation[0].command.key == "-m lipsync_jax.convert"
    assert all("--no-deps" not in u.flags for u in uses)  # pip's line is not ours
    assert {u.config for u in uses if u.command and u.command.key == "train.py"} == {"configs/unet/tiny.py"}


@pytest.mark.integration
def test_a_renamed_flag_is_reported_with_its_file_and_line():
    flags = {"infer.py": {"--video", "--steps", "--max_vram"}}
    fake = lambda command: flags[command.key]
    good = "```bash\npython infer.py --video a.mp4 --steps 4\n```\nBudget: `--max_vram 8`.\n"
    assert unknown_flags(uses_in("doc.md", good), fake) == []
    flags["infer.py"] = {"--video", "--num_steps", "--max_vram"}   # --steps renamed in the code
    assert unknown_flags(uses_in("doc.md", good), fake) == ["doc.md:2: --steps is not a flag of infer.py"]
    renamed_in_prose = good.replace("`--max_vram 8`", "`--max_vram_gb 8`")
    flags["infer.py"] = {"--video", "--steps", "--max_vram"}
    problems = unknown_flags(uses_in("doc.md", renamed_in_prose), fake)
    assert problems == ["doc.md:4: --max_vram_gb is not a flag of any command the docs run"]


def test_a_variable_of_the_block_carries_its_flags_to_the_command_that_uses_it():
    text = """```bash
CONFIG=configs/unet/tiny.py
EVAL="--syncnet_checkpoint s.model \\
  --audio_dir audio"
python -m lipsync_jax.eval.report --generated out $EVAL
python train.py --config=$CONFIG --config.run.max_train_steps=3
```
"""
    uses = uses_in("doc.md", text)
    by_command = {u.command.key: u for u in uses if u.command}
    assert by_command["-m lipsync_jax.eval.report"].flags == ["--generated", "--syncnet_checkpoint", "--audio_dir"]
    assert by_command["train.py"].config == "configs/unet/tiny.py"
    assert len(uses) == 2  # the assignments are not commands, nor continuations of one


@pytest.mark.integration
def test_a_config_override_must_name_a_field_of_its_config():
    fake = lambda command: {"--config"}
    ok = "```bash\npython train.py --config=configs/unet/tiny.py --config.run.max_train_steps=3\n```\n"
    bad = ok.replace("max_train_steps", "max_steps")
    assert unknown_flags(uses_in("doc.md", ok), fake) == []
    assert unknown_flags(uses_in("doc.md", bad), fake) == [
        "doc.md:2: --config.run.max_steps: no field 'run.max_steps' in configs/unet/tiny.py"]


def test_a_moved_path_is_reported():
    assert missing_paths("doc.md", "see `lipsync_jax/pipeline/engine.py` and bench/RESULTS.md.") == []
    assert missing_paths("doc.md", "`python -m lipsync_jax.eval.report`") == []
    assert missing_paths("doc.md", "LatentSync's `eval/eval_fvd.py`, tests/pipeline/test_engine*.py") == []
    assert missing_paths("doc.md", "see lipsync_jax/pipeline/stream.py") == [
        "doc.md:1: lipsync_jax/pipeline/stream.py does not exist"]
    assert missing_paths("doc.md", "python -m lipsync_jax.stream.serve") == [
        "doc.md:1: no module lipsync_jax.stream.serve"]


# ---------------------------------------------------------------- the real docs against the real commands


def test_every_path_in_the_docs_exists():
    problems = [p for path in doc_files() for p in missing_paths(path, read(path))]
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_every_flag_in_the_docs_exists_on_its_command():
    uses = [u for path in doc_files() for u in uses_in(path, read(path))]
    commands = sorted({u.command for u in uses if u.command is not None}, key=lambda c: c.key)
    assert {"infer.py", "app.py", "train.py"} <= {c.key for c in commands}
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:   # each --help is its own process
        list(pool.map(listed_or_none, commands))
    problems = unknown_flags(uses, command_flags)
    assert not problems, "\n".join(problems)


@pytest.mark.integration
@pytest.mark.parametrize("flag", ["--max_vram", "--avatar_cache"])
def test_renaming_a_real_flag_in_a_real_doc_fails(flag):
    text = read(os.path.join(ROOT, "docs", "inference.md"))
    assert flag in text
    uses = uses_in("docs/inference.md", text.replace(flag + " ", flag + "_renamed "))
    assert any(flag + "_renamed is not a flag" in p for p in unknown_flags(uses, command_flags))
