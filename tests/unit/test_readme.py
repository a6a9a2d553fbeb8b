"""The README is run, not only read, so that it cannot drift from the code.

- Every command line of a ```bash block that calls ``fitbit-stream`` (or a job script, or a
  spark-submit entry point) parses with the real argument parser, and its ``--config``/``--set``
  load and validate; each ``--set`` value lands on the key it names. ``make`` targets exist.
- Every ```yaml block names its file in a first-line comment (``# conf/x.yaml``), validates with
  :func:`fitbit_stream.config.load_config`, and is the file the commands beside it pass to ``--config``.
- A ```text block that follows a one-command ```bash block and starts with ``fitbit-stream: error:``
  is that command's real output: the command is run (it fails before Spark starts) and compared.
- Every ```python block runs, against a small lake built here with the shared ``spark`` fixture.
- Every relative link in README.md and docs/*.md resolves to a file, and an anchor to a heading.
- The "What is here" table lists every module of the package, and nothing that is not there.

Each check is a helper that the tests call on the real README and on a deliberately broken copy,
which must fail: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream import cli, jobs, session
from fitbit_stream.config import Config, load_config, parse_override
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import HEART_RATE, WORKOUT_BPM_SUMMARY

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PACKAGE = ROOT / "src" / "fitbit_stream"
ERROR_PREFIX = "fitbit-stream: error: "

# --- reading the markdown ------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence

    def where(self) -> str:
        return f"README.md:{self.line}"


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def code_blocks(markdown: str) -> list[Block]:
    """The fenced blocks in order, their text dedented by the fence's own indentation."""
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = len(opening.group(1)), opening.group(2)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: unclosed code block"
        found.append(Block(lang, "\n".join(body), i + 1))
        i = j + 1
    return found


def without_code(markdown: str) -> str:
    """The markdown with fenced blocks and inline code spans blanked (links inside them are text)."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if re.match(r"^\s*```", line):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else re.sub(r"`[^`]*`", "``", line))
    return "\n".join(kept)


def command_lines(script: str) -> list[list[str]]:
    """Each shell command of a block as tokens (continuation lines joined, comments dropped)."""
    commands, pending = [], ""
    for raw in script.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + raw, comments=True)
        pending = ""
        if tokens:
            commands.append(tokens)
    assert not pending, f"a continuation line ends the block: {pending!r}"
    return commands


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match is not None, f"README.md has no section {title!r}"
    return match.group(1)


def slugs(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a page."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_code(markdown).splitlines():
        heading = re.match(r"^#{1,6} (.*)$", line)
        if heading is None:
            continue
        text = heading.group(1).strip().lower().replace("``", "")
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


# --- the checks ----------------------------------------------------------------------------------

CLI_NAMES = ("fitbit-stream", ".venv/bin/fitbit-stream")


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def parse_command(tokens: list[str]) -> argparse.Namespace | None:
    """The parsed arguments of a ``fitbit-stream``, job-script or spark-submit line; None for any
    other command (checked elsewhere or not ours). Raises AssertionError when the parser refuses."""
    program = tokens[0]
    if program in CLI_NAMES:
        parser, argv = cli.build_parser(), tokens[1:]
    elif program.removeprefix(".venv/bin/").startswith("fitbit-stream-"):
        job = program.removeprefix(".venv/bin/").removeprefix("fitbit-stream-")
        assert job in jobs.JOBS, f"no job script {program!r}"
        parser, argv = jobs.build_parser(job), tokens[1:]
    elif program == "spark-submit":
        scripts = [i for i, t in enumerate(tokens) if t.startswith("entrypoints/") and t.endswith(".py")]
        assert scripts, f"spark-submit without an entry point: {shlex.join(tokens)}"
        script = tokens[scripts[0]]
        assert (ROOT / script).is_file(), f"{script} does not exist"
        parser, argv = jobs.build_parser(Path(script).stem), tokens[scripts[0] + 1 :]  # type: ignore[arg-type]
    else:
        return None
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"the parser refuses {shlex.join(tokens)!r} (exit {exc.code})") from None


def yaml_files(blocks: list[Block], tmp_path: Path) -> dict[str, Path]:
    """Each YAML block written to a temporary file, by the path its first-line comment names."""
    files = {}
    for block in blocks:
        if block.lang != "yaml":
            continue
        first = block.text.splitlines()[0] if block.text else ""
        named = re.fullmatch(r"#\s*(\S+\.ya?ml)\s*", first)
        assert named is not None, f"{block.where()}: a YAML block starts with '# <file>.yaml', got {first!r}"
        name = named.group(1)
        assert name not in files, f"{block.where()}: two YAML blocks are {name}"
        path = tmp_path / "yaml" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text + "\n", encoding="utf-8")
        files[name] = path
    return files


def config_path(name: str | None, files: Mapping[str, Path]) -> Path | None:
    """A README's ``--config`` argument: one of its YAML blocks, else a file of the repository."""
    if name is None:
        return None
    if name in files:
        return files[name]
    path = ROOT / name
    assert path.is_file(), f"--config {name}: neither a file of the repository nor a YAML block of the README"
    return path


