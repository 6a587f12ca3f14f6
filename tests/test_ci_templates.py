"""ci/: the GitHub Actions workflow and the GitLab CI job parse as YAML, and every
command they run exists: `./vt` subcommands and `vfiouser-tdisp` options are parsed
by the real argparse parser, pytest markers are the declared ones, and what they
upload and cache is what the commands write."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from vfiouser_tdisp.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / "ci" / "github-actions.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.yml"


def vt_builtins() -> set[str]:
    """The commands ./vt handles itself (its `case` arms); the rest go to vfiouser-tdisp."""
    text = (ROOT / "vt").read_text()
    return set(re.findall(r"^\s{4}([a-z-]+)\)\s*$", text, re.M))


def github() -> dict[str, Any]:
    return yaml.safe_load(GITHUB.read_text())


def gitlab() -> dict[str, Any]:
    return yaml.safe_load(GITLAB.read_text())


def github_scripts() -> list[str]:
    return [step["run"] for job in github()["jobs"].values() for step in job["steps"]
            if "run" in step]


def gitlab_scripts() -> list[str]:
    out: list[str] = []
    for job in gitlab().values():
        if isinstance(job, dict) and "script" in job:
            for part in ("before_script", "script", "after_script"):
                out += job.get(part, [])
    return out


def commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script: lines joined at backslashes, split at
    ; && || | and shell keywords, each as words."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for tok in lexer:
            if tok in (";", "&&", "||", "|", "&", ">", ">>"):
                if words:
                    out.append(words)
                words = []
            elif tok in ("then", "else", "do") and not words:
                continue
            else:
                words.append(tok)
        if words:
            out.append(words)
    return out


def vt_calls(scripts: list[str]) -> list[list[str]]:
    return [c[1:] for s in scripts for c in commands(s) if c and c[0] in ("./vt", "vt")]


def check_vt_call(args: list[str]) -> None:
    """What ./vt would do with ``args``: a builtin, or a vfiouser-tdisp command line."""
    assert args, "./vt without a command"
    if args[0] in vt_builtins():
        if args[0] == "test":
            markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
                "ini_options"]["markers"]
            declared = {m.split(":")[0] for m in markers}
            for i, a in enumerate(args):
                if a == "-m":
                    used = set(re.findall(r"[a-z_]+", args[i + 1])) - {"not", "and", "or"}
                    assert used <= declared, f"undeclared markers {used - declared}"
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"vfiouser-tdisp rejects {args}") from exc


@pytest.mark.parametrize("name", ["github", "gitlab"])
def test_every_vt_command_exists_and_parses(name: str) -> None:
    scripts = github_scripts() if name == "github" else gitlab_scripts()
    calls = vt_calls(scripts)
    used = {c[0] for c in calls}
    assert {"setup", "run", "lint", "test", "events"} <= used, used
    for call in calls:
        check_vt_call(call)


def test_the_checker_can_fail() -> None:
    with pytest.raises(AssertionError):
        check_vt_call(["run", "--no-such-option"])
    with pytest.raises(AssertionError):
        check_vt_call(["nosuchcommand"])
    with pytest.raises(AssertionError):
        check_vt_call(["test", "-m", "not sloow"])
    assert commands('if [ -f a ]; then ./vt events a > b || true; fi') == [
        ["if", "[", "-f", "a", "]"], ["./vt", "events", "a"], ["b"], ["true"], ["fi"]]


def run_out_dirs(scripts: list[str]) -> set[str]:
    outs = set()
    for call in vt_calls(scripts):
        if call[0] == "run":
            outs.add(build_parser().parse_args(call).out)
    return outs


def test_github_workflow_shape() -> None:
    wf = github()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = wf["jobs"].values()
    assert job["container"]["image"].startswith("debian:")
    assert "--privileged" in job["container"]["options"]
    cache_dir = job["env"]["VFIOUSER_TDISP_CACHE"]
    uses = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
    assert {"actions/checkout", "actions/cache", "actions/upload-artifact"} <= set(uses)
    # the cache holds the provisioned tree under the cache directory the job uses
    cached = uses["actions/cache"]["with"]["path"].split()
    assert f"{cache_dir}/tree" in cached and f"{cache_dir}/kernel" in cached
    assert "vfiouser_tdisp/run/provision.py" in uses["actions/cache"]["with"]["key"]
    # what is uploaded is the directory `./vt run --out` wrote, on failure too
    (out,) = run_out_dirs(github_scripts())
    upload = uses["actions/upload-artifact"]
    assert upload["if"] == "always()"
    assert f"{out}/" in upload["with"]["path"].split()
    assert "/dev/kvm" in "\n".join(github_scripts())
    # steps after the run still run when it fails
    names = [s.get("name", "") for s in job["steps"]]
    after = job["steps"][names.index("Boot the guest with the device") + 1:]
    assert all(s.get("if") == "always()" for s in after)


def test_gitlab_job_shape() -> None:
    ci = gitlab()
    (job,) = [j for j in ci.values() if isinstance(j, dict) and "script" in j]
    assert job["image"].startswith("debian:")
    cache_dir = job["variables"]["VFIOUSER_TDISP_CACHE"]
    assert cache_dir.startswith("$CI_PROJECT_DIR/")  # GitLab caches inside the project only
    rel = cache_dir[len("$CI_PROJECT_DIR/"):]
    assert f"{rel}/tree" in job["cache"]["paths"] and f"{rel}/kernel" in job["cache"]["paths"]
    assert "vfiouser_tdisp/run/provision.py" in job["cache"]["key"]["files"]
    (out,) = run_out_dirs(gitlab_scripts())
    assert job["artifacts"]["when"] == "always"
    assert f"{out}/" in job["artifacts"]["paths"]
    assert "/dev/kvm" in "\n".join(gitlab_scripts())
    # a failing run, lint or test fails the job, but all three run
    script = job["script"]
    assert script[-1] == "exit $rc"
    assert all(s.endswith("|| rc=1") for s in script if s.startswith(("./vt run", "./vt lint",
                                                                       "./vt test")))


def test_readme_names_the_templates_and_their_times() -> None:
    note = (ROOT / "ci" / "README.md").read_text()
    assert "github-actions.yml" in note and "gitlab-ci.yml" in note
    for topic in ("nested", "/dev/kvm", "TCG", "emulation failure"):
        assert topic in note, topic
