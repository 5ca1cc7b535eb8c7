"""Every command-line tool: ``--help`` documents each flag and its default, and the benchmarks
write into the untracked benchmarks/results/local/ unless asked to refresh the committed results."""

import argparse
import hashlib
import importlib.util
import shutil
import subprocess
import sys

import pytest

from salt_fast.eval import loss_vs_accuracy, probe, rankme, surprise
from support import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ("data", "flops", "kernels", "masking", "probe_length", "report", "reproduce_small", "throughput")
EVAL_TOOLS = {"probe": probe, "rankme": rankme, "surprise": surprise, "loss_vs_accuracy": loss_vs_accuracy}


def script(name: str):
    """A benchmarks/<name>.py module (imported once, under a name of its own)."""
    key = f"_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds, caught at its ``parse_args`` (for scripts without ``build_parser``)."""

    def catch(self, *args, **kwargs):
        raise _Parsed(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Parsed) as caught:
            main([])
    return caught.value.parser


def tool(name: str):
    """``(main, parser)`` of an eval tool (``eval.NAME``) or a benchmark script (``NAME``)."""
    if name.startswith("eval."):
        module = EVAL_TOOLS[name[5:]]
    else:
        module = script(name)
    return module.main, getattr(module, "build_parser", None)


TOOLS = [f"eval.{name}" for name in EVAL_TOOLS] + list(SCRIPTS)


def get_parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    main, build = tool(name)
    return build() if build is not None else parser_of(main, monkeypatch)


@pytest.mark.parametrize("name", TOOLS)
def test_help_exits_zero_and_shows_defaults(name, capsys):
    main, _ = tool(name)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--out" in out and "default" in out


@pytest.mark.parametrize("name", TOOLS)
def test_every_flag_has_help_and_its_default(name, monkeypatch):
    parser = get_parser(name, monkeypatch)
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert flags
    for action in flags:
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{name} {flag}: no help text"
        text = formatter._expand_help(action)  # what --help prints for it, the default included
        if not action.required and action.nargs != 0:  # takes a value and may be left out
            assert "default" in text, f"{name} {flag}: its help does not say what leaving it out does: {text!r}"
        if action.default is not None and action.nargs != 0:
            assert f"(default: {action.default})" in text, f"{name} {flag}: {text!r}"


def test_probe_help_names_the_protocols_values():
    parser = probe.build_parser()
    formatter = parser._get_formatter()
    helps = {a.dest: formatter._expand_help(a) for a in parser._actions}
    fast, full = probe.PROTOCOLS["fast"], probe.PROTOCOLS["full"]
    assert f"(default: the protocol's, {fast.frames})" in helps["frames"]
    assert f"(default: the protocol's, {fast.resolution})" in helps["resolution"]
    assert f"(default: the protocol's, {fast.epochs})" in helps["epochs"]
    assert f"fast {fast.num_clips}, full {full.num_clips}" in helps["num_clips"]
    assert f"fast {fast.lrs[0]:g}, full " in helps["lrs"]
    # Left out, a protocol flag stays None: the protocol decides.
    args = parser.parse_args(["--checkpoint", "c", "--train-list", "t", "--val-list", "v"])
    assert args.frames is None and args.lrs is None


def test_description_keeps_its_line_breaks():
    text = probe.build_parser().format_help()
    assert "\n    python -m salt_fast.eval.probe --checkpoint" in text


# ----------------------------------------------------------------------------- where results go


def test_output_path_local_by_default_committed_with_refresh_out_wins(tmp_path):
    script("flops")  # puts benchmarks/ on sys.path
    import common

    parser = argparse.ArgumentParser()
    common.add_output_args(parser, "x.json")
    assert common.output_path(parser.parse_args([]), "x.json") == common.RESULTS / "local" / "x.json"
    assert common.output_path(parser.parse_args(["--refresh"]), "x.json") == common.RESULTS / "x.json"
    for argv in (["--out", str(tmp_path / "y.json")], ["--refresh", "--out", str(tmp_path / "y.json")]):
        assert common.output_path(parser.parse_args(argv), "x.json") == tmp_path / "y.json"
    assert common.LOCAL_RESULTS == common.RESULTS / "local"
    assert common.output_path(parser.parse_args([]), "x.json", tmp_path) == tmp_path / "local" / "x.json"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_has_out_and_refresh(name, monkeypatch):
    dests = {a.dest for a in get_parser(name, monkeypatch)._actions}
    assert {"out", "refresh"} <= dests


def test_local_results_are_git_ignored():
    probe_file = "benchmarks/results/local/anything.json"
    done = subprocess.run(["git", "check-ignore", "-q", probe_file], cwd=ROOT, capture_output=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, f"{probe_file} is not ignored by .gitignore"


def test_flops_run_leaves_the_committed_results_alone(tmp_path):
    """The real script in a copy of benchmarks/: it writes results/local/, not the committed file."""
    copy = tmp_path / "benchmarks"
    shutil.copytree(BENCHMARKS, copy, ignore=shutil.ignore_patterns("local", "__pycache__", "*.png"))
    committed = copy / "results" / "flops_tables.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest()
    assert before == hashlib.sha256((BENCHMARKS / "results" / "flops_tables.json").read_bytes()).hexdigest()
    done = subprocess.run([sys.executable, str(copy / "flops.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == before
    assert (copy / "results" / "local" / "flops_tables.json").is_file()
    assert "wrote benchmarks/results/local/flops_tables.json" in done.stdout


def test_report_reads_local_over_committed_and_writes_locally(tmp_path, capsys):
    report = script("report")
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results, ignore=shutil.ignore_patterns("local"))
    committed_report = (results / "REPORT.md").read_bytes()
    local = results / "local"
    local.mkdir()
    masking = (results / "masking_cpu.json").read_text()
    (local / "masking_cpu.json").write_text(masking.replace('"device": "', '"device": "LOCAL RUN ', 1))

    text = report.main(["--results", str(results)])
    assert (local / "REPORT.md").read_text() == text
    assert (results / "REPORT.md").read_bytes() == committed_report
    assert "LOCAL RUN" in text and text.count("### Mask sampling") == 1  # replaced, not added
    assert f"wrote {local / 'REPORT.md'}" in capsys.readouterr().out

    refreshed = report.main(["--results", str(results), "--refresh"])
    assert "LOCAL RUN" not in refreshed  # the committed report describes the committed files only
    assert (results / "REPORT.md").read_text() == refreshed

    out = tmp_path / "elsewhere.md"
    assert report.main(["--results", str(results), "--refresh", "--out", str(out)]) == out.read_text()


# ----------------------------------------------------------------------------- progress


def test_progress_bar_counts_in_its_unit():
    import io

    from salt_fast.metrics import ProgressBar

    now = [0.0]
    plain = ProgressBar(total=4, enabled=False, desc="surprise", unit="pair", clock=lambda: now[0])
    plain.update(1)
    now[0] = 2.0
    assert "0.50 pair/s" in plain.format() and "step" not in plain.format()
    assert "step/s" in ProgressBar(total=4, enabled=False).format()  # the default unit
    pytest.importorskip("tqdm")
    buf = io.StringIO()
    with ProgressBar(total=3, desc="encode", unit="batch", file=buf) as bar:
        bar.update(3)
    assert "batch" in buf.getvalue() and "step" not in buf.getvalue()