def _as_text(value: Any) -> Any:
    # Map values are kept as Spark/Kafka read them: YAML's false and 5 become "false" and "5".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def assert_lands(config: Config, override: str) -> None:
    """``--set KEY=VALUE`` set KEY to VALUE (a mapping: the keys it gives)."""
    path, value = parse_override(override)
    node: Any = config.model_dump(mode="json")
    for part in path:
        assert isinstance(node, dict), f"--set {override!r}: {part!r} is not inside a section"
        assert part in node, f"--set {override!r}: no {part!r} in the configuration"
        node = node[part]

    def same(got: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(got, dict) and all(k in got and same(got[k], v) for k, v in want.items())
        return bool(got == want or got == _as_text(want))

    assert same(node, value), f"--set {override!r}: the configuration holds {node!r}"


def check_command(tokens: list[str], files: Mapping[str, Path]) -> bool:
    """Parse one command line; validate its configuration and overrides. False: not our command."""
    args = parse_command(tokens)
    if args is None:
        if tokens[0] == "make":
            unknown = set(tokens[1:]) - makefile_targets()
            assert not unknown, f"{shlex.join(tokens)}: no Makefile target {sorted(unknown)}"
        return False
    if hasattr(args, "overrides"):
        config = load_config(config_path(args.config, files), args.overrides)
        for override in args.overrides:
            assert_lands(config, override)
    return True


@dataclass(frozen=True)
class ErrorExample:
    block: Block
    argv: list[str]
    expected: list[str]


def error_examples(blocks: list[Block]) -> list[ErrorExample]:
    """A one-command bash block directly followed by a text block of ``fitbit-stream: error:`` output."""
    examples = []
    for command, output in itertools.pairwise(blocks):
        if command.lang != "bash" or output.lang != "text" or not output.text.startswith(ERROR_PREFIX):
            continue
        lines = command_lines(command.text)
        assert len(lines) == 1, f"{command.where()}: an error example is one command, got {len(lines)}"
        assert lines[0][0] in CLI_NAMES, f"{command.where()}: an error example runs fitbit-stream"
        examples.append(ErrorExample(command, lines[0][1:], output.text.splitlines()))
    return examples


def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, list[str]]:
    """``fitbit-stream ARGV`` from the repository root: its exit code and its stderr lines."""
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    saved = session._verbosity
    try:
        code = cli.main(argv)
    finally:
        session.set_verbosity(saved)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """The quoted output is the real one. One quoted line may be one of several sources' messages
    that the real line joins with `` | `` (which sources fail depends on the machine: a broker
    running, a demo's source database)."""
    if len(expected) > 1 or len(actual) != 1:
        return expected == actual
    if not (expected[0].startswith(ERROR_PREFIX) and actual[0].startswith(ERROR_PREFIX)):
        return False
    return expected[0].removeprefix(ERROR_PREFIX) in actual[0].removeprefix(ERROR_PREFIX).split(" | ")


def broken_links(path: Path, markdown: str) -> list[str]:
    """Relative links of one page that lead nowhere (a missing file, or an anchor without heading)."""
    broken = []
    for match in re.finditer(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", without_code(markdown)):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists() or ROOT not in resolved.parents:
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved.read_text(encoding="utf-8")):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


def listed_paths(readme: str) -> set[str]:
    """The paths of the "What is here" table: a file row names itself, a folder row the ``x.py``
    modules its description names. Every path must exist."""
    listed = set()
    for row in section(readme, "What is here").splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "path":
            continue
        first = re.fullmatch(r"`([^`]+)`", cells[0])
        assert first is not None, f"'What is here': the first cell is one `path`, got {cells[0]!r}"
        path = first.group(1)
        assert (ROOT / path).exists(), f"'What is here' lists {path}, which does not exist"
        if path.endswith("/"):
            listed |= {path + name for name in re.findall(r"`([\w]+\.py)`", "|".join(cells[1:]))}
        listed.add(path)
    return listed


def package_modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


# --- the README ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def blocks(readme: str) -> list[Block]:
    return code_blocks(readme)


def test_the_readme_opens_with_make_demo_and_make_test(blocks: list[Block]) -> None:
    assert blocks[0].lang == "bash"
    assert command_lines(blocks[0].text) == [["make", "demo"], ["make", "test"]]
    assert {"demo", "test", "check", "unit", "integration", "e2e", "platform-down"} <= makefile_targets()


def test_every_command_line_parses_and_its_settings_validate(blocks: list[Block], tmp_path: Path) -> None:
    files = yaml_files(blocks, tmp_path)
    expected_to_fail = {ex.block.line for ex in error_examples(blocks)}
    checked: list[str] = []
    for block in blocks:
        if block.lang != "bash" or block.line in expected_to_fail:
            continue
        for tokens in command_lines(block.text):
            if check_command(tokens, files):
                checked.append(shlex.join(tokens))
    # The parser found the commands (a silent regex would pass on an empty list).
    assert len(checked) >= 25, checked
    subcommands = {shlex.split(c)[1] for c in checked if shlex.split(c)[0] in CLI_NAMES}
    assert {"demo", "platform", "generate", "run", "verify", "rebuild", "dashboard", "bench", "config"} <= subcommands
    assert any("fitbit-stream-bronze" in c for c in checked)
    assert any(c.startswith("spark-submit") for c in checked)
    for command in (
        "fitbit-stream dashboard --config conf/local.yaml --serve --host 127.0.0.1 --port 8050",
        "fitbit-stream run --config conf/local.yaml --once --as-of 2025-03-04",
        "fitbit-stream platform stop --config conf/local.yaml",
        "fitbit-stream config --config conf/local.yaml --set 'kafka.options.\"security.protocol\"=SASL_SSL'",
        "fitbit-stream config --config conf/local.yaml --set 'spark_conf[spark.ui.enabled]=false'",
        "fitbit-stream config --config conf/local.yaml --set 'kafka.topics={bpm: heart}'",
    ):
        assert shlex.join(shlex.split(command)) in checked, command


def test_set_examples_reach_the_keys_they_name(blocks: list[Block], tmp_path: Path) -> None:
    config = load_config(
        ROOT / "conf" / "local.yaml",
        [
            'kafka.options."security.protocol"=SASL_SSL',
            "spark_conf[spark.ui.enabled]=false",
            "kafka.topics={bpm: heart}",
        ],
    )
    assert config.kafka.options == {"security.protocol": "SASL_SSL"}
    assert config.spark_conf["spark.ui.enabled"] == "false"
    assert config.kafka.topics.names() == ["user_info", "heart", "workout"]
    for override in ("kafka.topics={bpm: heart}", "spark_conf[spark.ui.enabled]=false"):
        assert_lands(config, override)


def test_a_broken_command_line_fails(tmp_path: Path) -> None:
    files: dict[str, Path] = {}
    with pytest.raises(AssertionError, match="the parser refuses"):
        check_command(shlex.split("fitbit-stream run --config conf/local.yaml --onse"), files)
    with pytest.raises(AssertionError, match="the parser refuses"):
        check_command(shlex.split("fitbit-stream dashboard --serve --port eighty"), files)
    with pytest.raises(AssertionError, match="the parser refuses"):
        check_command(shlex.split("fitbit-stream-bronze --config conf/local.yaml --job gold"), files)
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(shlex.split("spark-submit entrypoints/bronce.py --once"), files)
    with pytest.raises(AssertionError, match="no Makefile target"):
        check_command(["make", "platform-stop"], files)
    with pytest.raises(AssertionError, match="neither a file of the repository"):
        check_command(shlex.split("fitbit-stream run --config conf/mine.yaml --once"), files)
    # The dotted key unquoted, a misspelt key: refused by the configuration, as a user would see.
    with pytest.raises(InvalidConfigError, match="a map key with dots is quoted"):
        check_command(shlex.split("fitbit-stream config --set kafka.options.security.protocol=SASL_SSL"), files)
    with pytest.raises(InvalidConfigError, match=r"did you mean kafka\.bootstrap_servers"):
        check_command(shlex.split("fitbit-stream config --set kafka.bootstrap_server=h:1"), files)
    # An override that would not land where it says.
    config = load_config(None, ["kafka.topics={bpm: heart}"])
    with pytest.raises(AssertionError, match="the configuration holds"):
        assert_lands(config, "kafka.topics={bpm: hearts}")


def test_every_yaml_block_is_a_valid_config_file(blocks: list[Block], tmp_path: Path) -> None:
    files = yaml_files(blocks, tmp_path)
    assert set(files) == {"conf/eventhubs.yaml", "conf/sasl.yaml"}
    configs = {name: load_config(path) for name, path in files.items()}
    hubs, sasl = configs["conf/eventhubs.yaml"], configs["conf/sasl.yaml"]
    assert hubs.kafka.event_hubs is not None
    assert hubs.kafka.event_hubs.connection_string.env == "EVENTHUBS_CONNECTION_STRING"
    assert hubs.sql.password_env == "FITBIT_DB_PASSWORD"
    assert sasl.kafka.options == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    assert sasl.kafka.options_env == {"sasl.jaas.config": "KAFKA_JAAS_CONFIG"}


def test_a_broken_yaml_block_fails(blocks: list[Block], tmp_path: Path) -> None:
    sasl = next(b for b in blocks if b.lang == "yaml" and "conf/sasl.yaml" in b.text)
    # The secret under options instead of options_env, and a misspelt section: both refused.
    moved = Block("yaml", sasl.text.replace("  options_env:\n", ""), sasl.line)
    path = yaml_files([moved], tmp_path / "moved")["conf/sasl.yaml"]
    with pytest.raises(InvalidConfigError, match="carries a secret"):
        load_config(path)
    misspelt = Block("yaml", sasl.text.replace("options_env:", "option_env:"), sasl.line)
    path = yaml_files([misspelt], tmp_path / "misspelt")["conf/sasl.yaml"]
    with pytest.raises(InvalidConfigError, match=r"did you mean kafka\.options_env"):
        load_config(path)
    with pytest.raises(AssertionError, match=r"starts with '# <file>\.yaml'"):
        yaml_files([Block("yaml", "kafka: {}", 1)], tmp_path / "unnamed")


def test_quoted_errors_are_the_real_output(
    blocks: list[Block], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = error_examples(blocks)
    assert [ex.argv[-1] for ex in examples] == [
        "kafka.bootstrap_servers=127.0.0.1:1",
        "sql.url=jdbc:sqlite:/nonexistent/dir/x.db",
        "kafka.bootstrap_server=127.0.0.1:9092",
    ]
    for example in examples:
        code, actual = run_cli(example.argv, capsys, monkeypatch)
        assert code == 2, (example.argv, actual)
        assert output_matches(example.expected, actual), (example.block.where(), example.expected, actual)


def test_a_wrong_quoted_error_fails(
    blocks: list[Block], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = error_examples(blocks)[0]
    code, actual = run_cli(example.argv, capsys, monkeypatch)
    assert code == 2
    assert output_matches(example.expected, actual)
    assert not output_matches([example.expected[0].replace("127.0.0.1:1", "127.0.0.1:2")], actual)
    assert not output_matches([example.expected[0].replace("; start", ". Start")], actual)
    assert not output_matches([*example.expected, "another line"], actual)


def test_relative_links_resolve() -> None:
    pages = [README, *DOCS]
    assert {p.name for p in DOCS} >= {"contract.md", "streaming.md"}
    broken = [b for page in pages for b in broken_links(page, page.read_text(encoding="utf-8"))]
    assert broken == []
    readme = README.read_text(encoding="utf-8")
    assert "](docs/contract.md)" in readme
    assert "](docs/streaming.md)" in readme


def test_a_broken_link_fails() -> None:
    text = (
        "See [the contract](docs/contract.md#3-rules), [streaming](docs/streaming.md), "
        "[gone](docs/nothing.md), [no heading](docs/contract.md#4-more-rules) and [up](../outside.md); "
        "`[in code](docs/nothing.md)` and [the web](https://delta.io) are not checked."
    )
    assert broken_links(README, text) == [
        "README.md: docs/nothing.md (no such file)",
        "README.md: docs/contract.md#4-more-rules (no such heading)",
        "README.md: ../outside.md (no such file)",
    ]


def test_the_contract_is_in_the_repository_not_outside(readme: str) -> None:
    for page in (README, *DOCS):
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, page.name
        assert "CONTRACT.md" not in text, page.name
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    for heading in ("1.1 Kafka topics", "2.2 Silver", "2.3 Gold", "3.1 Profile changes", "3.6 Bad records"):
        assert f"### {heading}" in contract, heading


def test_what_is_here_lists_every_module(readme: str) -> None:
    listed = listed_paths(readme)
    modules = package_modules()
    assert len(modules) >= 60
    assert modules - listed == set(), "modules missing from the README's 'What is here' table"
    stale = {p for p in listed if p.endswith(".py")} - modules
    assert stale == set(), "the README's 'What is here' table lists modules that do not exist"


def test_a_module_missing_from_what_is_here_fails(readme: str) -> None:
    dropped = readme.replace(", one ingest micro-batch to the silver topic tables then bronze (`ingest.py`)", "")
    assert dropped != readme
    assert "src/fitbit_stream/io/ingest.py" in package_modules() - listed_paths(dropped)
    renamed = readme.replace("`src/fitbit_stream/tail.py`", "`src/fitbit_stream/tails.py`")
    with pytest.raises(AssertionError, match=r"tails\.py, which does not exist"):
        listed_paths(renamed)


# --- the python blocks, on a small lake -----------------------------------------------------------


@pytest.fixture(scope="module")
def lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tables as the pipeline writes them, a handful of rows each."""
    root = tmp_path_factory.mktemp("readme") / "lake"
    readings = [
        (1, datetime(2025, 3, 3, 8, 0, 0), 60.0, True),
        (1, datetime(2025, 3, 3, 8, 0, 1), 80.0, True),
        (1, datetime(2025, 3, 3, 8, 0, 2), 300.0, False),
        (2, datetime(2025, 3, 3, 8, 0, 0), 90.0, True),
        (2, datetime(2025, 3, 3, 8, 0, 1), None, False),
    ]
    summaries = [
        (1, 1, 1, date(2025, 3, 3), "25-35", "F", "F", "Austin", "TX", 60.0, 100.0, 140.0, 30),
        (1, 2, 2, date(2025, 3, 3), "25-35", "F", "F", "Austin", "TX", 70.0, 110.0, 150.0, 40),
        (2, 1, 1, date(2025, 3, 3), "35-45", "M", "M", "Boston", "MA", 80.0, 120.0, 160.0, 50),
    ]
    for rows, schema, table in (
        (readings, HEART_RATE, "silver/heart_rate"),
        (summaries, WORKOUT_BPM_SUMMARY, "gold/workout_bpm_summary"),
    ):
        spark.createDataFrame(rows, schema).coalesce(1).write.format("delta").save(str(root / table))
    return root


def run_python(
    code: str, lake: Path, spark: SparkSession, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """Run a README python block against ``lake``; what it printed.

    Two substitutions only: the block's ``data/lake/`` paths lead to ``lake`` (Spark resolves
    relative paths against the JVM's working directory, not the test's), and ``get_spark`` returns
    the suite's shared session (after checking it was given a configuration) instead of a new one.
    """
    local = code.replace('"data/lake/', f'"{lake}/')
    assert local != code, "the block reads no table under data/lake/"
    configs: list[Config] = []

    def shared_session(config: Config, **_: object) -> SparkSession:
        configs.append(config)
        return spark

    monkeypatch.setattr(session, "get_spark", shared_session)
    capsys.readouterr()
    exec(compile(local, "README.md python block", "exec"), {"__name__": "readme_block"})
    assert all(isinstance(c, Config) for c in configs)
    return capsys.readouterr().out


def python_blocks() -> list[Block]:
    return [b for b in code_blocks(README.read_text(encoding="utf-8")) if b.lang == "python"]


def test_python_blocks_read_the_tables(
    lake: Path, spark: SparkSession, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks()
    assert len(blocks) == 1
    out = run_python(blocks[0].text, lake, spark, monkeypatch, capsys)
    assert (
        "+---------+--------------+\n"
        "|device_id|avg(heartrate)|\n"
        "+---------+--------------+\n"
        "|        1|          70.0|\n"
        "|        2|          90.0|\n"
        "+---------+--------------+\n"
    ) in out
    assert (
        "+-----+--------+-------+\n"
        "|  age|workouts|avg_bpm|\n"
        "+-----+--------+-------+\n"
        "|25-35|       2|  105.0|\n"
        "|35-45|       1|  120.0|\n"
        "+-----+--------+-------+\n"
    ) in out


def test_a_broken_python_block_fails(
    lake: Path, spark: SparkSession, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = python_blocks()
    wrong_table = block.text.replace("silver/heart_rate", "silver/heart_rates")
    assert wrong_table != block.text
    with pytest.raises(Exception, match=r"PATH_NOT_FOUND.*silver/heart_rates"):
        run_python(wrong_table, lake, spark, monkeypatch, capsys)
    wrong_column = block.text.replace('avg("heartrate")', 'avg("heart_rate")')
    assert wrong_column != block.text
    with pytest.raises(Exception, match=r"UNRESOLVED_COLUMN.*`heart_rate`"):
        run_python(wrong_column, lake, spark, monkeypatch, capsys)
